//! Keeps one component connection up: connect, forward, and on any loss reconnect with
//! backoff, until shutdown or an error that retrying cannot fix.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use super::link::{
    establish, read_stanzas, write_commands, Established, Peer, ReaderEnd, Stop, WriterDone,
    CLOSE_GRACE,
};
use super::{
    bump, Backoff, ComponentConfig, ComponentError, LinkCounters, LinkEvent, STREAM_CLOSE,
};

/// The reason given in the [`LinkEvent::Disconnected`] that follows a shutdown.
pub const SHUTDOWN_REASON: &str = "shutting down";

/// [`run_with_counters`] with counters nobody reads.
pub async fn run(
    config: ComponentConfig,
    events: mpsc::Sender<LinkEvent>,
    commands: mpsc::Receiver<String>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ComponentError> {
    run_with_counters(
        config,
        events,
        commands,
        shutdown,
        Arc::new(LinkCounters::default()),
    )
    .await
}

/// Runs the link until `shutdown` becomes true (or its sender is dropped: nobody could ever
/// stop us then) or the receiver of `events` is dropped; both return `Ok(())` after closing the
/// stream. Returns `Err` only for a fatal error ([`ComponentError::is_fatal`]): a refused
/// secret or an unknown component, which no number of retries will fix.
pub async fn run_with_counters(
    config: ComponentConfig,
    events: mpsc::Sender<LinkEvent>,
    mut commands: mpsc::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<LinkCounters>,
) -> Result<(), ComponentError> {
    let peer = Peer::of(&config);
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut commands_open = true;
    let mut first_attempt = true;
    loop {
        if shutdown_now(&shutdown) {
            return Ok(());
        }
        bump(&counters.attempts);
        if !first_attempt {
            bump(&counters.reconnects);
        }
        first_attempt = false;

        let attempt = {
            let establishing = establish(&config, &counters);
            tokio::pin!(establishing);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown_requested(&mut shutdown) => return Ok(()),
                    result = &mut establishing => break result,
                    command = commands.recv(), if commands_open => {
                        drop_command(command, &mut commands_open, &counters, &peer);
                    }
                }
            }
        };

        let failure = match attempt {
            Err(error) => error,
            Ok(mut established) => {
                bump(&counters.connections);
                tracing::info!(addr = %peer.addr, domain = %peer.domain, "connected to the XMPP server as a component");
                if !announce(&events, LinkEvent::Connected, &mut shutdown).await {
                    let _ = timeout(
                        CLOSE_GRACE,
                        established.write.write_all(STREAM_CLOSE.as_bytes()),
                    )
                    .await;
                    return Ok(());
                }
                let (returned, end) = session(
                    established,
                    commands,
                    &events,
                    &mut shutdown,
                    &config,
                    &peer,
                    &counters,
                )
                .await;
                commands = returned;
                match end {
                    SessionEnd::Finished => return Ok(()),
                    SessionEnd::Lost { error, stable } => {
                        bump(&counters.disconnects);
                        // Only a connection that lasted resets the delay: a server that accepts
                        // the handshake and then drops us at once must still be backed off from.
                        if stable {
                            backoff.reset();
                        }
                        let reason = error.to_string();
                        if !announce(&events, LinkEvent::Disconnected { reason }, &mut shutdown)
                            .await
                        {
                            return Ok(());
                        }
                        error
                    }
                }
            }
        };
        // `conflict` is retried on purpose: after a crash the server may still hold our old
        // session until it notices the dead socket, and backoff bounds the cost meanwhile.
        if failure.is_fatal() {
            tracing::error!(error = %failure, "giving up on the component connection");
            return Err(failure);
        }
        let delay = backoff.next_delay();
        tracing::warn!(error = %failure, retry_in = ?delay, "component connection lost or refused; will reconnect");
        let pause = sleep(delay);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => return Ok(()),
                _ = &mut pause => break,
                command = commands.recv(), if commands_open => {
                    drop_command(command, &mut commands_open, &counters, &peer);
                }
            }
        }
    }
}

enum SessionEnd {
    /// Shutdown, or nobody takes events: `run` returns.
    Finished,
    Lost {
        error: ComponentError,
        /// The connection stayed up for at least `backoff_max`.
        stable: bool,
    },
}

