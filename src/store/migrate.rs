//! Upgrades of stores written by an earlier readtrack, run by [`super::Store::open`] before
//! anything reads them. An upgrade writes the whole store into a fresh sled database beside it
//! (`<store>.upgrading`), marks that copy complete, then swaps the folders: the old store moves
//! to `<store>.schema-old`, the copy takes its name, and the old one is deleted. A crash before
//! the mark leaves the old store, and the next start runs the upgrade again (removing the
//! incomplete copy while it holds the old store's lock); one after it is finished by the next
//! start ([`finish_interrupted`]). Nothing is ever half upgraded.
//!
//! Since schema 2, device records changed shape (rewritten from the version found straight to
//! the current one), the log's index moved to `userblock_index` (built from the log), and the
//! log keeps each message as its stanza (schema 5; older entries are written as the stanza
//! their replay used to be built as).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keys::Seq;
use super::records::{
    decode, encode, Counters, DeviceRecord, MessageRecord, ReceiptState, ReplayRange, UserRecord,
};
use super::*;
use super::{Result, StoreError};

/// Versions [`super::Store::open`] can upgrade from.
pub(super) const UPGRADABLE: &[u32] = &[2, 3, 4];

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

/// `userdevice_cursor` as schema 4 stored it (before `speaks_seed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DeviceRecordV4 {
    pub key: String,
    pub resource: String,
    pub acked_upto: Seq,
    pub acked_above: Vec<Seq>,
    pub session: u64,
    pub online: bool,
    pub first_seen: u64,
    pub last_seen: u64,
    pub replayed: ReplayRange,
    pub session_id: Option<String>,
}

/// `userseq_message` as schemas 2 to 4 stored it: typed fields, body and thread only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MessageRecordV4 {
    pub seq: Seq,
    pub stanza_id: u128,
    pub msg_id: Option<String>,
    pub from: String,
    pub kind: Option<String>,
    pub body: Option<String>,
    pub thread: Option<String>,
    pub logged_at: u64,
    pub system: bool,
    pub receipt: ReceiptState,
    pub archive_id: Option<String>,
    pub sent: bool,
    pub to: Option<String>,
}

/// Escapes text for a double-quoted attribute value or character data. Old records hold only
/// what readtrack's parser accepted, so every char is one XML may carry; `\r`, tab and line
/// ends become references so the stanza reads back exactly.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// The stanza an old record's replay was built as: the typed fields it kept, in the stored form
/// of schema 5 (`xmlns="jabber:client"`, no `to` for a received message).
pub(super) fn stanza_of(old: &MessageRecordV4) -> String {
    let mut out = String::from("<message xmlns=\"jabber:client\"");
    let attrs = [
        ("id", old.msg_id.as_deref()),
        ("type", old.kind.as_deref()),
        ("from", Some(old.from.as_str())),
        ("to", old.to.as_deref().filter(|_| old.sent)),
    ];
    for (name, value) in attrs {
        if let Some(value) = value {
            out.push(' ');
            out.push_str(name);
            out.push_str("=\"");
            escape_into(&mut out, value);
            out.push('"');
        }
    }
    out.push('>');
    for (name, text) in [("body", &old.body), ("thread", &old.thread)] {
        if let Some(text) = text {
            out.push('<');
            out.push_str(name);
            out.push('>');
            escape_into(&mut out, text);
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
    out.push_str("</message>");
    out
}

/// `userid_user` as schemas 2 to 4 stored it (before `account`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UserRecordV4 {
    pub jid: String,
    pub head: Seq,
    pub first_seq: Seq,
    pub next_device: super::keys::DeviceNo,
}

/// A user record of schema `from` as the current one; no account token is known yet (the
/// first one the server names is adopted).
pub(super) fn user_from(from: u32, bytes: &[u8]) -> Result<UserRecord> {
    if from >= 5 {
        return decode("userid_user", bytes);
    }
    let old: UserRecordV4 = decode("userid_user", bytes)?;
    Ok(UserRecord {
        jid: old.jid,
        head: old.head,
        first_seq: old.first_seq,
        next_device: old.next_device,
        account: None,
        // Summed from the log while the upgrade copies it (`Store::upgrade_into`).
        log_bytes: 0,
    })
}

/// `meta` counters as schemas 2 to 4 stored them (before `given_back`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CountersV4 {
    pub messages_logged: u64,
    pub replays: u64,
    pub bounces: u64,
    pub receipts_accepted: u64,
    pub receipts_duplicate: u64,
    pub receipts_rejected: u64,
    pub messages_deleted: u64,
    pub devices_expired: u64,
    pub replays_truncated: u64,
    pub timers_refused: u64,
}

