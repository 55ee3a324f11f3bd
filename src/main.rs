//! The `mqsync` binary: parses the command line and hands each command to its module
//! under `mqsync::cli`, which does the work. `anyhow` stays at this edge (here and in
//! `cli`).

use anyhow::Result;
use clap::Parser;
use mqsync::cli::args::{CertsCmd, Cli, Cmd};
use mqsync::cli::{
    broker, certs, conflicts, demo, forget, healthcheck, pending, resync, run, status,
};

fn main() -> Result<()> {
    mqsync::sys::heap::tune_allocator();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let log = &cli.log;
    match cli.cmd {
        Cmd::Run(a) => run::run(&rt, log, a),
        Cmd::Broker(a) => broker::broker(&rt, log, a),
        Cmd::Certs(CertsCmd::Init(a)) => certs::init(a),
        Cmd::Certs(CertsCmd::Renew(a)) => certs::renew(a),
        Cmd::Resync(a) => resync::resync(&rt, log, a),
        Cmd::Status(a) => status::status(&rt, log, a),
        Cmd::Wait(a) => status::wait(&rt, log, a),
        Cmd::Pending(a) => pending::pending(&rt, log, a),
        Cmd::Conflicts(a) => conflicts::conflicts(a),
        Cmd::Healthcheck(a) => healthcheck::healthcheck(a),
        Cmd::Demo(a) => demo::demo(&rt, log, a),
        Cmd::Forget(a) => forget::forget(&rt, log, a),
    }
}
