//! readtrack: multi-device read tracking and delivery receipts for XMPP.
//!
//! # Layout
//! - [`jid`]: JIDs and device keys.
//! - [`time`]: instants as values; the clock is read only at the edges.
//! - [`stanza`]: sans-IO framing, parsing and writing of stanzas.
//! - [`hooks`]: the vocabulary between the server module and readtrack (events, commands),
//!   sans-IO like `stanza`.
//! - [`store`]: the only user of sled and PostgreSQL: the typed store over a backend trait, key
//!   layout, records, durability.
//! - [`engine`]: the rules (`docs/rules.md`) as a state machine over the store.
//! - [`component`]: the XEP-0114 connection to the server: handshake, reconnect, shutdown.
//! - [`service`]: the `serve` loop: link events in, engine, group commit, commands out.
//! - [`admin`]: the admin socket (server, client) and the CLI's tables.
//! - [`config`]: the `readtrack.toml` settings.
//! - [`check`]: `readtrack check`, the pre-flight verdicts on config, store, socket and server.
//! - [`memory`]: process-wide memory settings (transparent huge pages).
//! - [`warnlimit`]: rate limiting, with counts, of the warnings a peer can trigger.
//! - [`metrics`]: the OpenMetrics endpoint (`GET /metrics`) and its encoding.
//! - `alloc`: the global allocator of the binary and the benches (mimalloc, the default feature).

pub mod admin;
#[cfg(feature = "mimalloc")]
pub mod alloc;
pub mod check;
pub mod component;
pub mod config;
pub mod engine;
pub mod hooks;
pub mod jid;
pub mod memory;
pub mod metrics;
pub mod service;
pub mod stanza;
pub mod store;
pub mod time;
pub mod warnlimit;
