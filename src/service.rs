//! The service loop of `readtrack serve`. One task owns the [`Engine`]: it takes hook events from
//! the component link, applies them in batches, commits once per batch (group commit: one flush
//! covers every message of the batch, then their acks go out), fires receipt timers, and answers
//! admin queries. This is where the clock is read; the engine only receives `now`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::component::LinkEvent;
use crate::engine::{Engine, EngineError, Input, Output};
use crate::hooks::{CommandBatch, HookCommand, HookEvent, SessionInfo, SnapshotPage};
use crate::jid::Jid;
use crate::stanza::{write, Outgoing};
use crate::time::Millis;
use crate::warnlimit::{self, Warning};

/// Event forms beyond the first vocabulary this readtrack reads (told to the module).
/// `routed-signal`: a receipt or marker the server wrote to its addressee's session comes as its
/// `<routed sent="true">` alone, which [`Input::Routed`] applies as the sender's signal and then
/// logs, in that order, as the separate `<signal>` and `<routed>` were. `inherited-namespace`:
/// the message a session was written comes as Prosody wrote it, naming no namespace, inside
/// `<f:forwarded xmlns:f="urn:xmpp:forward:0" xmlns="jabber:client">`, whose default it
/// inherits (the module no longer copies it to add one). `batched`: one `<message>` holds the
/// events of one turn of the server's loop, in order ([`from_server_batch`]), instead of one
/// `<message>` around each.
const ACCEPTED_EVENTS: &str = "signal done-list claims routed-signal inherited-namespace batched";

/// How many hook events one batch (one flush) takes: it stops at the first stanza that reaches
/// it (a stanza of the module's `batched` form holds several).
const BATCH: usize = 512;
/// Longest sleep between two looks at the receipt timers.
const IDLE_TICK: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Counters of the service loop, readable from other tasks.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Events from the server: one per hook element (several in one stanza once batched).
    pub events: AtomicU64,
    /// Stanzas from the server, or events of one, that were malformed or not in the hook
    /// vocabulary.
    pub rejected_stanzas: AtomicU64,
    /// Events the engine refused (wrong domain, no sender...).
    pub rejected_inputs: AtomicU64,
    pub commands: AtomicU64,
    pub batches: AtomicU64,
    /// Whether the component link is up.
    pub connected: AtomicBool,
    /// Filled only when [`Service::timed`] is on (the metrics endpoint is configured).
    pub timings: Timings,
}

/// Durations the loop measures for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Timings {
    /// One [`Engine::commit`]: the store flush of a batch (group commit).
    pub commit: Latency,
    /// From the service taking a message's event off the link's queue to the command stanza
    /// holding its 10013 ack being handed to the link's writer.
    pub ack: Latency,
    /// From the service taking a session's availability off the queue to the last command
    /// stanza of its replay being handed to the writer; only availabilities that replay. A
    /// paced replay's first chunk: the rest waits for the server, not for readtrack.
    pub replay: Latency,
}

