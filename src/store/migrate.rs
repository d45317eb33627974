//! Upgrades of stores written by an earlier readtrack, run by [`super::Store::open`] before
//! anything reads them. Each upgrade is one store call plus a flush, so it is all or nothing:
//! a crash during it leaves the old version, and the next start runs it again.
//!
//! Only device records changed shape since schema 2, so an upgrade rewrites each of them from
//! the version found straight to the current one.

use serde::{Deserialize, Serialize};

use super::keys::Seq;
use super::records::{decode, encode, DeviceRecord, ReplayRange};
use super::Result;

/// Versions [`super::Store::open`] can upgrade from.
pub(super) const UPGRADABLE: &[u32] = &[2, 3];

/// `userdevice_cursor` as schema 2 stored it (before `replayed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DeviceRecordV2 {
    pub key: String,
    pub resource: String,
    pub acked_upto: Seq,
    pub acked_above: Vec<Seq>,
    pub session: u64,
    pub online: bool,
    pub first_seen: u64,
    pub last_seen: u64,
}

/// `userdevice_cursor` as schema 3 stored it (before `session_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DeviceRecordV3 {
    pub key: String,
    pub resource: String,
    pub acked_upto: Seq,
    pub acked_above: Vec<Seq>,
    pub session: u64,
    pub online: bool,
    pub first_seen: u64,
    pub last_seen: u64,
    pub replayed: ReplayRange,
}

/// A device record of schema `from` in the current shape. Schema 2 devices gain an empty replay
/// range (their replayed messages still have the delivery records schema 2 wrote, which later
/// schemas read the same way); devices of schema 2 and 3 gain no session id, so the first
/// snapshot after the upgrade treats their sessions as new and replays what they have not acked.
pub(super) fn device_from(from: u32, bytes: &[u8]) -> Result<Vec<u8>> {
    let v3 = match from {
        2 => {
            let old: DeviceRecordV2 = decode("userdevice_cursor", bytes)?;
            DeviceRecordV3 {
                key: old.key,
                resource: old.resource,
                acked_upto: old.acked_upto,
                acked_above: old.acked_above,
                session: old.session,
                online: old.online,
                first_seen: old.first_seen,
                last_seen: old.last_seen,
                replayed: ReplayRange::default(),
            }
        }
        _ => decode("userdevice_cursor", bytes)?,
    };
    encode(&DeviceRecord {
        key: v3.key,
        resource: v3.resource,
        acked_upto: v3.acked_upto,
        acked_above: v3.acked_above,
        session: v3.session,
        online: v3.online,
        first_seen: v3.first_seen,
        last_seen: v3.last_seen,
        replayed: v3.replayed,
        session_id: None,
    })
}
