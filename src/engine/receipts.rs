//! Logging and receipts (`tracked-messages`, `log-before-ack`, `device-receipts`,
//! `acked-by-writing`, `read-state`, `receipt-from-recipient-only`, `sent-sync`, `dialects` in
//! `docs/rules.md`). The receipt timers and bounces are `bounces.rs`.

use super::{Dialect, Engine, EngineError, Output, Result, Routed};
use crate::jid::Jid;
use crate::stanza::original::{Class, Stored};
use crate::stanza::{Message, MessageType, Outgoing, Receipt};
use crate::store::{
    DeliveryRecord, DeviceNo, MessageHead, MessageRecord, ReceiptState, Seq, UserId,
};
use crate::time::Millis;

impl Engine {
    fn is_system_sender(&self, from: &Jid) -> bool {
        (from.local().is_none() && from.domain() == self.config.domain)
            || self.config.system_senders.iter().any(|s| {
                if s.is_full() {
                    s == from
                } else {
                    *s == from.to_bare()
                }
            })
    }

    /// `tracked-messages` (`docs/rules.md`): a chat or normal message the server's archive would
    /// keep (mod_mam's `should_store`: see [`Class::archivable`]), or any message from a system
    /// sender. readtrack's own crs acks, errors, headlines and groupchat are never logged.
    fn is_loggable(message: &Message, class: &Class, system: bool) -> bool {
        let kind_ok = matches!(message.kind, MessageType::Chat | MessageType::Normal);
        kind_ok && (class.archivable() || system)
    }

    /// Whether the sender of a message speaks the seed dialect, and so gets its server ack and
    /// delay bounce. Under `auto`, a local device by its resource or what it sent before, a
    /// system sender always (the seed's system messages), anyone else never.
    fn sender_speaks_seed(&self, from: &Jid, system: bool) -> Result<bool> {
        Ok(match self.config.dialect {
            Dialect::Seed => true,
            Dialect::Xep => false,
            Dialect::Auto => {
                if system {
                    return Ok(true);
                }
                let (Some(resource), true) = (
                    from.resource(),
                    from.domain() == self.config.domain && from.local().is_some(),
                ) else {
                    return Ok(false);
                };
                if self.resource_speaks_seed(resource) {
                    return Ok(true);
                }
                match self.store.user_id(&from.bare_string())? {
                    Some(user) => {
                        let key = self.config.device_key.device_key(resource, None);
                        self.store
                            .find_device(user, |d| d.key == key && d.speaks_seed)?
                            .is_some()
                    }
                    None => false,
                }
            }
        })
    }

    /// `dialects` (`docs/rules.md`): a resource the configured seed clients bind.
    pub(super) fn resource_speaks_seed(&self, resource: &str) -> bool {
        self.config
            .seed_resources
            .iter()
            .any(|p| super::glob_match(p, resource))
    }

