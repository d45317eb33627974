//! A look at a store without using it, for `readtrack check`: whether it is there, whether its
//! lock is free, and whether this readtrack reads its schema. Unlike [`Store::open`] it never
//! upgrades, never creates a missing store, and adds no tree.

use std::path::Path;

use super::sled_backend::SledBackend;
use super::{migrate, Result, StoreOptions, META_SCHEMA, SCHEMA_VERSION};

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    /// Nothing at the path: `serve` creates the store.
    Absent,
    /// A sled database with no readtrack data yet.
    Empty,
    /// A store of this readtrack's schema.
    Current,
    /// A store of an older schema that the next `serve` upgrades (into a copy beside it).
    Upgradable { found: u32 },
}

/// Looks at the store at `path`. A held lock is [`super::StoreError::Locked`] (after the short
/// wait [`Store::open`] also allows); a schema this readtrack does not read is
/// [`super::StoreError::SchemaVersion`] or [`super::StoreError::NoSchema`].
pub fn inspect(path: &Path) -> Result<StoreState> {
    if !path.exists() {
        return Ok(StoreState::Absent);
    }
    // A small cache: only the meta tree is read.
    let db = SledBackend::open_db(
        path,
        &StoreOptions {
            cache_bytes: 1024 * 1024,
            ..StoreOptions::default()
        },
    )?;
    SledBackend::check_schema_untouched(&db, path)?;
    if !db.tree_names().iter().any(|n| n.as_ref() == b"meta") {
        return Ok(StoreState::Empty);
    }
    let Some(version) = db.open_tree("meta")?.get(META_SCHEMA)? else {
        return Ok(StoreState::Empty);
    };
    Ok(match SledBackend::known_version(&version, path)? {
        SCHEMA_VERSION => StoreState::Current,
        found => {
            debug_assert!(migrate::UPGRADABLE.contains(&found));
            StoreState::Upgradable { found }
        }
    })
}
