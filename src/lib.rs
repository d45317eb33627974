//! readtrack: multi-device read tracking and delivery receipts for XMPP.
//!
//! # Layout
//! - [`jid`]: JIDs and device keys.
//! - [`time`]: instants as values; the clock is read only at the edges.
//! - [`stanza`]: sans-IO framing, parsing and writing of stanzas.
//! - [`store`]: the only user of sled: key layout, records, durability.
//! - [`engine`]: the rules (DESIGN.md section 3) as a state machine over the store.

pub mod component;
pub mod config;
pub mod engine;
pub mod jid;
pub mod stanza;
pub mod store;
pub mod time;
