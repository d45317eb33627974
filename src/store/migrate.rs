//! Upgrades of stores written by an earlier readtrack, run by [`super::Store::open`] before
//! anything reads them. Each upgrade is one store call plus a flush, so it is all or nothing:
//! a crash during it leaves the old version, and the next start runs it again.

use serde::{Deserialize, Serialize};

use super::keys::Seq;
use super::records::{decode, encode, DeviceRecord, ReplayRange};
use super::Result;

/// Versions [`super::Store::open`] can upgrade from.
pub(super) const UPGRADABLE: &[u32] = &[2];

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

/// Schema 2 → 3: devices gain an empty replay range (their replayed messages still have the
/// delivery records schema 2 wrote, which schema 3 reads the same way).
pub(super) fn device_2_to_3(bytes: &[u8]) -> Result<Vec<u8>> {
    let old: DeviceRecordV2 = decode("userdevice_cursor", bytes)?;
    encode(&DeviceRecord {
        key: old.key,
        resource: old.resource,
        acked_upto: old.acked_upto,
        acked_above: old.acked_above,
        session: old.session,
        online: old.online,
        first_seen: old.first_seen,
        last_seen: old.last_seen,
        replayed: ReplayRange::default(),
    })
}
