//! The rules of `docs/rules.md` as a state machine over the [`Store`].
//!
//! Inputs are events from the XMPP server ([`Input`]) and the passing of time ([`Engine::tick`]);
//! outputs are stanzas to write ([`Output`]). The engine never reads the clock (every call takes
//! `now`), never touches a socket, and sees the store only through its typed API.
//!
//! Group commit: outputs that announce a write (the 10013 server ack, the 501 bounce) are held
//! back and released by [`Engine::commit`] only after the store flush that makes the write
//! durable. Replays are not held: they are at-least-once and a lost one is sent again.

mod bounces;
mod devices;
mod retention;
pub use bounces::MAX_BOUNCE_ATTEMPTS;
pub use retention::RetentionReport;
pub mod query;
mod receipts;

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hooks::SessionInfo;
use crate::jid::{DeviceKeyRule, Jid};
use crate::stanza::{Message, Outgoing};
use crate::store::{Counters, Store, StoreError};
use crate::time::Millis;

/// Which wire conventions readtrack speaks (config `[receipts] dialect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// The seed dialect for everyone: crs server ack, delay-501 bounce, offline marker on
    /// replays, to every client.
    Seed,
    /// Standards only: no server ack, no bounce; replays carry XEP-0203 delay and XEP-0359 ids.
    Xep,
    /// Per device: the seed's stanzas only to devices that speak it (a resource matching
    /// `seed_resources`, or a device that sent a seed stanza); standards to every other client.
    #[default]
    Auto,
}

/// Which messages need a receipt from some device of the recipient (config `[receipts] require`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptPolicy {
    #[default]
    All,
    System,
    None,
}

impl FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seed" => Ok(Dialect::Seed),
            "xep" => Ok(Dialect::Xep),
            "auto" => Ok(Dialect::Auto),
            other => Err(format!(
                "unknown dialect {other:?} (expected \"auto\", \"seed\" or \"xep\")"
            )),
        }
    }
}