/// The counters of schema `from` in the current shape.
pub(super) fn counters_from(from: u32, bytes: &[u8]) -> Result<Vec<u8>> {
    if from >= 5 {
        return Ok(bytes.to_vec());
    }
    let old: CountersV4 = decode("meta", bytes)?;
    encode(&Counters {
        messages_logged: old.messages_logged,
        replays: old.replays,
        bounces: old.bounces,
        receipts_accepted: old.receipts_accepted,
        receipts_duplicate: old.receipts_duplicate,
        receipts_rejected: old.receipts_rejected,
        messages_deleted: old.messages_deleted,
        devices_expired: old.devices_expired,
        replays_truncated: old.replays_truncated,
        timers_refused: old.timers_refused,
        given_back: 0,
        device_key_merges: 0,
        users_purged: 0,
        devices_evicted: 0,
        log_limit_given_back: 0,
        sent_not_logged: 0,
    })
}

/// A message record of schema `from` (2 to 4) in the current shape.
pub(super) fn message_from(from: u32, bytes: &[u8]) -> Result<Vec<u8>> {
    if from >= 5 {
        return Ok(bytes.to_vec());
    }
    let old: MessageRecordV4 = decode("userseq_message", bytes)?;
    let stanza = stanza_of(&old);
    encode(&MessageRecord {
        seq: old.seq,
        stanza_id: old.stanza_id,
        msg_id: old.msg_id,
        from: old.from,
        kind: old.kind,
        logged_at: old.logged_at,
        system: old.system,
        receipt: old.receipt,
        archive_id: old.archive_id,
        sent: old.sent,
        to: old.to,
        stanza,
        // Schemas 2 to 4 logged only messages with a body (or system messages).
        signal: false,
        asks_receipt: false,
    })
}

