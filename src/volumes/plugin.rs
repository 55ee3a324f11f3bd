//! The Docker volume plugin API: JSON over HTTP/1.1 on a unix socket, as the engine
//! speaks it to `/run/docker/plugins/NAME.sock`. This layer only turns requests into
//! [`Call`]s for the volume manager and its answers into the protocol's JSON; every
//! error, malformed requests included, is answered as `{"Err": "..."}`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};

/// Largest request body; the engine's are well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;
/// Media type of the plugin protocol.
const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// One request of the engine, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Activate,
    Capabilities,
    Create {
        name: String,
        opts: BTreeMap<String, String>,
    },
    Remove {
        name: String,
    },
    Mount {
        name: String,
        id: String,
    },
    Unmount {
        name: String,
        id: String,
    },
    Path {
        name: String,
    },
    Get {
        name: String,
    },
    List,
}

/// A request on its way to the manager, with where its answer goes: the response's
/// JSON members, or the error text for `Err`.
pub type Call = (Request, oneshot::Sender<Result<Value, String>>);

/// Why a request could not even be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub status: StatusCode,
    pub message: String,
}

fn bad(status: StatusCode, message: impl Into<String>) -> BadRequest {
    BadRequest {
        status,
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct NameBody {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct MountBody {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

fn body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, BadRequest> {
    serde_json::from_slice(bytes).map_err(|e| {
        bad(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {e}"),
        )
    })
}

/// Parses one request from its method, path and body.
pub fn parse(method: &Method, path: &str, bytes: &[u8]) -> Result<Request, BadRequest> {
    if method != Method::POST {
        return Err(bad(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path}: the plugin API takes POST"),
        ));
    }
    Ok(match path {
        "/Plugin.Activate" => Request::Activate,
        "/VolumeDriver.Capabilities" => Request::Capabilities,
        "/VolumeDriver.List" => Request::List,
        "/VolumeDriver.Create" => {
            let b: CreateBody = body(bytes)?;
            Request::Create {
                name: b.name,
                opts: b.opts.unwrap_or_default(),
            }
        }
        "/VolumeDriver.Remove" => Request::Remove {
            name: body::<NameBody>(bytes)?.name,
        },
        "/VolumeDriver.Path" => Request::Path {
            name: body::<NameBody>(bytes)?.name,
        },
        "/VolumeDriver.Get" => Request::Get {
            name: body::<NameBody>(bytes)?.name,
        },
        "/VolumeDriver.Mount" | "/VolumeDriver.Unmount" => {
            let b: MountBody = body(bytes)?;
            if b.id.is_empty() || b.id.len() > 256 {
                return Err(bad(
                    StatusCode::BAD_REQUEST,
                    "ID must be 1 to 256 characters (the engine's mount id)",
                ));
            }
            if path == "/VolumeDriver.Mount" {
                Request::Mount {
                    name: b.name,
                    id: b.id,
                }
            } else {
                Request::Unmount {
                    name: b.name,
                    id: b.id,
                }
            }
        }
        other => {
            return Err(bad(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown endpoint {:?}",
                    other.chars().take(100).collect::<String>()
                ),
            ));
        }
    })
}

/// Binds the plugin socket: makes its directory, replaces a stale socket file left by
/// a crash, and refuses to take over a socket another process still serves.
pub fn bind(path: &Path) -> Result<UnixListener, super::VolumeServiceError> {
    let err = |source: std::io::Error| super::VolumeServiceError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process serves this socket",
                )));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    // Only root (the engine) and the socket's group may call the plugin.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Serves the plugin API on `listener` until `shutdown`, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    socket: PathBuf,
    calls: mpsc::Sender<Call>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("plugin socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, calls.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!("plugin connection: {e}");
            }
            drop(permit);
        });
    }
    let _ = std::fs::remove_file(&socket);
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(MEDIA_TYPE),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, &json!({ "Err": message }))
}

