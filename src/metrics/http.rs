//! The metrics endpoint: HTTP/1.1 over TCP with hyper, `GET /metrics` only. The only network I/O
//! of [`crate::metrics`]. A scrape asks the service task for the store's figures (bounded by
//! [`STORE_WAIT`], at most once per [`STORE_REFRESH`] however often it is scraped), then encodes.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Mutex, Semaphore};

use super::{encode, Snapshot};
use crate::engine::query::StoreStats;
use crate::engine::Engine;
use crate::service::{Query, ServiceStats};

/// How long a scrape waits for the service task's figures before it answers without them.
pub const STORE_WAIT: Duration = Duration::from_secs(2);
/// Store figures younger than this are reused: counting devices and timers scans their trees,
/// which a scraper polling in a loop must not turn into a load on the service task.
pub const STORE_REFRESH: Duration = Duration::from_secs(1);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// Where a scrape's numbers come from.
pub struct Source {
    stats: Arc<ServiceStats>,
    queries: mpsc::Sender<Query>,
    started: Instant,
    /// The last store figures and when they were read; the lock also makes concurrent
    /// scrapes share one question to the service task.
    store: Mutex<Option<(Instant, StoreStats)>>,
}

impl Source {
    pub fn new(stats: Arc<ServiceStats>, queries: mpsc::Sender<Query>, started: Instant) -> Self {
        Source {
            stats,
            queries,
            started,
            store: Mutex::new(None),
        }
    }

    async fn snapshot(&self) -> Snapshot {
        let store = {
            let mut last = self.store.lock().await;
            match &*last {
                Some((at, stats)) if at.elapsed() < STORE_REFRESH => Some(stats.clone()),
                _ => match self.ask_store().await {
                    Some(stats) => {
                        *last = Some((Instant::now(), stats.clone()));
                        Some(stats)
                    }
                    None => None,
                },
            }
        };
        Snapshot::of(&self.stats, store, self.started.elapsed())
    }

    async fn ask_store(&self) -> Option<StoreStats> {
        let (tx, rx) = oneshot::channel();
        let query: Query = Box::new(move |engine: &mut Engine, _now| {
            let _ = tx.send(engine.store_stats());
        });
        self.queries.send(query).await.ok()?;
        match tokio::time::timeout(STORE_WAIT, rx).await {
            Ok(Ok(Ok(stats))) => Some(stats),
            Ok(Ok(Err(e))) => {
                tracing::warn!("metrics: cannot read the store's figures: {e}");
                None
            }
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::warn!(
                    "metrics: the service did not answer within {STORE_WAIT:?}; scrape served without the store's figures"
                );
                None
            }
        }
    }
}

/// The bound listening socket.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes until shutdown.
    pub async fn serve(self, source: Source, mut shutdown: watch::Receiver<bool>) {
        let source = Arc::new(source);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            // A slot first: past the limit, connections wait in the backlog, not in memory.
            let slot = tokio::select! {
                _ = shutdown.changed() => break,
                slot = slots.clone().acquire_owned() => slot.expect("semaphore never closed"),
            };
            let stream = tokio::select! {
                _ = shutdown.changed() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("metrics accept: {e}");
                        continue;
                    }
                },
            };
            let source = source.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let source = source.clone();
                    async move { Ok::<_, Infallible>(respond(&request, &source).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!("metrics connection: {e}");
                }
                drop(slot);
            });
        }
    }
}

async fn respond(request: &Request<Incoming>, source: &Source) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; the metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let text = encode(source.snapshot().await);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
