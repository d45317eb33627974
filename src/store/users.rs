//! Users: the JID to id mapping, user records (head, first kept seq, account token), purge.

use std::collections::HashMap;

use super::*;

/// JIDs whose ids the cache keeps at most (past it, it starts again empty).
const ID_CACHE_USERS: usize = 16_384;

/// User ids of recently looked up bare JIDs (every event looks its users up by JID). Only
/// users that exist are kept; a write to a JID's mapping (a new user, a purge) forgets it.
#[derive(Default)]
pub(super) struct IdCache {
    ids: HashMap<Box<[u8]>, UserId>,
}

impl IdCache {
    pub(super) fn forget(&mut self, jid: &[u8]) {
        self.ids.remove(jid);
    }

    pub(super) fn clear(&mut self) {
        self.ids.clear();
    }
}

/// Users whose decoded records the cache keeps at most (past it, it starts again empty).
const RECORD_CACHE_USERS: usize = 16_384;

/// Decoded user records of recently used users: a chat message read its recipient's record
/// three times (the log limits, the append, a receipt's search bound), each a read and a
/// decoding. A write that stores a record the call has at hand (an append) puts it here; any
/// other write to `userid_user` makes the cache forget that user, so a read returns what the
/// tree holds, pending writes included.
#[derive(Default)]
pub(super) struct RecordCache {
    records: keys::UserMap<UserRecord>,
}

impl RecordCache {
    pub(super) fn put(&mut self, user: UserId, record: &UserRecord) {
        if self.records.len() >= RECORD_CACHE_USERS && !self.records.contains_key(&user) {
            self.records.clear();
        }
        match self.records.get_mut(&user) {
            Some(cached) => cached.clone_from(record),
            None => {
                self.records.insert(user, record.clone());
            }
        }
    }

    pub(super) fn forget(&mut self, user: UserId) {
        self.records.remove(&user);
    }

    pub(super) fn clear(&mut self) {
        self.records.clear();
    }
}

impl Store {
    pub fn user_id(&self, bare_jid: &str) -> Result<Option<UserId>> {
        let mut cache = self.id_cache();
        if let Some(id) = cache.ids.get(bare_jid.as_bytes()) {
            return Ok(Some(*id));
        }
        let id = self
            .get(T::JidUserid, bare_jid.as_bytes())?
            .map(|v| keys::be_u64(&v, 0).unwrap_or(0));
        if let Some(id) = id {
            if cache.ids.len() >= ID_CACHE_USERS {
                cache.ids.clear();
            }
            cache.ids.insert(bare_jid.as_bytes().into(), id);
        }
        Ok(id)
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
        // The cache's lock is held over the read, as [`Store::apply_with`] holds it over a
        // write: a record read here is never older than one a write put in meanwhile.
        let mut cache = self.record_cache();
        if let Some(record) = cache.records.get(&user) {
            return Ok(record.clone());
        }
        match self.get(T::UseridUser, keys::user_prefix(user))? {
            Some(v) => {
                let record: UserRecord = self.read("userid_user", &v)?;
                cache.put(user, &record);
                Ok(record)
            }
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
}
