//! Device lifecycle and replay (`replay-on-available`, `new-device-start` in `docs/rules.md`).

use std::collections::{HashMap, HashSet};

use super::{Dialect, Engine, Output, Result};
use crate::hooks::SessionInfo;
use crate::jid::Jid;
use crate::stanza::{Outgoing, Replay};
use crate::store::{DeviceNo, DeviceRecord, MessageRecord, Seq, UserId};
use crate::time::Millis;

/// A paced replay between two chunks (`replay-pacing` in `docs/rules.md`).
#[derive(Debug, Clone, Copy)]
struct ReplayProgress {
    /// The device's session the replay belongs to: a later session voids it.
    session: u64,
    /// The last seq this replay has dealt with; the next chunk reads the log after it, so a
    /// long replay reads each message once, not once per chunk.
    after: Seq,
    /// Messages and stanza bytes written so far, for `max_replay` and `max_replay_bytes`.
    messages: usize,
    bytes: u64,
    /// The token of the `Pace` that ended the last chunk; only its `Drained` goes on.
    token: u64,
}

/// Replays waiting for the server to flush their last chunk, by device.
#[derive(Debug, Default)]
pub(super) struct PacedReplays {
    waiting: HashMap<(UserId, DeviceNo), ReplayProgress>,
    /// Tokens are unique for the process: a late answer to an earlier chunk matches nothing.
    last_token: u64,
}

impl Engine {
    /// Finds the device a session belongs to, creating it (with the new-device cursor) on first
    /// sight. The record is not stored here; the caller stores it with its changes.
    pub(super) fn device_for(
        &self,
        user: UserId,
        resource: &str,
        device_id: Option<&str>,
        now: Millis,
    ) -> Result<(Option<DeviceNo>, DeviceRecord)> {
        let key = self.config.device_key.device_key(resource, device_id);
        if let Some((no, record)) = self.store.find_device(user, |d| d.key == key)? {
            return Ok((Some(no), record));
        }
        let devices = self.store.devices(user)?;
        Ok((None, self.new_device(user, &devices, key, resource, now)?))
    }

    /// The number of a device from [`Engine::device_for`], storing it first if it is new (its
    /// record is written again by the caller's atomic update anyway).
    pub(super) fn stored_device(
        &mut self,
        user: UserId,
        no: Option<DeviceNo>,
        device: &DeviceRecord,
        now: Millis,
    ) -> Result<DeviceNo> {
        match no {
            Some(no) => Ok(no),
            None => self.put_device(user, None, device, now),
        }
    }

    /// Stores a device record; a new device (`no` is `None`) first makes room for itself under
    /// `max_devices_per_user`.
    pub(super) fn put_device(
        &mut self,
        user: UserId,
        no: Option<DeviceNo>,
        device: &DeviceRecord,
        now: Millis,
    ) -> Result<DeviceNo> {
        if no.is_none() {
            self.make_room_for_device(user, &device.key, now)?;
        }
        Ok(self.store.put_device(user, no, device)?)
    }

    /// `max_devices_per_user`: the devices idle longest (oldest `last_seen`, offline, not seen
    /// at `now`) are forgotten until the new one fits, as if they had expired. A live session is never
    /// refused: when every device is online the new one is admitted anyway, with a warning.
    fn make_room_for_device(&mut self, user: UserId, new_key: &str, now: Millis) -> Result<()> {
        let devices = self.store.devices(user)?;
        let limit = self.config.max_devices_per_user;
        if devices.len() < limit {
            return Ok(());
        }
        let excess = devices.len() + 1 - limit;
        // A device seen at `now` belongs to the event at hand (a message routed to two new
        // sessions creates both): it is not idle.
        let mut idle: Vec<_> = devices
            .into_iter()
            .filter(|(_, d)| !d.online && d.last_seen < now.0)
            .collect();
        idle.sort_by_key(|(no, d)| (d.last_seen, *no));
        let jid = self.store.user(user)?.jid;
        let mut evicted = 0;
        for (no, device) in idle.into_iter().take(excess) {
            self.store.remove_device(user, no)?;
            self.counters.devices_evicted += 1;
            evicted += 1;
            tracing::info!(user = %jid, device = %device.key, last_seen = %Millis(device.last_seen), new = %new_key, limit, "max_devices_per_user reached: the device idle longest is forgotten");
        }
        if evicted < excess
            && crate::warnlimit::admit(crate::warnlimit::Warning::DevicesAllOnline, now)
        {
            tracing::warn!(user = %jid, device = %new_key, limit, "max_devices_per_user reached but every device is online; the new device is admitted anyway");
        }
        Ok(())
    }

