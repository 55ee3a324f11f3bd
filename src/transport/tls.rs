//! TLS for the MQTT client: builds the rustls `ClientConfig` handed to rumqttc (roots from
//! our CA file only, optional client certificate) and tells connection errors that only
//! an operator can fix (refused certificates, unknown CA) from transient ones.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls;
use rumqttc::{ConnectReturnCode, ConnectionError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: cannot read: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {path}: no PEM certificate in it")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {path}: bad PEM certificate: {detail}")]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("CA file {path}: certificate not usable as a trust anchor: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("key file {path}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("cert_file and key_file must be given together (got only {given})")]
    HalfClientAuth { given: &'static str },
    #[error("client certificate {cert} and key {key} do not go together: {source}")]
    ClientAuth {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
}

/// A rustls client config that trusts only the certificates in `ca_file` (never the
/// system roots: the broker's certificate comes from the cluster's own CA) and presents
/// `cert_file`/`key_file` when both are given. TLS 1.2 and 1.3.
pub fn client_config(
    ca_file: &Path,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = read_roots(ca_file)?;

    // An explicit provider rather than the process default: `builder()` panics when more
    // than one provider feature ends up enabled in the dependency graph.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots);

    match (cert_file, key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => Err(TlsError::HalfClientAuth { given: "cert_file" }),
        (None, Some(_)) => Err(TlsError::HalfClientAuth { given: "key_file" }),
        (Some(cert), Some(key)) => {
            let chain = read_certs("certificate file", cert)?;
            let key_der = read_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|source| TlsError::ClientAuth {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                    source,
                })
        }
    }
}

/// A rustls server config for the embedded broker's TLS front: presents `cert_file`
/// and requires every client to present a certificate that chains to `ca_file`.
pub fn server_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    let roots = read_roots(ca_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Setup(rustls::Error::General(e.to_string())))?;
    let chain = read_certs("certificate file", cert_file)?;
    let key = read_key(key_file)?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::ClientAuth {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
            source,
        })
}

/// The common name of a DER certificate (the node id, for certificates made by
/// `mqsync certs init`), or `None` when it has none or does not parse.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The trust anchors in `ca_file`.
fn read_roots(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA file", ca_file)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: ca_file.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            what,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file("key file", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::BadKey {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Recognises connection errors that retrying will never fix (the broker refuses our
/// certificate, we do not trust the broker's, the broker refuses our identity) and
/// returns a message for the operator; `None` for anything that may be transient.
///
/// rumqttc wraps the same rustls error differently depending on when it surfaces:
/// `Tls(TLS(..))` during the handshake, `Io(..)` or
/// `MqttState(Deserialization(Io(..)))` when a TLS 1.3 server's alert arrives with the
/// first read. So this walks the whole source chain, looking inside `io::Error`s too,
/// and falls back to the Debug text.
pub fn describe_fatal(err: &ConnectionError) -> Option<String> {
    if let ConnectionError::ConnectionRefused(code) = err {
        return describe_refusal(*code);
    }
    if let ConnectionError::Tls(tls) = err {
        match tls {
            rumqttc::TlsError::DNSName(_) | rumqttc::TlsError::Addr(_) => {
                return Some(format!(
                    "broker host name is not valid for TLS ({tls}): check the broker URL"
                ));
            }
            rumqttc::TlsError::NoValidCertInChain
            | rumqttc::TlsError::NoValidClientCertInChain
            | rumqttc::TlsError::NoValidKeyInChain => {
                return Some(format!(
                    "TLS configuration is unusable ({tls}): check ca_file, cert_file and key_file"
                ));
            }
            _ => {}
        }
    }

    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(rustls_err) = e.downcast_ref::<rustls::Error>() {
            if let Some(msg) = describe_rustls(rustls_err) {
                return Some(msg);
            }
        }
        // io::Error::source() skips the wrapped error itself and returns *its* source,
        // so look at the wrapped error explicitly.
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            if let Some(inner) = io_err.get_ref() {
                if let Some(rustls_err) = inner.downcast_ref::<rustls::Error>() {
                    if let Some(msg) = describe_rustls(rustls_err) {
                        return Some(msg);
                    }
                }
            }
        }
        current = e.source();
    }
    describe_debug_text(&format!("{err:?}"))
}

