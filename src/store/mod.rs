//! The only module that touches sled. Trees are named by their key layout (see
//! `schema/store-layout.md`); keys are built in [`keys`]; values are [`records`] encoded with
//! bincode 2.
//!
//! Durability is group commit: writes land in sled's page cache and become durable at the next
//! [`Store::flush`]. Callers must not tell anyone about a write (the 10013 ack, a bounce) before
//! the flush that covers it has returned.

mod backend;
mod conversations;
mod devices;
mod inspect;
pub mod keys;
mod log;
mod migrate;
mod pending;
mod pg;
pub mod records;
mod sled_backend;
mod timers;
pub mod transfer;
mod users;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sled::transaction::TransactionError;
use sled::IVec;

use backend::Backend;
pub use inspect::{inspect, StoreState};
pub use keys::{DeviceNo, IndexHash, Seq, UserId};
use pending::{Bounds, Merged, Pending, Writes, T, TREE_NAMES};
use pg::PgBackend;
pub use pg::{inspect_postgres, redact as redact_url, PgState, PG_SCHEMA_VERSION};
use records::{decode, encode};
use sled_backend::SledBackend;

pub use records::{
    ConversationRecord, Counters, DeliveryRecord, DeviceRecord, IndexEntry, MessageHead,
    MessageRecord, ReceiptState, ReplayRange, UserRecord,
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
    #[error("PostgreSQL store {url}: {}", pg::describe(source))]
    Postgres {
        url: String,
        source: postgres::Error,
    },
    #[error("PostgreSQL store: {0}")]
    Pg(String),
    #[error("PostgreSQL store {url} has schema version {found}, this readtrack knows version {expected}; refusing to touch it")]
    PgSchemaVersion {
        url: String,
        found: i32,
        expected: i32,
    },
    /// Another process owns the store (several processes on one database would corrupt it).
    #[error("PostgreSQL store {url} is in use by {holder} (its lease ends at {until} unless renewed); one readtrack process per database: stop it, or wait for its lease to expire if it died")]
    Held {
        url: String,
        holder: String,
        until: String,
    },
    /// This process lost the store's lease to another: its commit was rolled back.
    #[error("PostgreSQL store {url}: this process no longer owns the store (lease epoch {epoch} was taken over by another process); the commit was rolled back")]
    Fenced { url: String, epoch: i64 },
    #[error("a key of tree {tree} does not fit its PostgreSQL table (a value above 2^63-1, or a partial key)")]
    KeyRange { tree: &'static str },
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
    /// PostgreSQL: how long the store's lease lasts without renewal (a process killed holding
    /// it keeps the store from others this long).
    pub lease: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 * 1024 * 1024,
            index_hash: keys::IndexHash::default(),
            lease: std::time::Duration::from_secs(30),
        }
    }
}

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A sled folder.
    Sled(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user@host:port/database`).
    Postgres(String),
}

impl std::fmt::Display for Location {
    /// For logs and messages: a folder, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sled(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => write!(f, "{}", pg::redact(url)),
        }
    }
}

pub struct Store {
    backend: Box<dyn Backend>,
    location: Location,
    /// Writes since the last flush; see [`pending`].
    pending: Mutex<Pending>,
    /// The decoded devices of recently used users, kept equal to what a scan would read (every
    /// write to `userdevice_cursor` goes through [`Store::apply_with`]); see [`devices`].
    devices: Mutex<devices::DeviceCache>,
    /// User ids by bare JID, of users looked up recently; kept like `devices` (a write to
    /// `jid_userid` makes it forget that JID). See [`users`].
    ids: Mutex<users::IdCache>,
    /// Decoded user records of recently used users, kept like `devices` (a write of a record
    /// the call has at hand puts it, any other write to `userid_user` forgets that user). See
    /// [`users`].
    records: Mutex<users::RecordCache>,
    /// Records decoded since open: lets tests assert that work is proportional to what is unread.
    reads: AtomicU64,
    flushes: AtomicU64,
    hash: keys::IndexHash,
}

/// Above this many pending writes, a store call first moves the write set into sled (not yet
/// durable) so that a huge operation (forgetting a user with a long log) does not hold it all
/// in memory. Each call's writes still go in together.
const SPILL_ENTRIES: usize = 50_000;

/// Locks one of the store's caches; one a panic left poisoned is cleared (it is only a cache)
/// and used again.
fn lock_cache<C>(cache: &Mutex<C>, clear: fn(&mut C)) -> std::sync::MutexGuard<'_, C> {
    cache.lock().unwrap_or_else(|p| {
        let mut guard = p.into_inner();
        clear(&mut guard);
        cache.clear_poison();
        guard
    })
}

impl Store {
    /// Opens (or creates) the sled store at `path`. Refuses a store of another schema version,
    /// or a non-empty directory that readtrack did not write, rather than overwrite it. A store
    /// of an earlier schema is upgraded first (see [`migrate`]), finishing an upgrade a crash
    /// interrupted.
    pub fn open(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let backend = SledBackend::open(&path, options)?;
        Ok(Self::over(Box::new(backend), Location::Sled(path), options))
    }

    /// Opens (or creates) the store at `location`, on the backend it names. On PostgreSQL this
    /// applies the project's migrations and takes the store's lease (refusing when another
    /// process holds it).
    pub fn open_location(location: &Location, options: &StoreOptions) -> Result<Store> {
        match location {
            Location::Sled(path) => Self::open(path, options),
            Location::Postgres(url) => {
                let backend = PgBackend::open(url, options)?;
                Ok(Self::over(Box::new(backend), location.clone(), options))
            }
        }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Round trips to the database since open (0 on sled): what a test measures a message by on
    /// PostgreSQL. A read is one; a commit is two (its statements pipelined, then `COMMIT`).
    #[doc(hidden)]
    pub fn round_trips(&self) -> u64 {
        self.backend.round_trips()
    }

    fn over(backend: Box<dyn Backend>, location: Location, options: &StoreOptions) -> Store {
        Store {
            backend,
            location,
            pending: Mutex::new(Pending::default()),
            devices: Mutex::new(Default::default()),
            ids: Mutex::new(Default::default()),
            records: Mutex::new(Default::default()),
            reads: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            hash: options.index_hash,
        }
    }

    /// The sled folder of a sled store; an empty path on PostgreSQL.
    pub fn path(&self) -> &Path {
        match &self.location {
            Location::Sled(path) => path,
            Location::Postgres(_) => Path::new(""),
        }
    }

    /// Makes every earlier write durable: applies the write set as one transaction, then flushes
    /// the backend. The only durability point.
    pub fn flush(&self) -> Result<()> {
        self.apply_pending()?;
        self.backend.flush()?;
        self.flushes.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves a consistent map (writes go in whole calls).
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the write set into the backend as one transaction (not yet durable). Kept on
    /// failure, so the next flush tries again.
    fn apply_pending(&self) -> Result<()> {
        let mut pending = self.pending();
        if pending.entries() == 0 {
            return Ok(());
        }
        self.backend.apply(&pending)?;
        pending.clear();
        Ok(())
    }

    /// Adds one call's writes to the write set.
    fn apply(&self, writes: Writes) -> Result<()> {
        self.apply_with(writes, None, None)
    }

    /// [`Store::apply`], for writes that store the device record `device` (user, number,
    /// record) or the user record `user` (id, record) as given: the caches take those records
    /// as they are instead of forgetting them. Any other write to `userdevice_cursor` makes
    /// the device cache forget the devices of the user it touches, any other write to
    /// `userid_user` the record cache that user, so what a cache holds is what a read of the
    /// trees would give.
    fn apply_with(
        &self,
        writes: Writes,
        device: Option<(UserId, DeviceNo, &DeviceRecord)>,
        user: Option<(UserId, &UserRecord)>,
    ) -> Result<()> {
        if self.pending().entries() > SPILL_ENTRIES {
            self.apply_pending()?;
        }
        // The caches' locks are held until the writes are in the write set: a reader filling
        // a cache (under the same lock) reads either before them or after them, never between.
        let mut cache = self.device_cache();
        let mut ids = self.id_cache();
        let mut records = self.record_cache();
        for (t, key, value) in writes.iter() {
            if t == T::JidUserid {
                ids.forget(key);
            }
            if t == T::UseridUser {
                match (user, keys::be_u64(key, 0)) {
                    (Some((id, record)), Some(written))
                        if value.is_some() && written == id && key.len() == 8 =>
                    {
                        records.put(id, record)
                    }
                    (_, Some(written)) => records.forget(written),
                    (_, None) => records.clear(),
                }
            }
            if t != T::UserdeviceCursor {
                continue;
            }
            match device {
                Some((user, no, record))
                    if value.is_some() && key == keys::user_device(user, no).as_slice() =>
                {
                    cache.put(user, no, record)
                }
                _ => match keys::be_u64(key, 0) {
                    Some(user) => cache.forget(user),
                    None => cache.clear(),
                },
            }
        }
        self.pending().add(writes);
        Ok(())
    }

    fn id_cache(&self) -> std::sync::MutexGuard<'_, users::IdCache> {
        lock_cache(&self.ids, users::IdCache::clear)
    }

    fn record_cache(&self) -> std::sync::MutexGuard<'_, users::RecordCache> {
        lock_cache(&self.records, users::RecordCache::clear)
    }

    fn device_cache(&self) -> std::sync::MutexGuard<'_, devices::DeviceCache> {
        lock_cache(&self.devices, devices::DeviceCache::clear)
    }

    fn get(&self, t: T, key: impl AsRef<[u8]>) -> Result<Option<IVec>> {
        if let Some(decided) = self.pending().get(t, key.as_ref()) {
            return Ok(decided);
        }
        self.backend.get(t, key.as_ref())
    }

    fn range(&self, t: T, bounds: Bounds) -> Merged<'_> {
        let pending = self.pending().range(t, &bounds, false);
        Merged::new(self.backend.range(t, bounds, false), pending, false)
    }

    fn range_rev(&self, t: T, bounds: Bounds) -> Merged<'_> {
        let pending = self.pending().range(t, &bounds, true);
        Merged::new(self.backend.range(t, bounds, true), pending, true)
    }

    fn scan_prefix(&self, t: T, prefix: impl AsRef<[u8]>) -> Merged<'_> {
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

    /// Bytes on disk (sled), or in the store's tables (PostgreSQL).
    pub fn size_on_disk(&self) -> Result<u64> {
        self.backend.size()
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
        self.backend.close();
    }
}
