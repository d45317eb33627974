//! Read state per conversation (`userpeer_conversation`): unread counts, XEP-0333 markers.

use super::*;

impl Store {
    /// The user's conversations (one per peer), in key order.
    pub fn conversations(&self, user: UserId) -> Result<Vec<ConversationRecord>> {
        let mut out = Vec::new();
        for kv in self.scan_prefix(T::UserpeerConversation, keys::user_prefix(user)) {
            out.push(self.read("userpeer_conversation", &kv?.1)?);
        }
        Ok(out)
    }

    /// The user's conversation with `peer` (a bare JID), if there is one.
    pub fn conversation(&self, user: UserId, peer: &str) -> Result<Option<ConversationRecord>> {
        match self.get(T::UserpeerConversation, keys::user_peer(user, peer))? {
            Some(v) => Ok(Some(self.read("userpeer_conversation", &v)?)),
            None => Ok(None),
        }
    }

    /// Marks everything received from `peer` up to `upto` as read (XEP-0333 displayed). Read
    /// state only moves forward; returns how many messages became read.
    pub fn mark_read(&self, user: UserId, peer: &str, upto: Seq) -> Result<u64> {
        let conv_key = keys::user_peer(user, peer);
        let Some(v) = self.get(T::UserpeerConversation, &conv_key)? else {
            return Ok(0);
        };
        let mut conv: ConversationRecord = self.read("userpeer_conversation", &v)?;
        // Read state covers only what exists: a later message must still count as unread.
        let upto = upto.min(conv.last_seq);
        if upto <= conv.read_upto {
            return Ok(0);
        }
        let peer_hash = self.hash.of(peer);
        let mut newly = 0u64;
        for entry in self.index_entries(user, conv.read_upto, upto, false) {
            let entry = entry?;
            // The hash narrows; the record decides (a crafted JID can share a hash).
            if entry.peer == peer_hash
                && self
                    .message(user, entry.seq)?
                    .is_some_and(|m| m.counts_as_unread() && m.peer() == peer)
            {
                newly += 1;
            }
        }
        conv.read_upto = upto;
        conv.unread = conv.unread.saturating_sub(newly);
        let mut w = Writes::default();
        w.put(T::UserpeerConversation, conv_key, encode(&conv)?);
        self.apply(w)?;
        Ok(newly)
    }
}
