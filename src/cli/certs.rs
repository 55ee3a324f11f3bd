//! `mqsync certs init` and `mqsync certs renew`: write or re-issue certificates, then
//! list file by file what was created, kept or renewed, with each certificate's real
//! names and expiry (never what was asked for but not done).

use super::args::{CertsInitArgs, CertsRenewArgs};
use crate::broker::certs::{self, Action, CertInfo, InitOptions, RenewOptions, Role};
use anyhow::Result;

pub fn init(a: CertsInitArgs) -> Result<()> {
    let CertsInitArgs {
        out,
        nodes,
        hosts,
        operator,
        group,
        days,
    } = a;
    let report = certs::init_with(
        &out,
        &InitOptions {
            nodes: &nodes,
            hosts: hosts.as_deref(),
            operators: &operator,
            days,
            group: group.as_deref(),
        },
    )?;
    println!("{}:", out.display());
    let names: Vec<String> = report
        .outcomes
        .iter()
        .map(|o| file_names(&o.files))
        .collect();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    for (o, files) in report.outcomes.iter().zip(&names) {
        let action = match o.action {
            Action::Created => "created",
            Action::Kept => "kept   ",
        };
        println!(
            "  {action}  {files:<width$}  {}",
            describe(&o.role, o.cert.as_ref())
        );
    }
    if let Some(group) = &report.broker_key_group {
        println!("broker.key: readable by group {group} (mode 0640)");
    }
    if let Some((requested, kept)) = &report.hosts_differ {
        println!(
            "note: the kept broker certificate is for {}, not {}; files are never \
             overwritten. To re-issue it for the new names:\n  mqsync certs renew --out {} \
             --broker --hosts {}",
            kept.join(", "),
            requested.join(", "),
            out.display(),
            requested.join(",")
        );
    }
    Ok(())
}

pub fn renew(a: CertsRenewArgs) -> Result<()> {
    let CertsRenewArgs {
        out,
        nodes,
        operator,
        broker,
        hosts,
        days,
    } = a;
    let renewed = certs::renew(
        &out,
        &RenewOptions {
            nodes: &nodes,
            operators: &operator,
            broker,
            hosts: hosts.as_deref(),
            days,
        },
    )?;
    println!(
        "{}: renewed from ca.pem (CA and group key unchanged):",
        out.display()
    );
    for r in &renewed {
        let name = r.cert.file_name().unwrap_or_default().to_string_lossy();
        let names = if r.new.sans.is_empty() {
            String::new()
        } else {
            format!(", for {}", r.new.sans.join(", "))
        };
        println!(
            "  {name}: {} {}, now until {}{names} (same key)",
            expiry_verb(&r.old),
            r.old.expiry_date(),
            r.new.expiry_date()
        );
    }
    println!(
        "next: copy the new .pem files into place and send SIGHUP to each mqsync run \
         (it reloads its certificate); restart the broker for broker.pem (docs/DEPLOY.md)"
    );
    Ok(())
}

fn expiry_verb(c: &CertInfo) -> &'static str {
    if c.days_left(now_s()) < 0 {
        "expired"
    } else {
        "expires"
    }
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn file_names(files: &[std::path::PathBuf]) -> String {
    files
        .iter()
        .map(|f| {
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| f.display().to_string())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a file is, with what its certificate really says.
fn describe(role: &Role, cert: Option<&CertInfo>) -> String {
    let until = cert
        .map(|c| format!(" (until {})", c.expiry_date()))
        .unwrap_or_default();
    match role {
        Role::Ca => format!("CA: give ca.pem to every node and the broker{until}"),
        Role::Broker => format!(
            "broker certificate for {}{until}",
            cert.map(|c| c.sans.join(", ")).unwrap_or_default()
        ),
        Role::Node(n) => match cert.and_then(|c| c.cn.as_deref()) {
            Some(cn) if cn != n => {
                format!("client certificate, but its CN is {cn:?}, not node {n}{until}")
            }
            _ => format!("client certificate of node {n}{until}"),
        },
        Role::Operator(n) => format!("operator certificate of {n} (mqsync forget){until}"),
        Role::GroupKey => "group key: the shared secret that authenticates sync messages".into(),
    }
}
