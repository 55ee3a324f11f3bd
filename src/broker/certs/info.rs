//! What a certificate on disk says about itself (common name, OU, names, expiry), for
//! `certs init` and `renew` to report, the daemon to check its `node_id` and expiry,
//! and the group a broker key is shared with.

use super::CertError;
use std::path::Path;
use x509_parser::extensions::GeneralName;

/// Seconds in a day, for days left.
const DAY_S: i64 = 86_400;

/// The parts of a certificate that mqsync reports or checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name (a node id, `mqsync-operator`, `mqsync broker`, the CA's).
    pub cn: Option<String>,
    /// Subject organizational unit: an operator certificate's operator name.
    pub ou: Option<String>,
    /// Subject alternative names (DNS names and IP addresses), in certificate order.
    pub sans: Vec<String>,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// Whole days from `now` (Unix seconds) until it expires: negative once expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(DAY_S)
    }

    /// The expiry date, `YYYY-MM-DD` (UTC).
    pub fn expiry_date(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.not_after)
            .map(|t| t.date().to_string())
            .unwrap_or_else(|_| self.not_after.to_string())
    }
}

/// Reads the first certificate of the PEM file at `path`.
pub fn read_cert(path: &Path) -> Result<CertInfo, CertError> {
    let bad = |reason: String| CertError::BadCert {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| CertError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let subject = cert.subject();
    let text = |a: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        a.and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let cn = text(subject.iter_common_name().next());
    let ou = text(subject.iter_organizational_unit().next());
    let mut sans = vec![];
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(d.to_string()),
                GeneralName::IPAddress(ip) => sans.push(ip_text(ip)),
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        cn,
        ou,
        sans,
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => format!("{bytes:02x?}"),
    }
}

/// Whether two lists of host names name the same set (order and case of DNS names do
/// not matter; IP addresses compare by value).
pub(super) fn same_names(a: &[String], b: &[String]) -> bool {
    let norm = |v: &[String]| -> std::collections::BTreeSet<String> {
        v.iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => ip.to_string(),
                Err(_) => h.to_ascii_lowercase(),
            })
            .collect()
    };
    norm(a) == norm(b)
}

/// The id of group `name` (or a number given as is).
pub(super) fn group_id(name: &str) -> Result<u32, CertError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let missing = || CertError::NoSuchGroup(name.to_string());
    let cname = std::ffi::CString::new(name).map_err(|_| missing())?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getgrnam_r writes only into `grp` and `buf` (whose length it is given)
    // and sets `result` to null or to `&grp`; neither outlives this call.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(missing());
    }
    Ok(grp.gr_gid)
}

/// Gives group `gid` read access to the private key at `path` (mode 0640): a broker
/// that drops to its own user (Mosquitto) cannot read a root-owned 0600 key.
pub fn chgrp_private(path: &Path, gid: u32) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |action, source| CertError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| io("change the group of", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640))
        .map_err(|e| io("change the mode of", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_as_sets() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(same_names(
            &v(&["localhost", "127.0.0.1"]),
            &v(&["127.0.0.1", "LOCALHOST"])
        ));
        assert!(!same_names(
            &v(&["localhost", "127.0.0.1"]),
            &v(&["broker", "localhost", "127.0.0.1"])
        ));
    }

    #[test]
    fn days_left_rounds_down_and_goes_negative() {
        let c = CertInfo {
            cn: None,
            ou: None,
            sans: vec![],
            not_after: 10 * DAY_S,
        };
        assert_eq!(c.days_left(0), 10);
        assert_eq!(c.days_left(1), 9);
        assert_eq!(c.days_left(10 * DAY_S + 1), -1);
        assert_eq!(c.expiry_date(), "1970-01-11");
    }

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(group_id("root").ok(), Some(0));
        assert_eq!(group_id("4242").ok(), Some(4242));
        assert!(matches!(
            group_id("no-such-group-here"),
            Err(CertError::NoSuchGroup(_))
        ));
    }
}
