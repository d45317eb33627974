//! Every key of every tree is built here. Keys are fixed width and big-endian so that a prefix or
//! range scan returns records in numeric order (`user ‖ seq` sorts by seq within a user).

pub type UserId = u64;
pub type Seq = u64;
/// Per-user device number, assigned on first sight; the device key string lives in the record.
pub type DeviceNo = u32;

/// A map keyed by readtrack's own user numbers, for the store's caches. The numbers are handed
/// out in order by the store, never chosen by a user, so one multiply spreads them as well as
/// the standard library's SipHash (which guards against keys an attacker picks) at a fraction
/// of its cost, paid several times per chat message.
pub type UserMap<V> = std::collections::HashMap<UserId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The hasher of [`UserMap`]: a user number times an odd constant (hashbrown takes its buckets
/// from the low bits, which sequential numbers keep distinct, and its tags from the high bits,
/// which the multiply fills).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// `userseq_message`: user(8) ‖ seq(8).
pub fn user_seq(user: UserId, seq: Seq) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&user.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn user_prefix(user: UserId) -> [u8; 8] {
    user.to_be_bytes()
}

/// Stable 64-bit FNV-1a of a message id. Message ids are free text of any length; hashing keeps
/// the index key fixed width. Collisions are resolved by reading the message record.
pub fn msgid_hash(msgid: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in msgid.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A nonzero hash of an id or a peer for `userblock_index`, where 0 means "none".
pub fn index_hash(s: &str) -> u64 {
    msgid_hash(s).max(1)
}

/// How `userblock_index` hashes ids and peers. The hash only narrows a search: every match is
/// checked against the message record, so a collision (which anyone can craft for FNV-1a)
/// costs a record read, never a wrong answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndexHash {
    #[default]
    Fnv1a,
    /// Every value hashes alike: every lookup is a collision. For tests of the resolution.
    Collide,
}

impl IndexHash {
    pub fn of(self, s: &str) -> u64 {
        match self {
            IndexHash::Fnv1a => index_hash(s),
            IndexHash::Collide => 1,
        }
    }
}

/// Messages per `userblock_index` record. sled splits a leaf at 16 keys whatever their size,
/// and its page table costs about 300 bytes per page in memory, so one small key per message
/// cost about 20 bytes of RSS per message per index: the log's index is one record per 32
/// messages instead.
pub const INDEX_BLOCK: Seq = 32;

/// `userblock_index`: user(8) ‖ block(8), block = seq / [`INDEX_BLOCK`]: the id and peer of each
/// message of the block, for receipts (by id) and read markers (by peer).
pub fn user_block(user: UserId, block: u64) -> [u8; 16] {
    user_seq(user, block)
}

pub fn block_of(seq: Seq) -> u64 {
    seq / INDEX_BLOCK
}

/// `userpeer_conversation`: user(8) ‖ peer bare JID (UTF-8). The whole JID (schema 5; a hash
/// before): two peers can never share a conversation, whatever their names.
pub fn user_peer(user: UserId, peer: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + peer.len());
    k.extend_from_slice(&user.to_be_bytes());
    k.extend_from_slice(peer.as_bytes());
    k
}

/// `userdevice_cursor`: user(8) ‖ device(4).
pub fn user_device(user: UserId, device: DeviceNo) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&user.to_be_bytes());
    k[8..].copy_from_slice(&device.to_be_bytes());
    k
}

/// `userdeviceseq_delivery`: user(8) ‖ device(4) ‖ seq(8).
pub fn user_device_seq(user: UserId, device: DeviceNo, seq: Seq) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..12].copy_from_slice(&user_device(user, device));
    k[12..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `deadline_userseq`: deadline ms(8) ‖ user(8) ‖ seq(8): a range scan up to `now` lists due timers.
pub fn deadline_user_seq(deadline_ms: u64, user: UserId, seq: Seq) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&deadline_ms.to_be_bytes());
    k[8..].copy_from_slice(&user_seq(user, seq));
    k
}

/// Reads a big-endian u64 at `at`; `None` when the key is too short (a corrupt key).
pub fn be_u64(key: &[u8], at: usize) -> Option<u64> {
    key.get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

pub fn be_u32(key: &[u8], at: usize) -> Option<u32> {
    key.get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        assert!(user_seq(1, 255) < user_seq(1, 256));
        assert!(user_seq(1, u64::MAX) < user_seq(2, 0));
        assert!(deadline_user_seq(10, 9, 9) < deadline_user_seq(11, 0, 0));
        assert!(user_device_seq(1, 1, 300) < user_device_seq(1, 2, 1));
        assert!(user_block(1, block_of(255)) < user_block(1, block_of(256)));
        assert_eq!(block_of(31), block_of(0));
        assert_ne!(block_of(32), block_of(31));
    }

    #[test]
    fn decode_what_was_encoded() {
        let k = deadline_user_seq(7, 8, 9);
        assert_eq!(
            (be_u64(&k, 0), be_u64(&k, 8), be_u64(&k, 16)),
            (Some(7), Some(8), Some(9))
        );
        assert_eq!(be_u64(&k, 20), None);
    }

    #[test]
    fn msgid_hash_is_stable() {
        // Pinned: a change here would orphan every stored id index entry.
        assert_eq!(msgid_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(msgid_hash("V4NkR-38"), msgid_hash("V4NkR-38"));
        assert_eq!(msgid_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// User numbers come in order: each must hash apart from the others, and the low bits
    /// (hashbrown's bucket) and the high seven (its tag) must both vary.
    #[test]
    fn sequential_user_numbers_hash_apart() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (0..100_000u64).map(|n| build.hash_one(n)).collect();
        let distinct: std::collections::HashSet<_> = hashes.iter().collect();
        assert_eq!(distinct.len(), hashes.len());
        let low: std::collections::HashSet<_> = hashes.iter().map(|h| h & 0xfff).collect();
        let tags: std::collections::HashSet<_> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(low.len(), 4096);
        assert_eq!(tags.len(), 128);
    }
}