    pub(super) fn routed(
        &mut self,
        routed: &Routed<'_>,
        to: &Jid,
        sessions: &[Jid],
        archive_id: Option<String>,
        now: Millis,
    ) -> Result<Vec<Output>> {
        let message = routed.message;
        let to = self.local_user(to, "recipient")?;
        let Some(from) = message.from.clone() else {
            return Err(EngineError::Rejected("routed message has no sender".into()));
        };
        let system = self.is_system_sender(&from);
        let user_jid = to.bare_string();
        let Some(original) = routed.original else {
            return Err(EngineError::Rejected("routed message has no text".into()));
        };
        let stored = original
            .stored_form(&user_jid, false)
            .map_err(|e| EngineError::Unloggable(format!("routed message: {e}")))?;
        if !Self::is_loggable(message, &stored.class, system) {
            if sessions.is_empty() {
                // The server took it from its offline storage for readtrack (the module's rule
                // of what is tracked said yes, readtrack's says no): it goes back there rather
                // than nowhere.
                return Err(EngineError::Unloggable(format!(
                    "routed message from {from} is not one readtrack logs"
                )));
            }
            return Ok(Vec::new());
        }
        let seed_sender = self.sender_speaks_seed(&from, system)?;
        let user = self.store.ensure_user(&user_jid)?;
        if !self.make_room_in_log(user, stored.text.len() as u64)? {
            // Left where it would have gone without readtrack (even when the server wrote it
            // live: the write may not have reached the device, and nothing here would replay it).
            self.counters.log_limit_given_back += 1;
            self.counters.given_back += 1;
            if crate::warnlimit::admit(crate::warnlimit::Warning::LogLimit, now) {
                tracing::warn!(recipient = %to, "the user's log is at its limit with nothing acked to delete; message handed back to the server's offline storage");
            }
            return Ok(vec![Output::StoreOffline {
                to,
                stanza_xml: original.text().to_string(),
            }]);
        }
        let mut delivered = Vec::new();
        let mut carbon_devices = Vec::new();
        for (session, carbon) in sessions
            .iter()
            .map(|s| (s, false))
            .chain(routed.carbons.iter().map(|s| (s, true)))
        {
            if session.to_bare() != to {
                if !carbon {
                    tracing::warn!(session = %session, recipient = %to, "routed message lists a session of another user; ignored");
                }
                continue; // a sent carbon: the sender's side, see `log_sent`
            }
            let Some(resource) = session.resource() else {
                continue;
            };
            let (no, device) = self.device_for(user, resource, None, now)?;
            let session_no = device.session;
            let no = self.stored_device(user, no, &device, now)?;
            if carbon || stored.class.signal() {
                // Nobody receipts a carbon or a receipt: being written is its ack.
                carbon_devices.push(no);
            } else {
                delivered.push((
                    no,
                    DeliveryRecord {
                        session: session_no,
                        at: now.0,
                    },
                ));
            }
        }
        let receipt = self.arm_bounce(message, &stored.class, system, seed_sender, &to, now);
        // The seed acks what a person sent; a receipt or marker is not acked in turn.
        let signal = stored.class.signal();
        let entry = MessageRecord {
            system,
            receipt,
            archive_id,
            ..log_entry(message, &from, stored, now)
        };
        let seq = self.store.append_message(user, entry, &delivered)?;
        self.counters.messages_logged += 1;
        self.ack_written(user, &carbon_devices, seq)?;
        tracing::debug!(user = %to, seq, live = delivered.len(), "logged");
        let local_sender =
            from.domain() == self.config.domain && from.local().is_some() && from.is_full();
        if let (true, true, false, Some(id)) = (seed_sender, local_sender, signal, &message.id) {
            self.held.push(Output::SendAsHost {
                confirm: None,
                stanza: Outgoing::ServerAck {
                    from: self.config.domain.clone(),
                    to: from,
                    id: id.clone(),
                    time: now,
                },
            });
        }
        Ok(Vec::new())
    }

