//! Values stored in the trees (serde + bincode 2, standard config). Adding a field is a schema
//! change: bump `SCHEMA_VERSION` and add a migration.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::keys::{DeviceNo, Seq};
use super::StoreError;

/// `userid_user`: one per user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Bare JID.
    pub jid: String,
    /// Highest seq assigned; 0 before the first message.
    pub head: Seq,
    /// Lowest seq still stored: retention deletes a prefix of the log.
    pub first_seq: Seq,
    /// Next device number to hand out.
    pub next_device: DeviceNo,
    /// The server's token for this account (schema 5): a re-created account with the same
    /// name has another, and never sees the old one's data.
    pub account: Option<String>,
    /// Bytes of the stanzas of the messages stored in the user's log (schema 5), kept on append,
    /// delete and purge: the `[limits] max_log_bytes_per_user` check costs no scan.
    pub log_bytes: u64,
}

impl UserRecord {
    /// Messages stored in the user's log: retention and the log limits delete a prefix, so
    /// every seq from `first_seq` to `head` is stored.
    pub fn log_messages(&self) -> u64 {
        (self.head + 1).saturating_sub(self.first_seq.max(1))
    }
}

/// Where a message stands with respect to the receipt policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptState {
    /// The policy asks for no receipt (or the dialect has no bounces).
    NotRequired,
    /// A timer runs until `deadline`; no device has acked yet.
    Waiting { deadline: u64 },
    /// Some device of the recipient acked it.
    Acked,
    /// The timer fired and the sender got the delay bounce (the server confirmed it).
    Bounced,
    /// The timer fired and the bounce is on its way; until the server confirms it, the timer
    /// stays armed for `retry` and the bounce is sent again then (it is idempotent: the
    /// module executes one command id once).
    Bouncing { retry: u64, attempts: u32 },
}

impl ReceiptState {
    /// The deadline of the timer this state keeps in `deadline_userseq`, if any.
    pub fn timer(&self) -> Option<u64> {
        match self {
            ReceiptState::Waiting { deadline } => Some(*deadline),
            ReceiptState::Bouncing { retry, .. } => Some(*retry),
            _ => None,
        }
    }
}

/// `userseq_message`: one logged message for one recipient user.
///
/// Schema 5: the message is kept as the stanza the server routed (`stanza`), every child and
/// namespace included; the typed fields beside it are what the engine looks up without parsing
/// it (ids, sender, receipt state). A replay is `stanza` with only `to` changed and markers added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub seq: Seq,
    /// readtrack's stanza id (UUID v7), exposed as XEP-0359 on replays where the server's
    /// archive gave none.
    pub stanza_id: u128,
    /// The sender's `id` attribute; receipts name it.
    pub msg_id: Option<String>,
    /// The original sender as received (full JID for local clients).
    pub from: String,
    /// The message `type` attribute (`None` = normal).
    pub kind: Option<String>,
    /// Time of logging, ms since the epoch.
    pub logged_at: u64,
    /// Sent by the server domain or a configured system sender.
    pub system: bool,
    pub receipt: ReceiptState,
    /// The server's own archive id (MAM), if it told us.
    pub archive_id: Option<String>,
    /// Sent by the user from one of their own devices; `to` is the peer.
    pub sent: bool,
    pub to: Option<String>,
    /// The stanza in readtrack's stored form (`stanza::original`): the routed `<message>` with
    /// `xmlns="jabber:client"`, without its `to` (a received message; a sent one keeps it) and
    /// without `<stanza-id by=user>` elements nobody but the archive may set.
    pub stanza: String,
    /// A receipt or chat marker with no content of its own: replayed so every device sees it,
    /// acked by being written (no client receipts a receipt), never counted as unread.
    pub signal: bool,
    /// The original already asks for a XEP-0184 receipt: a replay adds no second request.
    pub asks_receipt: bool,
}

impl MessageRecord {
    /// Whether the message counts in its conversation's unread count.
    pub fn counts_as_unread(&self) -> bool {
        !self.sent && !self.signal
    }

    /// The other party of the conversation, as a bare JID.
    pub fn peer(&self) -> String {
        peer_of(self.sent, self.to.as_deref(), &self.from)
    }
}

