//! Upgrades of stores written by an earlier readtrack, run by [`super::Store::open`] before
//! anything reads them. An upgrade writes the whole store into a fresh sled database beside it
//! (`<store>.upgrading`), marks that copy complete, then swaps the folders: the old store moves
//! to `<store>.schema-old`, the copy takes its name, and the old one is deleted. A crash before
//! the mark leaves the old store, and the next start runs the upgrade again (removing the
//! incomplete copy while it holds the old store's lock); one after it is finished by the next
//! start ([`finish_interrupted`]). Nothing is ever half upgraded.
//!
//! Since schema 2, device records changed shape (rewritten from the version found straight to
//! the current one) and the log's index moved to `userblock_index` (built from the log).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keys::Seq;
use super::records::{decode, encode, DeviceRecord, ReplayRange};
use super::{Result, StoreError};

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

/// Written into the fresh copy once it is complete and flushed.
const COMPLETE_MARK: &str = "readtrack-upgrade-complete";

/// `<store>.<suffix>`, beside the store's folder.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// Where an upgrade builds the new store.
pub(super) fn upgrading_path(path: &Path) -> PathBuf {
    sibling(path, "upgrading")
}

fn old_path(path: &Path) -> PathBuf {
    sibling(path, "schema-old")
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Write {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(path, e)),
        _ => Ok(()),
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| io_error(from, e))
}

/// Records durably that the copy at `fresh` is complete.
pub(super) fn mark_complete(fresh: &Path) -> Result<()> {
    use std::io::Write;
    let mark = fresh.join(COMPLETE_MARK);
    let mut f = std::fs::File::create(&mark).map_err(|e| io_error(&mark, e))?;
    f.write_all(format!("{}\n", super::SCHEMA_VERSION).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error(&mark, e))
}

/// Puts the complete copy at `fresh` in the place of the store at `path`.
pub(super) fn swap_in(path: &Path, fresh: &Path) -> Result<()> {
    let old = old_path(path);
    remove_dir(&old)?;
    rename(path, &old)?;
    rename(fresh, path)?;
    let _ = std::fs::remove_file(path.join(COMPLETE_MARK));
    remove_dir(&old)?;
    tracing::info!(path = %path.display(), "upgraded store in place; the old one is deleted");
    Ok(())
}

/// Before opening: finishes an upgrade a crash interrupted after its copy was complete, and
/// removes the old store an interrupted one left once it was replaced.
pub(super) fn finish_interrupted(path: &Path) -> Result<()> {
    let fresh = upgrading_path(path);
    let old = old_path(path);
    // An incomplete copy is left alone here: another process may be writing it right now. It
    // is removed under the store's lock, by the upgrade that runs again or by the open that
    // finds the store current.
    if fresh.join(COMPLETE_MARK).exists() {
        tracing::warn!(path = %path.display(), "finishing a store upgrade a crash interrupted");
        if path.exists() {
            swap_in(path, &fresh)?;
        } else {
            rename(&fresh, path)?;
        }
    }
    if old.exists() {
        if path.exists() {
            remove_dir(&old)?;
        } else {
            // Not a state an upgrade leaves; give the old store its name back rather than lose it.
            tracing::warn!(path = %path.display(), "restoring the store an upgrade had moved aside");
            rename(&old, path)?;
        }
    }
    let _ = std::fs::remove_file(path.join(COMPLETE_MARK));
    Ok(())
}