    /// `new-device-start` (`docs/rules.md`): a new device starts at the lower of two points: the
    /// user's undelivered point (every message no device of the user has acked is replayed to it,
    /// so a user's first device after an absence gets everything that was acked to its senders) and
    /// the history window (the last `history` messages, none older than `history_max_age`), as
    /// context.
    fn new_device(
        &self,
        user: UserId,
        devices: &[(DeviceNo, DeviceRecord)],
        key: String,
        resource: &str,
        now: Millis,
    ) -> Result<DeviceRecord> {
        let record = self.store.user(user)?;
        let head = record.head;
        // Never below what retention already deleted, so unread counts only what is stored.
        let mut acked_upto = head
            .saturating_sub(self.config.history)
            .max(record.first_seq.saturating_sub(1));
        if let (Some(max_age), true) = (self.config.history_max_age, acked_upto < head) {
            let cutoff = now.minus(max_age).0;
            // At most `history` records: the window is already bounded by count.
            for m in self.store.messages_after(user, acked_upto) {
                let m = m?;
                if m.logged_at >= cutoff {
                    break;
                }
                acked_upto = m.seq;
            }
        }
        let acked_upto = acked_upto.min(undelivered_point(devices, &record).saturating_sub(1));
        Ok(DeviceRecord {
            key,
            resource: resource.to_string(),
            acked_upto,
            acked_above: Vec::new(),
            session: 0,
            online: false,
            first_seen: now.0,
            last_seen: now.0,
            replayed: Default::default(),
            session_id: None,
            speaks_seed: false,
        })
    }

    /// `replay-on-available` (`docs/rules.md`): a session became available; replay what its device has not acked. `continuing`
    /// (snapshot after a reconnect) keeps the session of a device that was already online in
    /// this same connection, so what the server reported writing to it live is not sent twice.
    /// What readtrack's own replay sent it is sent again: the replay was recorded before its
    /// commands were written, and readtrack cannot know whether they reached the server before
    /// the link broke (the crash loop lost messages that way). A connection the server names
    /// differently (or not at all) is a new session: the device may have reconnected with the
    /// same resource while readtrack was away, and what was in flight to the old connection is
    /// lost unless it is replayed.
    pub(super) fn available(
        &mut self,
        session: &SessionInfo,
        now: Millis,
        continuing: bool,
    ) -> Result<Vec<Output>> {
        let jid = &session.jid;
        let resource = self.local_device(jid, "available session")?;
        let user = self.store.ensure_user(&jid.bare_string())?;
        let (no, mut device) =
            self.device_for(user, resource, session.device_id.as_deref(), now)?;
        if device.online && device.resource != resource {
            // Two live sessions with one key: `after-hash` with resources that differ before
            // the '#' (a server that renamed a conflicting resource, say), or a client id
            // reused. They share one cursor from now on; the operator should know.
            self.counters.device_key_merges += 1;
            tracing::warn!(user = %jid.to_bare(), key = %device.key, live = %device.resource, new = %resource, "a second live session has the same device key; both share one cursor");
        }
        let same_connection = device.online
            && device.resource == resource
            && session.session_id.is_some()
            && device.session_id == session.session_id;
        if !(continuing && same_connection) {
            device.session += 1;
        } else {
            device.replayed.upto = 0;
        }
        device.session_id = session.session_id.clone();
        if self.resource_speaks_seed(resource) {
            device.speaks_seed = true;
        }
        device.online = true;
        device.resource = resource.to_string();
        device.last_seen = now.0;
        let no = self.put_device(user, no, &device, now)?;
        self.replay(user, no, device, jid, now)
    }

    /// A replay from the start: its first chunk.
    fn replay(
        &mut self,
        user: UserId,
        no: DeviceNo,
        device: DeviceRecord,
        to: &Jid,
        now: Millis,
    ) -> Result<Vec<Output>> {
        self.replays.waiting.remove(&(user, no));
        let progress = ReplayProgress {
            session: device.session,
            after: device.acked_upto,
            messages: 0,
            bytes: 0,
            token: 0,
        };
        self.replay_chunk(user, no, device, to, now, progress)
    }