/// The fields of a [`MessageRecord`] before its stanza, in the same order: what a receipt or
/// marker looks its message up by. Decoded from a message record's bytes (bincode reads a
/// struct's fields in order and leaves the rest unread), so the stanza is neither copied nor
/// allocated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageHead {
    pub seq: Seq,
    pub stanza_id: u128,
    pub msg_id: Option<String>,
    pub from: String,
    pub kind: Option<String>,
    pub logged_at: u64,
    pub system: bool,
    pub receipt: ReceiptState,
    pub archive_id: Option<String>,
    pub sent: bool,
    pub to: Option<String>,
}

impl MessageHead {
    /// [`MessageRecord::peer`].
    pub fn peer(&self) -> String {
        peer_of(self.sent, self.to.as_deref(), &self.from)
    }
}

fn peer_of(sent: bool, to: Option<&str>, from: &str) -> String {
    let jid = if sent { to.unwrap_or("") } else { from };
    jid.split('/').next().unwrap_or("").to_string()
}

/// `userpeer_conversation`: the user's read state in one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// The peer's bare JID.
    pub peer: String,
    /// Newest message of the conversation, either direction.
    pub last_seq: Seq,
    pub last_at: u64,
    /// Everything received at or below this seq was displayed on some device (XEP-0333).
    pub read_upto: Seq,
    /// Received messages above `read_upto` still stored.
    pub unread: u64,
}

/// `userdevice_cursor`: one device of one user and its read cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device key (from the resource by the configured rule, or a stable client id).
    pub key: String,
    /// The last resource seen for this device.
    pub resource: String,
    /// Every seq at or below this is acked.
    pub acked_upto: Seq,
    /// Acked seqs above `acked_upto`, ascending, no duplicates. Stays short: it only holds acks
    /// that arrived out of order.
    pub acked_above: Vec<Seq>,
    /// Incremented at every availability; deliveries remember the session they belong to.
    pub session: u64,
    pub online: bool,
    pub first_seen: u64,
    pub last_seen: u64,
    /// What replays wrote to the device (schema 3): one range instead of a delivery record per
    /// replayed message.
    pub replayed: ReplayRange,
    /// The server's id of the connection `session` counts (schema 4; `None` when the server
    /// gave none). A snapshot after a reconnect continues `session` only for this same id: a
    /// device that reconnected with the same resource while readtrack was away is a new session.
    pub session_id: Option<String>,
    /// The device speaks the seed dialect (schema 5): its resource matched a configured
    /// pattern, or it sent a seed stanza. Under `dialect = "auto"` only such devices get the
    /// seed's acks, bounces and offline markers.
    pub speaks_seed: bool,
}

/// What replays wrote to a device. Live writes still have a delivery record each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRange {
    /// The session the last replay wrote to, and the highest seq it wrote: every unacked
    /// message at or below `upto` is in flight to that session.
    pub session: u64,
    pub upto: Seq,
    /// The highest seq any replay wrote: unacked messages at or below it are pending.
    pub max_upto: Seq,
}

impl DeviceRecord {
    pub fn is_acked(&self, seq: Seq) -> bool {
        seq <= self.acked_upto || self.acked_above.binary_search(&seq).is_ok()
    }

    /// Whether a replay already wrote `seq` to the device's current session.
    pub fn replayed_in_session(&self, seq: Seq) -> bool {
        self.replayed.session == self.session && seq <= self.replayed.upto
    }

    /// Records that a replay in the current session wrote everything unacked up to `upto`.
    pub fn record_replay(&mut self, upto: Seq) {
        if self.replayed.session != self.session || upto > self.replayed.upto {
            self.replayed.session = self.session;
            self.replayed.upto = upto;
        }
        self.replayed.max_upto = self.replayed.max_upto.max(upto);
    }

    /// Marks one seq acked; returns false when it already was. Keeps the cursor compact: once the
    /// gap right above `acked_upto` is filled, the run above it folds into `acked_upto`.
    pub fn ack(&mut self, seq: Seq) -> bool {
        if self.is_acked(seq) {
            return false;
        }
        if seq == self.acked_upto + 1 {
            self.acked_upto = seq;
        } else {
            let at = self.acked_above.binary_search(&seq).unwrap_err();
            self.acked_above.insert(at, seq);
        }
        self.fold();
        true
    }

    /// Acks everything at or below `seq` (a displayed marker). Returns whether anything moved.
    pub fn ack_upto(&mut self, seq: Seq) -> bool {
        if seq <= self.acked_upto {
            return false;
        }
        self.acked_upto = seq;
        self.fold();
        true
    }

