//! The only module that touches sled. Trees are named by their key layout (see
//! `schema/store-layout.md`); keys are built in [`keys`]; values are [`records`] encoded with
//! bincode 2.
//!
//! Durability is group commit: writes land in sled's page cache and become durable at the next
//! [`Store::flush`]. Callers must not tell anyone about a write (the 10013 ack, a bounce) before
//! the flush that covers it has returned.

mod inspect;
pub mod keys;
mod migrate;
mod pending;
pub mod records;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

pub use inspect::{inspect, StoreState};
pub use keys::{DeviceNo, IndexHash, Seq, UserId};
use pending::{Bounds, Merged, Pending, Writes, T, TREES, TREE_NAMES};
use records::{decode, encode};

pub use records::{
    ConversationRecord, Counters, DeliveryRecord, DeviceRecord, IndexEntry, MessageRecord,
    ReceiptState, ReplayRange, UserRecord,
};

/// Version of the on-disk layout. Bump it with every change to a key or record shape and teach
/// [`Store::open`] the migration.
/// Version 2 added sent messages, conversations and retention (version 1 never shipped);
/// version 3 keeps one replay range per device instead of a delivery record per replayed message;
/// version 4 remembers the server's id of each device's current session and indexes the log in
/// records of 32 messages (`userblock_index`) instead of two keys per message.
pub const SCHEMA_VERSION: u32 = 5;

const META_SCHEMA: &[u8] = b"schema_version";
const META_NEXT_USER: &[u8] = b"next_user_id";
const META_COUNTERS: &[u8] = b"counters";

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

/// What [`Store::purge_user`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    pub messages: u64,
    pub devices: u64,
    pub timers: u64,
}

/// How long [`Store::open`] waits for another holder of the store's lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path} is in use by another process (sled allows one); if readtrack serve runs, use the CLI through its admin socket")]
    Locked { path: PathBuf },
    #[error("cannot open store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("store at {path} has schema version {found}, this readtrack reads version {expected}; refusing to touch it")]
    SchemaVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("store at {path} holds data but no schema version; it was not written by readtrack")]
    NoSchema { path: PathBuf },
    #[error("store I/O error: {0}")]
    Sled(#[from] sled::Error),
    /// The flush (the durability point) failed: disk full, I/O error. Nothing since the last
    /// successful flush may be announced.
    #[error("cannot write store at {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt record in tree {tree}: {reason}")]
    Decode { tree: &'static str, reason: String },
    #[error("cannot encode record: {0}")]
    Encode(String),
    #[error("corrupt key in tree {tree}: {len} bytes")]
    BadKey { tree: &'static str, len: usize },
    #[error("unknown user id {0}")]
    UnknownUser(UserId),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A due receipt timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub deadline: u64,
    pub user: UserId,
    pub seq: Seq,
}

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache, bytes.
    pub cache_bytes: u64,
    /// How the log's index hashes ids and peers (tests force collisions with it).
    #[doc(hidden)]
    pub index_hash: keys::IndexHash,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 * 1024 * 1024,
            index_hash: keys::IndexHash::default(),
        }
    }
}

pub struct Store {
    path: PathBuf,
    db: sled::Db,
    /// Indexed by [`T`].
    trees: [sled::Tree; TREES],
    /// Writes since the last flush; see [`pending`].
    pending: Mutex<Pending>,
    /// Records decoded since open: lets tests assert that work is proportional to what is unread.
    reads: AtomicU64,
    flushes: AtomicU64,
    hash: keys::IndexHash,
}

/// Above this many pending writes, a store call first moves the write set into sled (not yet
/// durable) so that a huge operation (forgetting a user with a long log) does not hold it all
/// in memory. Each call's writes still go in together.
const SPILL_ENTRIES: usize = 50_000;

impl Store {
    /// Opens (or creates) the store. Refuses a store of another schema version, or a non-empty
    /// directory that readtrack did not write, rather than overwrite it. A store of an earlier
    /// schema is upgraded first (see [`migrate`]), finishing an upgrade a crash interrupted.
    pub fn open(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        migrate::finish_interrupted(&path)?;
        let store = Self::open_at(&path, options)?;
        let found = store.check_schema()?;
        if found == SCHEMA_VERSION {
            // A copy left by an upgrade a crash interrupted early; the store's lock is ours.
            migrate::remove_dir(&migrate::upgrading_path(&path))?;
            return Ok(store);
        }
        let fresh = migrate::upgrading_path(&path);
        store.upgrade_into(&fresh, found, options)?;
        drop(store);
        migrate::swap_in(&path, &fresh)?;
        let store = Self::open_at(&path, options)?;
        store.check_schema()?;
        Ok(store)
    }