async fn handle(
    req: hyper::Request<Incoming>,
    calls: mpsc::Sender<Call>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let (status, what) = if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over {MAX_BODY_BYTES} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("reading request body: {e}"),
                )
            };
            warn!(%path, "plugin request refused: {what}");
            return Ok(error(status, &what));
        }
    };
    let request = match parse(&method, &path, &bytes) {
        Ok(r) => r,
        Err(b) => {
            warn!(%path, "plugin request refused: {}", b.message);
            return Ok(error(b.status, &b.message));
        }
    };
    debug!(?request, "plugin request");
    let (tx, rx) = oneshot::channel();
    if calls.send((request, tx)).await.is_err() {
        return Ok(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "mqsync is shutting down",
        ));
    }
    Ok(match rx.await {
        Ok(Ok(mut v)) => {
            // Every VolumeDriver answer carries Err; empty means success.
            if path.starts_with("/VolumeDriver.") && path != "/VolumeDriver.Capabilities" {
                if let Value::Object(m) = &mut v {
                    m.insert("Err".into(), Value::String(String::new()));
                }
            }
            reply(StatusCode::OK, &v)
        }
        Ok(Err(message)) => {
            // The engine asks Get/Path for names it does not know as a lookup.
            if matches!(path.as_str(), "/VolumeDriver.Get" | "/VolumeDriver.Path") {
                debug!(%path, "plugin request failed: {message}");
            } else {
                warn!(%path, "plugin request failed: {message}");
            }
            error(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "mqsync is shutting down"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_endpoint() {
        let p = |path: &str, body: &str| parse(&Method::POST, path, body.as_bytes());
        assert_eq!(p("/Plugin.Activate", ""), Ok(Request::Activate));
        assert_eq!(
            p("/VolumeDriver.Capabilities", "{}"),
            Ok(Request::Capabilities)
        );
        assert_eq!(p("/VolumeDriver.List", "{}"), Ok(Request::List));
        assert_eq!(
            p(
                "/VolumeDriver.Create",
                r#"{"Name":"demo","Opts":{"mode":"receive-only"}}"#
            ),
            Ok(Request::Create {
                name: "demo".into(),
                opts: [("mode".to_string(), "receive-only".to_string())].into()
            })
        );
        assert_eq!(
            p("/VolumeDriver.Create", r#"{"Name":"demo","Opts":null}"#),
            Ok(Request::Create {
                name: "demo".into(),
                opts: BTreeMap::new()
            })
        );
        assert_eq!(
            p("/VolumeDriver.Mount", r#"{"Name":"demo","ID":"abc"}"#),
            Ok(Request::Mount {
                name: "demo".into(),
                id: "abc".into()
            })
        );
        assert_eq!(
            p("/VolumeDriver.Unmount", r#"{"Name":"demo","ID":"abc"}"#),
            Ok(Request::Unmount {
                name: "demo".into(),
                id: "abc".into()
            })
        );
        for path in [
            "/VolumeDriver.Remove",
            "/VolumeDriver.Path",
            "/VolumeDriver.Get",
        ] {
            assert!(p(path, r#"{"Name":"demo"}"#).is_ok(), "{path}");
        }
    }

    #[test]
    fn refuses_malformed_requests() {
        let p = |path: &str, body: &str| parse(&Method::POST, path, body.as_bytes());
        assert_eq!(
            p("/VolumeDriver.Create", "{").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            p("/VolumeDriver.Create", "{}").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            p("/VolumeDriver.Create", r#"{"Name":5}"#)
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            p("/VolumeDriver.Create", r#"{"Name":"a","Opts":{"x":1}}"#)
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            p("/VolumeDriver.Mount", r#"{"Name":"demo"}"#)
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(p("/Nope", "{}").unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(
            parse(&Method::GET, "/Plugin.Activate", b"")
                .unwrap_err()
                .status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