impl FromStr for ReceiptPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(ReceiptPolicy::All),
            "system" => Ok(ReceiptPolicy::System),
            "none" => Ok(ReceiptPolicy::None),
            other => Err(format!(
                "unknown receipt policy {other:?} (expected \"all\", \"system\" or \"none\")"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The tracked XMPP domain (`example.com`); server acks and bounces come from it.
    pub domain: String,
    pub dialect: Dialect,
    /// Under [`Dialect::Auto`]: resources of clients that speak the seed dialect (`*` matches
    /// any run of characters).
    pub seed_resources: Vec<String>,
    pub policy: ReceiptPolicy,
    /// Time a message needing a receipt may wait for one before the sender gets the bounce.
    pub receipt_timeout: Duration,
    /// Senders besides the domain itself whose messages are system messages (bare or full JIDs).
    pub system_senders: Vec<Jid>,
    pub device_key: DeviceKeyRule,
    /// How many recent messages a device seen for the first time receives.
    pub history: u64,
    /// ... of which none older than this.
    pub history_max_age: Option<Duration>,
    /// At most this many timers are settled per tick, so one tick cannot stall the event loop.
    pub timers_per_tick: usize,
    /// At most this many messages are replayed per login; the rest follow at the next login.
    pub max_replay: usize,
    /// At most this many receipt timers run at once; past it messages are logged without one.
    pub max_pending_timers: usize,
    /// Retention: anything older than this is deleted, acked or not.
    pub retention_max_age: Duration,
    /// A device unseen this long is forgotten and stops holding messages back.
    pub expire_after: Duration,
    /// Devices kept per user: a new one past it makes the longest idle offline device go (a
    /// new session is never refused, even when every device is online).
    pub max_devices_per_user: usize,
    /// Messages and stanza bytes in one user's log: at the limit the oldest messages every
    /// device acked go first; if none can, a received message goes back to the server's
    /// offline storage and a sent copy is not logged.
    pub max_log_messages_per_user: u64,
    pub max_log_bytes_per_user: u64,
    /// Stanza bytes one login's replay writes (at least one message); the rest follows at the
    /// next login.
    pub max_replay_bytes: u64,
    /// Stanza bytes of a replay in flight to one device: after this many (at least one message)
    /// the replay waits for the server to report them flushed ([`Input::Drained`]) before it
    /// writes the next chunk. 0 writes the whole replay at once (a server module without flow
    /// control).
    pub replay_window_bytes: u64,
    /// Index entries one receipt or marker may examine; one that reaches it is rejected.
    pub max_receipt_scan: usize,
}

impl EngineConfig {
    pub fn new(domain: &str) -> EngineConfig {
        EngineConfig {
            domain: domain.to_ascii_lowercase(),
            dialect: Dialect::Auto,
            seed_resources: default_seed_resources(),
            policy: ReceiptPolicy::All,
            receipt_timeout: Duration::from_secs(10),
            system_senders: Vec::new(),
            device_key: DeviceKeyRule::Resource,
            history: 100,
            history_max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            timers_per_tick: 10_000,
            max_replay: 10_000,
            max_pending_timers: 1_000_000,
            retention_max_age: Duration::from_secs(365 * 86_400),
            expire_after: Duration::from_secs(90 * 86_400),
            max_devices_per_user: 32,
            max_log_messages_per_user: 100_000,
            max_log_bytes_per_user: 256 * 1024 * 1024,
            max_replay_bytes: 8 * 1024 * 1024,
            replay_window_bytes: 256 * 1024,
            max_receipt_scan: 100_000,
        }
    }
}

/// The seed's clients bind resources like `Spark 2.6.3#android`.
pub fn default_seed_resources() -> Vec<String> {
    vec!["*#*".to_string(), "Spark*".to_string()]
}

/// Whether `text` matches a pattern where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole text
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What the XMPP server tells readtrack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A session sent its initial presence: its device may now receive replays. `session_id` is
    /// the server's id of the connection (see [`SessionInfo`]).
    Available {
        jid: Jid,
        device_id: Option<String>,
        session_id: Option<String>,
    },
    /// A session ended. With a `session_id`, only that connection: a newer session of the same
    /// resource stays online.
    Unavailable {
        jid: Jid,
        session_id: Option<String>,
    },
    /// The server routed `message` to local user `to` (bare) and wrote it live to `sessions`
    /// (empty when no session was available), and its carbons to `carbons` (sessions of the
    /// recipient for a received carbon, of the sender for a sent one).
    Routed {
        message: Message,
        /// The routed stanza as the server serialised it (`jabber:client`): what is logged.
        message_xml: String,
        to: Jid,
        sessions: Vec<Jid>,
        carbons: Vec<Jid>,
        archive_id: Option<String>,
        /// A local client (the message's `from`, a full JID) sent it: it is also that
        /// client's [`Input::Sent`] (the module reports a message to a local user once).
        sent: bool,
    },
    /// A local client sent `message` (its `from` is the client's full JID): receipts, markers,
    /// messages to users elsewhere. `carbons`: the sender's other sessions that got a carbon.
    Sent {
        message: Message,
        message_xml: String,
        carbons: Vec<Jid>,
    },
    /// The complete set of available sessions, sent when readtrack (re)connects.
    Snapshot { sessions: Vec<SessionInfo> },
    /// The server's token of `user`'s account (see [`crate::hooks::HookEvent::Account`]).
    Account { user: Jid, token: String },
    /// The server deleted `user`'s account: everything of it goes.
    UserDeleted { user: Jid },
    /// What was written to session `jid` up to the [`Output::Pace`] with `token` has left the
    /// server: the paced replay to it goes on.
    Drained { jid: Jid, token: u64 },
}

impl Input {
    /// A routed message built in code (tests, benches, other server modules): its text is the
    /// typed message written in `jabber:client`, as a server would serialise it.
    pub fn routed(
        message: Message,
        to: Jid,
        sessions: Vec<Jid>,
        archive_id: Option<String>,
        sent: bool,
    ) -> Input {
        Input::Routed {
            message_xml: crate::stanza::write::client_message(&message),
            message,
            to,
            sessions,
            carbons: Vec::new(),
            archive_id,
            sent,
        }
    }

