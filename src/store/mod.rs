//! The only module that touches sled. Trees are named by their key layout (see
//! `schema/store-layout.md`); keys are built in [`keys`]; values are [`records`] encoded with
//! bincode 2.
//!
//! Durability is group commit: writes land in sled's page cache and become durable at the next
//! [`Store::flush`]. Callers must not tell anyone about a write (the 10013 ack, a bounce) before
//! the flush that covers it has returned.

mod conversations;
mod devices;
mod inspect;
pub mod keys;
mod log;
mod migrate;
mod pending;
pub mod records;
mod timers;
mod users;

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
