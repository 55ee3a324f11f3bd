//! Certificate generation for `mqsync certs init` and the embedded broker: a private CA,
//! a broker (server) certificate, one client certificate per node, operator
//! certificates and the group key. Never overwrites an existing file; an existing CA is
//! reused to sign new certificates, and [`renew`] re-issues existing ones from it.

mod info;
mod renew;

pub use info::{CertInfo, chgrp_private, read_cert};
pub use renew::{RenewOptions, Renewed, renew};

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

/// The CA signs every certificate of a cluster; replacing it means re-issuing all of
/// them, so it lives long.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Broker, node and operator certificates: 825 days, the longest lifetime many TLS
/// stacks and policies still accept for a leaf. `mqsync certs renew` re-issues them.
pub const LEAF_VALIDITY_DAYS: i64 = 825;
/// Broker host names when none are given.
pub const DEFAULT_HOSTS: &[&str] = &["localhost", "127.0.0.1"];
/// The common name of every operator certificate: the identity the shipped ACLs
/// (`broker/mosquitto.acl`, the embedded broker's rule) let clear any node's retained
/// status, pending and mount documents (`mqsync forget`). The operator's own name is in
/// the certificate's OU, for the logs.
pub const OPERATOR_CN: &str = "mqsync-operator";
/// Longest node id accepted: it becomes a certificate CN, a file name and a topic level.
pub const MAX_NODE_ID_LEN: usize = 64;

/// The broker certificate's common name (clients check its SANs, not this).
const BROKER_CN: &str = "mqsync broker";

/// File names written into the output directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const BROKER_CERT: &str = "broker.pem";
pub const BROKER_KEY: &str = "broker.key";
pub const GROUP_KEY: &str = "group.key";

/// Node ids that would collide with the CA, broker or group key files, or take the
/// operator's identity.
const RESERVED_NODE_IDS: &[&str] = &["ca", "broker", "group", OPERATOR_CN];

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId { id: String, reason: &'static str },
    #[error(
        "no host names given for the broker certificate (use e.g. --hosts localhost,127.0.0.1)"
    )]
    NoHosts,
    #[error("invalid broker host name {host:?}: {source}")]
    InvalidHost { host: String, source: rcgen::Error },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{present} exists but {missing} does not: restore the missing file, or delete both to \
         generate a new pair"
    )]
    IncompletePair { present: PathBuf, missing: PathBuf },
    #[error("existing CA {cert} / {key} cannot be used to sign: {source}")]
    BadCa {
        cert: PathBuf,
        key: PathBuf,
        source: rcgen::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: not a PEM certificate that can be read: {reason}")]
    BadCert { path: PathBuf, reason: String },
    #[error(
        "{path} exists and is not an operator certificate (its CN is {cn:?}); pick another operator name"
    )]
    NotOperator { path: PathBuf, cn: String },
    #[error(
        "{0} and the same name in --nodes: an operator certificate and a node's would share files"
    )]
    OperatorIsNode(String),
    #[error(
        "no CA in {dir} (ca.pem, ca.key): renew re-issues from an existing CA; run mqsync certs init first"
    )]
    NoCa { dir: PathBuf },
    #[error("{path} does not exist: there is nothing to renew (mqsync certs init creates it)")]
    NotIssued { path: PathBuf },
    #[error("nothing to renew: give --nodes, --operator or --broker")]
    NothingToRenew,
    #[error("validity of {0} days: give at least 1")]
    BadDays(i64),
    #[error("group {0:?} does not exist")]
    NoSuchGroup(String),
}

/// What `init` asks for besides the output directory.
#[derive(Debug, Clone)]
pub struct InitOptions<'a> {
    pub nodes: &'a [String],
    /// Broker host names. `None`: [`DEFAULT_HOSTS`] for a new broker certificate, and a
    /// kept one is not compared with them.
    pub hosts: Option<&'a [String]>,
    /// Operator names: one operator certificate each (`NAME.pem`, `NAME.key`).
    pub operators: &'a [String],
    /// Validity of the certificates created now (not the CA's).
    pub days: i64,
    /// Group given read access to `broker.key` (mode 0640), for a broker that runs as
    /// its own user (Mosquitto).
    pub group: Option<&'a str>,
}

/// Whether `init` made a file or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Kept,
}

/// What a certificate or key in the output directory is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Ca,
    Broker,
    Node(String),
    Operator(String),
    GroupKey,
}

/// One line of what `init` did: a pair (or the group key), created or kept, and the
/// certificate as it is on disk.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub role: Role,
    pub files: Vec<PathBuf>,
    pub action: Action,
    pub cert: Option<CertInfo>,
}

