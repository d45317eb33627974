//! What a backend must provide under the typed store. [`super::Store`]'s calls (log a message,
//! apply an ack, list due timers, ...) are the store interface the engine uses, and they hold
//! every rule of the layout once, over ordered key-value trees. A backend provides those trees:
//! a point read, an ordered range in either direction, and the atomic application of a write
//! set. sled implements it with its own trees ([`super::sled_backend`]); PostgreSQL with one table per
//! tree whose primary key is the tree's key order ([`super::pg`]).
//!
//! Keys and values stay bytes at this boundary: the byte key built in [`super::keys`] is the
//! one description of a tree's order, and a backend with typed columns decodes it (and asserts
//! that it can) instead of the typed layer learning two layouts.

use sled::IVec;

use super::pending::{Bounds, Pending, T};
use super::Result;

/// A committed key and value.
pub(super) type Row = (IVec, IVec);

/// Committed rows of one tree in iteration order, read lazily: a caller that stops early must
/// not pay for the rest of the range.
pub(super) type RowIter<'a> = Box<dyn Iterator<Item = Result<Row>> + 'a>;

pub(super) trait Backend: Send + Sync {
    /// The committed value of `key`.
    fn get(&self, tree: T, key: &[u8]) -> Result<Option<IVec>>;

    /// Committed rows within `bounds`, in key order, or reversed with `rev`.
    fn range(&self, tree: T, bounds: Bounds, rev: bool) -> RowIter<'_>;

    /// Applies the write set as one transaction: after a crash either all of it is there or
    /// none. It need not be durable yet ([`Backend::flush`] makes it so). On failure nothing
    /// was applied and the caller keeps the write set to try again.
    fn apply(&self, writes: &Pending) -> Result<()>;

    /// Makes every applied write durable: the only point after which a write may be announced.
    fn flush(&self) -> Result<()>;

    /// Bytes the store occupies (on disk, or in the database's tables).
    fn size(&self) -> Result<u64>;

    /// Round trips to a database server since open: the times a call waited for the server's
    /// answer (a local backend sends nothing).
    fn round_trips(&self) -> u64 {
        0
    }

    /// Closes the backend after the last flush (releases what it holds: a lease, a lock).
    fn close(&self) {}
}