fn describe_refusal(code: ConnectReturnCode) -> Option<String> {
    match code {
        ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => Some(format!(
            "broker refused the connection (ConnAck {code:?}): check the client \
                 certificate or credentials and the broker's ACL for this node id"
        )),
        ConnectReturnCode::RefusedProtocolVersion => Some(
            "broker refused the connection (ConnAck RefusedProtocolVersion): it does not \
             speak MQTT 3.1.1"
                .to_string(),
        ),
        ConnectReturnCode::BadClientId => Some(
            "broker refused the connection (ConnAck BadClientId): check node_id against \
             the broker's client id rules"
                .to_string(),
        ),
        // ServiceUnavailable is the broker's way of saying "try again later".
        ConnectReturnCode::ServiceUnavailable | ConnectReturnCode::Success => None,
    }
}

fn describe_rustls(err: &rustls::Error) -> Option<String> {
    match err {
        rustls::Error::AlertReceived(alert) => describe_alert(*alert),
        rustls::Error::InvalidCertificate(cert_err) => Some(describe_server_cert(cert_err)),
        rustls::Error::NoCertificatesPresented => Some(
            "broker presented no certificate: is the broker URL pointing at a TLS listener?"
                .to_string(),
        ),
        rustls::Error::PeerIncompatible(why) => Some(format!(
            "broker and mqsync share no TLS version or cipher suite ({why:?}): \
             mqsync needs TLS 1.2 or 1.3"
        )),
        _ => None,
    }
}

fn describe_alert(alert: AlertDescription) -> Option<String> {
    let ours = "check cert_file/key_file and that the broker trusts our CA";
    let msg = match alert {
        AlertDescription::CertificateRequired => format!(
            "broker refused our client certificate (TLS alert CertificateRequired): \
             the broker requires one; {ours}"
        ),
        AlertDescription::UnknownCA => format!(
            "broker refused our client certificate (TLS alert UnknownCA): \
             it was not issued by a CA the broker trusts; {ours}"
        ),
        AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::CertificateRevoked
        | AlertDescription::CertificateExpired
        | AlertDescription::AccessDenied
        // What a broker sends when our certificate names its CA but was signed by another
        // key (two different CAs with the same name).
        | AlertDescription::DecryptError => {
            format!("broker refused our client certificate (TLS alert {alert:?}): {ours}")
        }
        AlertDescription::HandshakeFailure
        | AlertDescription::ProtocolVersion
        | AlertDescription::InsufficientSecurity => format!(
            "broker refused the TLS handshake (TLS alert {alert:?}): no common TLS version, \
             cipher suite or certificate type; {ours}"
        ),
        _ => return None,
    };
    Some(msg)
}

fn describe_server_cert(err: &CertificateError) -> String {
    let hint = match err {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "it was not issued by the CA in ca_file; check ca_file"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "its names do not include the host in the broker URL; re-issue the broker \
             certificate with that host (certs init --hosts) or use a listed name"
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => {
            "it is outside its validity period; re-issue it or check the clock"
        }
        _ => "check the broker certificate and ca_file",
    };
    format!("broker certificate rejected ({err}): {hint}")
}

