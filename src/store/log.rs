//! The message log of each user (`userseq_message`) and its index (`userblock_index`): logging,
//! deleting a prefix, reading in order and finding messages by id.

use super::*;

impl Store {
    /// Logs one message: the log entry, the id index, the receipt timer (when `message.receipt`
    /// is `Waiting`) and the deliveries to the devices it was written to live, all or nothing.
    /// `message.seq` is ignored: the store assigns the next seq and returns it. Not durable until
    /// [`Store::flush`].
    pub fn append_message(
        &self,
        user: UserId,
        mut message: MessageRecord,
        delivered_to: &[(DeviceNo, DeliveryRecord)],
    ) -> Result<Seq> {
        let peer = message.peer();
        let mut record = self.user(user)?;
        record.head += 1;
        record.log_bytes += message.stanza.len() as u64;
        let seq = record.head;
        message.seq = seq;
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
        // Nothing was ever logged past the head: the seq's log entry, timer and deliveries are
        // new keys, and so is its index block when the seq starts one (then there is no record
        // to read either: on PostgreSQL that read would be a round trip for nothing).
        w.insert(
            T::UserseqMessage,
            keys::user_seq(user, seq),
            encode(&message)?,
        );
        let block = keys::block_of(seq);
        let new_block = block > keys::block_of(seq - 1);
        let index_entry = IndexEntry::of(&message, self.hash);
        let block_key = keys::user_block(user, block);
        // The seq is the newest of its block: its entry goes after the others, written onto
        // the stored record's bytes.
        let stored_block = match new_block {
            true => None,
            false => self.get(T::UserblockIndex, block_key)?,
        };
        let block_record = match stored_block {
            None => records::encode_index_block(&[index_entry]),
            Some(v) => match records::append_to_index_block(&v, &index_entry) {
                Some(longer) => longer,
                None => {
                    let mut entries = self.read_index_block(&v)?;
                    entries.push(index_entry);
                    records::encode_index_block(&entries)
                }
            },
        };
        if new_block {
            w.insert(T::UserblockIndex, block_key, block_record);
        } else {
            w.put(T::UserblockIndex, block_key, block_record);
        }
        if let Some(deadline) = message.receipt.timer() {
            w.insert(
                T::DeadlineUserseq,
                keys::deadline_user_seq(deadline, user, seq),
                EMPTY,
            );
        }
        for (device, d) in delivered_to {
            w.insert(
                T::UserdeviceseqDelivery,
                keys::user_device_seq(user, *device, seq),
                encode(d)?,
            );
        }
        if message.counts_as_unread() {
            conv.unread += 1;
        }
        w.put(T::UserpeerConversation, conv_key, encode(&conv)?);
        self.apply_with(w, None, Some((user, &record)))?;
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
                records::encode_index_block(&entries),
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

    pub fn message(&self, user: UserId, seq: Seq) -> Result<Option<MessageRecord>> {
        match self.get(T::UserseqMessage, keys::user_seq(user, seq))? {
            Some(v) => Ok(Some(self.read("userseq_message", &v)?)),
            None => Ok(None),
        }
    }

    /// A message's fields before its stanza ([`MessageHead`]), without reading the stanza.
    pub fn message_head(&self, user: UserId, seq: Seq) -> Result<Option<MessageHead>> {
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
    /// first with `newest_first`, as their [`MessageHead`]s (a receipt reads no stanza). Lazy:
    /// the cost is the index of the range the caller consumes (one record per 32 messages) plus
    /// the records of the matches, so callers start where what they look for can be (above
    /// what the device has acked) and stop at what they need.
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
    ) -> Result<impl Iterator<Item = Result<MessageHead>> + 'a> {
        let hash = self.hash.of(msg_id);
        // Bounded by the head, the range is a few known index records: PostgreSQL's read cache
        // answers it without a round trip.
        let head = self.user(user)?.head;
        Ok(self
            .index_entries(user, after, head, newest_first)
            .take(max_entries)
            .inspect(move |_| examined.set(examined.get() + 1))
            .filter(move |e| e.as_ref().map_or(true, |e| e.msgid == hash))
            .filter_map(move |e| {
                match e.and_then(|e| self.message_head(user, e.seq)) {
                    // A hash collision, or an entry of a message deleted meanwhile.
                    Ok(Some(m)) if m.msg_id.as_deref() == Some(msg_id) => Some(Ok(m)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            }))
    }

    /// An index record's entries ([`records::decode_index_block`]: bincode's decoding, by hand).
    fn read_index_block(&self, bytes: &[u8]) -> Result<Vec<IndexEntry>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        records::decode_index_block(bytes)
    }

    /// The index record of one block of the user's log (empty when there is none).
    pub(super) fn index_block(&self, user: UserId, block: u64) -> Result<Vec<IndexEntry>> {
        match self.get(T::UserblockIndex, keys::user_block(user, block))? {
            Some(v) => self.read_index_block(&v),
            None => Ok(Vec::new()),
        }
    }

    /// Index entries of the user's messages with `after < seq <= upto`, in seq order (or
    /// reversed).
    pub(super) fn index_entries(
        &self,
        user: UserId,
        after: Seq,
        upto: Seq,
        reverse: bool,
    ) -> impl Iterator<Item = Result<IndexEntry>> + '_ {
        let blocks = (after < upto).then(|| {
            let (low, high) = (
                keys::block_of(after.saturating_add(1)),
                keys::block_of(upto),
            );
            // The first block holds the answer of nearly every search (a receipt names a
            // message just above its device's cursor): it is one point read; the blocks after
            // it are a range, opened only when the first did not end the search.
            let (first, rest) = match reverse {
                false => (low, (low + 1, high)),
                true => (high, (low, high.saturating_sub(1))),
            };
            let first = self
                .get(T::UserblockIndex, keys::user_block(user, first))
                .transpose();
            let rest = (low < high)
                .then_some(rest)
                .into_iter()
                .flat_map(move |(from, to)| {
                    let bounds = (
                        Bound::Included(keys::user_block(user, from).to_vec()),
                        Bound::Included(keys::user_block(user, to).to_vec()),
                    );
                    match reverse {
                        true => self.range_rev(T::UserblockIndex, bounds),
                        false => self.range(T::UserblockIndex, bounds),
                    }
                    .map(|kv| kv.map(|(_, v)| v))
                });
            first.into_iter().chain(rest)
        });
        blocks
            .into_iter()
            .flatten()
            .flat_map(move |block| -> Vec<Result<IndexEntry>> {
                let entries: Result<Vec<IndexEntry>> =
                    block.and_then(|v| self.read_index_block(&v));
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
}
