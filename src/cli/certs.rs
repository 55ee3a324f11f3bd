//! `mqsync certs init`: writes a CA, a broker certificate, one client certificate per
//! node and the group key, then lists what it wrote.

use super::args::CertsInitArgs;
use anyhow::Result;

pub fn init(a: CertsInitArgs) -> Result<()> {
    let CertsInitArgs { out, nodes, hosts } = a;
    crate::broker::certs::init(&out, &nodes, &hosts)?;
    println!(
        "wrote certificates for {} into {}",
        nodes.join(", "),
        out.display()
    );
    println!("  ca.pem            CA certificate (give to every node and the broker)");
    println!(
        "  broker.pem/.key   broker certificate for: {}",
        hosts.join(", ")
    );
    for n in &nodes {
        println!("  {n}.pem/.key       client certificate of node {n}");
    }
    println!("  group.key         shared secret that authenticates sync messages");
    Ok(())
}
