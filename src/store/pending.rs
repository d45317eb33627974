//! The write set of the current group commit. Store calls write here, not to sled; reads look
//! here first. [`super::Store::flush`] applies the whole set as one sled transaction and then
//! flushes, so one commit costs one transaction whatever the number of messages in it, and a
//! crash leaves the store exactly as at some commit.

use std::collections::BTreeMap;
use std::ops::Bound;

use sled::IVec;

use super::backend::RowIter;
use super::Result;

/// The trees of the store, in the order of [`TREE_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum T {
    Meta,
    JidUserid,
    UseridUser,
    UserseqMessage,
    UserblockIndex,
    UserdeviceCursor,
    UserdeviceseqDelivery,
    DeadlineUserseq,
    UserpeerConversation,
}

pub(super) const TREES: usize = 9;

impl T {
    /// Every tree, in the order of [`TREE_NAMES`] (a tree's index is `T as usize`).
    pub(super) const ALL: [T; TREES] = [
        T::Meta,
        T::JidUserid,
        T::UseridUser,
        T::UserseqMessage,
        T::UserblockIndex,
        T::UserdeviceCursor,
        T::UserdeviceseqDelivery,
        T::DeadlineUserseq,
        T::UserpeerConversation,
    ];
}

pub(super) const TREE_NAMES: [&str; TREES] = [
    "meta",
    "jid_userid",
    "userid_user",
    "userseq_message",
    "userblock_index",
    "userdevice_cursor",
    "userdeviceseq_delivery",
    "deadline_userseq",
    "userpeer_conversation",
];

/// The writes of one store call, applied to the write set all at once (or not at all): the
/// tree, the key, the value (`None`: removed), and whether the key is new ([`Writes::insert`]).
#[derive(Default)]
pub(super) struct Writes(Vec<(T, Vec<u8>, Option<IVec>, bool)>);

impl Writes {
    pub(super) fn put(&mut self, tree: T, key: impl AsRef<[u8]>, value: impl Into<IVec>) {
        self.0
            .push((tree, key.as_ref().to_vec(), Some(value.into()), false));
    }

    /// A put of a key the store cannot hold yet (a new message's log entry, timer, deliveries,
    /// a new index block): a backend may insert it without looking for an old row, and a
    /// removal of the key before the set is applied cancels both writes ([`Pending::add`]). A
    /// backend that finds the row there after all (a store not as readtrack wrote it) must still
    /// write it (PostgreSQL then upserts, [`super::pg`]).
    pub(super) fn insert(&mut self, tree: T, key: impl AsRef<[u8]>, value: impl Into<IVec>) {
        self.0
            .push((tree, key.as_ref().to_vec(), Some(value.into()), true));
    }

    pub(super) fn del(&mut self, tree: T, key: impl AsRef<[u8]>) {
        self.0.push((tree, key.as_ref().to_vec(), None, false));
    }

    /// The writes, in the order they were made: (tree, key, new value or `None` for removed).
    pub(super) fn iter(&self) -> impl Iterator<Item = (T, &[u8], Option<&IVec>)> {
        self.0
            .iter()
            .map(|(t, k, v, _)| (*t, k.as_slice(), v.as_ref()))
    }
}

/// One key's write in the set.
pub(super) struct Entry {
    /// The new value (`None`: removed).
    value: Option<IVec>,
    /// The committed store does not hold the key ([`Writes::insert`]): true of a key until the
    /// set is applied, whatever is written to it meanwhile.
    new: bool,
}

impl Entry {
    /// A new key removed again: nothing for a backend to write, and nothing to read either.
    fn cancelled(&self) -> bool {
        self.new && self.value.is_none()
    }
}

/// Key → its write.
type TreeWrites = BTreeMap<Vec<u8>, Entry>;

