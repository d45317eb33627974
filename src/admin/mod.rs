//! The admin socket: a Unix socket (mode 0600) where the CLI asks the running service about
//! cursors. sled allows one process per database, so this is how the CLI reads a live store.
//!
//! Protocol: one JSON request per connection, one line (`{"cmd":"cursors","jid":"bob@localhost"}`),
//! answered by one JSON line: `{"ok":DATA}` or `{"error":"TEXT","status":2}`.

pub mod table;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::component::{LinkCounters, LinkStats};
use crate::engine::{Engine, EngineError};
use crate::service::Query;
use crate::warnlimit;

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
    /// Deletes everything of a user (as when the server deletes the account).
    Purge {
        jid: String,
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
    /// The running service, with its link's counters at the time of the request.
    Service {
        started: Instant,
        link: LinkStats,
    },
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
            Request::Purge { jid } => {
                let (user, report) = engine.purge(jid)?;
                Ok(serde_json::json!({
                    "user": user,
                    "purged": true,
                    "messages": report.messages,
                    "devices": report.devices,
                    "timers": report.timers,
                }))
            }
            Request::Stats => {
                let store_stats =
                    serde_json::to_value(engine.store_stats()?).expect("stats serialise");
                let (running, uptime, link) = match origin {
                    Origin::Service { started, link } => {
                        (true, Some(started.elapsed().as_secs()), Some(link))
                    }
                    Origin::StoppedStore => (false, None, None),
                };
                // Liveness first, then the store's figures, then the live counters (null
                // when no service runs: there is nothing to count).
                let mut stats = serde_json::Map::new();
                stats.insert("service_running".into(), Value::Bool(running));
                stats.insert(
                    "uptime_secs".into(),
                    serde_json::to_value(uptime).expect("u64"),
                );
                if let Value::Object(fields) = store_stats {
                    stats.extend(fields);
                }
                stats.extend(live_stats(link));
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

/// `stanzas_skipped` (over the framer's limits, the link stayed up), `warnings_suppressed`
/// (log lines left out by the rate limit) and `warnings` (per kind: `seen`, `suppressed`).
fn live_stats(link: Option<LinkStats>) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    let Some(link) = link else {
        for key in ["stanzas_skipped", "warnings_suppressed", "warnings"] {
            out.insert(key.into(), Value::Null);
        }
        return out;
    };
    out.insert("stanzas_skipped".into(), link.stanzas_skipped.into());
    let counts = warnlimit::counts();
    let suppressed: u64 = counts.iter().map(|(_, c)| c.suppressed).sum();
    out.insert("warnings_suppressed".into(), suppressed.into());
    let kinds = counts
        .into_iter()
        .map(|(kind, c)| {
            (
                kind.name().to_string(),
                serde_json::json!({ "seen": c.seen, "suppressed": c.suppressed }),
            )
        })
        .collect();
    out.insert("warnings".into(), Value::Object(kinds));
    out
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("another readtrack is already serving the admin socket {0}")]
    InUse(PathBuf),
    #[error("admin socket path {0} exists and is not a socket; refusing to remove it")]
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
        // symlink_metadata: a link is judged as itself, never followed to what it names.
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                // A typo in [admin] socket, or someone else's file: removing it could destroy
                // data (the store, a config) that is not ours to remove.
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
        link: Arc<LinkCounters>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let queries = queries.clone();
                        let link = link.clone();
                        tokio::spawn(async move {
                            if let Err(e) = answer(stream, queries, started, link).await {
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
    link: Arc<LinkCounters>,
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
                let origin = Origin::Service {
                    started,
                    link: link.snapshot(),
                };
                let _ = tx.send(execute(engine, &request, origin));
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