/// Upper bounds of [`Latency`]'s buckets, in nanoseconds: 100 us to 60 s, about 2.5x apart,
/// which covers a flush (milliseconds) as well as a replay of thousands of messages (seconds).
pub const LATENCY_BOUNDS_NANOS: [u64; 18] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// A histogram of durations, lock-free: an observation is a search over 18 bounds and two
/// relaxed atomic adds, so the service task never waits for a scrape.
#[derive(Debug, Default)]
pub struct Latency {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A copy of a [`Latency`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    pub sum_seconds: f64,
    /// Observations per bucket, not cumulative; one more than [`LATENCY_BOUNDS_NANOS`].
    pub buckets: Vec<u64>,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// What one hook stanza from the server means to the loop.
pub enum FromServer {
    /// `claim`: the module's number for a message it took from offline handling and holds
    /// until readtrack confirms it ([`HookCommand::Durable`]).
    Input(Box<Input>, Option<u64>),
    /// The module executed the commands with these ids.
    Done(Vec<String>),
    /// A message for offline user `to` that readtrack cannot log: it goes back to the
    /// server's own offline storage, never dropped.
    GiveBack {
        why: String,
        to: crate::jid::Jid,
        stanza_xml: String,
        claim: Option<u64>,
    },
    /// One page of the reconnect snapshot: the loop gathers pages and hands the engine one
    /// whole [`Input::Snapshot`] at the last.
    SnapshotPage {
        page: SnapshotPage,
        sessions: Vec<SessionInfo>,
    },
}

/// The pages of the snapshot received so far on this connection.
#[derive(Debug, Default)]
struct SnapshotPages {
    /// Pages 1 to `received` are in `sessions`.
    received: u32,
    sessions: Vec<SessionInfo>,
}

impl SnapshotPages {
    /// Adds a page; the whole snapshot once `page` is the last, or why the pages so far are
    /// of no use (the engine must never see part of a snapshot as the whole: every session not
    /// listed would be taken offline).
    fn add(
        &mut self,
        page: SnapshotPage,
        sessions: Vec<SessionInfo>,
    ) -> Result<Option<Vec<SessionInfo>>, String> {
        if page.number == 1 {
            // A new snapshot starts; whatever came before it is superseded.
            *self = SnapshotPages::default();
        } else if page.number != self.received + 1 {
            let expected = self.received + 1;
            *self = SnapshotPages::default();
            return Err(format!(
                "snapshot page {} arrived when page {expected} was due; pages dropped",
                page.number
            ));
        }
        self.received = page.number;
        self.sessions.extend(sessions);
        Ok(page
            .last
            .then(|| std::mem::take(self))
            .map(|whole| whole.sessions))
    }
}

/// The module's claims (messages it took from offline handling and holds until readtrack
/// confirms them) seen on this connection and not yet confirmed. Confirmed only by
/// [`HookCommand::Durable`] after the commit that made them durable: every number from `from`
/// up to the highest seen was either applied by the engine (logged, or handed back with a
/// `<store-offline>` that goes before the confirmation) or is listed for the module to hand
/// back itself. What a lost connection leaves unconfirmed the module hands back: a duplicate
/// at worst, never a loss.
#[derive(Debug, Default)]
struct Claims {
    /// The lowest claim number not yet confirmed on this connection; `None` before the first
    /// claim is seen. The first confirmation of a connection starts at 1: the module's numbers
    /// grow across connections, and it ignores those it does not hold, so the claims this
    /// connection made before the first one readtrack read (their events refused unread) are
    /// among those handed back, not left held until the connection ends.
    from: Option<u64>,
    /// The highest claim number seen on this connection.
    upto: u64,
    /// Claims the engine applied since the last confirmation.
    applied: Vec<u64>,
}

impl Claims {
    /// A claim's event was read (whatever becomes of it).
    fn seen(&mut self, claim: u64) {
        if self.from.is_none() {
            self.from = Some(1);
        }
        self.upto = self.upto.max(claim);
    }

    /// A claim's message is logged (durable at the next commit) or handed back.
    fn applied(&mut self, claim: u64) {
        self.seen(claim);
        self.applied.push(claim);
    }

    /// The confirmation of everything seen, once the store has committed it; the numbers not
    /// applied in between are for the module to hand back. A number below `from` was already
    /// confirmed (handed back as not seen, when its event came late): left out.
    fn confirm(&mut self) -> Option<HookCommand> {
        let from = self.from?;
        if self.upto < from {
            return None;
        }
        let mut applied = std::mem::take(&mut self.applied);
        applied.sort_unstable();
        applied.dedup();
        let mut returned = Vec::new();
        let mut next = from;
        for claim in applied
            .into_iter()
            .filter(|c| (from..=self.upto).contains(c))
        {
            if claim > next {
                returned.push((next, claim - 1));
            }
            next = claim + 1;
        }
        if next <= self.upto {
            returned.push((next, self.upto));
        }
        let command = HookCommand::Durable {
            from,
            upto: self.upto,
            returned,
        };
        self.from = Some(self.upto + 1);
        Some(command)
    }
}

/// What one stanza from the server means: an engine input, or the confirmation of a command.
/// The event and the client message inside it are read in one pass ([`HookEvent::parse`]);
/// this only chooses what of it the engine gets. The error is the line `serve` logs for it.
pub fn from_server(stanza: &str, host: &str) -> Result<FromServer, String> {
    from_event(HookEvent::parse(stanza, host).map_err(|e| e.to_string())?)
}

/// What each event of one stanza from the server means, in order ([`HookEvent::parse_batch`]):
/// one, or the events of one turn of the server's loop once readtrack accepts `batched`. An
/// event that is not one is an `Err` in its place; the whole is an `Err` where the stanza is no
/// event message.
pub fn from_server_batch(
    stanza: &str,
    host: &str,
) -> Result<Vec<Result<FromServer, String>>, String> {
    let events = HookEvent::parse_batch(stanza, host).map_err(|e| e.to_string())?;
    Ok(events
        .into_iter()
        .map(|event| from_event(event.map_err(|e| e.to_string())?))
        .collect())
}

fn from_event(event: HookEvent) -> Result<FromServer, String> {
    let mut claim = None;
    let input = match event {
        HookEvent::Done { id } => return Ok(FromServer::Done(vec![id])),
        HookEvent::DoneList { ids } => return Ok(FromServer::Done(ids)),
        HookEvent::Available {
            jid,
            device_id,
            session_id,
        } => Input::Available {
            jid,
            device_id,
            session_id,
        },
        HookEvent::Unavailable { jid, session_id } => Input::Unavailable { jid, session_id },
        HookEvent::Snapshot { page, sessions } => {
            return Ok(FromServer::SnapshotPage { page, sessions })
        }
        HookEvent::Drained { jid, token } => Input::Drained { jid, token },
        HookEvent::Account { user, token } => Input::Account { user, token },
        HookEvent::UserDeleted { user } => Input::UserDeleted { user },
        HookEvent::Routed {
            to,
            archive_id,
            sessions,
            carbons,
            message,
            sent,
            claim: claimed,
        } => {
            claim = claimed;
            // A child the XEPs describe otherwise: the message is logged all the same, on its
            // header.
            let (message, original) = match message.lenient() {
                (Ok(message), original) => (message, original),
                // Nothing else has it: the server took it from its offline storage for us.
                (Err(e), original) if sessions.is_empty() => {
                    return Ok(FromServer::GiveBack {
                        why: format!("routed message: {e}"),
                        to,
                        stanza_xml: original.into_text(),
                        claim,
                    })
                }
                (Err(e), _) => return Err(format!("routed message: {e}")),
            };
            Input::Routed {
                message,
                original,
                to,
                sessions,
                carbons,
                archive_id,
                sent,
            }
        }
        // The compact form: what a whole <sent> of a receipt or marker would have given.
        HookEvent::Signal { message } => Input::Sent {
            message,
            original: None,
            carbons: Vec::new(),
        },
        HookEvent::Sent { message, carbons } => Input::Sent {
            // Strict: what a client sends acknowledges something only if it says so as the XEPs
            // do. (The message itself went its way through Prosody; a message to a local user
            // comes as a routed event, which takes what the server accepted.)
            message: message.parsed.map_err(|e| format!("client message: {e}"))?,
            original: Some(message.original),
            carbons,
        },
    };
    Ok(FromServer::Input(Box::new(input), claim))
}

/// A request another task (the admin socket) runs against the engine, inside the loop.
pub type Query = Box<dyn FnOnce(&mut Engine, Millis) + Send>;

pub struct Service {
    engine: Engine,
    host: String,
    component: String,
    commands: mpsc::Sender<String>,
    stats: Arc<ServiceStats>,
    retention: Retention,
    /// Whether the component link is up (between `Connected` and `Disconnected`).
    connected: bool,
    /// The link came up: the next command stanza first tells the module what events this
    /// readtrack accepts ([`HookCommand::Accepts`]).
    announce: bool,
    /// The module on this connection executes compact `<ack>` commands (it said so in its
    /// snapshot); until then each 10013 ack goes as a whole `<send>`, which every module runs.
    module_acks: bool,
    /// The same for compact `<bounce>` commands (`executes="... bounce"`).
    module_bounces: bool,
    /// The same for `<deliver-bytes>`, the compact `<deliver>` of a replay.
    module_delivers_bytes: bool,
    snapshot: SnapshotPages,
    /// Claims of this connection awaiting their confirmation.
    claims: Claims,
    /// Whether to measure [`Timings`]: off, the loop does not read the clock for them.
    timed: bool,
    /// When the event of each 10013 ack now held by the engine was taken off the queue, in the
    /// order the engine releases the acks.
    ack_arrivals: VecDeque<Instant>,
    /// Availabilities that replayed: when each was taken off the queue, and the end of its
    /// replay in the pending outputs.
    replay_arrivals: Vec<(Instant, usize)>,
    /// Arrivals of the acks in the command stanza being filled (kept to reuse its memory).
    acks_in_stanza: Vec<Instant>,
}

/// When and how much retention runs.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub every: Duration,
    pub batch: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            every: Duration::from_secs(60),
            batch: 1_000,
        }
    }
}

