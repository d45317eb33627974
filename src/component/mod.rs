//! The only network I/O of readtrack: an XEP-0114 component connection to the XMPP server,
//! kept up by a supervisor that reconnects with backoff.
//!
//! This module knows nothing of the engine. It hands every stanza the server sends to the
//! caller as a [`LinkEvent::Stanza`] and writes every string the caller sends, verbatim, while
//! connected. Invariants:
//! - the secret leaves this process only inside the handshake digest; [`Secret`] prints `***`;
//! - a [`LinkEvent::Stanza`] is always one complete top-level stanza, never a fragment of one;
//! - every [`LinkEvent::Connected`] is followed by exactly one [`LinkEvent::Disconnected`]
//!   (unless the receiver of events is gone), and stanzas of one connection come between them;
//! - commands are written only while connected; the rest are dropped and counted, because the
//!   caller replays from its own state after the next `Connected`.

mod backoff;
mod error;
mod handshake;
mod link;
mod probe;
mod supervisor;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use backoff::Backoff;
pub use error::ComponentError;
pub use handshake::{handshake_digest, stream_header, STREAM_CLOSE};
pub use probe::probe;
pub use supervisor::{run, run_with_counters, SHUTDOWN_REASON};

use crate::stanza::Limits;

/// The component's shared secret. Debug and Display print `***` so that it cannot end up in a
/// log line or an error by accident; [`Secret::expose`] is for the handshake digest only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Secret {
        Secret(secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone)]
pub struct ComponentConfig {
    /// `host:port` of the server's component port, e.g. `127.0.0.1:5347`.
    pub addr: String,
    /// The component's JID, e.g. `readtrack.localhost`.
    pub domain: String,
    pub secret: Secret,
    /// Applied to everything the server sends, the stream header included.
    pub limits: Limits,
    /// First reconnect delay; each failure doubles it, each delay is jittered by ±20%.
    pub backoff_initial: Duration,
    /// Cap of the reconnect delay. A connection that stays up this long counts as healthy and
    /// resets the delay to `backoff_initial`.
    pub backoff_max: Duration,
    /// Bounds the TCP connect and the whole handshake together.
    pub connect_timeout: Duration,
    /// A single space is written after this long without writing, so NATs and the server's
    /// idle timeout keep the connection. `None` disables it.
    pub keepalive: Option<Duration>,
    /// Connect to an address that is not loopback (config `[xmpp] allow_remote_connect`).
    pub allow_remote: bool,
}

impl ComponentConfig {
    /// Defaults for everything but where to connect and as whom.
    pub fn new(addr: impl Into<String>, domain: impl Into<String>, secret: Secret) -> Self {
        ComponentConfig {
            addr: addr.into(),
            domain: domain.into(),
            secret,
            limits: Limits::default(),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            keepalive: Some(Duration::from_secs(60)),
            allow_remote: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The handshake succeeded; commands are written from now on.
    Connected,
    /// One complete top-level stanza from the server, as sent.
    Stanza(String),
    /// The connection ended; `reason` is the text of the [`ComponentError`] that ended it, or
    /// `shutting down`.
    Disconnected { reason: String },
}

/// Counters of one link, shared with whoever reports them (`readtrack stats`).
#[derive(Debug, Default)]
pub struct LinkCounters {
    attempts: AtomicU64,
    connections: AtomicU64,
    reconnects: AtomicU64,
    disconnects: AtomicU64,
    stanzas_in: AtomicU64,
    stanzas_out: AtomicU64,
    framing_errors: AtomicU64,
    stanzas_skipped: AtomicU64,
    dropped_commands: AtomicU64,
    keepalives: AtomicU64,
}

/// A copy of [`LinkCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// TCP connects started.
    pub attempts: u64,
    /// Handshakes that succeeded.
    pub connections: u64,
    /// Attempts that followed a failed attempt or a lost connection.
    pub reconnects: u64,
    /// Established connections that ended other than by shutdown.
    pub disconnects: u64,
    pub stanzas_in: u64,
    /// Commands written completely to the socket.
    pub stanzas_out: u64,
    pub framing_errors: u64,
    /// Stanzas over the size or depth limit, skipped while the stream went on.
    pub stanzas_skipped: u64,
    /// Commands that arrived while disconnected, or whose write failed.
    pub dropped_commands: u64,
    pub keepalives: u64,
}

impl LinkCounters {
    pub fn snapshot(&self) -> LinkStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LinkStats {
            attempts: get(&self.attempts),
            connections: get(&self.connections),
            reconnects: get(&self.reconnects),
            disconnects: get(&self.disconnects),
            stanzas_in: get(&self.stanzas_in),
            stanzas_out: get(&self.stanzas_out),
            framing_errors: get(&self.framing_errors),
            stanzas_skipped: get(&self.stanzas_skipped),
            dropped_commands: get(&self.dropped_commands),
            keepalives: get(&self.keepalives),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.expose(), "hunter2");
        let config = ComponentConfig::new("127.0.0.1:5347", "readtrack.localhost", secret);
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("secret: ***"), "{printed}");
    }
}