/// Everything `init` did, in the order it did it.
#[derive(Debug, Clone, Default)]
pub struct InitReport {
    pub outcomes: Vec<Outcome>,
    /// Requested host names that differ from a kept broker certificate's names
    /// (requested, kept).
    pub hosts_differ: Option<(Vec<String>, Vec<String>)>,
    /// The group and mode given to `broker.key` (`--group`).
    pub broker_key_group: Option<String>,
}

/// Where [`ensure_node_certs`] found or put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub ca: PathBuf,
    pub broker_cert: PathBuf,
    pub broker_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub group_key: PathBuf,
}

/// Writes a CA, a broker certificate for `hosts` (DNS names or IP addresses), one client
/// certificate per node (`NODE.pem` / `NODE.key`) and `group.key` into `out`: [`init_with`]
/// with the default validity and no operator.
pub fn init(out: &Path, nodes: &[String], hosts: &[String]) -> Result<InitReport, CertError> {
    init_with(
        out,
        &InitOptions {
            nodes,
            hosts: Some(hosts),
            operators: &[],
            days: LEAF_VALIDITY_DAYS,
            group: None,
        },
    )
}

/// Writes what `o` asks for into `out` and reports, file by file, what it created and
/// what it kept.
///
/// Existing files are never overwritten: when `ca.pem` and `ca.key` exist the CA is
/// reused to sign whatever is missing (so adding a node later is `init` with the new
/// node), and an existing broker, node or operator pair is kept as is (its hosts are
/// not changed; `renew` re-issues it). A pair with one half missing is an error.
/// Keys are created with mode 0600 from the start.
pub fn init_with(out: &Path, o: &InitOptions<'_>) -> Result<InitReport, CertError> {
    for node in o.nodes.iter().chain(o.operators) {
        validate_node_id(node)?;
    }
    if let Some(op) = o.operators.iter().find(|op| o.nodes.contains(op)) {
        return Err(CertError::OperatorIsNode(op.clone()));
    }
    if o.days < 1 {
        return Err(CertError::BadDays(o.days));
    }
    let default_hosts: Vec<String> = DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
    let hosts = o.hosts.unwrap_or(&default_hosts);
    let sans = broker_sans(hosts)?;
    let gid = o.group.map(info::group_id).transpose()?;
    fs::create_dir_all(out).map_err(|source| CertError::Io {
        action: "create directory",
        path: out.to_path_buf(),
        source,
    })?;
    let mut report = InitReport::default();

    let (ca, created) = load_or_create_ca(out)?;
    let ca_cert = out.join(CA_CERT);
    let ca_info = read_cert(&ca_cert)?;
    report.outcomes.push(Outcome {
        role: Role::Ca,
        files: vec![ca_cert, out.join(CA_KEY)],
        action: if created {
            Action::Created
        } else {
            Action::Kept
        },
        cert: Some(ca_info.clone()),
    });
    let leaf = |cn: &str, usage| {
        let mut params = leaf_params(cn, usage);
        set_validity(&mut params, o.days, ca_info.not_after);
        params
    };

    let broker_cert = out.join(BROKER_CERT);
    let broker_key = out.join(BROKER_KEY);
    let action = if pair_exists(&broker_cert, &broker_key)? {
        Action::Kept
    } else {
        let mut params = leaf(BROKER_CN, ExtendedKeyUsagePurpose::ServerAuth);
        params.subject_alt_names = sans;
        write_leaf(&params, &ca, &broker_cert, &broker_key)?;
        Action::Created
    };
    let info = read_cert(&broker_cert)?;
    if let (Action::Kept, Some(requested)) = (action, o.hosts) {
        let requested: Vec<String> = requested
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        if !info::same_names(&requested, &info.sans) {
            report.hosts_differ = Some((requested, info.sans.clone()));
        }
    }
    if let (Some(gid), Some(group)) = (gid, o.group) {
        chgrp_private(&broker_key, gid)?;
        report.broker_key_group = Some(group.to_string());
    }
    report.outcomes.push(Outcome {
        role: Role::Broker,
        files: vec![broker_cert, broker_key],
        action,
        cert: Some(info),
    });

    let people = o.nodes.iter().map(|n| (n, Role::Node(n.clone())));
    let operators = o.operators.iter().map(|n| (n, Role::Operator(n.clone())));
    for (name, role) in people.chain(operators) {
        let cert = out.join(format!("{name}.pem"));
        let key = out.join(format!("{name}.key"));
        let action = if pair_exists(&cert, &key)? {
            Action::Kept
        } else {
            // CN only: rumqttd reads an Organization field as a tenant and renames the
            // client id, so client certificates must not carry one.
            let params = match &role {
                Role::Operator(op) => {
                    let mut p = leaf(OPERATOR_CN, ExtendedKeyUsagePurpose::ClientAuth);
                    p.distinguished_name
                        .push(DnType::OrganizationalUnitName, op.as_str());
                    p
                }
                _ => leaf(name, ExtendedKeyUsagePurpose::ClientAuth),
            };
            write_leaf(&params, &ca, &cert, &key)?;
            Action::Created
        };
        let info = read_cert(&cert)?;
        if matches!(role, Role::Operator(_)) && info.cn.as_deref() != Some(OPERATOR_CN) {
            return Err(CertError::NotOperator {
                path: cert,
                cn: info.cn.unwrap_or_default(),
            });
        }
        report.outcomes.push(Outcome {
            role,
            files: vec![cert, key],
            action,
            cert: Some(info),
        });
    }

    let group_key = out.join(GROUP_KEY);
    let action = if group_key.exists() {
        Action::Kept
    } else {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_new(&group_key, format!("{hex}\n").as_bytes(), 0o600)?;
        tracing::info!(path = %group_key.display(), "created group key");
        Action::Created
    };
    report.outcomes.push(Outcome {
        role: Role::GroupKey,
        files: vec![group_key],
        action,
        cert: None,
    });
    Ok(report)
}