async fn session(
    established: Established,
    commands: mpsc::Receiver<String>,
    events: &mpsc::Sender<LinkEvent>,
    shutdown: &mut watch::Receiver<bool>,
    config: &ComponentConfig,
    peer: &Peer,
    counters: &Arc<LinkCounters>,
) -> (mpsc::Receiver<String>, SessionEnd) {
    let Established {
        frames,
        write,
        header,
    } = established;
    let (stop_tx, stop_rx) = oneshot::channel();
    let writer = tokio::spawn(write_commands(
        write,
        commands,
        stop_rx,
        config.keepalive,
        counters.clone(),
    ));
    let mut reader = tokio::spawn(read_stanzas(
        frames,
        header,
        events.clone(),
        peer.clone(),
        counters.clone(),
    ));
    let mut writer = writer;
    let stable_after = sleep(config.backoff_max.max(config.backoff_initial));
    tokio::pin!(stable_after);
    let mut stable = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown_requested(shutdown) => {
                let deadline = Instant::now() + CLOSE_GRACE;
                let _ = stop_tx.send(Stop::Close);
                let done = join(writer).await;
                // Waiting for the server's own close lets stanzas it sent before it still
                // reach the caller; the deadline keeps a silent server from holding us.
                if timeout_at(deadline, &mut reader).await.is_err() {
                    reader.abort();
                    let _ = reader.await;
                }
                let _ = timeout_at(
                    deadline,
                    events.send(LinkEvent::Disconnected { reason: SHUTDOWN_REASON.to_string() }),
                )
                .await;
                tracing::info!(addr = %peer.addr, domain = %peer.domain, "component connection closed for shutdown");
                return (done.commands, SessionEnd::Finished);
            }
            end = &mut reader => {
                let (mode, outcome) = match join_result(end) {
                    ReaderEnd::EventsClosed => (Stop::Close, SessionEnd::Finished),
                    ReaderEnd::Lost(error) => {
                        let mode = match error {
                            ComponentError::ConnectionLost { .. } | ComponentError::Io { .. } => Stop::Drop,
                            _ => Stop::Close,
                        };
                        (mode, SessionEnd::Lost { error, stable })
                    }
                };
                let _ = stop_tx.send(mode);
                let done = join(writer).await;
                return (done.commands, outcome);
            }
            done = &mut writer => {
                let done: WriterDone = join_result(done);
                // Awaiting the aborted reader guarantees no stanza of this connection can
                // follow the Disconnected event.
                reader.abort();
                let _ = reader.await;
                let error = match done.result {
                    Err(source) => ComponentError::Io {
                        addr: peer.addr.clone(),
                        domain: peer.domain.clone(),
                        source,
                    },
                    Ok(()) => ComponentError::ConnectionLost {
                        addr: peer.addr.clone(),
                        domain: peer.domain.clone(),
                    },
                };
                return (done.commands, SessionEnd::Lost { error, stable });
            }
            _ = &mut stable_after, if !stable => stable = true,
        }
    }
}

async fn join<T>(handle: JoinHandle<T>) -> T {
    join_result(handle.await)
}

/// Our tasks are never aborted while awaited here, so an error is a panic, passed on as one.
fn join_result<T>(result: Result<T, tokio::task::JoinError>) -> T {
    match result {
        Ok(value) => value,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => panic!("component link task cancelled: {err}"),
    }
}

/// Sends an event unless shutdown comes first: a caller that stopped taking events while
/// shutting us down must not leave us blocked on a full channel. False means stop.
async fn announce(
    events: &mpsc::Sender<LinkEvent>,
    event: LinkEvent,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        biased;
        sent = events.send(event) => sent.is_ok(),
        _ = shutdown_requested(shutdown) => false,
    }
}

fn shutdown_now(shutdown: &watch::Receiver<bool>) -> bool {
    shutdown.has_changed().is_err() || *shutdown.borrow()
}

/// Resolves once shutdown is asked for, or when its sender is gone.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn drop_command(
    command: Option<String>,
    commands_open: &mut bool,
    counters: &LinkCounters,
    peer: &Peer,
) {
    match command {
        Some(_) => {
            bump(&counters.dropped_commands);
            tracing::warn!(
                addr = %peer.addr,
                domain = %peer.domain,
                dropped_total = counters.snapshot().dropped_commands,
                "not connected to the XMPP server: command dropped (it is replayed after reconnecting)"
            );
        }
        None => *commands_open = false,
    }
}
