//! The admin socket: a Unix socket (mode 0600) where the CLI asks the running service about
//! cursors. sled allows one process per database, so this is how the CLI reads a live store.
//!
//! Protocol: one JSON request per connection, one line (`{"cmd":"cursors","jid":"bob@localhost"}`),
//! answered by one JSON line: `{"ok":DATA}` or `{"error":"TEXT","status":2}`.

pub mod table;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::{Engine, EngineError};
use crate::service::Query;

/// The longest request line accepted; anything longer is junk.
const MAX_REQUEST: u64 = 64 * 1024;

/// How long a connection may take to send its request line.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Cursors {
        jid: String,
    },
    Unread {
        jid: String,
        device: String,
        limit: usize,
    },
    Log {
        jid: String,
        after: u64,
        limit: usize,
    },
    Forget {
        jid: String,
        device: String,
    },
    Stats,
    Conversations {
        jid: String,
    },
}

/// A failed request: the message and the exit status the CLI should use (2: the operator asked
/// for something wrong; 1: readtrack failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub error: String,
    pub status: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Ok { ok: Value },
    Err(Failure),
}

/// Where the answer came from, for `stats`.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    Service { started: Instant },
    StoppedStore,
}

/// Runs one request against an engine. Used inside the service and on a directly opened store.
pub fn execute(engine: &mut Engine, request: &Request, origin: Origin) -> Response {
    let result: Result<Value, EngineError> = (|| {
        Ok(match request {
            Request::Cursors { jid } => serde_json::to_value(engine.cursors(jid)?),
            Request::Conversations { jid } => serde_json::to_value(engine.conversations(jid)?),
            Request::Unread { jid, device, limit } => {
                serde_json::to_value(engine.unread(jid, device, *limit)?)
            }
            Request::Log { jid, after, limit } => {
                serde_json::to_value(engine.log(jid, *after, *limit)?)
            }
            Request::Forget { jid, device } => {
                let device = engine.forget(jid, device)?;
                Ok(serde_json::json!({ "user": jid, "device": device, "forgotten": true }))
            }
            Request::Stats => {
                let store_stats =
                    serde_json::to_value(engine.store_stats()?).expect("stats serialise");
                let (running, uptime) = match origin {
                    Origin::Service { started } => (true, Some(started.elapsed().as_secs())),
                    Origin::StoppedStore => (false, None),
                };
                // Liveness first, then the store's figures.
                let mut stats = serde_json::Map::new();
                stats.insert("service_running".into(), Value::Bool(running));
                stats.insert(
                    "uptime_secs".into(),
                    serde_json::to_value(uptime).expect("u64"),
                );
                if let Value::Object(fields) = store_stats {
                    stats.extend(fields);
                }
                Ok(Value::Object(stats))
            }
        }
        .expect("views serialise"))
    })();
    match result {
        Ok(ok) => Response::Ok { ok },
        Err(EngineError::Rejected(error)) => Response::Err(Failure { error, status: 2 }),
        Err(e) => Response::Err(Failure {
            error: e.to_string(),
            status: 1,
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("another readtrack is already serving the admin socket {0}")]
    InUse(PathBuf),
    #[error("admin socket path {0} is taken by something that is not a socket; move it away or set [admin] socket")]
    NotASocket(PathBuf),
    #[error("cannot create admin socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot reach the service at admin socket {path}: {source}")]
    Unreachable { path: PathBuf, source: io::Error },
    #[error("admin socket {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
}

/// The listening admin socket. Dropping it removes the socket file.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminSocket {
    /// Binds the socket. A socket file left by a crash (nobody answers) is replaced; one that
    /// answers belongs to a running readtrack and is left alone.
    pub async fn bind(path: &Path) -> Result<AdminSocket, AdminError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            // Only a socket is ours to replace: a typo in [admin] socket must not delete the
            // config or the store it points at.
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                return Err(AdminError::NotASocket(path.to_path_buf()));
            }
            if UnixStream::connect(path).await.is_ok() {
                return Err(AdminError::InUse(path.to_path_buf()));
            }
            tracing::info!(socket = %path.display(), "removing stale admin socket");
            std::fs::remove_file(path).map_err(|source| AdminError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let listener = UnixListener::bind(path).map_err(|source| AdminError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        // The process umask (set by `serve`) already makes it 0600; this holds even without it.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| AdminError::Bind {
                path: path.to_path_buf(),
                source,
            },
        )?;
        Ok(AdminSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Answers requests until shutdown. Each request runs inside the service loop (`queries`).
    pub async fn serve(
        self,
        queries: mpsc::Sender<Query>,
        started: Instant,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let queries = queries.clone();
                        tokio::spawn(async move {
                            if let Err(e) = answer(stream, queries, started).await {
                                tracing::debug!("admin connection: {e}");
                            }
                        });
                    }
                    Err(e) => tracing::warn!("admin socket accept: {e}"),
                },
            }
        }
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(
    stream: UnixStream,
    queries: mpsc::Sender<Query>,
    started: Instant,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    // Bytes, not a String: a line that is not UTF-8 gets a "malformed request" answer rather
    // than a silently closed connection. A peer that never finishes its line is dropped.
    let mut line = Vec::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(read.take(MAX_REQUEST)).read_until(b'\n', &mut line),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request line in time"))??;
    let response = match serde_json::from_slice::<Request>(line.trim_ascii()) {
        Err(e) => Response::Err(Failure {
            error: format!("malformed request: {e}"),
            status: 2,
        }),
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            let query: Query = Box::new(move |engine: &mut Engine, _now| {
                let _ = tx.send(execute(engine, &request, Origin::Service { started }));
            });
            if queries.send(query).await.is_err() {
                Response::Err(Failure {
                    error: "the service is shutting down".into(),
                    status: 1,
                })
            } else {
                rx.await.unwrap_or_else(|_| {
                    Response::Err(Failure {
                        error: "the service dropped the request".into(),
                        status: 1,
                    })
                })
            }
        }
    };
    let mut text = serde_json::to_string(&response).expect("response serialises");
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// Sends one request to the service. `Unreachable` means no service answers at `path`.
pub async fn request(path: &Path, request: &Request) -> Result<Response, AdminError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| AdminError::Unreachable {
            path: path.to_path_buf(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).expect("request serialises");
    text.push('\n');
    let protocol = |reason: String| AdminError::Protocol {
        path: path.to_path_buf(),
        reason,
    };
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| protocol(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(|e| protocol(e.to_string()))?;
    serde_json::from_str(line.trim()).map_err(|e| protocol(format!("unreadable answer: {e}")))
}
