//! What the operator CLI shows: read-only views of cursors and logs, and `forget`. The same code
//! runs inside the service (through the admin socket) and on a directly opened store.

use serde::Serialize;

use super::{Engine, EngineError, Result};
use crate::jid::Jid;
use crate::store::{DeviceNo, DeviceRecord, MessageRecord, ReceiptState, Seq, UserId};
use crate::time::Millis;

/// `readtrack cursors --json`, as `docs/cli.md` documents it (fields may be added, never renamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserCursors {
    pub user: String,
    pub head: u64,
    pub devices: Vec<DeviceCursor>,
    /// Added to the documented shape: unread per conversation, like an inbox.
    pub conversations: Vec<ConversationView>,
}

/// One conversation (peer) of a user: what is unread whichever device reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationView {
    pub peer: String,
    pub unread: u64,
    /// Everything received at or below this seq was displayed on some device.
    pub read_upto: u64,
    pub last_seq: u64,
    pub last_time: String,
}

/// `readtrack conversations --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationsView {
    pub user: String,
    pub conversations: Vec<ConversationView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceCursor {
    pub device: String,
    pub resource: String,
    pub acked_upto: u64,
    pub unread: u64,
    pub pending: u64,
    pub online: bool,
    pub last_seen: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub seq: u64,
    pub time: String,
    pub from: String,
    pub id: Option<String>,
    pub body: Option<String>,
}

/// `readtrack unread --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnreadView {
    pub user: String,
    pub device: String,
    pub unread: u64,
    pub messages: Vec<MessageView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceState {
    pub device: String,
    /// `acked`, `pending` (written, not acked) or `unread`.
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    #[serde(flatten)]
    pub message: MessageView,
    /// `waiting`, `acked`, `bounced` or `not-required`.
    pub receipt: &'static str,
    pub devices: Vec<DeviceState>,
}

/// `readtrack log --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogView {
    pub user: String,
    pub head: u64,
    pub messages: Vec<LogEntry>,
}

/// `readtrack stats --json` (the store part; the service adds uptime and liveness).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    pub users: u64,
    pub devices: u64,
    pub messages: u64,
    pub pending_timers: u64,
    pub logged: u64,
    pub replays: u64,
    pub bounces: u64,
    pub receipts_accepted: u64,
    pub receipts_duplicate: u64,
    pub receipts_rejected: u64,
    pub messages_deleted: u64,
    pub devices_expired: u64,
    pub replays_truncated: u64,
    pub timers_refused: u64,
    /// Messages readtrack could not log, handed back to the server's offline storage.
    pub given_back: u64,
    /// Sessions that came online under a device key another live session already had.
    pub device_key_merges: u64,
    /// Users deleted with all their data (account deleted on the server, or `purge`).
    pub users_purged: u64,
    /// Devices forgotten to admit a new one past `max_devices_per_user`.
    pub devices_evicted: u64,
    /// Received messages handed back to the server's offline storage because the user's log
    /// was at its limit (also in `given_back`).
    pub log_limit_given_back: u64,
    /// Users' own sent copies not logged because their log was at its limit.
    pub sent_not_logged: u64,
    pub store_bytes: u64,
}

/// Why a query cannot answer: the operator asked for something that is not there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{0:?} is not a JID: {1}")]
    BadJid(String, String),
    #[error("{0} is not a bare user JID (user@domain)")]
    NotBare(String),
    #[error("unknown user {0}")]
    UnknownUser(String),
    #[error("user {user} has no device {device:?} (devices: {known})")]
    UnknownDevice {
        user: String,
        device: String,
        known: String,
    },
}

impl From<QueryError> for EngineError {
    fn from(e: QueryError) -> Self {
        EngineError::Rejected(e.to_string())
    }
}

fn shorten(body: Option<String>, max: usize) -> Option<String> {
    body.map(|b| {
        if b.chars().count() > max {
            format!("{}…", b.chars().take(max).collect::<String>())
        } else {
            b
        }
    })
}