/// One write a backend applies: the key, the new value (`None`: removed), and whether the
/// committed store does not hold the key ([`Writes::insert`]).
pub(super) struct Write<'a> {
    pub(super) key: &'a [u8],
    pub(super) value: Option<&'a IVec>,
    pub(super) new: bool,
}

/// The write set, per tree.
#[derive(Default)]
pub(super) struct Pending {
    maps: [TreeWrites; TREES],
    /// Writes a backend applies, per tree (the map's entries less the cancelled ones).
    live: [usize; TREES],
    entries: usize,
}

impl Pending {
    pub(super) fn entries(&self) -> usize {
        self.entries
    }

    /// Adds one call's writes. Removing a key the set inserted as new cancels the insert: the
    /// committed store never held it, so neither write reaches the backend. A live delivery
    /// acked before its commit, and a receipt timer settled before it, cost no backend write
    /// (each was a removal of a key the backend never held: in sled's transaction a read of
    /// the key and a write). The cancelled key stays in the map, marked, so that a later read
    /// of it needs no backend, and a later put of it is again one of a key the store does not
    /// hold.
    pub(super) fn add(&mut self, writes: Writes) {
        for (tree, key, value, new) in writes.0 {
            let t = tree as usize;
            match self.maps[t].entry(key) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(Entry { value, new });
                    self.live[t] += 1;
                    self.entries += 1;
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    let entry = slot.get_mut();
                    let was_cancelled = entry.cancelled();
                    entry.new |= new;
                    entry.value = value;
                    match (was_cancelled, entry.cancelled()) {
                        (true, false) => {
                            self.live[t] += 1;
                            self.entries += 1;
                        }
                        (false, true) => {
                            self.live[t] -= 1;
                            self.entries -= 1;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// `Some(value)` when the write set decides the key (`Some(None)`: removed in this commit,
    /// or inserted and removed again: then the committed store does not hold it either, and
    /// on PostgreSQL asking would be a round trip).
    pub(super) fn get(&self, tree: T, key: &[u8]) -> Option<Option<IVec>> {
        self.maps[tree as usize]
            .get(key)
            .map(|entry| entry.value.clone())
    }

    /// The pending writes of `tree` within the bounds, in iteration order (a cancelled insert
    /// is no write: a row the committed store holds there after all stays visible).
    pub(super) fn range(
        &self,
        tree: T,
        bounds: &Bounds,
        rev: bool,
    ) -> Vec<(Vec<u8>, Option<IVec>)> {
        let map = &self.maps[tree as usize];
        if map.is_empty() {
            return Vec::new();
        }
        let b = (as_slice(&bounds.0), as_slice(&bounds.1));
        let it = map
            .range::<[u8], _>(b)
            .filter(|(_, e)| !e.cancelled())
            .map(|(k, e)| (k.clone(), e.value.clone()));
        if rev {
            it.rev().collect()
        } else {
            it.collect()
        }
    }

    /// The trees with writes to apply, each with its writes in key order.
    pub(super) fn trees(&self) -> impl Iterator<Item = (usize, impl Iterator<Item = Write<'_>>)> {
        self.maps
            .iter()
            .enumerate()
            .filter(|(t, _)| self.live[*t] > 0)
            .map(|(t, map)| {
                let writes = map
                    .iter()
                    .filter(|(_, e)| !e.cancelled())
                    .map(|(k, e)| Write {
                        key: k,
                        value: e.value.as_ref(),
                        new: e.new,
                    });
                (t, writes)
            })
    }

    pub(super) fn clear(&mut self) {
        for map in &mut self.maps {
            map.clear();
        }
        self.live = [0; TREES];
        self.entries = 0;
    }
}

pub(super) type Bounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The keys starting with `prefix`.
pub(super) fn prefix_bounds(prefix: &[u8]) -> Bounds {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return (Bound::Included(prefix.to_vec()), Bound::Excluded(end));
        }
    }
    (Bound::Included(prefix.to_vec()), Bound::Unbounded)
}

/// A backend's range merged with the write set's entries in the same range: pending values
/// win, pending removals hide the key. `committed` comes in iteration order already (reversed
/// for `rev`).
pub(super) struct Merged<'a> {
    committed: RowIter<'a>,
    sled_head: Option<(IVec, IVec)>,
    sled_done: bool,
    pending: std::iter::Peekable<std::vec::IntoIter<(Vec<u8>, Option<IVec>)>>,
    rev: bool,
}

impl<'a> Merged<'a> {
    pub(super) fn new(
        committed: RowIter<'a>,
        pending: Vec<(Vec<u8>, Option<IVec>)>,
        rev: bool,
    ) -> Merged<'a> {
        Merged {
            committed,
            sled_head: None,
            sled_done: false,
            pending: pending.into_iter().peekable(),
            rev,
        }
    }
}