    /// Acks `seq` for devices it was written to in a form nobody receipts (a carbon, a
    /// receipt): otherwise they would be replayed what they already have.
    fn ack_written(&mut self, user: UserId, devices: &[DeviceNo], seq: Seq) -> Result<()> {
        for no in devices {
            if let Some(mut device) = self.store.device(user, *no)? {
                if device.ack(seq) {
                    self.store.apply_ack(user, *no, &device, &[], &[])?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn sent(&mut self, routed: &Routed<'_>, now: Millis) -> Result<Vec<Output>> {
        let message = routed.message;
        let Some(from) = &message.from else {
            return Err(EngineError::Rejected("client stanza has no sender".into()));
        };
        let resource = self.local_device(from, "client")?;
        if self.config.dialect == Dialect::Auto && is_seed_stanza(message) {
            self.learn_seed(from, resource, now)?;
        }
        if let Some(receipt) = &message.receipt {
            self.receipt(from, resource, receipt, message.to.as_ref(), now)?;
        }
        if let Some(id) = &message.displayed {
            self.displayed(from, resource, id, message.to.as_ref(), now)?;
        }
        if message.kind == MessageType::Crs
            || message.to.as_ref().is_some_and(|t| t.local().is_none())
        {
            return Ok(Vec::new()); // acks to the server, not messages to anyone
        }
        self.log_sent(routed, from, resource, now)?;
        Ok(Vec::new())
    }

    /// `dialects` (`auto`): a device that sent a seed stanza speaks the seed from now on.
    fn learn_seed(&mut self, from: &Jid, resource: &str, now: Millis) -> Result<()> {
        let user = self.store.ensure_user(&from.bare_string())?;
        let (no, mut device) = self.device_for(user, resource, None, now)?;
        if !device.speaks_seed {
            device.speaks_seed = true;
            tracing::debug!(device = %from, "device speaks the seed dialect");
            self.put_device(user, no, &device, now)?;
        }
        Ok(())
    }

    /// `sent-sync` (`docs/rules.md`): what a user sends from one device is logged in the user's own
    /// log, acked for that device at once (and for the devices that got its carbon), and replayed
    /// to the user's other devices as a `<sent>` carbon.
    fn log_sent(
        &mut self,
        routed: &Routed<'_>,
        from: &Jid,
        resource: &str,
        now: Millis,
    ) -> Result<()> {
        let message = routed.message;
        let Some(to) = &message.to else { return Ok(()) };
        if to.to_bare() == from.to_bare() {
            return Ok(()); // to one's own account: it is routed back and logged as received
        }
        let user_jid = from.bare_string();
        // A receipt or marker in the compact form: a signal, which is not logged (below).
        let Some(original) = routed.original else {
            return Ok(());
        };
        let stored = original
            .stored_form(&user_jid, true)
            .map_err(|e| EngineError::Unloggable(format!("sent message: {e}")))?;
        // The user's own receipts and markers move their cursors and read state (above); they
        // are not copied to the user's other devices, whose read state readtrack keeps itself.
        if !Self::is_loggable(message, &stored.class, false) || stored.class.signal() {
            return Ok(());
        }
        let user = self.store.ensure_user(&user_jid)?;
        if !self.make_room_in_log(user, stored.text.len() as u64)? {
            // The user's own copy: the recipient's log and the server's archive are not affected.
            self.counters.sent_not_logged += 1;
            if crate::warnlimit::admit(crate::warnlimit::Warning::LogLimit, now) {
                tracing::warn!(user = %from.to_bare(), "the user's log is at its limit with nothing acked to delete; their sent copy is not logged");
            }
            return Ok(());
        }
        let entry = MessageRecord {
            sent: true,
            to: Some(to.to_string()),
            ..log_entry(message, from, stored, now)
        };
        let seq = self.store.append_message(user, entry, &[])?;
        self.counters.messages_logged += 1;
        let (no, mut device) = self.device_for(user, resource, None, now)?;
        device.ack(seq);
        let no = self.stored_device(user, no, &device, now)?;
        self.store.apply_ack(user, no, &device, &[], &[])?;
        let mut carbon_devices = Vec::new();
        for session in routed.carbons {
            if let (true, Some(r)) = (session.to_bare() == from.to_bare(), session.resource()) {
                let (no, device) = self.device_for(user, r, None, now)?;
                carbon_devices.push(self.stored_device(user, no, &device, now)?);
            }
        }
        self.ack_written(user, &carbon_devices, seq)?;
        Ok(())
    }

    /// The first message a receipt or marker names, in the order asked for, among the user's
    /// messages above `after` with that id that `fits`; narrowed to the original sender when the
    /// receipt is addressed to a user (XEP-0184/0333 go to the sender; seed receipts go to the
    /// server and name no sender). Also says whether any message had the id but did not fit.
    /// The search reaches [`RECENT_SLACK`] messages below `after`, so a receipt sent again for
    /// a message acked a moment ago is found (and counted as a duplicate); one naming a message
    /// acked long before finds nothing, so its cost is what is unread, not what is stored.
    ///
    /// `none_fit_upto_after`: the caller knows that no message at or below `after` fits (a
    /// receipt: everything up to the device's cursor is acked). An oldest-first search then
    /// looks at the [`QUICK_LOOK`] index entries right above `after` first, and searches from
    /// the slack below it (for a duplicate) only when none of them fits: the same answer,
    /// without decoding the slack's index records for each receipt that comes in order. A
    /// receipt that finds nothing examines those entries twice (at most [`QUICK_LOOK`] more
    /// than `max_receipt_scan`).
    #[allow(clippy::too_many_arguments)]
    fn named_message(
        &self,
        user: UserId,
        id: &str,
        to: Option<&Jid>,
        after: Seq,
        newest_first: bool,
        none_fit_upto_after: bool,
        fits: impl Fn(&MessageHead) -> bool,
    ) -> Result<Named> {
        let sender = to.filter(|t| t.local().is_some()).map(Jid::to_bare);
        // An id that names nothing would otherwise cost the whole unread backlog's index.
        let limit = self.config.max_receipt_scan;
        let slack = RECENT_SLACK as usize;
        if none_fit_upto_after && !newest_first && limit > slack {
            // The slack holds at most RECENT_SLACK index entries, none of which fits: a fit
            // among the first `limit - RECENT_SLACK` entries above `after` is the first fit the
            // whole search meets, and within its bound.
            let quick = QUICK_LOOK.min(limit - slack);
            let above = self.search_named(user, id, sender.as_ref(), after, false, quick, &fits)?;
            if above.message.is_some() {
                return Ok(above);
            }
        }
        let from = after.saturating_sub(RECENT_SLACK);
        self.search_named(user, id, sender.as_ref(), from, newest_first, limit, &fits)
    }

    /// [`Engine::named_message`]'s search: messages above `from` with the id, in the order
    /// asked for, at most `limit` index entries examined.
    #[allow(clippy::too_many_arguments)]
    fn search_named(
        &self,
        user: UserId,
        id: &str,
        sender: Option<&Jid>,
        from: Seq,
        newest_first: bool,
        limit: usize,
        fits: &impl Fn(&MessageHead) -> bool,
    ) -> Result<Named> {
        let mut named = false;
        let examined = std::cell::Cell::new(0);
        for m in self
            .store
            .messages_by_msgid(user, id, from, newest_first, limit, &examined)?
        {
            let m = m?;
            // Receipts and markers acknowledge what the user received, never what they sent.
            if m.sent {
                continue;
            }
            if let Some(sender) = sender {
                if !Jid::parse(&m.from).is_ok_and(|f| f.to_bare() == *sender) {
                    continue;
                }
            }
            if fits(&m) {
                return Ok(Named {
                    message: Some(m),
                    named,
                    capped: false,
                });
            }
            named = true;
        }
        Ok(Named {
            message: None,
            named,
            capped: examined.get() >= limit,
        })
    }

    /// `device-receipts`, `receipt-from-recipient-only` (`docs/rules.md`): a receipt acks one
    /// message for the device that sent it. It is looked up only in the sender's own log, so a
    /// receipt from another user's device finds nothing.
    fn receipt(
        &mut self,
        from: &Jid,
        resource: &str,
        receipt: &Receipt,
        to: Option<&Jid>,
        now: Millis,
    ) -> Result<()> {
        if let Receipt::SeedReceived { status, .. } = receipt {
            // An empty status is the bare legacy form `<received xmlns="urn:xmpp:receipts"/>`.
            if !status.is_empty() && status != "200" {
                self.counters.receipts_rejected += 1;
                tracing::info!(device = %from, status, "receipt with a status other than 200 ignored");
                return Ok(());
            }
        }
        let id = receipt.acked_id();
        let Some(user) = self.store.user_id(&from.bare_string())? else {
            self.counters.receipts_rejected += 1;
            return Ok(());
        };
        let (no, mut device) = self.device_for(user, resource, None, now)?;
        // Two senders may reuse one id: each receipt settles the oldest one this device has not
        // acked. Acks mostly come in order, so the search usually stops at the first record.
        let Named {
            message: target,
            named,
            capped,
        } = self.named_message(user, id, to, device.acked_upto, false, true, |m| {
            !device.is_acked(m.seq)
        })?;
        let Some(target) = target else {
            if named {
                self.counters.receipts_duplicate += 1;
            } else if capped {
                self.counters.receipts_rejected += 1;
                tracing::debug!(device = %from, id, limit = self.config.max_receipt_scan, "receipt: max_receipt_scan reached without finding the message; ignored");
            } else {
                self.counters.receipts_rejected += 1;
                tracing::info!(device = %from, id, "receipt names no unacked message of this user; ignored");
            }
            return Ok(());
        };
        device.ack(target.seq);
        device.last_seen = now.0;
        let no = self.stored_device(user, no, &device, now)?;
        let seq = target.seq;
        // Only a message waiting for its receipt is written again (with its new state): the
        // whole record, stanza included, is read for that alone.
        let settled: Vec<_> = match target.receipt {
            ReceiptState::Waiting { .. } => self
                .store
                .message(user, seq)?
                .and_then(|m| Self::settle(user, m))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        self.store.apply_ack(user, no, &device, &[seq], &settled)?;
        self.pending_timers = self.pending_timers.saturating_sub(settled.len());
        self.counters.receipts_accepted += 1;
        Ok(())
    }

    /// XEP-0333: `displayed` acks everything up to the named message for that device.
    fn displayed(
        &mut self,
        from: &Jid,
        resource: &str,
        id: &str,
        to: Option<&Jid>,
        now: Millis,
    ) -> Result<()> {
        let Some(user) = self.store.user_id(&from.bare_string())? else {
            self.counters.receipts_rejected += 1;
            return Ok(());
        };
        let (no, mut device) = self.device_for(user, resource, None, now)?;
        // A marker moves the device's cursor and the conversation's read state: what both
        // have passed already is not searched.
        let mut after = device.acked_upto;
        if let Some(peer) = to.filter(|t| t.local().is_some()) {
            let read_upto = self
                .store
                .conversation(user, &peer.bare_string())?
                .map_or(0, |c| c.read_upto);
            after = after.min(read_upto);
        }
        // The newest message with that id: markers name what was just read.
        // Not found within `max_receipt_scan` entries counts as not found: rejected.
        let Some(target) = self
            .named_message(user, id, to, after, true, false, |_| true)?
            .message
        else {
            self.counters.receipts_rejected += 1;
            return Ok(());
        };
        // The user's read state of the conversation moves whichever device read it, and only
        // forward: a marker arriving late changes nothing.
        self.store.mark_read(user, &target.peer(), target.seq)?;
        let before = device.acked_upto;
        if !device.ack_upto(target.seq) {
            self.counters.receipts_duplicate += 1;
            return Ok(());
        }
        device.last_seen = now.0;
        let no = self.stored_device(user, no, &device, now)?;
        let mut settled = Vec::new();
        for m in self.store.messages_after(user, before) {
            let m = m?;
            if m.seq > target.seq {
                break;
            }
            settled.extend(Self::settle(user, m));
        }
        let acked: Vec<u64> = self
            .store
            .deliveries(user, no, target.seq)?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        self.store.apply_ack(user, no, &device, &acked, &settled)?;
        self.pending_timers = self.pending_timers.saturating_sub(settled.len());
        self.counters.receipts_accepted += 1;
        Ok(())
    }
}

/// What [`Engine::named_message`] found.
struct Named {
    message: Option<MessageHead>,
    /// Some message had the id but did not fit (read only when nothing fits).
    named: bool,
    /// The search stopped at `max_receipt_scan` index entries (likewise).
    capped: bool,
}

/// How far below a device's cursor receipts and markers are still looked up (two index
/// records): far enough for a receipt sent again, near enough to cost nothing.
const RECENT_SLACK: Seq = 64;

/// Index entries right above a device's cursor a receipt looks at before it searches from the
/// slack below the cursor (one index record's worth: receipts mostly come in order).
const QUICK_LOOK: usize = crate::store::keys::INDEX_BLOCK as usize;

/// The log entry of `message` from `from`, logged at `now`: a received message that needs no
/// receipt; callers change what differs. The store assigns `seq`.
fn log_entry(message: &Message, from: &Jid, stored: Stored, now: Millis) -> MessageRecord {
    MessageRecord {
        seq: 0,
        stanza_id: new_stanza_id(now),
        msg_id: message.id.clone(),
        from: from.to_string(),
        kind: message.kind.as_attr().map(str::to_string),
        logged_at: now.0,
        system: false,
        receipt: ReceiptState::NotRequired,
        archive_id: None,
        sent: false,
        to: None,
        signal: stored.class.signal(),
        asks_receipt: stored.class.asks_receipt,
        stanza: stored.text,
    }
}

/// The body of a logged message (the first one: later ones are translations), read from its
/// stanza: for the seed's bounce and the operator's views.
pub(super) fn logged_body(m: &MessageRecord) -> Option<String> {
    crate::stanza::parse_message(&m.stanza)
        .ok()
        .and_then(|p| p.body)
}

/// A stanza only a seed client sends: a crs receipt or ack, an offline ack, a receipt whose
/// status is text.
fn is_seed_stanza(message: &Message) -> bool {
    message.kind == MessageType::Crs
        || matches!(
            message.receipt,
            Some(Receipt::SeedReceived { .. } | Receipt::SeedOffline { .. })
        )
}

/// UUID v7 from the time given (the engine never reads the clock) and random bits. The bits
/// come from the thread's seeded generator: `Uuid::new_v7` asked the kernel (a `getrandom`
/// system call) for each id, three times per chat message under load.
fn new_stanza_id(now: Millis) -> u128 {
    uuid::Builder::from_unix_timestamp_millis(now.0, &rand::random::<[u8; 10]>())
        .into_uuid()
        .as_u128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stanza_id_is_a_v7_uuid_of_the_time_given_with_random_bits() {
        let now = Millis(1_764_000_000_123);
        let (a, b) = (new_stanza_id(now), new_stanza_id(now));
        let uuid = uuid::Uuid::from_u128(a);
        assert_eq!(uuid.get_version_num(), 7);
        let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos), (1_764_000_000, 123_000_000));
        assert_ne!(
            a, b,
            "two ids of the same millisecond differ in their random bits"
        );
    }
}