/// Makes sure `dir` holds everything the embedded broker and this node need (CA, broker
/// certificate, this node's client certificate, group key), creating only what is
/// missing with the same rules as [`init`], and returns the paths.
pub fn ensure_node_certs(
    dir: &Path,
    node_id: &str,
    hosts: &[String],
) -> Result<CertPaths, CertError> {
    init(dir, &[node_id.to_string()], hosts)?;
    Ok(CertPaths {
        ca: dir.join(CA_CERT),
        broker_cert: dir.join(BROKER_CERT),
        broker_key: dir.join(BROKER_KEY),
        node_cert: dir.join(format!("{node_id}.pem")),
        node_key: dir.join(format!("{node_id}.key")),
        group_key: dir.join(GROUP_KEY),
    })
}

/// Checks a node id: it becomes a CN, a file name and an MQTT topic level, so only
/// `[A-Za-z0-9._-]`, at most [`MAX_NODE_ID_LEN`] characters.
pub fn validate_node_id(id: &str) -> Result<(), CertError> {
    let invalid = |reason| {
        Err(CertError::InvalidNodeId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return invalid("it is empty");
    }
    if id.len() > MAX_NODE_ID_LEN {
        return invalid("it is longer than 64 characters");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return invalid("only letters, digits, '.', '_' and '-' are allowed");
    }
    if id == "." || id == ".." {
        return invalid("it is not a usable file name");
    }
    if RESERVED_NODE_IDS.contains(&id) {
        return invalid("'ca', 'broker' and 'group' are reserved (their files would collide)");
    }
    Ok(())
}

/// The CA in `out`, and whether it was created now.
fn load_or_create_ca(out: &Path) -> Result<(Issuer<'static, KeyPair>, bool), CertError> {
    if let Some(ca) = load_ca(out)? {
        return Ok((ca, false));
    }
    create_ca(out).map(|ca| (ca, true))
}

/// The existing CA in `out`, if there is one.
fn load_ca(out: &Path) -> Result<Option<Issuer<'static, KeyPair>>, CertError> {
    let cert_path = out.join(CA_CERT);
    let key_path = out.join(CA_KEY);
    if pair_exists(&cert_path, &key_path)? {
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let bad = |source| CertError::BadCa {
            cert: cert_path.clone(),
            key: key_path.clone(),
            source,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(bad)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(bad)?;
        tracing::info!(path = %cert_path.display(), "reusing existing CA");
        return Ok(Some(issuer));
    }
    Ok(None)
}

fn create_ca(out: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let cert_path = out.join(CA_CERT);
    let key_path = out.join(CA_KEY);
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    // A unique name per CA: verifiers look issuers up by name, so two CAs both called
    // "mqsync CA" turn "wrong CA" into a confusing signature error (DecryptError alert)
    // instead of UnknownCA / UnknownIssuer.
    let mut tag = [0u8; 4];
    rand::rng().fill_bytes(&mut tag);
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("mqsync CA {tag}"));
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS, i64::MAX);
    params.serial_number = Some(random_serial());
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    // Key first: a crash in between leaves a key without a certificate, which the next
    // run reports instead of silently pairing a certificate with a missing key.
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(path = %cert_path.display(), "created CA");
    Ok(Issuer::new(params, key))
}