/// A device record of schema `from` in the current shape. Schema 2 devices gain an empty replay
/// range (their replayed messages still have the delivery records schema 2 wrote, which later
/// schemas read the same way); devices of schema 2 and 3 gain no session id, so the first
/// snapshot after the upgrade treats their sessions as new and replays what they have not acked.
pub(super) fn device_from(from: u32, bytes: &[u8]) -> Result<Vec<u8>> {
    let v4 = match from {
        2 | 3 => {
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
            DeviceRecordV4 {
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
            }
        }
        4 => decode("userdevice_cursor", bytes)?,
        _ => return Ok(bytes.to_vec()),
    };
    encode(&DeviceRecord {
        key: v4.key,
        resource: v4.resource,
        acked_upto: v4.acked_upto,
        acked_above: v4.acked_above,
        session: v4.session,
        online: v4.online,
        first_seen: v4.first_seen,
        last_seen: v4.last_seen,
        replayed: v4.replayed,
        session_id: v4.session_id,
        // Old stores ran one dialect for everyone; `auto` learns a device's from its next
        // session (its resource, or a seed stanza it sends).
        speaks_seed: false,
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

/// Builds `userblock_index` records from the message log read in key order (an upgrade).
#[derive(Default)]
struct IndexBuilder {
    block: Option<(UserId, u64)>,
    entries: Vec<IndexEntry>,
    hash: keys::IndexHash,
}

impl IndexBuilder {
    /// Adds the message with this `userseq_message` key and value; writes the record of the
    /// previous block when this message starts another.
    fn add(&mut self, key: &[u8], value: &[u8], index: &sled::Tree) -> Result<()> {
        let user = keys::be_u64(key, 0).ok_or(StoreError::BadKey {
            tree: "userseq_message",
            len: key.len(),
        })?;
        let m: MessageRecord = decode("userseq_message", value)?;
        let block = (user, keys::block_of(m.seq));
        if self.block != Some(block) {
            self.finish(index)?;
            self.block = Some(block);
        }
        self.entries.push(IndexEntry::of(&m, self.hash));
        Ok(())
    }

    /// Writes the current block's record.
    fn finish(&mut self, index: &sled::Tree) -> Result<()> {
        if let Some((user, block)) = self.block.take() {
            index.insert(keys::user_block(user, block), encode(&self.entries)?)?;
            self.entries.clear();
        }
        Ok(())
    }
}

impl SledBackend {
    /// Writes this store (of schema `from`) into a fresh sled database at `fresh`, in the
    /// current schema: every tree copied, device records converted, the log's index built while
    /// the log is copied (one pass over it). Copying, not rewriting in place, leaves sled's page
    /// table of the old layout behind (dropping the old index trees in place cost more memory
    /// than the whole store, and their freed pages stayed in the table). Progress is logged: a
    /// long job on a big store. The version is written last, then a marker that the copy is
    /// complete.
    pub(super) fn upgrade_into(
        &self,
        fresh: &Path,
        from: u32,
        options: &StoreOptions,
    ) -> Result<()> {
        tracing::info!(path = %self.path.display(), from, to = SCHEMA_VERSION, into = %fresh.display(), "upgrading store schema (into a fresh copy; needs as much disk again)");
        let started = std::time::Instant::now();
        // Every seq from a user's first kept one to its head is stored: the log's size without
        // a scan of it, for the progress lines.
        let mut total = 0u64;
        for kv in self.tree(T::UseridUser).iter() {
            let user = migrate::user_from(from, &kv?.1)?;
            total += (user.head + 1).saturating_sub(user.first_seq.max(1));
        }
        migrate::remove_dir(fresh)?;
        let db = Self::open_db(fresh, options)?;
        let index = db.open_tree(TREE_NAMES[T::UserblockIndex as usize])?;
        let mut block = IndexBuilder {
            block: None,
            entries: Vec::new(),
            hash: options.index_hash,
        };
        let (mut devices, mut messages) = (0u64, 0u64);
        // Each user's stored stanza bytes (`UserRecord::log_bytes`), summed while the log is
        // copied and written into the user records after it.
        let mut log_bytes: std::collections::HashMap<UserId, u64> = Default::default();
        for (i, name) in TREE_NAMES.iter().enumerate() {
            if i == T::UserblockIndex as usize {
                continue; // built while the log is copied
            }
            let target = db.open_tree(name)?;
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for kv in self.trees[i].iter() {
                let (k, v) = kv?;
                if i == T::Meta as usize && k.as_ref() == META_SCHEMA {
                    continue; // written last
                }
                if i == T::Meta as usize && k.as_ref() == META_COUNTERS {
                    batch.insert(k, migrate::counters_from(from, &v)?);
                    in_batch += 1;
                    continue;
                }
                if i == T::UseridUser as usize {
                    batch.insert(k, encode(&migrate::user_from(from, &v)?)?);
                } else if i == T::UserpeerConversation as usize && from < 5 {
                    // Keyed by a hash of the peer before schema 5; the record names the peer.
                    let conv: ConversationRecord = decode("userpeer_conversation", &v)?;
                    let user = keys::be_u64(&k, 0).ok_or(StoreError::BadKey {
                        tree: "userpeer_conversation",
                        len: k.len(),
                    })?;
                    batch.insert(keys::user_peer(user, &conv.peer), v);
                } else if i == T::UserdeviceCursor as usize {
                    batch.insert(k, migrate::device_from(from, &v)?);
                    devices += 1;
                } else if i == T::UserseqMessage as usize {
                    let v = migrate::message_from(from, &v)?;
                    let m: MessageRecord = decode("userseq_message", &v)?;
                    if let Some(user) = keys::be_u64(&k, 0) {
                        *log_bytes.entry(user).or_default() += m.stanza.len() as u64;
                    }
                    block.add(&k, &v, &index)?;
                    messages += 1;
                    if messages % 1_000_000 == 0 {
                        tracing::info!(
                            messages,
                            total,
                            elapsed_s = started.elapsed().as_secs(),
                            "upgrade: messages copied and indexed"
                        );
                    }
                    batch.insert(k, v);
                } else {
                    batch.insert(k, v);
                }
                in_batch += 1;
                if in_batch == 10_000 {
                    target.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
            target.apply_batch(batch)?;
        }
        block.finish(&index)?;
        let users = db.open_tree(TREE_NAMES[T::UseridUser as usize])?;
        for (user, bytes) in log_bytes {
            let key = keys::user_prefix(user);
            if let Some(v) = users.get(key)? {
                let mut record: UserRecord = decode("userid_user", &v)?;
                record.log_bytes = bytes;
                users.insert(key, encode(&record)?)?;
            }
        }
        db.open_tree(TREE_NAMES[T::Meta as usize])?
            .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
        db.flush()?;
        drop((index, db));
        migrate::mark_complete(fresh)?;
        tracing::info!(
            messages,
            devices,
            version = SCHEMA_VERSION,
            elapsed_s = started.elapsed().as_secs(),
            "store upgraded"
        );
        Ok(())
    }
}