    /// A client's stanza built in code, as [`Input::routed`].
    pub fn sent(message: Message) -> Input {
        Input::Sent {
            message_xml: crate::stanza::write::client_message(&message),
            message,
            carbons: Vec::new(),
        }
    }
}

/// One message as the server handed it over: typed, as text, and where its carbons went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routed<'a> {
    pub message: &'a Message,
    pub xml: &'a str,
    pub carbons: &'a [Jid],
}

/// What readtrack asks the XMPP server to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write to exactly this session; if it is gone, drop it (the message stays unread).
    Deliver { to: Jid, stanza: Outgoing },
    /// Route as the server host (acks and bounces come from the domain). With `confirm`, the
    /// server answers with that id once it has executed the command, and the engine is told
    /// through [`Engine::confirm`]; until then the command is sent again after a while.
    SendAsHost {
        stanza: Outgoing,
        confirm: Option<String>,
    },
    /// Store `stanza_xml` in the server's own offline storage for local user `to`: a message
    /// the server accepted that readtrack cannot log goes back where it would have gone.
    StoreOffline { to: Jid, stanza_xml: String },
    /// Tell readtrack ([`Input::Drained`] with `token`) once everything written to session `to`
    /// so far has left the server: a replay chunk ends here and more follows.
    Pace { to: Jid, token: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An input that cannot apply to this domain; nothing was changed.
    #[error("rejected input: {0}")]
    Rejected(String),
    /// A message the server accepted that readtrack cannot log (it cannot stand alone as a
    /// stanza). Nothing was changed; the caller hands it back to the server's own storage.
    #[error("cannot log: {0}")]
    Unloggable(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub struct Engine {
    store: Store,
    config: EngineConfig,
    /// Outputs waiting for the flush that makes their write durable.
    held: Vec<Output>,
    counters: Counters,
    /// Receipt timers in the store, counted once at open and kept up to date.
    pending_timers: usize,
    /// The user retention looks at next (retention works through users in id order).
    retention_cursor: u64,
    /// Replays waiting for their last chunk to drain. In memory only: after a restart the
    /// snapshot replays afresh.
    replays: devices::PacedReplays,
}

impl Engine {
    pub fn new(store: Store, config: EngineConfig) -> Result<Engine> {
        let counters = store.counters()?;
        let pending_timers = store.timer_count();
        Ok(Engine {
            store,
            config,
            held: Vec::new(),
            counters,
            pending_timers,
            retention_cursor: 0,
            replays: Default::default(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Gives the store back (flushing first), e.g. to reopen it.
    pub fn close(mut self) -> Result<Store> {
        self.commit()?;
        Ok(self.store)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Applies one input. Returns what may be written at once; writes that must wait for
    /// durability are released by the next [`Engine::commit`].
    pub fn handle(&mut self, input: Input, now: Millis) -> Result<Vec<Output>> {
        match input {
            Input::Available {
                jid,
                device_id,
                session_id,
            } => {
                let session = SessionInfo {
                    jid,
                    device_id,
                    session_id,
                };
                self.available(&session, now, false)
            }
            Input::Unavailable { jid, session_id } => {
                self.unavailable(&jid, session_id.as_deref(), now)
            }
            Input::Routed {
                message,
                message_xml,
                to,
                sessions,
                carbons,
                archive_id,
                sent,
            } => {
                // The sender's side first, as when it came as its own Sent input. Its
                // refusal (a sender that is not a local device) must not cost the recipient
                // the message, so it is reported and routing goes on.
                let mut out = Vec::new();
                let routed = Routed {
                    message: &message,
                    xml: &message_xml,
                    carbons: &carbons,
                };
                if sent {
                    match self.sent(&routed, now) {
                        Ok(o) => out = o,
                        Err(EngineError::Rejected(why)) => {
                            if crate::warnlimit::admit(crate::warnlimit::Warning::SentRejected, now)
                            {
                                tracing::warn!("routed message marked sent by a client: {why}")
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                match self.routed(&routed, &to, &sessions, archive_id, now) {
                    Ok(o) => out.extend(o),
                    Err(EngineError::Unloggable(why)) if sessions.is_empty() => {
                        out.push(self.give_back(&why, to, message_xml));
                    }
                    Err(e) => return Err(e),
                }
                Ok(out)
            }
            Input::Sent {
                message,
                message_xml,
                carbons,
            } => self.sent(
                &Routed {
                    message: &message,
                    xml: &message_xml,
                    carbons: &carbons,
                },
                now,
            ),
            Input::Snapshot { sessions } => self.snapshot(&sessions, now),
            Input::Drained { jid, token } => self.drained(&jid, token, now),
            Input::Account { user, token } => self.account(&user, &token),
            Input::UserDeleted { user } => {
                let user = self.local_user(&user, "deleted user")?;
                self.purge_user(&user.bare_string(), "the server deleted the account")?;
                Ok(Vec::new())
            }
        }
    }

    /// `at-least-once` (`docs/rules.md`): a message for an offline user that readtrack cannot log
    /// goes back to the server's own offline storage (counted and logged), never dropped.
    pub fn give_back(&mut self, why: &str, to: Jid, stanza_xml: String) -> Output {
        self.counters.given_back += 1;
        tracing::warn!(recipient = %to, "{why}; handed back to the server's offline storage");
        Output::StoreOffline { to, stanza_xml }
    }

    /// `account-lifecycle` (`docs/rules.md`): the token the server keeps for an account. A user
    /// readtrack knows under another token is a new account with an old name: the old one's data
    /// goes first. A user known without a token (logged before tokens, or by an older store) adopts
    /// it.
    fn account(&mut self, user: &Jid, token: &str) -> Result<Vec<Output>> {
        let user = self.local_user(user, "account")?.bare_string();
        if let Some(id) = self.store.user_id(&user)? {
            match self.store.user(id)?.account {
                Some(known) if known == token => return Ok(Vec::new()),
                Some(_) => {
                    self.purge_user(&user, "the account was deleted and created again")?;
                }
                None => {}
            }
        }
        let id = self.store.ensure_user(&user)?;
        self.store.set_account(id, token)?;
        Ok(Vec::new())
    }

    /// Deletes everything of a user (log, devices, timers, read state, what they sent), in the
    /// next commit. Returns what went; `None` when readtrack has nothing of that user.
    pub fn purge_user(
        &mut self,
        bare: &str,
        why: &str,
    ) -> Result<Option<crate::store::PurgeReport>> {
        let Some(id) = self.store.user_id(bare)? else {
            return Ok(None);
        };
        let report = self.store.purge_user(id)?;
        self.pending_timers = self.pending_timers.saturating_sub(report.timers as usize);
        self.counters.users_purged += 1;
        tracing::info!(user = %bare, messages = report.messages, devices = report.devices, "{why}: everything of the user deleted");
        Ok(Some(report))
    }

    /// Fires receipt timers due at `now`. Bounces are held until the next commit.
    pub fn tick(&mut self, now: Millis) -> Result<Vec<Output>> {
        self.fire_timers(now)?;
        Ok(Vec::new())
    }

    /// Makes every write so far durable, then releases the outputs that were waiting for it.
    pub fn commit(&mut self) -> Result<Vec<Output>> {
        self.store.put_counters(&self.counters)?;
        self.store.flush()?;
        Ok(std::mem::take(&mut self.held))
    }

    /// Outputs waiting for the next commit.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// When the earliest receipt timer is due, if any.
    pub fn next_deadline(&self) -> Result<Option<Millis>> {
        Ok(self.store.next_deadline()?.map(Millis))
    }

    /// A bare JID of this domain with a localpart, or a rejection naming what is wrong.
    fn local_user(&self, jid: &Jid, what: &str) -> Result<Jid> {
        if jid.local().is_none() || jid.domain() != self.config.domain {
            return Err(EngineError::Rejected(format!(
                "{what} {jid} is not a user of {}",
                self.config.domain
            )));
        }
        Ok(jid.to_bare())
    }

    fn local_device<'a>(&self, jid: &'a Jid, what: &str) -> Result<&'a str> {
        self.local_user(jid, what)?;
        jid.resource()
            .ok_or_else(|| EngineError::Rejected(format!("{what} {jid} is not a full JID")))
    }
}