    /// `replay-pacing` (`docs/rules.md`): the server flushed the chunk that ended with the
    /// `Pace` carrying `token` to session `jid`; the next chunk follows. A token that is not
    /// the one the device's replay waits for (a session since replaced, a replay started
    /// again) changes nothing.
    pub(super) fn drained(&mut self, jid: &Jid, token: u64, now: Millis) -> Result<Vec<Output>> {
        let resource = self.local_device(jid, "drained session")?;
        let Some(user) = self.store.user_id(&jid.bare_string())? else {
            return Ok(Vec::new());
        };
        let live = self
            .store
            .find_device(user, |d| d.online && d.resource == resource)?;
        let Some((no, device)) = live else {
            return Ok(Vec::new());
        };
        match self.replays.waiting.get(&(user, no)).copied() {
            Some(progress) if progress.token == token && progress.session == device.session => {
                self.replays.waiting.remove(&(user, no));
                self.replay_chunk(user, no, device, jid, now, progress)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Writes the next chunk of a replay: unacked messages after `progress.after`, up to
    /// `replay_window_bytes`, then a `Pace` if more is left (within the per-login totals).
    fn replay_chunk(
        &mut self,
        user: UserId,
        no: DeviceNo,
        mut device: DeviceRecord,
        to: &Jid,
        now: Millis,
        mut progress: ReplayProgress,
    ) -> Result<Vec<Output>> {
        let bare = to.bare_string();
        let mut out = Vec::new();
        // Written in a form nobody receipts (a carbon of the user's own message, a receipt or
        // marker): handing it over is what acks it for this device.
        let mut acked_by_writing = Vec::new();
        let seed = match self.config.dialect {
            Dialect::Seed => true,
            Dialect::Xep => false,
            Dialect::Auto => device.speaks_seed,
        };
        let mut replayed_upto = None;
        let mut written_bytes = 0u64;
        // Live writes in this session have a delivery record each (usually a handful): one
        // scan, not a lookup per replayed message.
        let live: HashSet<Seq> = self
            .store
            .deliveries(user, no, u64::MAX)?
            .into_iter()
            .filter(|(_, d)| d.session == device.session)
            .map(|(seq, _)| seq)
            .collect();
        let mut more = false;
        for m in self
            .store
            .messages_after(user, progress.after.max(device.acked_upto))
        {
            let m = m?;
            if device.is_acked(m.seq) {
                progress.after = m.seq;
                continue;
            }
            if device.replayed_in_session(m.seq) || live.contains(&m.seq) {
                progress.after = m.seq;
                continue; // in flight in this session already
            }
            if progress.messages + out.len() >= self.config.max_replay {
                self.counters.replays_truncated += 1;
                if crate::warnlimit::admit(crate::warnlimit::Warning::ReplayCut, now) {
                    tracing::warn!(device = %to, limit = self.config.max_replay, "replay cut at max_replay; the rest follows at the next login");
                }
                break;
            }
            // One login's total, over all its chunks (the window below bounds what is in flight
            // at once); a single message larger than the budget still goes, alone.
            let size = m.stanza.len() as u64;
            let first = out.is_empty() && progress.messages == 0;
            if !first && progress.bytes + written_bytes + size > self.config.max_replay_bytes {
                self.counters.replays_truncated += 1;
                if crate::warnlimit::admit(crate::warnlimit::Warning::ReplayCut, now) {
                    tracing::warn!(device = %to, limit = self.config.max_replay_bytes, "replay cut at max_replay_bytes; the rest follows at the next login");
                }
                break;
            }
            // What is in flight to one device stays within the window: the rest waits until
            // the server reports this chunk flushed (Prosody 13 destroys a connection whose
            // send buffer passes 32 MiB; 0.12's grows without bound).
            let window = self.config.replay_window_bytes;
            if window > 0 && !out.is_empty() && written_bytes + size > window {
                more = true;
                break;
            }
            written_bytes += size;
            progress.after = m.seq;
            let stanza = if m.sent {
                // `sent-sync`: the user's own message, sent from another device.
                acked_by_writing.push(m.seq);
                let mut inner = self.replay_stanza(m, to, &bare, now, false);
                inner.request_receipt = false;
                Outgoing::SentCarbon {
                    from: to.to_bare(),
                    to: to.clone(),
                    inner,
                }
            } else {
                if m.signal {
                    acked_by_writing.push(m.seq);
                } else {
                    replayed_upto = Some(m.seq);
                }
                Outgoing::Replay(self.replay_stanza(m, to, &bare, now, seed))
            };
            out.push(Output::Deliver {
                to: to.clone(),
                stanza,
            });
        }
        for seq in &acked_by_writing {
            device.ack(*seq);
        }
        if let Some(upto) = replayed_upto {
            device.record_replay(upto);
        }
        if replayed_upto.is_some() || !acked_by_writing.is_empty() {
            self.store.put_device(user, Some(no), &device)?;
        }
        self.counters.replays += out.len() as u64;
        progress.messages += out.len();
        progress.bytes += written_bytes;
        if more {
            self.replays.last_token += 1;
            progress.token = self.replays.last_token;
            self.replays.waiting.insert((user, no), progress);
            out.push(Output::Pace {
                to: to.clone(),
                token: progress.token,
            });
        }
        Ok(out)
    }

    /// `replay-on-available`: the logged stanza for one device, with its markers: the seed's
    /// offline marker (devices that speak it), a XEP-0203 delay, the XEP-0359 id (the archive's
    /// where the server archived it, so a client that also catches up through MAM sees one
    /// message), and a receipt request where a receipt acks it.
    fn replay_stanza(
        &self,
        m: MessageRecord,
        to: &Jid,
        bare: &str,
        now: Millis,
        seed: bool,
    ) -> Replay {
        let stanza_id = match m.archive_id {
            Some(id) => id,
            None => uuid::Uuid::from_u128(m.stanza_id)
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned(),
        };
        Replay {
            to: to.clone(),
            request_receipt: !m.signal && !m.asks_receipt && m.msg_id.is_some(),
            stored: m.stanza,
            logged_at: Millis(m.logged_at),
            stanza_id,
            stanza_id_by: bare.to_string(),
            offline_marker: seed,
            delay_from: Some(self.config.domain.clone()),
            now,
        }
    }

    pub(super) fn unavailable(
        &mut self,
        jid: &Jid,
        session_id: Option<&str>,
        now: Millis,
    ) -> Result<Vec<Output>> {
        let resource = self.local_device(jid, "unavailable session")?;
        let Some(user) = self.store.user_id(&jid.bare_string())? else {
            return Ok(Vec::new());
        };
        for (no, mut device) in self.store.devices(user)? {
            // Match the resource, not the key: with a stable device id or `after-hash`, another
            // session of the same device may already be the live one.
            // A connection that is not the device's current one (a late event of a session
            // the same resource replaced) changes nothing.
            let other_connection = matches!(
                (session_id, device.session_id.as_deref()),
                (Some(gone), Some(current)) if gone != current
            );
            if device.resource == resource && device.online && !other_connection {
                // What the paced replay has not written yet is replayed at the next login.
                self.replays.waiting.remove(&(user, no));
                device.online = false;
                device.last_seen = now.0;
                self.store.put_device(user, Some(no), &device)?;
            }
        }
        Ok(Vec::new())
    }

    /// After a (re)connect: devices not in the snapshot are offline; those in it are available
    /// (continuing their session when nothing changed).
    pub(super) fn snapshot(
        &mut self,
        sessions: &[SessionInfo],
        now: Millis,
    ) -> Result<Vec<Output>> {
        let live: HashSet<String> = sessions.iter().map(|s| s.jid.to_string()).collect();
        let mut gone = Vec::new();
        for entry in self.store.all_devices() {
            let (user, no, device) = entry?;
            if device.online {
                let jid = format!("{}/{}", self.store.user(user)?.jid, device.resource);
                if !live.contains(&jid) {
                    gone.push((user, no, device));
                }
            }
        }
        for (user, no, mut device) in gone {
            self.replays.waiting.remove(&(user, no));
            device.online = false;
            self.store.put_device(user, Some(no), &device)?;
        }
        let mut out = Vec::new();
        for session in sessions {
            match self.available(session, now, true) {
                Ok(o) => out.extend(o),
                Err(super::EngineError::Rejected(why)) => {
                    if crate::warnlimit::admit(
                        crate::warnlimit::Warning::SnapshotSessionRejected,
                        now,
                    ) {
                        tracing::warn!("snapshot: {why}")
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// The lowest stored seq that no device of the user has acked (`head + 1` when every one was).
/// Everything at or below the highest cursor is acked by that device; above it only the devices'
/// short out-of-order sets can hold a seq, so this costs the devices, not the log.
fn undelivered_point(
    devices: &[(DeviceNo, DeviceRecord)],
    record: &crate::store::UserRecord,
) -> Seq {
    let highest = devices.iter().map(|(_, d)| d.acked_upto).max().unwrap_or(0);
    let mut point = (highest + 1).max(record.first_seq);
    while point <= record.head && devices.iter().any(|(_, d)| d.is_acked(point)) {
        point += 1;
    }
    point
}