fn view(m: &MessageRecord, body_max: usize) -> MessageView {
    MessageView {
        seq: m.seq,
        time: Millis(m.logged_at).rfc3339(),
        from: m.from.clone(),
        id: m.msg_id.clone(),
        body: shorten(super::receipts::logged_body(m), body_max),
    }
}

impl Engine {
    fn user_of(&self, jid: &str) -> Result<(UserId, String)> {
        let parsed =
            Jid::prepare(jid).map_err(|e| QueryError::BadJid(jid.to_string(), e.to_string()))?;
        if parsed.local().is_none() || parsed.is_full() {
            return Err(QueryError::NotBare(jid.to_string()).into());
        }
        let bare = parsed.bare_string();
        // A store failure is readtrack's problem (status 1), not an unknown user (status 2).
        match self.store.user_id(&bare)? {
            Some(id) => Ok((id, bare)),
            None => Err(QueryError::UnknownUser(bare).into()),
        }
    }

    fn device_of(
        &self,
        user: UserId,
        bare: &str,
        device: &str,
    ) -> Result<(DeviceNo, DeviceRecord)> {
        let devices = self.store.devices(user)?;
        let known = match devices.is_empty() {
            true => "none".to_string(),
            false => devices
                .iter()
                .map(|(_, d)| d.key.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        };
        devices
            .iter()
            .find(|(_, d)| d.key == device || d.resource == device)
            .cloned()
            .ok_or_else(|| {
                QueryError::UnknownDevice {
                    user: bare.to_string(),
                    device: device.to_string(),
                    known,
                }
                .into()
            })
    }

    fn unread_count(head: u64, d: &DeviceRecord) -> u64 {
        head.saturating_sub(d.acked_upto)
            .saturating_sub(d.acked_above.len() as u64)
    }

    /// Messages written to the device and not acked by it: those a replay wrote (the range up
    /// to `replayed.max_upto`, minus what is acked or deleted) and live writes above it.
    fn pending_count(
        &self,
        user: UserId,
        no: DeviceNo,
        d: &DeviceRecord,
        first_seq: Seq,
    ) -> Result<u64> {
        let from = d.acked_upto.max(first_seq.saturating_sub(1));
        let upto = d.replayed.max_upto;
        let replayed = if upto > from {
            let acked = d
                .acked_above
                .iter()
                .filter(|s| **s > from && **s <= upto)
                .count();
            upto - from - acked as u64
        } else {
            0
        };
        let live = self
            .store
            .deliveries(user, no, u64::MAX)?
            .into_iter()
            .filter(|(seq, _)| *seq > upto && !d.is_acked(*seq))
            .count();
        Ok(replayed + live as u64)
    }

    pub fn cursors(&self, jid: &str) -> Result<UserCursors> {
        let (user, bare) = self.user_of(jid)?;
        let record = self.store.user(user)?;
        let head = record.head;
        let mut devices = Vec::new();
        for (no, d) in self.store.devices(user)? {
            let pending = self.pending_count(user, no, &d, record.first_seq)?;
            devices.push(DeviceCursor {
                device: d.key.clone(),
                resource: d.resource.clone(),
                acked_upto: d.acked_upto,
                unread: Self::unread_count(head, &d),
                pending,
                online: d.online,
                last_seen: Millis(d.last_seen).rfc3339(),
            });
        }
        let conversations = self.conversation_views(user)?;
        Ok(UserCursors {
            user: bare,
            head,
            devices,
            conversations,
        })
    }

    fn conversation_views(&self, user: UserId) -> Result<Vec<ConversationView>> {
        let mut views: Vec<ConversationView> = self
            .store
            .conversations(user)?
            .into_iter()
            .map(|c| ConversationView {
                peer: c.peer,
                unread: c.unread,
                read_upto: c.read_upto,
                last_seq: c.last_seq,
                last_time: Millis(c.last_at).rfc3339(),
            })
            .collect();
        // Newest conversation first, as an inbox shows them.
        views.sort_by_key(|v| std::cmp::Reverse(v.last_seq));
        Ok(views)
    }

    pub fn conversations(&self, jid: &str) -> Result<ConversationsView> {
        let (user, bare) = self.user_of(jid)?;
        Ok(ConversationsView {
            user: bare,
            conversations: self.conversation_views(user)?,
        })
    }

    pub fn unread(&self, jid: &str, device: &str, limit: usize) -> Result<UnreadView> {
        let (user, bare) = self.user_of(jid)?;
        let (_, d) = self.device_of(user, &bare, device)?;
        let head = self.store.user(user)?.head;
        let mut messages = Vec::new();
        for m in self.store.messages_after(user, d.acked_upto) {
            let m = m?;
            if messages.len() >= limit {
                break;
            }
            if !d.is_acked(m.seq) {
                messages.push(view(&m, 60));
            }
        }
        Ok(UnreadView {
            user: bare,
            device: d.key.clone(),
            unread: Self::unread_count(head, &d),
            messages,
        })
    }

    pub fn log(&self, jid: &str, after: u64, limit: usize) -> Result<LogView> {
        let (user, bare) = self.user_of(jid)?;
        let head = self.store.user(user)?.head;
        let devices = self.store.devices(user)?;
        let mut messages = Vec::new();
        for m in self.store.messages_after(user, after).take(limit) {
            let m = m?;
            let mut states = Vec::new();
            for (no, d) in &devices {
                let state = if d.is_acked(m.seq) {
                    "acked"
                } else if m.seq <= d.replayed.max_upto
                    || self.store.delivery(user, *no, m.seq)?.is_some()
                {
                    "pending"
                } else {
                    "unread"
                };
                states.push(DeviceState {
                    device: d.key.clone(),
                    state,
                });
            }
            let receipt = match m.receipt {
                ReceiptState::NotRequired => "not-required",
                ReceiptState::Waiting { .. } => "waiting",
                ReceiptState::Bouncing { .. } => "bouncing",
                ReceiptState::Acked => "acked",
                ReceiptState::Bounced => "bounced",
            };
            messages.push(LogEntry {
                message: view(&m, 60),
                receipt,
                devices: states,
            });
        }
        Ok(LogView {
            user: bare,
            head,
            messages,
        })
    }

    /// Drops a device's cursor and delivery log (a lost phone): it no longer holds anything back.
    /// Returns the forgotten device key.
    pub fn forget(&mut self, jid: &str, device: &str) -> Result<String> {
        let (user, bare) = self.user_of(jid)?;
        let (no, d) = self.device_of(user, &bare, device)?;
        self.store.remove_device(user, no)?;
        self.store.flush()?;
        tracing::info!(user = %bare, device = %d.key, "device forgotten");
        Ok(d.key)
    }

    /// The operator's `purge`: everything of the user goes, durably, as when the server deletes
    /// the account. Returns the user's bare JID and what was deleted.
    pub fn purge(&mut self, jid: &str) -> Result<(String, crate::store::PurgeReport)> {
        let (_, bare) = self.user_of(jid)?;
        let report = self
            .purge_user(&bare, "purged by the operator")?
            .unwrap_or_default();
        self.commit()?;
        Ok((bare, report))
    }

    pub fn store_stats(&self) -> Result<StoreStats> {
        let c = &self.counters;
        Ok(StoreStats {
            users: self.store.users_created()?,
            devices: self.store.device_count() as u64,
            // From counters: sled's len() would scan the whole log.
            messages: c.messages_logged.saturating_sub(c.messages_deleted),
            pending_timers: self.store.timer_count() as u64,
            logged: c.messages_logged,
            replays: c.replays,
            bounces: c.bounces,
            receipts_accepted: c.receipts_accepted,
            receipts_duplicate: c.receipts_duplicate,
            receipts_rejected: c.receipts_rejected,
            messages_deleted: c.messages_deleted,
            devices_expired: c.devices_expired,
            replays_truncated: c.replays_truncated,
            timers_refused: c.timers_refused,
            given_back: c.given_back,
            device_key_merges: c.device_key_merges,
            users_purged: c.users_purged,
            devices_evicted: c.devices_evicted,
            log_limit_given_back: c.log_limit_given_back,
            sent_not_logged: c.sent_not_logged,
            store_bytes: self.store.size_on_disk()?,
        })
    }
}