/// Last resort for wrappings this module does not know (a new rumqttc version may box
/// the rustls error differently): the Debug text still names the alert or error.
fn describe_debug_text(debug: &str) -> Option<String> {
    const ALERTS: &[(&str, AlertDescription)] = &[
        ("CertificateRequired", AlertDescription::CertificateRequired),
        ("UnknownCA", AlertDescription::UnknownCA),
        ("BadCertificate", AlertDescription::BadCertificate),
        ("CertificateUnknown", AlertDescription::CertificateUnknown),
        ("CertificateExpired", AlertDescription::CertificateExpired),
        ("CertificateRevoked", AlertDescription::CertificateRevoked),
        ("AccessDenied", AlertDescription::AccessDenied),
        ("DecryptError", AlertDescription::DecryptError),
    ];
    if debug.contains("AlertReceived(") {
        for (name, alert) in ALERTS {
            if debug.contains(&format!("AlertReceived({name})")) {
                return describe_alert(*alert);
            }
        }
    }
    const CERT_ERRORS: &[(&str, CertificateError)] = &[
        ("UnknownIssuer", CertificateError::UnknownIssuer),
        ("NotValidForName", CertificateError::NotValidForName),
        ("BadSignature", CertificateError::BadSignature),
        ("Expired", CertificateError::Expired),
    ];
    if debug.contains("InvalidCertificate(") {
        for (name, cert_err) in CERT_ERRORS {
            if debug.contains(&format!("InvalidCertificate({name}")) {
                return Some(describe_server_cert(cert_err));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_wrapped(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn alert_inside_state_error_is_fatal() {
        // The shape FIELD-NOTES observed for a refused client certificate.
        let err = ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::Io(io_wrapped(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired,
            ))),
        ));
        let msg = describe_fatal(&err).expect("fatal");
        assert!(msg.contains("CertificateRequired"), "{msg}");
        assert!(msg.contains("cert_file"), "{msg}");
    }

    #[test]
    fn alert_as_io_and_tls_variants_is_fatal() {
        let io = ConnectionError::Io(io_wrapped(rustls::Error::AlertReceived(
            AlertDescription::UnknownCA,
        )));
        assert!(describe_fatal(&io).expect("fatal").contains("UnknownCA"));

        let tls = ConnectionError::Tls(rumqttc::TlsError::TLS(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        assert!(describe_fatal(&tls).expect("fatal").contains("ca_file"));

        let tls_io = ConnectionError::Tls(rumqttc::TlsError::Io(io_wrapped(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        )));
        assert!(describe_fatal(&tls_io).expect("fatal").contains("--hosts"));
    }

    #[test]
    fn connack_refusals() {
        for code in [
            ConnectReturnCode::NotAuthorized,
            ConnectReturnCode::BadUserNamePassword,
        ] {
            let msg = describe_fatal(&ConnectionError::ConnectionRefused(code)).expect("fatal");
            assert!(msg.contains(&format!("{code:?}")), "{msg}");
        }
        assert!(
            describe_fatal(&ConnectionError::ConnectionRefused(
                ConnectReturnCode::ServiceUnavailable
            ))
            .is_none()
        );
    }

    #[test]
    fn transient_errors_are_not_fatal() {
        let refused = ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(describe_fatal(&refused).is_none());
        assert!(describe_fatal(&ConnectionError::NetworkTimeout).is_none());
        let other = ConnectionError::Io(io_wrapped(rustls::Error::AlertReceived(
            AlertDescription::CloseNotify,
        )));
        assert!(describe_fatal(&other).is_none());
    }

    #[test]
    fn debug_text_fallback() {
        let msg = describe_debug_text("Custom { error: AlertReceived(UnknownCA) }").expect("fatal");
        assert!(msg.contains("UnknownCA"));
        assert!(describe_debug_text("Os { code: 111 }").is_none());
    }

    #[test]
    fn client_config_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = client_config(&missing, None, None).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = client_config(&empty, None, None).expect_err("empty");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");

        crate::broker::certs::init(dir.path(), &["a".into(), "b".into()], &["localhost".into()])
            .expect("certs");
        let ca = dir.path().join("ca.pem");
        client_config(&ca, None, None).expect("roots only");
        client_config(
            &ca,
            Some(&dir.path().join("a.pem")),
            Some(&dir.path().join("a.key")),
        )
        .expect("mtls");

        let err = client_config(&ca, Some(&dir.path().join("a.pem")), None).expect_err("half");
        assert!(matches!(err, TlsError::HalfClientAuth { .. }), "{err}");

        let err = client_config(&ca, Some(&dir.path().join("a.pem")), Some(&ca))
            .expect_err("key file without a key");
        assert!(matches!(err, TlsError::BadKey { .. }), "{err}");

        let err = client_config(
            &ca,
            Some(&dir.path().join("a.pem")),
            Some(&dir.path().join("b.key")),
        )
        .expect_err("mismatch");
        assert!(matches!(err, TlsError::ClientAuth { .. }), "{err}");
    }
}
