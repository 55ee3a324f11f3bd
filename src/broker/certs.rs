//! Certificate generation for `mqsync certs init` and the embedded broker: a private CA,
//! a broker (server) certificate, one client certificate per node and the group key.
//! Never overwrites an existing file; an existing CA is reused to sign new certificates.

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
/// Broker and node certificates: 825 days, the longest lifetime many TLS stacks and
/// policies still accept for a leaf. Re-issue by deleting the pair and running init again.
pub const LEAF_VALIDITY_DAYS: i64 = 825;
/// Longest node id accepted: it becomes a certificate CN, a file name and a topic level.
pub const MAX_NODE_ID_LEN: usize = 64;

/// File names written into the output directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const BROKER_CERT: &str = "broker.pem";
pub const BROKER_KEY: &str = "broker.key";
pub const GROUP_KEY: &str = "group.key";

/// Node ids that would collide with the CA, broker or group key files.
const RESERVED_NODE_IDS: &[&str] = &["ca", "broker", "group"];

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
/// certificate per node (`NODE.pem` / `NODE.key`) and `group.key` into `out`.
///
/// Existing files are never overwritten: when `ca.pem` and `ca.key` exist the CA is
/// reused to sign whatever is missing (so adding a node later is `init` with the new
/// node), and an existing broker or node pair is kept as is (its hosts are not
/// changed; delete the pair to re-issue it). A pair with one half missing is an error.
/// Keys are created with mode 0600 from the start.
pub fn init(out: &Path, nodes: &[String], hosts: &[String]) -> Result<(), CertError> {
    for node in nodes {
        validate_node_id(node)?;
    }
    if hosts.is_empty() {
        return Err(CertError::NoHosts);
    }
    fs::create_dir_all(out).map_err(|source| CertError::Io {
        action: "create directory",
        path: out.to_path_buf(),
        source,
    })?;

    let ca = load_or_create_ca(out)?;

    let broker_cert = out.join(BROKER_CERT);
    let broker_key = out.join(BROKER_KEY);
    if !pair_exists(&broker_cert, &broker_key)? {
        let mut params = leaf_params("mqsync broker", ExtendedKeyUsagePurpose::ServerAuth);
        params.subject_alt_names = broker_sans(hosts)?;
        write_leaf(&params, &ca, &broker_cert, &broker_key)?;
    }

    for node in nodes {
        let cert = out.join(format!("{node}.pem"));
        let key = out.join(format!("{node}.key"));
        if !pair_exists(&cert, &key)? {
            // CN only: rumqttd reads an Organization field as a tenant and renames the
            // client id, so client certificates must not carry one.
            let params = leaf_params(node, ExtendedKeyUsagePurpose::ClientAuth);
            write_leaf(&params, &ca, &cert, &key)?;
        }
    }

    let group_key = out.join(GROUP_KEY);
    if !group_key.exists() {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_new(&group_key, format!("{hex}\n").as_bytes(), 0o600)?;
        tracing::info!(path = %group_key.display(), "created group key");
    }
    Ok(())
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

fn load_or_create_ca(out: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
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
        return Ok(issuer);
    }

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
    set_validity(&mut params, CA_VALIDITY_DAYS);
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
    set_validity(&mut params, LEAF_VALIDITY_DAYS);
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

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little back-dating tolerates clocks that are slightly behind on other nodes.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
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