    fn open_at(path: &Path, options: &StoreOptions) -> Result<Store> {
        let db = Self::open_db(path, options)?;
        // Before `open_tree` below creates any missing tree: refusing a store after adding
        // readtrack's trees to it would be exactly the silent rewrite this check exists to stop.
        Self::check_schema_untouched(&db, path)?;
        let mut trees = Vec::with_capacity(TREES);
        for name in TREE_NAMES {
            trees.push(db.open_tree(name)?);
        }
        Ok(Store {
            trees: trees
                .try_into()
                .unwrap_or_else(|_| unreachable!("one tree per name")),
            db,
            path: path.to_path_buf(),
            pending: Mutex::new(Pending::default()),
            reads: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            hash: options.index_hash,
        })
    }

    /// sled releases its file lock a little after the last handle is dropped (its flusher
    /// thread lets go asynchronously), and a restarting service can race its predecessor's exit,
    /// so a held lock is retried for a short while before it is reported.
    fn open_db(path: &Path, options: &StoreOptions) -> Result<sled::Db> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(options.cache_bytes)
                .open()
            {
                Ok(db) => return Ok(db),
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked {
                            path: path.to_path_buf(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }

    /// Refuses a store of another schema version, or a sled database with data but no
    /// readtrack schema, looking only at trees that already exist.
    fn check_schema_untouched(db: &sled::Db, path: &Path) -> Result<()> {
        let names = db.tree_names();
        let has = |name: &[u8]| names.iter().any(|n| n.as_ref() == name);
        let version = if has(b"meta") {
            db.open_tree("meta")?.get(META_SCHEMA)?
        } else {
            None
        };
        match version {
            Some(v) => {
                Self::known_version(&v, path)?;
            }
            None => {
                // sled always has its default tree; anything else, or data in it, is not ours.
                let foreign = !db.is_empty()
                    || names.iter().any(|n| {
                        n.as_ref() != b"__sled__default"
                            && (n.as_ref() != b"meta"
                                || db.open_tree(n).map_or(true, |t| !t.is_empty()))
                    });
                if foreign {
                    return Err(StoreError::NoSchema {
                        path: path.to_path_buf(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The stored version, if this readtrack reads it or can upgrade it.
    fn known_version(v: &[u8], path: &Path) -> Result<u32> {
        let found = u32::from_be_bytes(v.try_into().map_err(|_| StoreError::Decode {
            tree: "meta",
            reason: "schema_version is not 4 bytes".into(),
        })?);
        if found != SCHEMA_VERSION && !migrate::UPGRADABLE.contains(&found) {
            return Err(StoreError::SchemaVersion {
                path: path.to_path_buf(),
                found,
                expected: SCHEMA_VERSION,
            });
        }
        Ok(found)
    }

    /// Writes this store (of schema `from`) into a fresh sled database at `fresh`, in the
    /// current schema: every tree copied, device records converted, the log's index built while
    /// the log is copied (one pass over it). Copying, not rewriting in place, leaves sled's page
    /// table of the old layout behind (dropping the old index trees in place cost more memory
    /// than the whole store, and their freed pages stayed in the table). Progress is logged: a
    /// long job on a big store. The version is written last, then a marker that the copy is
    /// complete.
    fn upgrade_into(&self, fresh: &Path, from: u32, options: &StoreOptions) -> Result<()> {
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

    /// The stored schema version (a version this readtrack reads or upgrades); a new store is
    /// given the current one.
    fn check_schema(&self) -> Result<u32> {
        match self.tree(T::Meta).get(META_SCHEMA)? {
            Some(v) => Self::known_version(&v, &self.path),
            None => {
                let user_data = [T::JidUserid, T::UseridUser, T::UserseqMessage]
                    .iter()
                    .any(|t| !self.tree(*t).is_empty());
                if user_data {
                    return Err(StoreError::NoSchema {
                        path: self.path.clone(),
                    });
                }
                self.tree(T::Meta)
                    .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                self.db.flush()?;
                Ok(SCHEMA_VERSION)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every earlier write durable: applies the write set as one transaction, then flushes
    /// sled. The only durability point.
    pub fn flush(&self) -> Result<()> {
        self.apply_pending()?;
        self.db.flush().map_err(|e| self.write_error(e))?;
        self.flushes.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// sled's own text for an I/O error is the `Debug` of `io::Error` and names no path; an
    /// operator whose disk filled up needs the OS message and the store's location.
    fn write_error(&self, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Io(source) => StoreError::Write {
                path: self.path.clone(),
                source,
            },
            other => StoreError::Sled(other),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves a consistent map (writes go in whole calls).
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the write set into sled as one transaction (not yet durable). Kept on failure, so
    /// the next flush tries again.
    fn apply_pending(&self) -> Result<()> {
        let mut pending = self.pending();
        if pending.entries() == 0 {
            return Ok(());
        }
        let written: Vec<_> = pending.trees().collect();
        let trees: Vec<&sled::Tree> = written.iter().map(|(i, _)| &self.trees[*i]).collect();
        trees[..]
            .transaction(|txs| {
                for (tx, (_, writes)) in txs.iter().zip(&written) {
                    for (key, value) in writes.iter() {
                        match value {
                            Some(v) => tx.insert(key.as_slice(), v.clone())?,
                            None => tx.remove(key.as_slice())?,
                        };
                    }
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => self.write_error(e),
            })?;
        drop(written);
        pending.clear();
        Ok(())
    }

    /// Adds one call's writes to the write set.
    fn apply(&self, writes: Writes) -> Result<()> {
        if self.pending().entries() > SPILL_ENTRIES {
            self.apply_pending()?;
        }
        self.pending().add(writes);
        Ok(())
    }

    fn tree(&self, t: T) -> &sled::Tree {
        &self.trees[t as usize]
    }

    fn get(&self, t: T, key: impl AsRef<[u8]>) -> Result<Option<sled::IVec>> {
        if let Some(decided) = self.pending().get(t, key.as_ref()) {
            return Ok(decided);
        }
        Ok(self.tree(t).get(key)?)
    }

    fn range(&self, t: T, bounds: Bounds) -> Merged {
        let pending = self.pending().range(t, &bounds, false);
        Merged::new(self.tree(t).range(bounds), pending, false)
    }

    fn range_rev(&self, t: T, bounds: Bounds) -> Merged {
        let pending = self.pending().range(t, &bounds, true);
        Merged::new(self.tree(t).range(bounds), pending, true)
    }

    fn scan_prefix(&self, t: T, prefix: impl AsRef<[u8]>) -> Merged {
        self.range(t, pending::prefix_bounds(prefix.as_ref()))
    }

    /// Keys in a tree: a full scan, for stats and tests.
    fn count(&self, t: T) -> usize {
        self.range(t, (Bound::Unbounded, Bound::Unbounded)).count()
    }

    /// Completed [`Store::flush`] calls since open.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Acquire)
    }

    /// Records decoded since open (messages, devices, deliveries, users).
    pub fn records_read(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn read<T: serde::de::DeserializeOwned>(&self, tree: &'static str, bytes: &[u8]) -> Result<T> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        decode(tree, bytes)
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    // ---- users ----

    pub fn user_id(&self, bare_jid: &str) -> Result<Option<UserId>> {
        Ok(self
            .get(T::JidUserid, bare_jid.as_bytes())?
            .map(|v| keys::be_u64(&v, 0).unwrap_or(0)))
    }

    /// The user's id, creating the user on first sight.
    pub fn ensure_user(&self, bare_jid: &str) -> Result<UserId> {
        if let Some(id) = self.user_id(bare_jid)? {
            return Ok(id);
        }
        let record = encode(&UserRecord {
            jid: bare_jid.to_string(),
            head: 0,
            first_seq: 1,
            next_device: 0,
            account: None,
            log_bytes: 0,
        })?;
        let id = match self.get(T::Meta, META_NEXT_USER)? {
            Some(v) => keys::be_u64(&v, 0).unwrap_or(1),
            None => 1,
        };
        let mut w = Writes::default();
        w.put(T::Meta, META_NEXT_USER, &(id + 1).to_be_bytes());
        w.put(T::JidUserid, bare_jid.as_bytes(), &id.to_be_bytes());
        w.put(T::UseridUser, keys::user_prefix(id), record);
        self.apply(w)?;
        Ok(id)
    }

    /// Records the server's token of the user's account.
    pub fn set_account(&self, user: UserId, account: &str) -> Result<()> {
        let mut record = self.user(user)?;
        record.account = Some(account.to_string());
        let mut w = Writes::default();
        w.put(T::UseridUser, keys::user_prefix(user), encode(&record)?);
        self.apply(w)
    }

    /// Deletes everything of one user: the log (received and sent), its index and timers, the
    /// devices and their delivery logs, the read state, the user record and the JID's mapping,
    /// all or nothing. The JID is free for a new user afterwards (a new user id).
    pub fn purge_user(&self, user: UserId) -> Result<PurgeReport> {
        let record = self.user(user)?;
        let mut report = PurgeReport::default();
        let mut w = Writes::default();
        for kv in self.scan_prefix(T::UserseqMessage, keys::user_prefix(user)) {
            let (k, v) = kv?;
            let m: MessageRecord = self.read("userseq_message", &v)?;
            if let Some(deadline) = m.receipt.timer() {
                w.del(
                    T::DeadlineUserseq,
                    keys::deadline_user_seq(deadline, user, m.seq),
                );
                report.timers += 1;
            }
            w.del(T::UserseqMessage, k);
            report.messages += 1;
        }
        for t in [
            T::UserblockIndex,
            T::UserdeviceCursor,
            T::UserdeviceseqDelivery,
            T::UserpeerConversation,
        ] {
            for kv in self.scan_prefix(t, keys::user_prefix(user)) {
                let (k, _) = kv?;
                if t == T::UserdeviceCursor {
                    report.devices += 1;
                }
                w.del(t, k);
            }
        }
        w.del(T::UseridUser, keys::user_prefix(user));
        w.del(T::JidUserid, record.jid.as_bytes());
        self.apply(w)?;
        Ok(report)
    }

    pub fn user(&self, user: UserId) -> Result<UserRecord> {
        match self.get(T::UseridUser, keys::user_prefix(user))? {
            Some(v) => self.read("userid_user", &v),
            None => Err(StoreError::UnknownUser(user)),
        }
    }

    /// Users with id ≥ `start`, in id order (retention walks users with a cursor).
    pub fn users_from(
        &self,
        start: UserId,
    ) -> impl Iterator<Item = Result<(UserId, UserRecord)>> + '_ {
        self.range(
            T::UseridUser,
            (
                Bound::Included(keys::user_prefix(start).to_vec()),
                Bound::Unbounded,
            ),
        )
        .map(move |kv| {
            let (k, v) = kv?;
            let id = keys::be_u64(&k, 0).ok_or(StoreError::BadKey {
                tree: "userid_user",
                len: k.len(),
            })?;
            Ok((id, self.read("userid_user", &v)?))
        })
    }

    /// Users ever created, from the id counter (no scan).
    pub fn users_created(&self) -> Result<u64> {
        Ok(match self.get(T::Meta, META_NEXT_USER)? {
            Some(v) => keys::be_u64(&v, 0).unwrap_or(1).saturating_sub(1),
            None => 0,
        })
    }

    /// Scans the user tree: for tests and small stores only.
    pub fn user_count(&self) -> usize {
        self.count(T::UseridUser)
    }

    // ---- messages ----

    /// Logs one message: the log entry, the id index, the receipt timer (when `message.receipt`
    /// is `Waiting`) and the deliveries to the devices it was written to live, all or nothing.
    /// `message.seq` is ignored: the store assigns the next seq and returns it. Not durable until
    /// [`Store::flush`].
    pub fn append_message(
        &self,
        user: UserId,
        message: &MessageRecord,
        delivered_to: &[(DeviceNo, DeliveryRecord)],
    ) -> Result<Seq> {
        let peer = message.peer();
        let mut record = self.user(user)?;
        record.head += 1;
        record.log_bytes += message.stanza.len() as u64;
        let seq = record.head;
        let entry = MessageRecord {
            seq,
            ..message.clone()
        };
        let conv_key = keys::user_peer(user, &peer);
        let mut conv: ConversationRecord = match self.get(T::UserpeerConversation, &conv_key)? {
            Some(v) => decode("userpeer_conversation", &v)?,
            None => ConversationRecord {
                peer: peer.clone(),
                last_seq: 0,
                last_at: 0,
                read_upto: 0,
                unread: 0,
            },
        };
        conv.last_seq = seq;
        conv.last_at = message.logged_at;
        let mut w = Writes::default();
        w.put(T::UseridUser, keys::user_prefix(user), encode(&record)?);
        w.put(
            T::UserseqMessage,
            keys::user_seq(user, seq),
            encode(&entry)?,
        );
        let block = keys::block_of(seq);
        let mut entries = self.index_block(user, block)?;
        entries.push(IndexEntry::of(&entry, self.hash));
        w.put(
            T::UserblockIndex,
            keys::user_block(user, block),
            encode(&entries)?,
        );
        if let Some(deadline) = message.receipt.timer() {
            w.put(
                T::DeadlineUserseq,
                keys::deadline_user_seq(deadline, user, seq),
                EMPTY,
            );
        }
        for (device, d) in delivered_to {
            w.put(
                T::UserdeviceseqDelivery,
                keys::user_device_seq(user, *device, seq),
                encode(d)?,
            );
        }
        if message.counts_as_unread() {
            conv.unread += 1;
        }
        w.put(T::UserpeerConversation, conv_key, encode(&conv)?);
        self.apply(w)?;
        Ok(seq)
    }

    /// Deletes one message and everything that refers to it (id index, timer, deliveries,
    /// conversation index and count), all or nothing; moves the user's `first_seq` past it.
    pub fn delete_message(
        &self,
        user: UserId,
        message: &MessageRecord,
        devices: &[DeviceNo],
    ) -> Result<()> {
        let peer = message.peer();
        let seq = message.seq;
        let mut w = Writes::default();
        if let Some(v) = self.get(T::UseridUser, keys::user_prefix(user))? {
            let mut record: UserRecord = decode("userid_user", &v)?;
            record.first_seq = record.first_seq.max(seq + 1);
            record.log_bytes = record.log_bytes.saturating_sub(message.stanza.len() as u64);
            w.put(T::UseridUser, keys::user_prefix(user), encode(&record)?);
        }
        w.del(T::UserseqMessage, keys::user_seq(user, seq));
        let block = keys::block_of(seq);
        let mut entries = self.index_block(user, block)?;
        entries.retain(|e| e.seq != seq);
        if entries.is_empty() {
            w.del(T::UserblockIndex, keys::user_block(user, block));
        } else {
            w.put(
                T::UserblockIndex,
                keys::user_block(user, block),
                encode(&entries)?,
            );
        }
        if let Some(deadline) = message.receipt.timer() {
            w.del(
                T::DeadlineUserseq,
                keys::deadline_user_seq(deadline, user, seq),
            );
        }
        for device in devices {
            w.del(
                T::UserdeviceseqDelivery,
                keys::user_device_seq(user, *device, seq),
            );
        }
        if message.counts_as_unread() {
            let conv_key = keys::user_peer(user, &peer);
            if let Some(v) = self.get(T::UserpeerConversation, &conv_key)? {
                let mut conv: ConversationRecord = decode("userpeer_conversation", &v)?;
                if seq > conv.read_upto {
                    conv.unread = conv.unread.saturating_sub(1);
                }
                w.put(T::UserpeerConversation, conv_key, encode(&conv)?);
            }
        }
        self.apply(w)
    }

    // ---- conversations ----

    /// The user's conversations (one per peer), in key order.
    pub fn conversations(&self, user: UserId) -> Result<Vec<ConversationRecord>> {
        let mut out = Vec::new();
        for kv in self.scan_prefix(T::UserpeerConversation, keys::user_prefix(user)) {
            out.push(self.read("userpeer_conversation", &kv?.1)?);
        }
        Ok(out)
    }

    /// The user's conversation with `peer` (a bare JID), if there is one.
    pub fn conversation(&self, user: UserId, peer: &str) -> Result<Option<ConversationRecord>> {
        match self.get(T::UserpeerConversation, keys::user_peer(user, peer))? {
            Some(v) => Ok(Some(self.read("userpeer_conversation", &v)?)),
            None => Ok(None),
        }
    }

    /// Marks everything received from `peer` up to `upto` as read (XEP-0333 displayed). Read
    /// state only moves forward; returns how many messages became read.
    pub fn mark_read(&self, user: UserId, peer: &str, upto: Seq) -> Result<u64> {
        let conv_key = keys::user_peer(user, peer);
        let Some(v) = self.get(T::UserpeerConversation, &conv_key)? else {
            return Ok(0);
        };
        let mut conv: ConversationRecord = self.read("userpeer_conversation", &v)?;
        // Read state covers only what exists: a later message must still count as unread.
        let upto = upto.min(conv.last_seq);
        if upto <= conv.read_upto {
            return Ok(0);
        }
        let peer_hash = self.hash.of(peer);
        let mut newly = 0u64;
        for entry in self.index_entries(user, conv.read_upto, upto, false) {
            let entry = entry?;
            // The hash narrows; the record decides (a crafted JID can share a hash).
            if entry.peer == peer_hash
                && self
                    .message(user, entry.seq)?
                    .is_some_and(|m| m.counts_as_unread() && m.peer() == peer)
            {
                newly += 1;
            }
        }
        conv.read_upto = upto;
        conv.unread = conv.unread.saturating_sub(newly);
        let mut w = Writes::default();
        w.put(T::UserpeerConversation, conv_key, encode(&conv)?);
        self.apply(w)?;
        Ok(newly)
    }

    pub fn message(&self, user: UserId, seq: Seq) -> Result<Option<MessageRecord>> {
        match self.get(T::UserseqMessage, keys::user_seq(user, seq))? {
            Some(v) => Ok(Some(self.read("userseq_message", &v)?)),
            None => Ok(None),
        }
    }

    /// The user's messages with seq > `after`, oldest first. Reads lazily: the caller pays for
    /// what it consumes.
    pub fn messages_after(
        &self,
        user: UserId,
        after: Seq,
    ) -> impl Iterator<Item = Result<MessageRecord>> + '_ {
        let start = keys::user_seq(user, after.saturating_add(1));
        let end = keys::user_seq(user, u64::MAX);
        self.range(
            T::UserseqMessage,
            (
                Bound::Included(start.to_vec()),
                Bound::Included(end.to_vec()),
            ),
        )
        .map(move |kv| {
            let (_, v) = kv?;
            self.read("userseq_message", &v)
        })
    }

    /// The user's messages with seq < `before`, newest first.
    pub fn messages_before(
        &self,
        user: UserId,
        before: Seq,
    ) -> impl Iterator<Item = Result<MessageRecord>> + '_ {
        let start = keys::user_seq(user, 0);
        let end = keys::user_seq(user, before);
        self.range_rev(
            T::UserseqMessage,
            (
                Bound::Included(start.to_vec()),
                Bound::Excluded(end.to_vec()),
            ),
        )
        .map(move |kv| {
            let (_, v) = kv?;
            self.read("userseq_message", &v)
        })
    }

    pub fn message_count(&self) -> usize {
        self.count(T::UserseqMessage)
    }

    /// The user's messages with seq above `after` whose id is `msg_id`, oldest first, or newest
    /// first with `newest_first`. Lazy: the cost is the index of the range the caller consumes
    /// (one record per 32 messages) plus the records of the matches, so callers start where
    /// what they look for can be (above what the device has acked) and stop at what they need.
    ///
    /// At most `max_entries` index entries are examined; `examined` counts them, so the caller
    /// can tell a search that stopped at the bound from one that saw everything.
    pub fn messages_by_msgid<'a>(
        &'a self,
        user: UserId,
        msg_id: &'a str,
        after: Seq,
        newest_first: bool,
        max_entries: usize,
        examined: &'a std::cell::Cell<usize>,
    ) -> Result<impl Iterator<Item = Result<MessageRecord>> + 'a> {
        let hash = self.hash.of(msg_id);
        let head = self.user(user)?.head;
        Ok(self
            .index_entries(user, after, head, newest_first)
            .take(max_entries)
            .inspect(move |_| examined.set(examined.get() + 1))
            .filter(move |e| e.as_ref().map_or(true, |e| e.msgid == hash))
            .filter_map(move |e| {
                match e.and_then(|e| self.message(user, e.seq)) {
                    // A hash collision, or an entry of a message deleted meanwhile.
                    Ok(Some(m)) if m.msg_id.as_deref() == Some(msg_id) => Some(Ok(m)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            }))
    }

    /// The index record of one block of the user's log (empty when there is none).
    fn index_block(&self, user: UserId, block: u64) -> Result<Vec<IndexEntry>> {
        match self.get(T::UserblockIndex, keys::user_block(user, block))? {
            Some(v) => self.read("userblock_index", &v),
            None => Ok(Vec::new()),
        }
    }

    /// Index entries of the user's messages with `after < seq <= upto`, in seq order (or
    /// reversed).
    fn index_entries(
        &self,
        user: UserId,
        after: Seq,
        upto: Seq,
        reverse: bool,
    ) -> impl Iterator<Item = Result<IndexEntry>> + '_ {
        let start = keys::user_block(user, keys::block_of(after.saturating_add(1)));
        let end = keys::user_block(user, keys::block_of(upto));
        let blocks = (after < upto).then(|| {
            let bounds = (
                Bound::Included(start.to_vec()),
                Bound::Included(end.to_vec()),
            );
            if reverse {
                self.range_rev(T::UserblockIndex, bounds)
            } else {
                self.range(T::UserblockIndex, bounds)
            }
        });
        blocks
            .into_iter()
            .flatten()
            .flat_map(move |kv| -> Vec<Result<IndexEntry>> {
                let entries: Result<Vec<IndexEntry>> =
                    kv.and_then(|(_, v)| self.read("userblock_index", &v));
                match entries {
                    Ok(entries) => {
                        let mut entries: Vec<_> = entries
                            .into_iter()
                            .filter(|e| e.seq > after && e.seq <= upto)
                            .map(Ok)
                            .collect();
                        if reverse {
                            entries.reverse();
                        }
                        entries
                    }
                    Err(e) => vec![Err(e)],
                }
            })
    }

    // ---- devices ----

    /// The user's devices, in device-number order.
    pub fn devices(&self, user: UserId) -> Result<Vec<(DeviceNo, DeviceRecord)>> {
        let mut out = Vec::new();
        for kv in self.scan_prefix(T::UserdeviceCursor, keys::user_prefix(user)) {
            let (k, v) = kv?;
            let no = keys::be_u32(&k, 8).ok_or(StoreError::BadKey {
                tree: "userdevice_cursor",
                len: k.len(),
            })?;
            out.push((no, self.read("userdevice_cursor", &v)?));
        }
        Ok(out)
    }

    /// One device of the user, if it exists.
    pub fn device(&self, user: UserId, device: DeviceNo) -> Result<Option<DeviceRecord>> {
        match self.get(T::UserdeviceCursor, keys::user_device(user, device))? {
            Some(v) => Ok(Some(self.read("userdevice_cursor", &v)?)),
            None => Ok(None),
        }
    }

    pub fn device_count(&self) -> usize {
        self.count(T::UserdeviceCursor)
    }

    /// Stores a device, assigning a number when `device` is `None`.
    pub fn put_device(
        &self,
        user: UserId,
        device: Option<DeviceNo>,
        record: &DeviceRecord,
    ) -> Result<DeviceNo> {
        let mut w = Writes::default();
        let no = match device {
            Some(no) => no,
            None => {
                let mut u = self.user(user)?;
                let no = u.next_device;
                u.next_device += 1;
                w.put(T::UseridUser, keys::user_prefix(user), encode(&u)?);
                no
            }
        };
        w.put(
            T::UserdeviceCursor,
            keys::user_device(user, no),
            encode(record)?,
        );
        self.apply(w)?;
        Ok(no)
    }

    /// Drops a device's cursor and its delivery log.
    pub fn remove_device(&self, user: UserId, device: DeviceNo) -> Result<()> {
        let mut w = Writes::default();
        for kv in self.scan_prefix(T::UserdeviceseqDelivery, keys::user_device(user, device)) {
            w.del(T::UserdeviceseqDelivery, kv?.0);
        }
        w.del(T::UserdeviceCursor, keys::user_device(user, device));
        self.apply(w)
    }

    /// Records acks of one device, all or nothing: the new cursor, the deliveries it settles,
    /// and the messages whose receipt timer it cancels (given with their new state).
    pub fn apply_ack(
        &self,
        user: UserId,
        device: DeviceNo,
        record: &DeviceRecord,
        acked: &[Seq],
        settled: &[(Timer, MessageRecord)],
    ) -> Result<()> {
        let mut w = Writes::default();
        w.put(
            T::UserdeviceCursor,
            keys::user_device(user, device),
            encode(record)?,
        );
        for seq in acked {
            w.del(
                T::UserdeviceseqDelivery,
                keys::user_device_seq(user, device, *seq),
            );
        }
        for (t, m) in settled {
            w.put(T::UserseqMessage, keys::user_seq(t.user, t.seq), encode(m)?);
            w.del(
                T::DeadlineUserseq,
                keys::deadline_user_seq(t.deadline, t.user, t.seq),
            );
        }
        self.apply(w)
    }

    // ---- deliveries ----

    pub fn delivery(
        &self,
        user: UserId,
        device: DeviceNo,
        seq: Seq,
    ) -> Result<Option<DeliveryRecord>> {
        match self.get(
            T::UserdeviceseqDelivery,
            keys::user_device_seq(user, device, seq),
        )? {
            Some(v) => Ok(Some(self.read("userdeviceseq_delivery", &v)?)),
            None => Ok(None),
        }
    }

    /// Deliveries of one device with seq ≤ `upto`, oldest first.
    pub fn deliveries(
        &self,
        user: UserId,
        device: DeviceNo,
        upto: Seq,
    ) -> Result<Vec<(Seq, DeliveryRecord)>> {
        let start = keys::user_device_seq(user, device, 0);
        let end = keys::user_device_seq(user, device, upto);
        let mut out = Vec::new();
        for kv in self.range(
            T::UserdeviceseqDelivery,
            (
                Bound::Included(start.to_vec()),
                Bound::Included(end.to_vec()),
            ),
        ) {
            let (k, v) = kv?;
            let seq = keys::be_u64(&k, 12).ok_or(StoreError::BadKey {
                tree: "userdeviceseq_delivery",
                len: k.len(),
            })?;
            out.push((seq, self.read("userdeviceseq_delivery", &v)?));
        }
        Ok(out)
    }

    // ---- timers ----

    /// Removes a fired timer and stores the message's new state (if it still exists), together,
    /// so a crash cannot leave a message waiting without a timer.
    pub fn settle_timer(&self, timer: Timer, message: Option<&MessageRecord>) -> Result<()> {
        let mut w = Writes::default();
        if let Some(m) = message {
            w.put(
                T::UserseqMessage,
                keys::user_seq(timer.user, timer.seq),
                encode(m)?,
            );
        }
        w.del(
            T::DeadlineUserseq,
            keys::deadline_user_seq(timer.deadline, timer.user, timer.seq),
        );
        self.apply(w)
    }

    /// Moves a timer to `deadline` and stores the message's new state, together.
    pub fn rearm_timer(&self, timer: Timer, deadline: u64, message: &MessageRecord) -> Result<()> {
        let mut w = Writes::default();
        w.put(
            T::UserseqMessage,
            keys::user_seq(timer.user, timer.seq),
            encode(message)?,
        );
        w.del(
            T::DeadlineUserseq,
            keys::deadline_user_seq(timer.deadline, timer.user, timer.seq),
        );
        w.put(
            T::DeadlineUserseq,
            keys::deadline_user_seq(deadline, timer.user, timer.seq),
            EMPTY,
        );
        self.apply(w)
    }

    /// Every device of every user.
    pub fn all_devices(
        &self,
    ) -> impl Iterator<Item = Result<(UserId, DeviceNo, DeviceRecord)>> + '_ {
        self.range(T::UserdeviceCursor, (Bound::Unbounded, Bound::Unbounded))
            .map(move |kv| {
                let (k, v) = kv?;
                let bad = || StoreError::BadKey {
                    tree: "userdevice_cursor",
                    len: k.len(),
                };
                let user = keys::be_u64(&k, 0).ok_or_else(bad)?;
                let no = keys::be_u32(&k, 8).ok_or_else(bad)?;
                Ok((user, no, self.read("userdevice_cursor", &v)?))
            })
    }

    /// Timers with deadline ≤ `now`, earliest first, at most `limit`.
    pub fn due_timers(&self, now: u64, limit: usize) -> Result<Vec<Timer>> {
        let end = keys::deadline_user_seq(now, u64::MAX, u64::MAX);
        let mut out = Vec::new();
        for kv in self
            .range(
                T::DeadlineUserseq,
                (Bound::Unbounded, Bound::Included(end.to_vec())),
            )
            .take(limit)
        {
            out.push(Self::timer_from_key(&kv?.0)?);
        }
        Ok(out)
    }

    pub fn next_deadline(&self) -> Result<Option<u64>> {
        match self
            .range(T::DeadlineUserseq, (Bound::Unbounded, Bound::Unbounded))
            .next()
        {
            Some(kv) => Ok(Some(Self::timer_from_key(&kv?.0)?.deadline)),
            None => Ok(None),
        }
    }

    pub fn timer_count(&self) -> usize {
        self.count(T::DeadlineUserseq)
    }

    fn timer_from_key(k: &[u8]) -> Result<Timer> {
        let bad = || StoreError::BadKey {
            tree: "deadline_userseq",
            len: k.len(),
        };
        Ok(Timer {
            deadline: keys::be_u64(k, 0).ok_or_else(bad)?,
            user: keys::be_u64(k, 8).ok_or_else(bad)?,
            seq: keys::be_u64(k, 16).ok_or_else(bad)?,
        })
    }

    // ---- meta ----

    pub fn counters(&self) -> Result<Counters> {
        match self.get(T::Meta, META_COUNTERS)? {
            Some(v) => decode("meta", &v),
            None => Ok(Counters::default()),
        }
    }

    pub fn put_counters(&self, counters: &Counters) -> Result<()> {
        let mut w = Writes::default();
        w.put(T::Meta, META_COUNTERS, encode(counters)?);
        self.apply(w)
    }
}

/// The value of index keys.
const EMPTY: &[u8] = &[];

impl Drop for Store {
    /// A store dropped without a last flush (a one-off CLI command, a test) keeps its writes,
    /// as sled would: they are applied and flushed now. Failures can only be logged here.
    fn drop(&mut self) {
        if self.pending().entries() > 0 {
            if let Err(e) = self.flush() {
                tracing::error!(
                    "store dropped with unflushed writes that could not be written: {e}"
                );
            }
        }
    }
}