    fn fold(&mut self) {
        let upto = self.acked_upto;
        let below = self.acked_above.partition_point(|s| *s <= upto);
        self.acked_above.drain(..below);
        let run = self
            .acked_above
            .iter()
            .enumerate()
            .take_while(|(i, s)| **s == self.acked_upto + 1 + *i as u64)
            .count();
        if run > 0 {
            self.acked_upto += run as u64;
            self.acked_above.drain(..run);
        }
    }
}

/// One message in a `userblock_index` record (the block holds the messages of 32 consecutive
/// seqs that are still stored, in seq order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub seq: Seq,
    /// `keys::index_hash` of the message id; 0 when it has none.
    pub msgid: u64,
    /// `keys::index_hash` of the peer of a received message that counts as unread; 0 for a
    /// message the user sent and for a signal (receipt, marker).
    pub peer: u64,
}

impl IndexEntry {
    /// The entry of a logged message (its `seq` assigned).
    pub fn of(m: &MessageRecord, hash: super::keys::IndexHash) -> IndexEntry {
        IndexEntry {
            seq: m.seq,
            msgid: m.msg_id.as_deref().map_or(0, |id| hash.of(id)),
            peer: if m.sent || m.signal {
                0
            } else {
                hash.of(&m.peer())
            },
        }
    }
}

/// `userdeviceseq_delivery`: a message written to a device and not yet acked by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The device session it was written in.
    pub session: u64,
    pub at: u64,
}

/// Counters kept in `meta` (persisted at every commit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub messages_logged: u64,
    pub replays: u64,
    pub bounces: u64,
    pub receipts_accepted: u64,
    pub receipts_duplicate: u64,
    pub receipts_rejected: u64,
    /// Retention: messages deleted and devices forgotten for inactivity.
    pub messages_deleted: u64,
    pub devices_expired: u64,
    /// Logins whose replay was cut at `max_replay`.
    pub replays_truncated: u64,
    /// Messages logged without a receipt timer because `max_pending_timers` was reached.
    pub timers_refused: u64,
    /// Messages readtrack could not log, handed back to the server's offline storage
    /// (schema 5).
    pub given_back: u64,
    /// A session came online under the device key of another live session (schema 5).
    pub device_key_merges: u64,
    /// Users deleted with all their data: the server deleted the account, or `purge`.
    pub users_purged: u64,
    /// Devices forgotten to admit a new one past `max_devices_per_user` (the longest idle first).
    pub devices_evicted: u64,
    /// Received messages not logged because the user's log was at its limit and nothing acked
    /// could go: handed back to the server's offline storage (also counted in `given_back`).
    pub log_limit_given_back: u64,
    /// The user's own sent copies not logged because their log was at its limit.
    pub sent_not_logged: u64,
}

/// Encodes into a per-thread scratch buffer and copies the result out once: bincode's own
/// `encode_to_vec` starts from an empty vector and grows it field by field, which was about a
/// third of the encoding's instructions for a logged message (callgrind, `profile ingest`).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        // A serializer that encodes a record inside another would find the buffer borrowed;
        // that path takes a fresh vector instead of failing.
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            return encode_fresh(value);
        };
        buf.clear();
        bincode::serde::encode_into_writer(
            value,
            ScratchWriter(&mut buf),
            bincode::config::standard(),
        )
        .map_err(|e| StoreError::Encode(e.to_string()))?;
        let out = buf.as_slice().to_vec();
        // A rare huge record must not pin its buffer for the thread's life.
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
        Ok(out)
    })
}

fn encode_fresh<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| StoreError::Encode(e.to_string()))
}

struct ScratchWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for ScratchWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Encodes a `userblock_index` record by hand: byte for byte what [`encode`] writes for the
/// same `Vec<IndexEntry>` (bincode's standard configuration: the length, then each entry's
/// `seq`, `msgid` and `peer`, every number in bincode's variable-length form). Every logged
/// message writes its block again, and serde's field-by-field path was most of that cost.
pub(crate) fn encode_index_block(entries: &[IndexEntry]) -> Vec<u8> {
    // Room for the widest numbers: no reallocation while it is written.
    let mut out = Vec::with_capacity(9 + entries.len() * 27);
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        put_varint(&mut out, e.seq);
        put_varint(&mut out, e.msgid);
        put_varint(&mut out, e.peer);
    }
    out
}