impl Iterator for Merged<'_> {
    type Item = Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.sled_head.is_none() && !self.sled_done {
                match self.committed.next() {
                    None => self.sled_done = true,
                    Some(Err(e)) => return Some(Err(e)),
                    Some(Ok(kv)) => self.sled_head = Some(kv),
                }
            }
            let from_pending = match (&self.sled_head, self.pending.peek()) {
                (None, None) => return None,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some((sk, _)), Some((pk, _))) => {
                    let mut order = pk.as_slice().cmp(sk.as_ref());
                    if self.rev {
                        order = order.reverse();
                    }
                    match order {
                        std::cmp::Ordering::Less => true,
                        std::cmp::Ordering::Equal => {
                            self.sled_head = None; // shadowed by the pending write
                            true
                        }
                        std::cmp::Ordering::Greater => false,
                    }
                }
            };
            if !from_pending {
                return self.sled_head.take().map(Ok);
            }
            if let Some((k, Some(v))) = self.pending.next() {
                return Some(Ok((IVec::from(k), v)));
            }
            // A pending removal: the key is gone; look further.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(k: u8) -> Vec<u8> {
        // Two-byte keys with 0xFF in them, so prefix bounds meet their edge case.
        vec![k / 16 * 17, k]
    }

    proptest! {
        /// A range over sled + the write set equals the same range over a model map where the
        /// committed writes were followed by the pending ones, both directions.
        #[test]
        fn merged_range_is_the_model(
            committed in proptest::collection::vec((any::<u8>(), proptest::option::of(any::<u8>())), 0..40),
            pending in proptest::collection::vec((any::<u8>(), proptest::option::of(any::<u8>())), 0..40),
            lo in any::<u8>(),
            hi in any::<u8>(),
            prefix in any::<u8>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree("t").unwrap();
            let mut model = BTreeMap::new();
            for (k, v) in &committed {
                match v {
                    Some(v) => { tree.insert(key(*k), vec![*v]).unwrap(); model.insert(key(*k), vec![*v]); }
                    None => { tree.remove(key(*k)).unwrap(); model.remove(&key(*k)); }
                }
            }
            let mut p = Pending::default();
            let mut w = Writes::default();
            for (k, v) in &pending {
                match v {
                    Some(v) => { w.put(T::Meta, key(*k), vec![*v]); model.insert(key(*k), vec![*v]); }
                    None => { w.del(T::Meta, key(*k)); model.remove(&key(*k)); }
                }
            }
            p.add(w);
            for (k, _) in &pending {
                let expected = model.get(&key(*k)).cloned();
                prop_assert_eq!(p.get(T::Meta, &key(*k)).map(|v| v.map(|v| v.to_vec())), Some(expected));
            }
            let ranges: Vec<Bounds> = vec![
                (Bound::Included(key(lo)), Bound::Excluded(key(hi))),
                (Bound::Unbounded, Bound::Included(key(hi))),
                prefix_bounds(&[prefix / 16 * 17]),
                (Bound::Unbounded, Bound::Unbounded),
            ];
            for bounds in ranges {
                if let (Bound::Included(a), Bound::Excluded(b)) = &bounds {
                    if a > b { continue; }
                }
                let b2 = (as_slice(&bounds.0), as_slice(&bounds.1));
                let want: Vec<(Vec<u8>, Vec<u8>)> = model.range::<[u8], _>(b2).map(|(k, v)| (k.clone(), v.clone())).collect();
                for rev in [false, true] {
                    let committed: RowIter<'_> = if rev {
                        Box::new(tree.range(bounds.clone()).rev().map(|kv| kv.map_err(crate::store::StoreError::Sled)))
                    } else {
                        Box::new(tree.range(bounds.clone()).map(|kv| kv.map_err(crate::store::StoreError::Sled)))
                    };
                    let got: Vec<(Vec<u8>, Vec<u8>)> = Merged::new(committed, p.range(T::Meta, &bounds, rev), rev)
                        .map(|kv| { let (k, v) = kv.unwrap(); (k.to_vec(), v.to_vec()) })
                        .collect();
                    let mut want = want.clone();
                    if rev { want.reverse(); }
                    prop_assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn removing_a_key_inserted_as_new_in_the_same_set_writes_nothing() {
        let mut p = Pending::default();
        let mut w = Writes::default();
        w.insert(T::UserdeviceseqDelivery, key(1), vec![1]);
        w.put(T::UserdeviceseqDelivery, key(2), vec![2]);
        p.add(w);
        let mut w = Writes::default();
        w.del(T::UserdeviceseqDelivery, key(1));
        w.del(T::UserdeviceseqDelivery, key(2));
        p.add(w);
        // The new key is gone from the set; a key that may be stored keeps its removal.
        assert_eq!(p.entries(), 1);
        assert_eq!(p.get(T::UserdeviceseqDelivery, &key(1)), Some(None));
        assert_eq!(p.get(T::UserdeviceseqDelivery, &key(2)), Some(None));
        let written: Vec<Vec<u8>> = p
            .trees()
            .flat_map(|(_, writes)| writes.map(|w| w.key.to_vec()).collect::<Vec<_>>())
            .collect();
        assert_eq!(written, vec![key(2)]);
        // Put again, the key is still one the committed store does not hold.
        let mut w = Writes::default();
        w.put(T::UserdeviceseqDelivery, key(1), vec![3]);
        p.add(w);
        let news: Vec<(Vec<u8>, bool)> = p
            .trees()
            .flat_map(|(_, writes)| writes.map(|w| (w.key.to_vec(), w.new)).collect::<Vec<_>>())
            .collect();
        assert_eq!(news, vec![(key(1), true), (key(2), false)]);
        assert_eq!(p.entries(), 2);
        // A tree whose only write was cancelled has nothing for a backend, and hides nothing
        // from a range.
        let mut w = Writes::default();
        w.insert(T::DeadlineUserseq, key(7), vec![7]);
        p.add(w);
        let mut w = Writes::default();
        w.del(T::DeadlineUserseq, key(7));
        p.add(w);
        assert_eq!(p.entries(), 2);
        assert_eq!(p.get(T::DeadlineUserseq, &key(7)), Some(None));
        let trees: Vec<usize> = p.trees().map(|(t, _)| t).collect();
        assert_eq!(trees, vec![T::UserdeviceseqDelivery as usize]);
        let all = (Bound::Unbounded, Bound::Unbounded);
        assert!(p.range(T::DeadlineUserseq, &all, false).is_empty());
    }

    #[test]
    fn prefix_bounds_of_all_ff_is_unbounded_above() {
        assert_eq!(
            prefix_bounds(&[1, 0xFF]),
            (Bound::Included(vec![1, 0xFF]), Bound::Excluded(vec![2]))
        );
        assert_eq!(
            prefix_bounds(&[0xFF, 0xFF]),
            (Bound::Included(vec![0xFF, 0xFF]), Bound::Unbounded)
        );
    }
}
