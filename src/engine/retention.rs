//! `retention` (`docs/rules.md`): retention and device expiry, in bounded batches so message
//! handling never waits long behind it.
//!
//! A message is deleted when every live device of its user has acked it (and the user has one)
//! and it lies outside the history window (by count and by age), or when it is older than
//! `retention_max_age`: a message no device has acked waits for the next device until then. Deletion
//! always takes the oldest messages of a user first (a prefix of the log), so `first_seq` says
//! what is left and cursors can be moved past what is gone.

use super::{Engine, Result};
use crate::store::UserId;
use crate::time::Millis;

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted: u64,
    pub devices_expired: u64,
    /// The pass went through every user (the next pass starts again from the first).
    pub complete: bool,
}

impl Engine {
    /// One bounded pass: deletes at most `budget` messages, continuing where the last pass
    /// stopped.
    pub fn retain(&mut self, now: Millis, budget: u64) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        let users: Vec<UserId> = self
            .store
            .users_from(self.retention_cursor)
            .map(|u| u.map(|(id, _)| id))
            .collect::<Result<_, _>>()?;
        for user in users {
            if report.deleted >= budget {
                self.retention_cursor = user;
                return Ok(report);
            }
            self.retain_user(user, now, budget - report.deleted, &mut report)?;
            if report.deleted < budget {
                self.retention_cursor = user + 1;
            }
        }
        if report.deleted < budget {
            self.retention_cursor = 0;
            report.complete = true;
        }
        Ok(report)
    }

    fn retain_user(
        &mut self,
        user: UserId,
        now: Millis,
        budget: u64,
        report: &mut RetentionReport,
    ) -> Result<()> {
        let record = self.store.user(user)?;
        let mut live = Vec::new();
        for (no, device) in self.store.devices(user)? {
            if !device.online
                && now.0.saturating_sub(device.last_seen)
                    >= self.config.expire_after.as_millis() as u64
            {
                self.store.remove_device(user, no)?;
                self.counters.devices_expired += 1;
                report.devices_expired += 1;
                tracing::info!(user = %record.jid, device = %device.key, last_seen = %Millis(device.last_seen), "device unseen for expire_after; forgotten");
            } else {
                live.push((no, device));
            }
        }
        let window_start = record.head.saturating_sub(self.config.history);
        let age_cutoff = self.config.history_max_age.map(|a| now.minus(a).0);
        let max_cutoff = now.minus(self.config.retention_max_age).0;
        let device_nos: Vec<_> = live.iter().map(|(no, _)| *no).collect();
        let mut deleted = 0;
        let mut first_kept = record.first_seq;
        for m in self
            .store
            .messages_after(user, record.first_seq.saturating_sub(1))
        {
            let m = m?;
            if deleted >= budget {
                break;
            }
            let too_old = m.logged_at < max_cutoff;
            let outside_window =
                m.seq <= window_start || age_cutoff.is_some_and(|c| m.logged_at < c);
            // "Every device acked it" must not hold vacuously: a message for a user with no
            // device (yet, or any more) was delivered nowhere and waits for the next one.
            let all_acked = !live.is_empty() && live.iter().all(|(_, d)| d.is_acked(m.seq));
            // A message still waiting for its receipt keeps its timer until it fires.
            let waiting = m.receipt.timer().is_some();
            if !(too_old || (outside_window && all_acked && !waiting)) {
                break;
            }
            self.store.delete_message(user, &m, &device_nos)?;
            if waiting {
                self.pending_timers = self.pending_timers.saturating_sub(1);
            }
            deleted += 1;
            first_kept = m.seq + 1;
        }
        if deleted > 0 {
            // What is gone counts as read for every device, so unread counts stay true.
            for (no, mut device) in live {
                if device.ack_upto(first_kept - 1) {
                    self.store.put_device(user, Some(no), &device)?;
                }
            }
            self.counters.messages_deleted += deleted;
            report.deleted += deleted;
            tracing::debug!(user = %record.jid, deleted, first_kept, "retention");
        }
        Ok(())
    }
}

/// At most this many acked messages are deleted to make room for one new message, so one
/// append costs a bounded amount of work even right after the limits were lowered.
const MAX_DELETED_FOR_ROOM: u64 = 1024;

impl Engine {
    /// `max_log_messages_per_user` / `max_log_bytes_per_user`: whether a message of `bytes`
    /// fits in the user's log, after deleting the oldest messages every device of the user has
    /// acked (history goes first, as retention would, whatever the history window says). A
    /// message no device has acked is never deleted to make room: then it does not fit.
    pub(super) fn make_room_in_log(&mut self, user: UserId, bytes: u64) -> Result<bool> {
        let record = self.store.user(user)?;
        let (max_count, max_bytes) = (
            self.config.max_log_messages_per_user,
            self.config.max_log_bytes_per_user,
        );
        let over = |count: u64, total: u64| count + 1 > max_count || total + bytes > max_bytes;
        let (mut count, mut total) = (record.log_messages(), record.log_bytes);
        if !over(count, total) {
            return Ok(true);
        }
        if bytes > max_bytes {
            return Ok(false); // alone over the budget: deleting history cannot help
        }
        let devices = self.store.devices(user)?;
        if devices.is_empty() {
            return Ok(false); // nothing was acked by anyone
        }
        let device_nos: Vec<_> = devices.iter().map(|(no, _)| *no).collect();
        let mut deleted = 0;
        let mut first_kept = record.first_seq;
        for m in self
            .store
            .messages_after(user, record.first_seq.saturating_sub(1))
        {
            if !over(count, total) || deleted >= MAX_DELETED_FOR_ROOM {
                break;
            }
            let m = m?;
            if !devices.iter().all(|(_, d)| d.is_acked(m.seq)) {
                break; // a prefix only: first_seq says what is left
            }
            self.store.delete_message(user, &m, &device_nos)?;
            if m.receipt.timer().is_some() {
                self.pending_timers = self.pending_timers.saturating_sub(1);
            }
            count -= 1;
            total = total.saturating_sub(m.stanza.len() as u64);
            deleted += 1;
            first_kept = m.seq + 1;
        }
        if deleted > 0 {
            for (no, mut device) in devices {
                if device.ack_upto(first_kept - 1) {
                    self.store.put_device(user, Some(no), &device)?;
                }
            }
            self.counters.messages_deleted += deleted;
            tracing::debug!(user = %record.jid, deleted, first_kept, "log limit: acked history deleted to make room");
        }
        Ok(!over(count, total))
    }
}
