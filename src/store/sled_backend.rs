//! The sled backend: one sled tree per tree of the layout, the write set applied as one sled
//! transaction, durability by `Db::flush`. The schema check and the upgrades of older stores
//! ([`super::migrate`]) are sled's alone: PostgreSQL stores start at schema 5.

use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::IVec;

use super::backend::{Backend, RowIter};
use super::pending::{Bounds, Pending, Write, T, TREES, TREE_NAMES};
use super::{migrate, Result, StoreError, StoreOptions, META_SCHEMA, SCHEMA_VERSION};

/// How long [`SledBackend::open`] waits for another holder of the store's lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub(super) struct SledBackend {
    pub(super) path: PathBuf,
    pub(super) db: sled::Db,
    /// Indexed by [`T`].
    pub(super) trees: [sled::Tree; TREES],
}

impl SledBackend {
    /// Opens (or creates) the store at the current schema: refuses a store of another schema
    /// version, or a non-empty directory that readtrack did not write, rather than overwrite
    /// it; upgrades a store of an earlier schema first (see [`migrate`]), finishing an upgrade
    /// a crash interrupted.
    pub(super) fn open(path: &Path, options: &StoreOptions) -> Result<SledBackend> {
        migrate::finish_interrupted(path)?;
        let store = Self::open_at(path, options)?;
        let found = store.check_schema()?;
        if found == SCHEMA_VERSION {
            // A copy left by an upgrade a crash interrupted early; the store's lock is ours.
            migrate::remove_dir(&migrate::upgrading_path(path))?;
            return Ok(store);
        }
        let fresh = migrate::upgrading_path(path);
        store.upgrade_into(&fresh, found, options)?;
        drop(store);
        migrate::swap_in(path, &fresh)?;
        let store = Self::open_at(path, options)?;
        store.check_schema()?;
        Ok(store)
    }

    fn open_at(path: &Path, options: &StoreOptions) -> Result<SledBackend> {
        let db = Self::open_db(path, options)?;
        // Before `open_tree` below creates any missing tree: refusing a store after adding
        // readtrack's trees to it would be exactly the silent rewrite this check exists to stop.
        Self::check_schema_untouched(&db, path)?;
        let mut trees = Vec::with_capacity(TREES);
        for name in TREE_NAMES {
            trees.push(db.open_tree(name)?);
        }
        Ok(SledBackend {
            trees: trees
                .try_into()
                .unwrap_or_else(|_| unreachable!("one tree per name")),
            db,
            path: path.to_path_buf(),
        })
    }

    /// sled releases its file lock a little after the last handle is dropped (its flusher
    /// thread lets go asynchronously), and a restarting service can race its predecessor's exit,
    /// so a held lock is retried for a short while before it is reported.
    pub(super) fn open_db(path: &Path, options: &StoreOptions) -> Result<sled::Db> {
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
    pub(super) fn check_schema_untouched(db: &sled::Db, path: &Path) -> Result<()> {
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
    pub(super) fn known_version(v: &[u8], path: &Path) -> Result<u32> {
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

    pub(super) fn tree(&self, t: T) -> &sled::Tree {
        &self.trees[t as usize]
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
}

impl Backend for SledBackend {
    fn get(&self, tree: T, key: &[u8]) -> Result<Option<IVec>> {
        Ok(self.tree(tree).get(key)?)
    }

    fn range(&self, tree: T, bounds: Bounds, rev: bool) -> RowIter<'_> {
        let it = self.tree(tree).range(bounds);
        if rev {
            Box::new(it.rev().map(|kv| kv.map_err(StoreError::Sled)))
        } else {
            Box::new(it.map(|kv| kv.map_err(StoreError::Sled)))
        }
    }

    fn apply(&self, pending: &Pending) -> Result<()> {
        let written: Vec<(usize, Vec<Write<'_>>)> = pending
            .trees()
            .map(|(i, writes)| (i, writes.collect()))
            .collect();
        let trees: Vec<&sled::Tree> = written.iter().map(|(i, _)| &self.trees[*i]).collect();
        trees[..]
            .transaction(|txs| {
                for (tx, (_, writes)) in txs.iter().zip(&written) {
                    for w in writes {
                        match w.value {
                            Some(v) => tx.insert(w.key, v.clone())?,
                            None => tx.remove(w.key)?,
                        };
                    }
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => self.write_error(e),
            })
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.write_error(e))?;
        Ok(())
    }

    fn size(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}