fn leaf_params(cn: &str, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params
}

fn broker_sans(hosts: &[String]) -> Result<Vec<rcgen::SanType>, CertError> {
    let mut sans = Vec::with_capacity(hosts.len());
    for host in hosts {
        let host = host.trim();
        if host.is_empty() {
            continue;
        }
        // CertificateParams::new already knows how to tell IP addresses from DNS names.
        let parsed = CertificateParams::new(vec![host.to_string()]).map_err(|source| {
            CertError::InvalidHost {
                host: host.to_string(),
                source,
            }
        })?;
        sans.extend(parsed.subject_alt_names);
    }
    if sans.is_empty() {
        return Err(CertError::NoHosts);
    }
    Ok(sans)
}

fn write_leaf(
    params: &CertificateParams,
    ca: &Issuer<'static, KeyPair>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), CertError> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert_path, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(path = %cert_path.display(), "created certificate");
    Ok(())
}

/// Valid from an hour ago for `days`, but never past `limit` (Unix seconds): a
/// certificate cannot outlive the CA that signed it.
fn set_validity(params: &mut CertificateParams, days: i64, limit: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little back-dating tolerates clocks that are slightly behind on other nodes.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    if let Ok(limit) = time::OffsetDateTime::from_unix_timestamp(limit) {
        params.not_after = params.not_after.min(limit);
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Serials are positive DER integers: clear the sign bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Both halves present: true; neither: false; one alone: an error, since silently
/// regenerating one half would break the other.
fn pair_exists(cert: &Path, key: &Path) -> Result<bool, CertError> {
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(CertError::IncompletePair {
            present: cert.to_path_buf(),
            missing: key.to_path_buf(),
        }),
        (false, true) => Err(CertError::IncompletePair {
            present: key.to_path_buf(),
            missing: cert.to_path_buf(),
        }),
    }
}

fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `path` (never replacing an existing file) with `mode` from the first byte on,
/// so a key is never readable by others, not even briefly.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let io_err = |action, source| CertError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_err("create", e))?;
    file.write_all(contents).map_err(|e| io_err("write", e))?;
    file.sync_all().map_err(|e| io_err("sync", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hosts() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into()]
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_everything_with_private_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), &["a".into(), "node-2".into()], &hosts()).expect("init");
        for name in ["ca.pem", "broker.pem", "a.pem", "node-2.pem"] {
            assert!(dir.path().join(name).is_file(), "{name}");
        }
        for name in ["ca.key", "broker.key", "a.key", "node-2.key", "group.key"] {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
        let group = fs::read_to_string(dir.path().join("group.key")).expect("group key");
        assert_eq!(group.trim_end().len(), 64);
        assert!(group.trim_end().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(group.lines().count(), 1);
    }

    #[test]
    fn rerun_reuses_ca_and_keeps_existing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), &["a".into()], &hosts()).expect("first init");
        let ca_before = fs::read(dir.path().join("ca.pem")).expect("ca");
        let a_before = fs::read(dir.path().join("a.pem")).expect("a");
        let group_before = fs::read(dir.path().join("group.key")).expect("group");

        let paths = ensure_node_certs(dir.path(), "b", &hosts()).expect("add node");
        assert_eq!(fs::read(&paths.ca).expect("ca"), ca_before);
        assert_eq!(fs::read(dir.path().join("a.pem")).expect("a"), a_before);
        assert_eq!(fs::read(&paths.group_key).expect("group"), group_before);
        assert!(paths.node_cert.is_file() && paths.node_key.is_file());
    }

    #[test]
    fn half_pair_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), &["a".into()], &hosts()).expect("init");
        fs::remove_file(dir.path().join("a.key")).expect("rm");
        let err = init(dir.path(), &["a".into()], &hosts()).expect_err("must refuse");
        assert!(matches!(err, CertError::IncompletePair { .. }), "{err}");
    }

    #[test]
    fn node_ids_are_validated() {
        for ok in ["a", "node-1", "n.2_x", &"x".repeat(64)] {
            assert!(validate_node_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "é", "..", "ca", "broker", &"x".repeat(65)] {
            assert!(validate_node_id(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let err = init(dir.path(), &["bad/id".into()], &hosts()).expect_err("invalid");
        assert!(err.to_string().contains("bad/id"), "{err}");
    }

    #[test]
    fn empty_hosts_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            init(dir.path(), &[], &[]),
            Err(CertError::NoHosts)
        ));
    }
}