impl Service {
    pub fn new(engine: Engine, component: String, commands: mpsc::Sender<String>) -> Service {
        let host = engine.config().domain.clone();
        Service {
            engine,
            host,
            component,
            commands,
            stats: Arc::default(),
            retention: Retention::default(),
            connected: false,
            announce: false,
            module_acks: false,
            module_bounces: false,
            module_delivers_bytes: false,
            snapshot: SnapshotPages::default(),
            claims: Claims::default(),
            timed: false,
            ack_arrivals: VecDeque::new(),
            replay_arrivals: Vec::new(),
            acks_in_stanza: Vec::new(),
        }
    }

    /// Measures commit, ack and replay times into [`ServiceStats::timings`].
    pub fn timed(mut self, on: bool) -> Service {
        self.timed = on;
        self
    }

    pub fn with_retention(mut self, retention: Retention) -> Service {
        self.retention = retention;
        self
    }

    pub fn stats(&self) -> Arc<ServiceStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` turns true or the link ends; commits on the way out and gives the
    /// engine back.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<LinkEvent>,
        mut queries: mpsc::Receiver<Query>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Engine, ServiceError> {
        let mut pending: Vec<Output> = Vec::new();
        let mut next_retention = Millis::now().plus(self.retention.every);
        loop {
            let now = Millis::now();
            warnlimit::flush(now);
            if now >= next_retention {
                let report =
                    tokio::task::block_in_place(|| self.engine.retain(now, self.retention.batch))?;
                self.commit(&mut pending).await?;
                if report.deleted > 0 || report.devices_expired > 0 {
                    tracing::info!(
                        deleted = report.deleted,
                        devices_expired = report.devices_expired,
                        "retention pass"
                    );
                }
                // An incomplete pass continues soon; a complete one waits for the next period.
                next_retention = if report.complete {
                    now.plus(self.retention.every)
                } else {
                    now.plus(Duration::from_millis(200))
                };
            }
            // Timers are checked every turn, not only when idle, so a steady event flow cannot
            // starve them. They fire only while the link is up: the link drops commands written
            // while it is down, and a fired timer is settled durably, so a bounce dropped then
            // would be lost for good. Overdue timers (after a restart, say) wait for `Connected`.
            if self.connected && self.engine.next_deadline()?.is_some_and(|d| d <= now) {
                pending.extend(self.engine.tick(now)?);
                self.commit(&mut pending).await?;
            }
            let wait = match self.engine.next_deadline()? {
                Some(d) if self.connected => Duration::from_millis(d.0.saturating_sub(now.0)),
                _ => IDLE_TICK,
            }
            .min(IDLE_TICK);
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                event = events.recv() => {
                    let Some(event) = event else { break };
                    let mut taken = self.on_link(event, &mut pending)?;
                    // Group commit over what is already queued, but about BATCH events at
                    // most, so the acks of the first ones do not wait behind an unbounded
                    // backlog.
                    while taken < BATCH {
                        match events.try_recv() {
                            Ok(event) => taken += self.on_link(event, &mut pending)?,
                            Err(_) => break,
                        }
                    }
                    self.commit(&mut pending).await?;
                }
                query = queries.recv() => {
                    if let Some(query) = query {
                        query(&mut self.engine, Millis::now());
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.commit(&mut pending).await?;
        Ok(self.engine)
    }

    /// Applies one link event; returns what it counts towards [`BATCH`]: the hook events of a
    /// stanza (one for a stanza that is none), one for a change of the link's state.
    fn on_link(
        &mut self,
        event: LinkEvent,
        pending: &mut Vec<Output>,
    ) -> Result<usize, ServiceError> {
        let mut held = 1;
        match event {
            LinkEvent::Connected => {
                self.connected = true;
                self.announce = true;
                self.module_acks = false;
                self.module_bounces = false;
                self.module_delivers_bytes = false;
                self.snapshot = SnapshotPages::default();
                self.claims = Claims::default();
                self.stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(component = %self.component, "connected to the server; waiting for its session snapshot")
            }
            LinkEvent::Disconnected { reason } => {
                self.connected = false;
                // The module hands this connection's claims back to the server's offline
                // storage; a confirmation of them must not reach the next connection.
                self.claims = Claims::default();
                self.stats.connected.store(false, Ordering::Relaxed);
                tracing::warn!(%reason, "disconnected from the server; it falls back to its own offline handling")
            }
            LinkEvent::Stanza(stanza) => {
                let now = Millis::now();
                let arrived = self.timed.then(Instant::now);
                let events =
                    from_server_batch(&stanza, &self.host).unwrap_or_else(|what| vec![Err(what)]);
                held = events.len();
                self.stats.events.fetch_add(held as u64, Ordering::Relaxed);
                for event in events {
                    match event {
                        Ok(event) => self.on_event(event, now, arrived, pending)?,
                        Err(what) => self.rejected(&stanza, &what, now),
                    }
                }
            }
        }
        Ok(held)
    }

    /// One event from the server, in the order it came.
    fn on_event(
        &mut self,
        event: FromServer,
        now: Millis,
        arrived: Option<Instant>,
        pending: &mut Vec<Output>,
    ) -> Result<(), ServiceError> {
        let (input, claim) = match event {
            FromServer::Input(input, claim) => (*input, claim),
            FromServer::Done(ids) => {
                for id in ids {
                    self.engine.confirm(&id)?;
                }
                return Ok(());
            }
            FromServer::SnapshotPage { page, sessions } => {
                self.module_acks |= page.executes_ack;
                self.module_bounces |= page.executes_bounce;
                self.module_delivers_bytes |= page.executes_deliver_bytes;
                match self.snapshot.add(page, sessions) {
                    Ok(Some(sessions)) => (Input::Snapshot { sessions }, None),
                    Ok(None) => return Ok(()),
                    Err(why) => {
                        self.stats.rejected_stanzas.fetch_add(1, Ordering::Relaxed);
                        if warnlimit::admit(Warning::StanzaRejected, now) {
                            tracing::warn!("{why}");
                        }
                        return Ok(());
                    }
                }
            }
            FromServer::GiveBack {
                why,
                to,
                stanza_xml,
                claim,
            } => {
                pending.push(self.engine.give_back(&why, to, stanza_xml));
                if let Some(claim) = claim {
                    self.claims.applied(claim);
                }
                return Ok(());
            }
        };
        let availability = matches!(input, Input::Available { .. });
        let held = self.engine.held();
        let result = self.engine.handle(input, now);
        if let Some(arrived) = arrived {
            // The engine holds each 10013 ack until the commit, even from an input it
            // then rejects; bounces are held only by `tick`, so what this event added
            // is its acks.
            for _ in held..self.engine.held() {
                self.ack_arrivals.push_back(arrived);
            }
            if let (true, Ok(out)) = (availability, &result) {
                if !out.is_empty() {
                    self.replay_arrivals
                        .push((arrived, pending.len() + out.len()));
                }
            }
        }
        match result {
            Ok(out) => {
                pending.extend(out);
                if let Some(claim) = claim {
                    self.claims.applied(claim);
                }
            }
            Err(EngineError::Rejected(why)) => {
                // Not logged: a claim of it goes back to the server with the next
                // confirmation.
                if let Some(claim) = claim {
                    self.claims.seen(claim);
                }
                self.stats.rejected_inputs.fetch_add(1, Ordering::Relaxed);
                if warnlimit::admit(Warning::InputRejected, now) {
                    tracing::warn!("{why}");
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// A stanza from the server that is no event message, or an event of it that is no event:
    /// logged and counted.
    fn rejected(&self, stanza: &str, what: &str, now: Millis) {
        self.stats.rejected_stanzas.fetch_add(1, Ordering::Relaxed);
        if warnlimit::admit(Warning::StanzaRejected, now) {
            tracing::warn!(
                stanza_bytes = stanza.len(),
                "rejected stanza from the server: {what}"
            );
        }
    }

    async fn send_command_stanza(&mut self, stanza: String) {
        if self.commands.send(stanza).await.is_err() {
            tracing::warn!("component link is gone; commands dropped");
        }
    }

    /// Flushes the store, then sends everything the batch produced, in order, packed into as
    /// few command stanzas as [`CommandBatch`] allows.
    async fn commit(&mut self, pending: &mut Vec<Output>) -> Result<(), ServiceError> {
        let started = self.timed.then(Instant::now);
        let released = tokio::task::block_in_place(|| self.engine.commit())?;
        if let Some(started) = started {
            self.stats.timings.commit.observe(started.elapsed());
        }
        pending.extend(released);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let mut batch = CommandBatch::new(&self.component, &self.host);
        if std::mem::take(&mut self.announce) {
            let accepts = HookCommand::Accepts {
                events: ACCEPTED_EVENTS.into(),
            };
            // First in an empty batch: nothing is sent before it.
            let _ = batch.push(&accepts.element_xml(None));
        }
        let mut acks_in_stanza = std::mem::take(&mut self.acks_in_stanza);
        for (index, output) in pending.drain(..).enumerate() {
            let ack = match &output {
                Output::SendAsHost {
                    stanza: Outgoing::ServerAck { .. },
                    ..
                } if self.timed => self.ack_arrivals.pop_front(),
                _ => None,
            };
            let command = match output {
                Output::Deliver { to, stanza } if self.module_delivers_bytes => {
                    compact_deliver(to, &stanza)
                }
                Output::Deliver { to, stanza } => HookCommand::Deliver {
                    to,
                    stanza_xml: write::client_outgoing(&stanza),
                }
                .element_xml(None),
                Output::SendAsHost {
                    stanza: Outgoing::ServerAck { from, to, id, time },
                    confirm,
                } if self.module_acks && from == self.host => HookCommand::Ack {
                    to,
                    message_id: id,
                    time: time.rfc3339(),
                }
                .element_xml(confirm.as_deref()),
                // The compact form names a session of the host; anything else is routed whole.
                Output::SendAsHost {
                    stanza:
                        Outgoing::Bounce {
                            from,
                            to,
                            id,
                            body,
                            time,
                        },
                    confirm,
                } if self.module_bounces
                    && from == self.host
                    && to.is_full()
                    && to.domain() == self.host =>
                {
                    HookCommand::Bounce {
                        to,
                        message_id: id,
                        body,
                        time: time.rfc3339(),
                    }
                    .element_xml(confirm.as_deref())
                }
                Output::SendAsHost { stanza, confirm } => HookCommand::SendAsHost {
                    stanza_xml: write::client_outgoing(&stanza),
                }
                .element_xml(confirm.as_deref()),
                Output::StoreOffline { to, stanza_xml } => {
                    HookCommand::StoreOffline { to, stanza_xml }.element_xml(None)
                }
                Output::Pace { to, token } => HookCommand::Pace { to, token }.element_xml(None),
            };
            self.stats.commands.fetch_add(1, Ordering::Relaxed);
            if let Some(stanza) = batch.push(&command) {
                self.send_command_stanza(stanza).await;
                self.written(index, &mut acks_in_stanza);
            }
            acks_in_stanza.extend(ack);
        }
        // Last: the <store-offline> of any claim handed back goes before it, and the commit
        // above made the others durable.
        if let Some(durable) = self.claims.confirm() {
            self.stats.commands.fetch_add(1, Ordering::Relaxed);
            if let Some(stanza) = batch.push(&durable.element_xml(None)) {
                self.send_command_stanza(stanza).await;
            }
        }
        if let Some(stanza) = batch.finish() {
            self.send_command_stanza(stanza).await;
        }
        self.written(usize::MAX, &mut acks_in_stanza);
        self.acks_in_stanza = acks_in_stanza;
        // Every held ack was released by this commit; none may be matched with a later one.
        self.ack_arrivals.clear();
        Ok(())
    }

    /// The outputs before `upto` are handed to the link: observes the acks among them, and
    /// the replays that ended there.
    fn written(&mut self, upto: usize, acks: &mut Vec<Instant>) {
        if !self.timed {
            return;
        }
        let now = Instant::now();
        for arrived in acks.drain(..) {
            self.stats.timings.ack.observe(now - arrived);
        }
        let timings = &self.stats.timings;
        self.replay_arrivals.retain(|&(arrived, end)| {
            let done = end <= upto;
            if done {
                timings.replay.observe(now - arrived);
            }
            !done
        });
    }
}

/// Below this, no escaping brings a `<deliver-bytes>` near a stanza limit: compact without looking.
const LARGE: usize = 16 * 1024;
/// How much longer than the whole `<deliver>` a large compact command may be.
const SLACK: usize = 256;

/// A stanza written to one session, as the element of a `<deliver-bytes>` command (to a module
/// that executes it), or of a whole `<deliver>` where escaping would lengthen it too much.
/// Escaped into an attribute, a stanza can grow (a line end there is five bytes, `&lt;` eight):
/// a large one goes compact only if that makes its command no more than `SLACK` longer than the
/// whole `<deliver>` (its `from` and `message-id` against the whole one's wrapper), so the
/// compact form does not take a command past a stanza limit the whole one kept within
/// (Prosody's `component_stanza_size_limit`, 512 KiB by default, closes the link). The stanza
/// is serialised once for each form looked at, and the command rendered once: the whole one's
/// length is its wrapper's plus the stanza's.
fn compact_deliver(to: Jid, stanza: &Outgoing) -> String {
    let whole =
        |to: Jid, stanza_xml: String| HookCommand::Deliver { to, stanza_xml }.element_xml(None);
    let bytes = write::client_stream(stanza);
    let large = bytes.len() >= LARGE;
    // The stanza is readtrack's own output: its start tag always reads.
    let Ok(compact) = HookCommand::deliver_bytes(to.clone(), bytes) else {
        return whole(to, write::client_outgoing(stanza));
    };
    let compact = compact.element_xml(None);
    if !large {
        return compact;
    }
    let stanza_xml = write::client_outgoing(stanza);
    let whole_len = whole(to.clone(), String::new()).len() + stanza_xml.len();
    if compact.len() <= whole_len + SLACK {
        compact
    } else {
        whole(to, stanza_xml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jid::Jid;

    fn sessions(jids: &[&str]) -> Vec<SessionInfo> {
        jids.iter()
            .map(|j| SessionInfo {
                jid: Jid::parse(j).unwrap(),
                device_id: None,
                session_id: None,
            })
            .collect()
    }

    fn page(number: u32, last: bool) -> SnapshotPage {
        SnapshotPage {
            number,
            last,
            executes_ack: false,
            executes_bounce: false,
            executes_deliver_bytes: false,
        }
    }

    fn durable(from: u64, upto: u64, returned: &[(u64, u64)]) -> Option<HookCommand> {
        Some(HookCommand::Durable {
            from,
            upto,
            returned: returned.to_vec(),
        })
    }

    #[test]
    fn claims_are_confirmed_from_the_first_seen_and_what_was_not_applied_goes_back() {
        let mut claims = Claims::default();
        assert_eq!(claims.confirm(), None, "nothing seen, nothing confirmed");
        // Numbers grow across connections: this connection's first seen is 7, and what it
        // claimed before (events refused unread) goes back with the first confirmation.
        claims.applied(7);
        claims.applied(8);
        claims.seen(9); // refused by the engine
        claims.applied(12); // 10 and 11 never arrived (their events were refused unread)
        assert_eq!(claims.confirm(), durable(1, 12, &[(1, 6), (9, 11)]));
        assert_eq!(claims.confirm(), None, "each number is confirmed once");
        // In any order within a batch; a late one below what was confirmed is left out.
        claims.applied(14);
        claims.applied(13);
        claims.applied(10);
        assert_eq!(claims.confirm(), durable(13, 14, &[]));
        claims.applied(16);
        assert_eq!(claims.confirm(), durable(15, 16, &[(15, 15)]));
        claims.seen(17);
        assert_eq!(claims.confirm(), durable(17, 17, &[(17, 17)]));
    }

    #[test]
    fn snapshot_is_whole_only_at_its_last_page() {
        let mut pages = SnapshotPages::default();
        assert_eq!(pages.add(page(1, false), sessions(&["a@h/1"])), Ok(None));
        assert_eq!(pages.add(page(2, false), sessions(&["b@h/1"])), Ok(None));
        assert_eq!(
            pages.add(page(3, true), sessions(&["c@h/1"])),
            Ok(Some(sessions(&["a@h/1", "b@h/1", "c@h/1"])))
        );
        // A snapshot without pages is page 1, last.
        assert_eq!(
            pages.add(SnapshotPage::WHOLE, sessions(&["d@h/1"])),
            Ok(Some(sessions(&["d@h/1"])))
        );
    }

    #[test]
    fn a_page_out_of_order_drops_the_pages_so_far() {
        let mut pages = SnapshotPages::default();
        assert_eq!(pages.add(page(1, false), sessions(&["a@h/1"])), Ok(None));
        assert_eq!(
            pages.add(page(3, true), sessions(&["c@h/1"])),
            Err("snapshot page 3 arrived when page 2 was due; pages dropped".into())
        );
        // Nothing of the broken one leaks into the next snapshot.
        assert_eq!(
            pages.add(page(2, true), sessions(&["b@h/1"])),
            Err("snapshot page 2 arrived when page 1 was due; pages dropped".into())
        );
        assert_eq!(pages.add(page(1, false), sessions(&["e@h/1"])), Ok(None));
        assert_eq!(
            pages.add(page(2, true), vec![]),
            Ok(Some(sessions(&["e@h/1"])))
        );
    }

    /// What `compact_deliver` chose before it stopped rendering the whole command to measure
    /// it: both forms rendered, the shorter rule applied to their texts.
    fn rendered_both(to: Jid, stanza: &Outgoing) -> String {
        let whole = HookCommand::Deliver {
            to: to.clone(),
            stanza_xml: write::client_outgoing(stanza),
        }
        .element_xml(None);
        let compact = HookCommand::deliver_bytes(to, write::client_stream(stanza))
            .unwrap()
            .element_xml(None);
        if write::client_stream(stanza).len() < LARGE || compact.len() <= whole.len() + SLACK {
            compact
        } else {
            whole
        }
    }

    #[test]
    fn a_deliver_is_the_command_rendering_both_forms_would_choose() {
        let to = Jid::parse("bob@localhost/phone").unwrap();
        let bounce = |body: String| Outgoing::Bounce {
            from: "localhost".into(),
            to: to.clone(),
            id: "m1".into(),
            body: Some(body),
            time: Millis(1_764_000_000_000),
        };
        let large_text = "a".repeat(20_000);
        let large_lines = "\n".repeat(20_000);
        // Around the line: each line end adds four bytes escaped, so 64 more are SLACK's 256.
        let near = |ends: usize| format!("{}{}", "b".repeat(17_000), "\n".repeat(ends));
        let mut bodies = vec![
            "short".to_string(),
            "\n".repeat(100),
            large_text,
            large_lines,
        ];
        bodies.extend((50..80).map(near));
        let mut forms = (0, 0);
        for body in bodies {
            let stanza = bounce(body);
            let chosen = compact_deliver(to.clone(), &stanza);
            assert_eq!(chosen, rendered_both(to.clone(), &stanza));
            if chosen.starts_with("<deliver-bytes ") {
                forms.0 += 1;
            } else {
                assert!(chosen.starts_with("<deliver "), "{chosen:.80}");
                forms.1 += 1;
            }
        }
        // Both forms were chosen, on either side of the line.
        assert!(forms.0 > 3 && forms.1 > 1, "{forms:?}");
    }
}
