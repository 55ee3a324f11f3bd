//! `mqsync certs renew`: re-issues existing broker, node or operator certificates from
//! the CA in the same directory, for the same key and the same names, with a new
//! validity. The CA and the group key are left alone, so nothing else changes.

use super::info::{self, CertInfo};
use super::{
    BROKER_CERT, BROKER_CN, BROKER_KEY, CertError, OPERATOR_CN, broker_sans, leaf_params, load_ca,
    pair_exists, read_cert, read_text, set_validity, validate_node_id,
};
use rcgen::{DnType, ExtendedKeyUsagePurpose, KeyPair};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What `renew` re-issues.
#[derive(Debug, Clone)]
pub struct RenewOptions<'a> {
    pub nodes: &'a [String],
    pub operators: &'a [String],
    /// Re-issue the broker certificate too.
    pub broker: bool,
    /// New host names for the broker certificate; `None` keeps the current ones.
    pub hosts: Option<&'a [String]>,
    /// Validity of the new certificates.
    pub days: i64,
}

/// One re-issued certificate: where, and what it said before and says now.
#[derive(Debug, Clone)]
pub struct Renewed {
    pub cert: PathBuf,
    pub old: CertInfo,
    pub new: CertInfo,
}

/// Re-issues each certificate `o` names from the CA in `out`, keeping its key (so a
/// node only needs the new `.pem`), its subject and, for the broker unless `hosts` is
/// given, its names. Each certificate is replaced atomically (written beside, then
/// renamed). Checks everything before writing anything.
pub fn renew(out: &Path, o: &RenewOptions<'_>) -> Result<Vec<Renewed>, CertError> {
    if o.nodes.is_empty() && o.operators.is_empty() && !o.broker {
        return Err(CertError::NothingToRenew);
    }
    if o.days < 1 {
        return Err(CertError::BadDays(o.days));
    }
    let ca = load_ca(out)?.ok_or_else(|| CertError::NoCa {
        dir: out.to_path_buf(),
    })?;
    let ca_info = read_cert(&out.join(super::CA_CERT))?;

    let mut todo = vec![];
    if o.broker {
        todo.push((out.join(BROKER_CERT), out.join(BROKER_KEY), true));
    }
    for name in o.nodes.iter().chain(o.operators) {
        validate_node_id(name)?;
        todo.push((
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.key")),
            false,
        ));
    }
    let mut plans = vec![];
    for (cert, key, is_broker) in todo {
        if !pair_exists(&cert, &key)? {
            return Err(CertError::NotIssued { path: cert });
        }
        let old = read_cert(&cert)?;
        let key_pair = KeyPair::from_pem(&read_text(&key)?).map_err(|e| CertError::BadCert {
            path: key.clone(),
            reason: format!("not a private key mqsync can use: {e}"),
        })?;
        let mut params = if is_broker {
            let mut p = leaf_params(BROKER_CN, ExtendedKeyUsagePurpose::ServerAuth);
            p.subject_alt_names = match o.hosts {
                Some(hosts) => broker_sans(hosts)?,
                None => broker_sans(&old.sans)?,
            };
            p
        } else {
            let cn = old.cn.clone().unwrap_or_default();
            let mut p = leaf_params(&cn, ExtendedKeyUsagePurpose::ClientAuth);
            if cn == OPERATOR_CN {
                if let Some(ou) = &old.ou {
                    p.distinguished_name
                        .push(DnType::OrganizationalUnitName, ou.as_str());
                }
            }
            p
        };
        set_validity(&mut params, o.days, ca_info.not_after);
        plans.push((cert, params, key_pair, old));
    }

    let mut done = vec![];
    for (cert, params, key_pair, old) in plans {
        let pem = params.signed_by(&key_pair, &ca)?.pem();
        replace(&cert, pem.as_bytes())?;
        tracing::info!(path = %cert.display(), "renewed certificate");
        let new = info::read_cert(&cert)?;
        done.push(Renewed { cert, old, new });
    }
    Ok(done)
}

/// Replaces `path` with `contents` (mode 0644) so that a reader sees the old or the new
/// file, never a part of one.
fn replace(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    let tmp = path.with_extension("pem.renew");
    let io = |action, path: &Path, source| CertError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    // A leftover from an interrupted renew is ours to replace.
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| io("create", &tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io("replace", path, e))
}

#[cfg(test)]
mod tests {
    use super::super::{InitOptions, init_with};
    use super::*;

    #[test]
    fn renew_keeps_key_names_and_ca_and_extends_validity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = vec!["broker".to_string(), "127.0.0.1".to_string()];
        init_with(
            dir.path(),
            &InitOptions {
                nodes: &["a".into()],
                hosts: Some(&hosts),
                operators: &["ops".into()],
                days: 3,
                group: None,
            },
        )
        .expect("init");
        let before = |f: &str| fs::read(dir.path().join(f)).expect("read");
        let (ca, key, group) = (before("ca.pem"), before("a.key"), before("group.key"));
        let renewed = renew(
            dir.path(),
            &RenewOptions {
                nodes: &["a".into()],
                operators: &["ops".into()],
                broker: true,
                hosts: None,
                days: 100,
            },
        )
        .expect("renew");
        assert_eq!(renewed.len(), 3);
        for r in &renewed {
            assert!(r.new.not_after > r.old.not_after + 90 * 86_400, "{r:?}");
            assert_eq!(
                (&r.new.cn, &r.new.ou, &r.new.sans),
                (&r.old.cn, &r.old.ou, &r.old.sans)
            );
        }
        assert_eq!(renewed[0].new.sans, hosts);
        assert_eq!(renewed[2].new.cn.as_deref(), Some(OPERATOR_CN));
        assert_eq!(renewed[2].new.ou.as_deref(), Some("ops"));
        assert_eq!(before("ca.pem"), ca);
        assert_eq!(before("a.key"), key);
        assert_eq!(before("group.key"), group);
        assert!(!dir.path().join("a.pem.renew").exists());
    }

    #[test]
    fn renew_refuses_what_was_never_issued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RenewOptions {
            nodes: &["a".into()],
            operators: &[],
            broker: false,
            hosts: None,
            days: 10,
        };
        assert!(matches!(
            renew(dir.path(), &opts),
            Err(CertError::NoCa { .. })
        ));
        super::super::init(dir.path(), &["b".into()], &["localhost".into()]).expect("init");
        let err = renew(dir.path(), &opts).expect_err("a was never issued");
        assert!(err.to_string().contains("a.pem"), "{err}");
    }
}