/// `block` (an encoded `userblock_index` record) with `entry` appended after its entries, as
/// [`encode_index_block`] writes the longer list, without decoding the block: a logged message
/// adds the newest entry of its block, and decoding and encoding every entry before it was most
/// of what an append spent on its index. The count is one byte while it is below 251
/// (bincode's variable-length form); `None` for a block whose count is not such a byte (the
/// caller decodes it).
pub(crate) fn append_to_index_block(block: &[u8], entry: &IndexEntry) -> Option<Vec<u8>> {
    let (&count, entries) = block.split_first()?;
    if count >= 250 {
        return None;
    }
    let mut out = Vec::with_capacity(block.len() + 27);
    out.push(count + 1);
    out.extend_from_slice(entries);
    put_varint(&mut out, entry.seq);
    put_varint(&mut out, entry.msgid);
    put_varint(&mut out, entry.peer);
    Some(out)
}

/// Decodes a `userblock_index` record by hand: what [`decode`] returns for the same bytes, the
/// same records accepted and refused (a receipt decodes one per lookup, a logged message one).
pub(crate) fn decode_index_block(bytes: &[u8]) -> Result<Vec<IndexEntry>, StoreError> {
    let bad = |reason: &str| StoreError::Decode {
        tree: "userblock_index",
        reason: reason.to_string(),
    };
    let mut at = 0;
    let len = take_varint(bytes, &mut at).ok_or_else(|| bad("truncated length"))?;
    let mut out = Vec::with_capacity((len as usize).min(bytes.len() / 3));
    for _ in 0..len {
        let (Some(seq), Some(msgid), Some(peer)) = (
            take_varint(bytes, &mut at),
            take_varint(bytes, &mut at),
            take_varint(bytes, &mut at),
        ) else {
            return Err(bad("truncated or malformed index entry"));
        };
        out.push(IndexEntry { seq, msgid, peer });
    }
    Ok(out)
}

/// bincode 2's variable-length unsigned integer: below 251 one byte; else a marker byte (251,
/// 252, 253) and the value as a little-endian u16, u32 or u64.
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads one [`put_varint`] number at `*at`, moving past it; `None` when the bytes end first or
/// the marker is not one of a u64 (254 is a u128's, 255 none).
fn take_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let rest = bytes.get(*at..)?;
    let (value, width) = match *rest.first()? {
        first @ 0..=250 => (u64::from(first), 1),
        251 => (
            u64::from(u16::from_le_bytes(*rest.get(1..3)?.first_chunk()?)),
            3,
        ),
        252 => (
            u64::from(u32::from_le_bytes(*rest.get(1..5)?.first_chunk()?)),
            5,
        ),
        253 => (u64::from_le_bytes(*rest.get(1..9)?.first_chunk()?), 9),
        _ => return None,
    };
    *at += width;
    Some(value)
}

pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Decode {
            tree,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_head_is_the_records_fields_before_its_stanza() {
        for (sent, receipt, to) in [
            (false, ReceiptState::Waiting { deadline: 7 }, None),
            (
                true,
                ReceiptState::Bouncing {
                    retry: 9,
                    attempts: 2,
                },
                Some("bob@example.com"),
            ),
            (false, ReceiptState::Acked, Some("carol@example.com/x")),
        ] {
            let record = MessageRecord {
                seq: 300,
                stanza_id: u128::MAX / 7,
                msg_id: Some("m300".into()),
                from: "alice@example.com/phone".into(),
                kind: Some("chat".into()),
                logged_at: 1_700_000_000_000,
                system: sent,
                receipt,
                archive_id: Some("arch".into()),
                sent,
                to: to.map(String::from),
                stanza: "<message xmlns=\"jabber:client\"><body>hi</body></message>".into(),
                signal: true,
                asks_receipt: true,
            };
            let head: MessageHead = decode("userseq_message", &encode(&record).unwrap()).unwrap();
            assert_eq!(
                head,
                MessageHead {
                    seq: record.seq,
                    stanza_id: record.stanza_id,
                    msg_id: record.msg_id.clone(),
                    from: record.from.clone(),
                    kind: record.kind.clone(),
                    logged_at: record.logged_at,
                    system: record.system,
                    receipt: record.receipt,
                    archive_id: record.archive_id.clone(),
                    sent: record.sent,
                    to: record.to.clone(),
                }
            );
            assert_eq!(head.peer(), record.peer());
        }
    }

    fn device() -> DeviceRecord {
        DeviceRecord {
            key: "phone".into(),
            resource: "phone".into(),
            acked_upto: 0,
            acked_above: vec![],
            session: 0,
            online: false,
            first_seen: 0,
            last_seen: 0,
            replayed: ReplayRange::default(),
            session_id: None,
            speaks_seed: false,
        }
    }

    #[test]
    fn out_of_order_acks_fold_into_the_cursor() {
        let mut d = device();
        assert!(d.ack(3));
        assert_eq!((d.acked_upto, d.acked_above.clone()), (0, vec![3]));
        assert!(d.ack(1));
        assert_eq!((d.acked_upto, d.acked_above.clone()), (1, vec![3]));
        assert!(d.ack(2));
        assert_eq!((d.acked_upto, d.acked_above.clone()), (3, vec![]));
        assert!(!d.ack(2), "a duplicate ack changes nothing");
    }

    #[test]
    fn ack_upto_absorbs_acks_above() {
        let mut d = device();
        d.ack(5);
        d.ack(7);
        assert!(d.ack_upto(4));
        assert_eq!((d.acked_upto, d.acked_above.clone()), (5, vec![7]));
        assert!(!d.ack_upto(3), "a cursor never moves backwards");
        assert_eq!(d.acked_upto, 5);
    }

    use proptest::prelude::*;

    proptest! {
        /// The hand-written index record codec is bincode's: the same bytes for any entries
        /// (numbers of every width), and for any bytes the same entries or a refusal.
        #[test]
        fn the_index_block_codec_is_bincodes(
            entries in proptest::collection::vec(
                (index_number(), index_number(), index_number())
                    .prop_map(|(seq, msgid, peer)| IndexEntry { seq, msgid, peer }),
                0..40,
            ),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
            cut in 0usize..64,
        ) {
            let ours = encode_index_block(&entries);
            let theirs = bincode::serde::encode_to_vec(&entries, bincode::config::standard()).unwrap();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(decode_index_block(&ours).unwrap(), entries);
            // Cut short, or bytes of no record at all: both decoders agree.
            let cut_short = &theirs[..cut.min(theirs.len())];
            for bytes in [cut_short, noise.as_slice()] {
                let theirs: Result<Vec<IndexEntry>, _> = decode("userblock_index", bytes);
                prop_assert_eq!(decode_index_block(bytes).ok(), theirs.ok(), "{:?}", bytes);
            }
        }
    }

    proptest! {
        /// An entry appended to a block's bytes is the block of the longer list, as encoding
        /// it whole writes it; a count that is not one byte is left to the caller.
        #[test]
        fn an_entry_appended_to_a_block_is_the_longer_blocks_record(
            entries in proptest::collection::vec(
                (index_number(), index_number(), index_number())
                    .prop_map(|(seq, msgid, peer)| IndexEntry { seq, msgid, peer }),
                0..260,
            ),
            (seq, msgid, peer) in (index_number(), index_number(), index_number()),
        ) {
            let entry = IndexEntry { seq, msgid, peer };
            let appended = append_to_index_block(&encode_index_block(&entries), &entry);
            let mut longer = entries.clone();
            longer.push(entry);
            if entries.len() < 250 {
                prop_assert_eq!(appended, Some(encode_index_block(&longer)));
            } else {
                prop_assert_eq!(appended, None);
            }
        }
    }

    /// Numbers around each width bincode's variable-length form switches at.
    fn index_number() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..=260u64,
            65_530..=65_540u64,
            (u32::MAX as u64 - 3)..=(u32::MAX as u64 + 3),
            (u64::MAX - 3)..=u64::MAX,
            any::<u64>(),
        ]
    }

    #[test]
    fn the_scratch_encoding_is_byte_for_byte_bincodes_own() {
        let mut big = device();
        big.acked_above = (0..40_000).collect();
        // A huge record first, then small ones: the buffer is reused (or dropped) without
        // leaking bytes of the earlier record into the later ones.
        for record in [
            big,
            device(),
            {
                let mut d = device();
                d.key = "a longer key than before".into();
                d.acked_above = vec![u64::MAX, 1, 300];
                d
            },
            device(),
        ] {
            let ours = encode(&record).unwrap();
            let theirs =
                bincode::serde::encode_to_vec(&record, bincode::config::standard()).unwrap();
            assert_eq!(ours, theirs);
            let back: DeviceRecord = decode("test", &ours).unwrap();
            assert_eq!(back.acked_above, record.acked_above);
        }
    }
}
