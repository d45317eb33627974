//! Helpers shared by the end-to-end benches (`load.rs`, and any bench that drives a real Prosody):
//! a raw-socket XMPP client whose hot path parses no XML ([`rawclient`]), readings of the
//! CPU time and memory of the processes under test ([`procstat`]), and scratch databases on the
//! bench's PostgreSQL server ([`pgscratch`], which `core.rs` includes on its own).
//!
//! Include with `#[path = "common/mod.rs"] mod bench_common;`. Nothing here depends on the test
//! harness (`tests/common`), so a bench may use either or both.

#![allow(dead_code)] // each bench uses a different part

pub mod pgscratch;
pub mod procstat;
pub mod rawclient;
