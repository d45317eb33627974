//! The PostgreSQL backend: one table per tree with typed key columns (`schema/postgres/`),
//! the write set applied as one transaction that first proves this process still owns the
//! store (the `readtrack_owner` lease), every range an index range over the primary key.
//!
//! The engine is synchronous and the service calls it from tokio tasks. A runtime thread
//! cannot block on a client of its own, so one thread of the backend owns the connection (a
//! `tokio-postgres` client on a single-threaded runtime of that thread's) and every call is a job
//! sent to it: any thread may call the store, the way it calls sled, and waits the round trip the
//! way it waits sled's disk. The asynchronous client is there for one thing: a commit's
//! statements are pipelined, sent together and answered in order ([`commit`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{NoTls, Statement};
use sled::IVec;
use tokio_postgres::Client;

use super::backend::{Backend, Row, RowIter};
use super::pending::{Bounds, Pending, T, TREES};
use super::{Result, StoreError, StoreOptions, META_SCHEMA, SCHEMA_VERSION};

/// The project's migrations, applied in order, each once, each in a transaction, recorded in
/// `readtrack_schema`.
pub(super) const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../../schema/postgres/001_initial.sql"),
)];

/// The schema version this readtrack brings a database to.
pub const PG_SCHEMA_VERSION: i32 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Col {
    /// A big-endian u64 in the byte key, `bigint` in the table.
    U64,
    /// A big-endian u32 in the byte key, `bigint` in the table.
    U32,
    /// The rest of the byte key (UTF-8), `text COLLATE "C"` (byte order) in the table.
    Text,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Val {
    Record,
    /// `jid_userid`: the 8-byte big-endian id as a `user_id bigint`.
    UserId,
    /// `deadline_userseq`: the key is everything.
    Nothing,
}

struct Table {
    name: &'static str,
    cols: &'static [(&'static str, Col)],
    val: Val,
}

/// Indexed by [`T`], like sled's trees.
const TABLES: [Table; TREES] = [
    Table {
        name: "readtrack_meta",
        cols: &[("key", Col::Text)],
        val: Val::Record,
    },
    Table {
        name: "readtrack_jid_userid",
        cols: &[("jid", Col::Text)],
        val: Val::UserId,
    },
    Table {
        name: "readtrack_userid_user",
        cols: &[("user_id", Col::U64)],
        val: Val::Record,
    },
    Table {
        name: "readtrack_userseq_message",
        cols: &[("user_id", Col::U64), ("seq", Col::U64)],
        val: Val::Record,
    },
    Table {
        name: "readtrack_userblock_index",
        cols: &[("user_id", Col::U64), ("block", Col::U64)],
        val: Val::Record,
    },
    Table {
        name: "readtrack_userdevice_cursor",
        cols: &[("user_id", Col::U64), ("device", Col::U32)],
        val: Val::Record,
    },
    Table {
        name: "readtrack_userdeviceseq_delivery",
        cols: &[
            ("user_id", Col::U64),
            ("device", Col::U32),
            ("seq", Col::U64),
        ],
        val: Val::Record,
    },
    Table {
        name: "readtrack_deadline_userseq",
        cols: &[
            ("deadline", Col::U64),
            ("user_id", Col::U64),
            ("seq", Col::U64),
        ],
        val: Val::Nothing,
    },
    Table {
        name: "readtrack_userpeer_conversation",
        cols: &[("user_id", Col::U64), ("peer", Col::Text)],
        val: Val::Record,
    },
];

/// One key column's value as a query parameter.
#[derive(Debug, Clone, PartialEq)]
enum Param {
    Int(i64),
    Text(String),
}

impl Param {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Int(i) => i,
            Param::Text(s) => s,
        }
    }
}

/// A key decoded into its column values: all of them (a whole key) or a leading part.
struct Decoded {
    params: Vec<Param>,
    whole: bool,
    /// A component above `i64::MAX` was cut to it (only bounds can hold one).
    clamped: bool,
}

fn bad_key(t: T, key: &[u8]) -> StoreError {
    StoreError::BadKey {
        tree: super::TREE_NAMES[t as usize],
        len: key.len(),
    }
}

/// Decodes a byte key of tree `t` into column values. A bound may stop inside a column (sled's
/// prefix bounds carry the last byte into an earlier one): the column is padded with zeros,
/// which orders the same way against every whole key (see [`typed_bound`]).
fn decode_key(t: T, key: &[u8]) -> Result<Decoded> {
    let mut params = Vec::new();
    let mut rest = key;
    let mut clamped = false;
    for (_, col) in TABLES[t as usize].cols {
        if rest.is_empty() {
            return Ok(Decoded {
                params,
                whole: false,
                clamped,
            });
        }
        match col {
            Col::U64 | Col::U32 => {
                let width = if *col == Col::U64 { 8 } else { 4 };
                let mut bytes = [0u8; 8];
                let n = rest.len().min(width);
                bytes[8 - width..8 - width + n].copy_from_slice(&rest[..n]);
                rest = &rest[n..];
                let v = u64::from_be_bytes(bytes);
                if n < width {
                    params.push(Param::Int(v as i64));
                    return Ok(Decoded {
                        params,
                        whole: false,
                        clamped,
                    });
                }
                if v > i64::MAX as u64 {
                    params.push(Param::Int(i64::MAX));
                    clamped = true;
                    return Ok(Decoded {
                        params,
                        whole: false,
                        clamped,
                    });
                }
                params.push(Param::Int(v as i64));
            }
            Col::Text => {
                let s = std::str::from_utf8(rest).map_err(|_| bad_key(t, key))?;
                params.push(Param::Text(s.to_string()));
                rest = &[];
            }
        }
    }
    if !rest.is_empty() {
        return Err(bad_key(t, key));
    }
    Ok(Decoded {
        params,
        whole: true,
        clamped,
    })
}

/// A whole key for a point read or a write: every column, nothing clamped.
fn whole_key(t: T, key: &[u8]) -> Result<Vec<Param>> {
    let d = decode_key(t, key)?;
    if !d.whole || d.clamped {
        return Err(StoreError::KeyRange {
            tree: super::TREE_NAMES[t as usize],
        });
    }
    Ok(d.params)
}

/// Rebuilds the byte key of a row from its key columns.
fn encode_key(t: T, row: &postgres::Row) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    for (i, (_, col)) in TABLES[t as usize].cols.iter().enumerate() {
        match col {
            Col::U64 => key.extend_from_slice(&(row.get::<_, i64>(i) as u64).to_be_bytes()),
            Col::U32 => key.extend_from_slice(&(row.get::<_, i64>(i) as u32).to_be_bytes()),
            Col::Text => key.extend_from_slice(row.get::<_, &str>(i).as_bytes()),
        }
    }
    key
}

fn value_of(t: T, row: &postgres::Row) -> IVec {
    let at = TABLES[t as usize].cols.len();
    match TABLES[t as usize].val {
        Val::Record => IVec::from(row.get::<_, &[u8]>(at)),
        Val::UserId => IVec::from(&(row.get::<_, i64>(at) as u64).to_be_bytes()[..]),
        Val::Nothing => IVec::from(&[][..]),
    }
}

/// A comparison of the leading key columns with a tuple of values, `(a, b) >= ($1, $2)`.
#[derive(Debug, Clone, PartialEq)]
struct Cmp {
    op: &'static str,
    params: Vec<Param>,
}

/// Turns one side of a byte range into a comparison on columns. A whole key keeps its bound.
/// A key that stops at (or inside, padded with zeros) a column compares the columns it has:
/// every whole key at or above it in bytes is `>=` it and every key below it is `<` it,
/// whatever the bound said. A component cut to `i64::MAX` sits above every stored value:
/// a lower bound becomes `>`, an upper one `<=`.
fn typed_bound(t: T, bound: &Bound<Vec<u8>>, lower: bool) -> Result<Option<Cmp>> {
    let (key, included) = match bound {
        Bound::Unbounded => return Ok(None),
        Bound::Included(k) => (k, true),
        Bound::Excluded(k) => (k, false),
    };
    let d = decode_key(t, key)?;
    if d.params.is_empty() {
        // An empty key: everything is at or above it.
        return Ok(if lower {
            None
        } else {
            Some(Cmp {
                op: "<",
                params: vec![Param::Int(i64::MIN)],
            })
        });
    }
    let op = match (d.whole, d.clamped, lower, included) {
        (_, true, true, _) => ">",
        (_, true, false, _) => "<=",
        (false, _, true, _) => ">=",
        (false, _, false, _) => "<",
        (true, _, true, true) => ">=",
        (true, _, true, false) => ">",
        (true, _, false, true) => "<=",
        (true, _, false, false) => "<",
    };
    Ok(Some(Cmp {
        op,
        params: d.params,
    }))
}

/// The password of a URL is never shown: `postgres://user:secret@host/db` is shown as
/// `postgres://user@host/db`, and a `password=` setting as `password=***`.
pub fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            return format!("{}{}{}", &url[..scheme_end + 3], user, &rest[at..])
                .split("password=")
                .enumerate()
                .map(|(i, part)| {
                    if i == 0 {
                        part.to_string()
                    } else {
                        let end = part.find('&').unwrap_or(part.len());
                        format!("password=***{}", &part[end..])
                    }
                })
                .collect();
        }
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***".to_string()
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The client's settings from the URL; a password may also come from `PGPASSWORD`.
fn config_of(url: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Postgres {
        url: redact(url),
        source: e,
    })?;
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_application_name().is_none() {
        config.application_name("readtrack");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok(config)
}

/// What a failed call means for the job that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The connection is gone, or the server cannot take one now (it is shutting down,
    /// restarting, starting up, full): the job runs again on a new connection once the
    /// server answers, however long that takes. Nothing is acked meanwhile.
    Connection,
    /// The transaction lost to another one (serialisation failure, deadlock): it ran on a
    /// consistent snapshot and was rolled back whole, so it runs again whole.
    Conflict,
    /// The database refused the statement or its data (a constraint, a missing table, a
    /// permission), or this process lost the store: retrying cannot help.
    Fatal,
}

/// The failure an SQLSTATE names.
fn failure_of_code(code: &str) -> Failure {
    match code {
        // serialization_failure (CockroachDB and YugabyteDB return it routinely under
        // contention), deadlock_detected.
        "40001" | "40P01" => Failure::Conflict,
        // statement_completion_unknown: CockroachDB's ambiguous commit. Every job is a read or
        // a write set of final values, so running it again is the same as once.
        "40003" => Failure::Conflict,
        // admin_shutdown (pg_ctl stop/restart, pg_terminate_backend), crash_shutdown,
        // cannot_connect_now (starting up, or a standby being promoted), idle_session_timeout.
        "57P01" | "57P02" | "57P03" | "57P05" => Failure::Connection,
        // too_many_connections: the server is there; a connection frees up.
        "53300" => Failure::Connection,
        // Class 08, connection_exception.
        c if c.starts_with("08") => Failure::Connection,
        _ => Failure::Fatal,
    }
}

/// The failure a client error is: the server's SQLSTATE when it sent one, else a closed
/// connection or a socket error (refused, reset, timed out) is a connection loss. The client
/// notices a closed connection a moment after the error, so the error itself is asked.
fn failure_of(e: &postgres::Error) -> Failure {
    if let Some(code) = e.code() {
        return failure_of_code(code.code());
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        Failure::Connection
    } else {
        Failure::Fatal
    }
}

fn failure(e: &StoreError) -> Failure {
    match e {
        StoreError::Postgres { source, .. } => failure_of(source),
        _ => Failure::Fatal,
    }
}

/// A client error with its cause: the `postgres` crate shows a server error as "db error" and
/// keeps the SQLSTATE, message and detail in its source, and a socket error as "error
/// communicating with the server" without the socket's reason.
pub(super) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The first wait before a job runs again after a connection loss; each further failure
/// doubles it, up to [`RETRY_LONGEST`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two attempts while the database is away: the time readtrack may
/// take to notice that it is back.
const RETRY_LONGEST: Duration = Duration::from_secs(5);
/// How often a job that lost to another transaction runs again before its failure stands
/// (with one owning process, conflicts come from the database's own work, and are rare).
const CONFLICT_ATTEMPTS: u32 = 10;

/// The connection and what belongs to it, owned by the backend's thread.
struct Conn {
    url: String,
    config: tokio_postgres::Config,
    /// The runtime the client's futures and its connection's task run on, only while a call
    /// of this thread blocks on one.
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    /// The lease's epoch this process holds (0 before it has one).
    epoch: i64,
    lease: Duration,
}

impl Conn {
    fn err(&self, source: postgres::Error) -> StoreError {
        StoreError::Postgres {
            url: redact(&self.url),
            source,
        }
    }

    /// Opens a connection when there is none (the first job, or the job after one broke: a
    /// database restart). What the last one held (the lease) is a row, not a session, so
    /// nothing is lost with it. Only here, before a job: a job that finds its connection
    /// closed midway fails and runs again whole, so every statement it prepared belongs to the
    /// connection it runs on.
    fn connect(&mut self) -> Result<()> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.disconnect();
        }
        if self.client.is_none() {
            let (client, connection) = self
                .rt
                .block_on(self.config.connect(NoTls))
                .map_err(|e| self.err(e))?;
            self.rt.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("PostgreSQL connection closed: {}", describe(&e));
                }
            });
            self.client = Some(client);
        }
        Ok(())
    }

    /// Forgets the connection and the statements prepared on it.
    fn disconnect(&mut self) {
        self.client = None;
        self.statements.clear();
    }

    /// The connection of this job ([`Conn::connect`] opened it) and the runtime to drive it on.
    fn client(&mut self) -> Result<(&Client, &tokio::runtime::Runtime)> {
        if self.client.is_none() {
            self.connect()?;
        }
        Ok((self.client.as_ref().expect("connected above"), &self.rt))
    }

    /// The same, mutable: a transaction object borrows the client so.
    fn client_mut(&mut self) -> Result<(&mut Client, &tokio::runtime::Runtime)> {
        if self.client.is_none() {
            self.connect()?;
        }
        Ok((self.client.as_mut().expect("connected above"), &self.rt))
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let (client, rt) = self.client()?;
        let prepared = rt.block_on(client.prepare(sql));
        let s = prepared.map_err(|e| self.err(e))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<postgres::Row>> {
        let s = self.statement(sql)?;
        let (client, rt) = self.client()?;
        let rows = rt.block_on(client.query(&s, params));
        rows.map_err(|e| self.err(e))
    }
}

/// Runs a job until it succeeds or fails for a reason retrying cannot mend ([`PgBackend::call`]).
fn retrying<R>(conn: &mut Conn, f: &impl Fn(&mut Conn) -> Result<R>) -> Result<R> {
    let mut lost: Option<(Instant, u32)> = None;
    let mut wait = RETRY_FIRST;
    let mut conflicts = 0;
    loop {
        let e = match conn.connect().and_then(|()| f(conn)) {
            Ok(value) => {
                if let Some((since, failures)) = lost {
                    tracing::info!(
                        url = %redact(&conn.url),
                        failures,
                        "the database answers again after {:.1} s; carrying on",
                        since.elapsed().as_secs_f64()
                    );
                }
                return Ok(value);
            }
            Err(e) => e,
        };
        match failure(&e) {
            Failure::Connection => {
                conn.disconnect();
                let (_, failures) = lost.get_or_insert((Instant::now(), 0));
                *failures += 1;
                tracing::warn!(
                    url = %redact(&conn.url),
                    attempt = *failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "the database is unreachable; nothing is acked until it answers: {e}"
                );
                std::thread::sleep(wait);
                wait = (wait * 2).min(RETRY_LONGEST);
            }
            Failure::Conflict if conflicts < CONFLICT_ATTEMPTS => {
                conflicts += 1;
                tracing::warn!(
                    url = %redact(&conn.url),
                    attempt = conflicts,
                    "a transaction lost to another one and runs again: {e}"
                );
                // A little longer each time, and not in step with the other transaction.
                let jitter = rand::random::<u64>() % 10;
                std::thread::sleep(Duration::from_millis(10 * u64::from(conflicts) + jitter));
            }
            Failure::Conflict | Failure::Fatal => return Err(e),
        }
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

pub(super) struct PgBackend {
    url: String,
    cache: Mutex<Cache>,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Round trips to the database since open (a read: one; a commit: two, [`commit`]): a chat
    /// message's cost in waits for the server.
    round_trips: Arc<AtomicU64>,
    renewer: Mutex<Option<Renewer>>,
}

/// Rows asked for by the first page of a range; each further page doubles, up to the last.
const FIRST_PAGE: i64 = 64;
const LAST_PAGE: i64 = 4096;

impl PgBackend {
    /// Connects, brings the schema up to date, checks the records' schema version, and takes
    /// the store's lease (refusing when another process holds it).
    pub(super) fn open(url: &str, options: &StoreOptions) -> Result<PgBackend> {
        let config = config_of(url)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Pg(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let mut conn = Conn {
            url: url.to_string(),
            config,
            rt,
            client: None,
            statements: HashMap::new(),
            epoch: 0,
            lease: options.lease,
        };
        conn.connect()?;
        migrate(&mut conn)?;
        check_records_schema(&mut conn)?;
        let holder = holder_id();
        take_lease(&mut conn, &holder)?;
        let epoch = conn.epoch;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("readtrack-pg".into())
            .spawn(move || {
                let mut conn = conn;
                for job in rx {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Pg(format!("cannot start the PostgreSQL thread: {e}")))?;
        let backend = PgBackend {
            url: url.to_string(),
            cache: Mutex::new(Cache::default()),
            jobs: Mutex::new(tx),
            round_trips: Arc::new(AtomicU64::new(0)),
            renewer: Mutex::new(None),
        };
        *backend.renewer.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Renewer::start(url, epoch, options.lease)?);
        Ok(backend)
    }

    /// Runs `f` on the connection's thread and waits for its result.
    ///
    /// A job that failed because the connection broke (the server restarted, an idle
    /// connection was cut, the server is down) runs again on a new connection, after a wait
    /// that doubles up to [`RETRY_LONGEST`], for as long as the database stays away: the
    /// caller keeps its write set and acks nothing meanwhile, and carries on when it is back.
    /// A job that lost to another transaction runs again whole, a few times. Every job is a
    /// read or a whole write set of final values, so running it twice is the same as once,
    /// even when the first `COMMIT` did reach the server. Any other failure is returned.
    fn call<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Conn) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        let gone = || StoreError::Pg("the PostgreSQL thread has stopped".into());
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Box::new(move |conn| {
                let _ = tx.send(retrying(conn, &f));
            }))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    fn page(
        &self,
        t: T,
        lower: Option<Cmp>,
        upper: Option<Cmp>,
        rev: bool,
        limit: i64,
    ) -> Result<Vec<Row>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.call(move |conn| {
            let table = &TABLES[t as usize];
            let mut sql = String::from("SELECT ");
            let names: Vec<&str> = table.cols.iter().map(|(n, _)| *n).collect();
            sql.push_str(&names.join(", "));
            match table.val {
                Val::Record => sql.push_str(", record"),
                Val::UserId => sql.push_str(", user_id"),
                Val::Nothing => {}
            }
            sql.push_str(" FROM ");
            sql.push_str(table.name);
            let mut params: Vec<Param> = Vec::new();
            let mut clauses = Vec::new();
            for cmp in [&lower, &upper].into_iter().flatten() {
                let cols = &names[..cmp.params.len()];
                let placeholders: Vec<String> = (0..cmp.params.len())
                    .map(|i| format!("${}", params.len() + i + 1))
                    .collect();
                clauses.push(format!(
                    "({}) {} ({})",
                    cols.join(", "),
                    cmp.op,
                    placeholders.join(", ")
                ));
                params.extend(cmp.params.iter().cloned());
            }
            if !clauses.is_empty() {
                sql.push_str(" WHERE ");
                sql.push_str(&clauses.join(" AND "));
            }
            let order: Vec<String> = names
                .iter()
                .map(|n| format!("{n}{}", if rev { " DESC" } else { "" }))
                .collect();
            sql.push_str(" ORDER BY ");
            sql.push_str(&order.join(", "));
            sql.push_str(&format!(" LIMIT {limit}"));
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::sql).collect();
            let rows = conn.query(&sql, &refs)?;
            Ok(rows
                .iter()
                .map(|r| (IVec::from(encode_key(t, r)), value_of(t, r)))
                .collect())
        })
    }
}

impl PgBackend {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_uncached(&self, tree: T, key: &[u8]) -> Result<Option<IVec>> {
        let params = whole_key(tree, key)?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.call(move |conn| {
            let table = &TABLES[tree as usize];
            let value = match table.val {
                Val::Record => "record",
                Val::UserId => "user_id",
                Val::Nothing => "1",
            };
            let wheres: Vec<String> = table
                .cols
                .iter()
                .enumerate()
                .map(|(i, (n, _))| format!("{n} = ${}", i + 1))
                .collect();
            let sql = format!(
                "SELECT {value} FROM {} WHERE {}",
                table.name,
                wheres.join(" AND ")
            );
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::sql).collect();
            let rows = conn.query(&sql, &refs)?;
            Ok(rows.first().map(|r| match table.val {
                Val::Record => IVec::from(r.get::<_, &[u8]>(0)),
                Val::UserId => IVec::from(&(r.get::<_, i64>(0) as u64).to_be_bytes()[..]),
                Val::Nothing => IVec::from(&[][..]),
            }))
        })
    }

    fn uncached_range(&self, tree: T, bounds: Bounds, rev: bool) -> RowIter<'_> {
        let lower = typed_bound(tree, &bounds.0, true);
        let upper = typed_bound(tree, &bounds.1, false);
        match (lower, upper) {
            (Ok(lower), Ok(upper)) => Box::new(PgRange {
                backend: self,
                tree,
                lower,
                upper,
                rev,
                buffered: VecDeque::new(),
                page: FIRST_PAGE,
                done: false,
            }),
            (Err(e), _) | (_, Err(e)) => Box::new(std::iter::once(Err(e))),
        }
    }
}

impl PgBackend {
    /// The rows the cache holds for a range, or the range read whole (in key order) and
    /// handed to `remember`.
    fn cached_or_read(
        &self,
        tree: T,
        bounds: Bounds,
        cached: Option<Vec<Row>>,
        remember: impl FnOnce(&mut Cache, &[Row]),
    ) -> Result<Vec<Row>> {
        if let Some(rows) = cached {
            return Ok(rows);
        }
        let rows = self
            .uncached_range(tree, bounds, false)
            .collect::<Result<Vec<Row>>>()?;
        remember(&mut self.cache(), &rows);
        Ok(rows)
    }
}

impl Backend for PgBackend {
    fn get(&self, tree: T, key: &[u8]) -> Result<Option<IVec>> {
        if tree == T::UserseqMessage {
            if let Some(hit) = self.cache().recent.get(key) {
                return Ok(Some(hit));
            }
        }
        if !CACHED[tree as usize] {
            return self.get_uncached(tree, key);
        }
        if let Some(hit) = self.cache().get(tree, key) {
            return Ok(hit);
        }
        let value = self.get_uncached(tree, key)?;
        self.cache().remember(tree, key, value.clone());
        Ok(value)
    }

    fn range(&self, tree: T, bounds: Bounds, rev: bool) -> RowIter<'_> {
        let rows = if let Some(prefix) = whole_prefix(tree, &bounds) {
            let cached = self.cache().prefix(tree, &prefix);
            self.cached_or_read(tree, bounds, cached, |cache, rows| {
                cache.remember_prefix(tree, prefix, rows.to_vec())
            })
        } else if let Some(keys) = few_keys(tree, &bounds) {
            let known = self.cache().all_of(tree, &keys);
            self.cached_or_read(tree, bounds, known, |cache, rows| {
                cache.remember_all(tree, &keys, rows)
            })
        } else {
            return self.uncached_range(tree, bounds, rev);
        };
        match rows {
            Ok(rows) if rev => Box::new(rows.into_iter().rev().map(Ok)),
            Ok(rows) => Box::new(rows.into_iter().map(Ok)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn apply(&self, pending: &Pending) -> Result<()> {
        let batches = pending
            .trees()
            .map(|(i, writes)| TableBatch::of(T::ALL[i], writes))
            .collect::<Result<Vec<_>>>()?;
        self.round_trips.fetch_add(2, Ordering::Relaxed);
        self.call(move |conn| commit_write_set(conn, &batches))?;
        // Only a committed write enters the cache: after a failed commit it still holds what
        // the database holds, and the write set (kept by the caller) shadows it until retried.
        let mut cache = self.cache();
        for (i, writes) in pending.trees() {
            let recent = i == T::UserseqMessage as usize;
            if !recent && !CACHED[i] {
                continue;
            }
            for w in writes {
                if recent {
                    cache.recent.committed(w.key, w.value);
                }
                if CACHED[i] {
                    cache.committed(T::ALL[i], w.key, w.value.cloned());
                }
            }
        }
        Ok(())
    }

    /// Each apply is a committed transaction: durable as the server's `synchronous_commit`
    /// makes it (docs/reliability.md), with nothing left to flush.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn size(&self) -> Result<u64> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.call(|conn| {
            let names: Vec<String> = TABLES.iter().map(|t| t.name.to_string()).collect();
            // pg_total_relation_size is PostgreSQL's (CockroachDB has no equivalent): a
            // database without it reports 0 rather than failing `stats`.
            let s = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                     FROM pg_class c WHERE c.relname = ANY($1) AND pg_table_is_visible(c.oid)";
            match conn.query(s, &[&names]) {
                Ok(rows) => Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64)),
                Err(e) => {
                    tracing::debug!("store size unavailable: {e}");
                    Ok(0)
                }
            }
        })
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn close(&self) {
        if let Some(renewer) = self
            .renewer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            renewer.stop();
        }
        let released = self.call(|conn| {
            let epoch = conn.epoch;
            conn.query(
                "UPDATE readtrack_owner SET expires = now() WHERE id = 1 AND epoch = $1",
                &[&epoch],
            )?;
            Ok(())
        });
        if let Err(e) = released {
            tracing::warn!(url = %redact(&self.url), "could not release the store's lease (it expires by itself): {e}");
        }
    }
}

/// Trees read on every message whose rows are few per user (the user, the JID, devices, read
/// state, meta, the log index's current block): a process owns its store (the lease), so what
/// it read or committed stays true until it commits again, and the cache is coherent.
const CACHED: [bool; TREES] = {
    let mut cached = [false; TREES];
    cached[T::Meta as usize] = true;
    cached[T::JidUserid as usize] = true;
    cached[T::UseridUser as usize] = true;
    cached[T::UserblockIndex as usize] = true;
    cached[T::UserdeviceCursor as usize] = true;
    cached[T::UserpeerConversation as usize] = true;
    cached
};

/// Trees whose whole-user ranges (a user's devices, a user's conversations) are cached.
fn prefix_cached(tree: T) -> bool {
    matches!(tree, T::UserdeviceCursor | T::UserpeerConversation)
}

/// Past this many cached rows the cache starts over (a bound on memory, not a policy).
const CACHE_ROWS: usize = 200_000;

/// The most keys a range of the log's index may span to be answered from the cache: a
/// receipt's or a marker's lookup spans the blocks from the device's cursor to the head, one or
/// two in the steady state; a replay's spans hundreds and goes to the database, paged.
const FEW_KEYS: u64 = 16;

/// The committed message records kept after their commit ([`Recent`]): 8 MiB, some 20,000
/// chat messages, minutes of a busy server's traffic, which is when receipts come.
const RECENT_BYTES: usize = 8 << 20;

/// Every key `bounds` can hold when they are few: a range of the log's index (keys are
/// `user ‖ block`, so a range within one user is a run of consecutive blocks) from one whole
/// key to another, both included, as [`super::log`] asks it.
fn few_keys(tree: T, bounds: &Bounds) -> Option<Vec<Vec<u8>>> {
    if tree != T::UserblockIndex {
        return None;
    }
    let (Bound::Included(lo), Bound::Included(hi)) = bounds else {
        return None;
    };
    let (user, first) = (super::keys::be_u64(lo, 0)?, super::keys::be_u64(lo, 8)?);
    let (user_hi, last) = (super::keys::be_u64(hi, 0)?, super::keys::be_u64(hi, 8)?);
    if lo.len() != 16 || hi.len() != 16 || user != user_hi || last < first {
        return None;
    }
    if last - first >= FEW_KEYS || last > i64::MAX as u64 {
        return None;
    }
    Some(
        (first..=last)
            .map(|block| super::keys::user_block(user, block).to_vec())
            .collect(),
    )
}

/// Message records this process committed lately, newest kept, within [`RECENT_BYTES`]: a
/// receipt reads the record of a message logged seconds before, and the process that wrote it
/// owns the store (the lease), so the record it committed is the one in the database until it
/// commits another. Only commits fill it; a delete (retention, purge) removes the record.
#[derive(Default)]
struct Recent {
    records: HashMap<Vec<u8>, IVec>,
    /// Keys in the order they came in; a key deleted or evicted may linger here (skipped).
    order: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Recent {
    fn get(&self, key: &[u8]) -> Option<IVec> {
        self.records.get(key).cloned()
    }

    fn committed(&mut self, key: &[u8], value: Option<&IVec>) {
        let old = match value {
            Some(v) => {
                let old = self.records.insert(key.to_vec(), v.clone());
                if old.is_none() {
                    self.order.push_back(key.to_vec());
                }
                self.bytes += key.len() + v.len();
                old
            }
            None => self.records.remove(key),
        };
        if let Some(old) = old {
            self.bytes -= key.len() + old.len();
        }
        // Lingering keys count against the bound too, so `order` stays bounded as well.
        while self.bytes > RECENT_BYTES || self.order.len() > 2 * self.records.len() + 64 {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.records.remove(&oldest) {
                self.bytes -= oldest.len() + v.len();
            }
        }
    }
}

/// The user prefix when `bounds` are exactly the keys of one user in a prefix-cached tree.
fn whole_prefix(tree: T, bounds: &Bounds) -> Option<Vec<u8>> {
    if !prefix_cached(tree) {
        return None;
    }
    match &bounds.0 {
        Bound::Included(k) if k.len() == 8 => {
            (*bounds == super::pending::prefix_bounds(k)).then(|| k.clone())
        }
        _ => None,
    }
}

#[derive(Default)]
struct Cache {
    /// Committed values (`None`: known absent).
    points: HashMap<(T, Vec<u8>), Option<IVec>>,
    /// Every committed row of one user in a prefix-cached tree, in key order.
    prefixes: HashMap<(T, Vec<u8>), Vec<Row>>,
    rows: usize,
    recent: Recent,
}

impl Cache {
    fn get(&self, tree: T, key: &[u8]) -> Option<Option<IVec>> {
        self.points.get(&(tree, key.to_vec())).cloned()
    }

    fn prefix(&self, tree: T, prefix: &[u8]) -> Option<Vec<Row>> {
        self.prefixes.get(&(tree, prefix.to_vec())).cloned()
    }

    /// The committed rows of `keys` (every key the range holds) when each is known, present
    /// or absent.
    fn all_of(&self, tree: T, keys: &[Vec<u8>]) -> Option<Vec<Row>> {
        let mut rows = Vec::new();
        for key in keys {
            if let Some(value) = self.points.get(&(tree, key.clone()))? {
                rows.push((IVec::from(key.as_slice()), value.clone()));
            }
        }
        Some(rows)
    }

    /// What a range over exactly `keys` returned: each key is present with its row, or absent.
    fn remember_all(&mut self, tree: T, keys: &[Vec<u8>], rows: &[Row]) {
        for key in keys {
            let value = rows
                .iter()
                .find(|(k, _)| k.as_ref() == key.as_slice())
                .map(|(_, v)| v.clone());
            self.remember(tree, key, value);
        }
    }

    fn make_room(&mut self, rows: usize) {
        if self.rows + rows > CACHE_ROWS {
            self.points.clear();
            self.prefixes.clear();
            self.rows = 0;
        }
        self.rows += rows;
    }

    fn remember(&mut self, tree: T, key: &[u8], value: Option<IVec>) {
        self.make_room(1);
        self.points.insert((tree, key.to_vec()), value);
    }

    fn remember_prefix(&mut self, tree: T, prefix: Vec<u8>, rows: Vec<Row>) {
        self.make_room(rows.len() + 1);
        self.prefixes.insert((tree, prefix), rows);
    }

    /// A write the database has committed.
    fn committed(&mut self, tree: T, key: &[u8], value: Option<IVec>) {
        if prefix_cached(tree) && key.len() >= 8 {
            if let Some(rows) = self.prefixes.get_mut(&(tree, key[..8].to_vec())) {
                let at = rows.binary_search_by(|(k, _)| k.as_ref().cmp(key));
                match (at, &value) {
                    (Ok(i), Some(v)) => rows[i].1 = v.clone(),
                    (Ok(i), None) => {
                        rows.remove(i);
                    }
                    (Err(i), Some(v)) => rows.insert(i, (IVec::from(key), v.clone())),
                    (Err(_), None) => {}
                }
                self.rows += 1;
            }
        }
        self.remember(tree, key, value);
    }
}

/// A range read page by page, each page continuing after the last key of the one before.
struct PgRange<'a> {
    backend: &'a PgBackend,
    tree: T,
    lower: Option<Cmp>,
    upper: Option<Cmp>,
    rev: bool,
    buffered: VecDeque<Row>,
    page: i64,
    done: bool,
}

impl Iterator for PgRange<'_> {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffered.is_empty() && !self.done {
            let rows = match self.backend.page(
                self.tree,
                self.lower.clone(),
                self.upper.clone(),
                self.rev,
                self.page,
            ) {
                Ok(rows) => rows,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if (rows.len() as i64) < self.page {
                self.done = true;
            }
            if let Some((last, _)) = rows.last() {
                let after = match decode_key(self.tree, last) {
                    Ok(d) => d.params,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                };
                let cmp = Some(Cmp {
                    op: if self.rev { "<" } else { ">" },
                    params: after,
                });
                if self.rev {
                    self.upper = cmp;
                } else {
                    self.lower = cmp;
                }
            }
            self.page = (self.page * 2).min(LAST_PAGE);
            self.buffered = rows.into();
        }
        self.buffered.pop_front().map(Ok)
    }
}

/// One column of many keys, as an array parameter.
enum Column {
    Ints(Vec<i64>),
    Texts(Vec<String>),
}

impl Column {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Ints(v) => v,
            Column::Texts(v) => v,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Column::Ints(v) => v.is_empty(),
            Column::Texts(v) => v.is_empty(),
        }
    }
}

/// Rows of one table as column arrays for `unnest`: the key columns, and the values when the
/// rows are written (not when they are deleted).
struct Rows {
    keys: Vec<Column>,
    records: Vec<Vec<u8>>,
    ids: Vec<i64>,
}

impl Rows {
    fn of(table: &Table) -> Rows {
        Rows {
            keys: table
                .cols
                .iter()
                .map(|(_, c)| match c {
                    Col::Text => Column::Texts(Vec::new()),
                    _ => Column::Ints(Vec::new()),
                })
                .collect(),
            records: Vec::new(),
            ids: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.iter().all(Column::is_empty)
    }

    fn push(&mut self, tree: T, key: &[u8], value: Option<&IVec>) -> Result<()> {
        for (col, p) in self.keys.iter_mut().zip(whole_key(tree, key)?) {
            match (col, p) {
                (Column::Ints(v), Param::Int(i)) => v.push(i),
                (Column::Texts(v), Param::Text(s)) => v.push(s),
                _ => unreachable!("columns follow the table"),
            }
        }
        if let Some(v) = value {
            match TABLES[tree as usize].val {
                Val::Record => self.records.push(v.to_vec()),
                Val::UserId => self.ids.push(
                    super::keys::be_u64(v, 0)
                        .filter(|id| *id <= i64::MAX as u64)
                        .ok_or(StoreError::KeyRange {
                            tree: super::TREE_NAMES[tree as usize],
                        })? as i64,
                ),
                Val::Nothing => {}
            }
        }
        Ok(())
    }

    /// The statement's parameters: the key arrays, then the values' when `written`.
    fn params(&self, tree: T, written: bool) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = self.keys.iter().map(Column::sql).collect();
        if written {
            match TABLES[tree as usize].val {
                Val::Record => params.push(&self.records),
                Val::UserId => params.push(&self.ids),
                Val::Nothing => {}
            }
        }
        params
    }
}

/// The writes of one table in a commit.
struct TableBatch {
    tree: T,
    /// Rows that may be in the table already: upserted.
    puts: Rows,
    /// Rows the store knows are not in the table (a new message's log row, timer and
    /// deliveries, a new block of the index): inserted plainly, which costs PostgreSQL about
    /// half an upsert's work (no conflict check and no confirmation of a speculative insert).
    news: Rows,
    dels: Rows,
}

impl TableBatch {
    fn of<'a>(
        tree: T,
        writes: impl Iterator<Item = super::pending::Write<'a>>,
    ) -> Result<TableBatch> {
        let table = &TABLES[tree as usize];
        let mut batch = TableBatch {
            tree,
            puts: Rows::of(table),
            news: Rows::of(table),
            dels: Rows::of(table),
        };
        for w in writes {
            let rows = match w.value {
                None => &mut batch.dels,
                Some(_) if w.new => &mut batch.news,
                Some(_) => &mut batch.puts,
            };
            rows.push(tree, w.key, w.value)?;
        }
        Ok(batch)
    }
}

/// The SQL type of a key column's array.
fn array_type(col: Col) -> &'static str {
    match col {
        Col::Text => "text[]",
        _ => "bigint[]",
    }
}

/// What a statement of a commit does with its rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Upsert,
    Insert,
    Delete,
}

/// The statement that writes (or deletes) one table's rows from arrays.
fn write_sql(table: &Table, write: Write) -> String {
    let names: Vec<&str> = table.cols.iter().map(|(n, _)| *n).collect();
    let key_list = names.join(", ");
    let mut casts: Vec<String> = table
        .cols
        .iter()
        .enumerate()
        .map(|(i, (_, c))| format!("${}::{}", i + 1, array_type(*c)))
        .collect();
    if write == Write::Delete {
        return format!(
            "DELETE FROM {} WHERE ({key_list}) IN (SELECT * FROM unnest({}))",
            table.name,
            casts.join(", ")
        );
    }
    let mut insert_cols = key_list.clone();
    let conflict = match table.val {
        Val::Record => {
            casts.push(format!("${}::bytea[]", names.len() + 1));
            insert_cols.push_str(", record");
            "DO UPDATE SET record = EXCLUDED.record"
        }
        Val::UserId => {
            casts.push(format!("${}::bigint[]", names.len() + 1));
            insert_cols.push_str(", user_id");
            "DO UPDATE SET user_id = EXCLUDED.user_id"
        }
        Val::Nothing => "DO NOTHING",
    };
    let mut sql = format!(
        "INSERT INTO {} ({insert_cols}) SELECT * FROM unnest({})",
        table.name,
        casts.join(", ")
    );
    if write == Write::Upsert {
        sql.push_str(&format!(" ON CONFLICT ({key_list}) {conflict}"));
    }
    sql
}

/// SQLSTATE unique_violation: a plain insert met a row that was there after all.
fn unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres { source, .. }
        if source.code().is_some_and(|c| c.code() == "23505"))
}

/// One commit ([`commit`]); should a row the store took for new be in the table already (the
/// same write set retried after a commit that did reach the server, its answer lost with the
/// connection), it runs again with every row upserted: a write set of final values, applied
/// twice, is the same as once.
fn commit_write_set(conn: &mut Conn, batches: &[TableBatch]) -> Result<()> {
    match commit(conn, batches, true) {
        Err(e) if unique_violation(&e) => {
            tracing::info!(
                url = %redact(&conn.url),
                "a row taken for new was in the database already (a commit retried after it \
                 reached the server): committing again as upserts: {e}"
            );
            commit(conn, batches, false)
        }
        done => done,
    }
}

/// One commit: one transaction of the fence on the lease, then per table an upsert, an insert
/// (`plain`; else these rows are upserted too) and a delete of arrays, each when it has rows.
fn commit(conn: &mut Conn, batches: &[TableBatch], plain: bool) -> Result<()> {
    let epoch = conn.epoch;
    let lease = conn.lease.as_secs_f64();
    let mut writes: Vec<(&TableBatch, &Rows, Write)> = Vec::new();
    for b in batches {
        for (rows, write) in [
            (&b.puts, Write::Upsert),
            (&b.news, if plain { Write::Insert } else { Write::Upsert }),
            (&b.dels, Write::Delete),
        ] {
            if !rows.is_empty() {
                writes.push((b, rows, write));
            }
        }
    }
    let fence = "UPDATE readtrack_owner SET expires = now() + $2::float8 * interval '1 second' \
                 WHERE id = 1 AND epoch = $1";
    // BEGIN prepared like the rest: the pipeline is all of the extended protocol.
    let mut statements = vec![conn.statement("BEGIN")?, conn.statement(fence)?];
    for (b, _, write) in &writes {
        statements.push(conn.statement(&write_sql(&TABLES[b.tree as usize], *write))?);
    }
    let url = redact(&conn.url);
    let (client, rt) = conn.client()?;
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = writes
        .iter()
        .map(|(b, rows, write)| rows.params(b.tree, *write != Write::Delete))
        .collect();
    let fence_params: [&(dyn ToSql + Sync); 2] = [&epoch, &lease];
    let (outcome, rolled_back) = rt.block_on(async {
        // One round trip for the transaction's statements: BEGIN, the fence and every write are
        // sent together and answered in order (the server runs them one after the other, as if
        // sent one by one). A failed one aborts the transaction, and each after it fails too.
        let mut sent: Vec<Boxed<'_, std::result::Result<u64, postgres::Error>>> = vec![
            Box::pin(client.execute(&statements[0], &[])),
            Box::pin(client.execute(&statements[1], &fence_params)),
        ];
        for (statement, p) in statements[2..].iter().zip(&params) {
            sent.push(Box::pin(client.execute(statement, p)));
        }
        let mut answers = in_order(sent).await;
        let fenced = matches!(answers[1], Ok(1));
        let outcome = match answers.iter().position(|a| a.is_err()) {
            Some(first) => Err(answers.swap_remove(first).err()),
            // Only now, the fence's answer known, is COMMIT sent (a second round trip): an old
            // owner's late write set is rolled back, never committed.
            None if !fenced => Err(None),
            None => return (client.batch_execute("COMMIT").await.map_err(Some), true),
        };
        match client.batch_execute("ROLLBACK").await {
            Ok(()) => (outcome, true),
            Err(e) => {
                tracing::debug!("ROLLBACK after a failed commit: {}", describe(&e));
                (outcome, false)
            }
        }
    });
    if !rolled_back {
        // The session may still be in the failed transaction: the next job starts afresh.
        conn.disconnect();
    }
    match outcome {
        Ok(()) => Ok(()),
        Err(Some(source)) => Err(StoreError::Postgres { url, source }),
        Err(None) => Err(StoreError::Fenced { url, epoch }),
    }
}

/// A future of the client, boxed so that several kinds go in one pipeline.
type Boxed<'a, R> = Pin<Box<dyn Future<Output = R> + 'a>>;

/// Awaits futures of one client together, each first polled in the order given: a request is
/// sent on its future's first poll, so they leave in that order, one pipeline.
async fn in_order<R>(futures: Vec<Boxed<'_, R>>) -> Vec<R> {
    let mut slots: Vec<(Boxed<'_, R>, Option<R>)> =
        futures.into_iter().map(|f| (f, None)).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (future, answer) in slots.iter_mut() {
            if answer.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => *answer = Some(r),
                    std::task::Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    slots
        .into_iter()
        .map(|(_, answer)| answer.expect("every future answered"))
        .collect()
}

/// Applies the project's migrations that the database has not had, in order, each once.
fn migrate(conn: &mut Conn) -> Result<()> {
    let url = redact(&conn.url);
    let (client, rt) = conn.client_mut()?;
    let err = |source| StoreError::Postgres {
        url: url.clone(),
        source,
    };
    rt.block_on(async {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS readtrack_schema (\
                version integer NOT NULL PRIMARY KEY, \
                name text NOT NULL, \
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(err)?;
    let newest: Option<i32> = client
        .query_one("SELECT max(version) FROM readtrack_schema", &[])
        .await
        .map_err(err)?
        .get(0);
    if let Some(found) = newest.filter(|v| *v > PG_SCHEMA_VERSION) {
        return Err(StoreError::PgSchemaVersion {
            url: url.clone(),
            found,
            expected: PG_SCHEMA_VERSION,
        });
    }
    for (version, name, sql) in MIGRATIONS {
        // Two processes opening a new database at once: the loser's transaction fails on the
        // version's primary key (or a table it creates) and finds the migration applied.
        for attempt in 0..2 {
            let tx = client.transaction().await.map_err(err)?;
            let applied = tx
                .query_opt(
                    "SELECT 1 FROM readtrack_schema WHERE version = $1",
                    &[version],
                )
                .await
                .map_err(err)?
                .is_some();
            if applied {
                break;
            }
            let done = match tx.batch_execute(sql).await {
                Ok(()) => tx
                    .execute(
                        "INSERT INTO readtrack_schema (version, name) VALUES ($1, $2)",
                        &[version, name],
                    )
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            let done = match done {
                Ok(()) => tx.commit().await,
                Err(e) => Err(e),
            };
            match done {
                Ok(_) => {
                    tracing::info!(url = %url, version, name, "PostgreSQL schema migration applied");
                    break;
                }
                Err(e) if attempt == 0 => {
                    tracing::debug!("migration {version} raced another process: {e}");
                }
                Err(e) => return Err(err(e)),
            }
        }
    }
    Ok(())
    })
}

/// The records are sled's (schema 5): a database written by another record version is refused.
fn check_records_schema(conn: &mut Conn) -> Result<()> {
    let url = redact(&conn.url);
    let (client, rt) = conn.client()?;
    let err = |source| StoreError::Postgres {
        url: url.clone(),
        source,
    };
    let key = std::str::from_utf8(META_SCHEMA).expect("ASCII");
    let found = rt
        .block_on(client.query_opt("SELECT record FROM readtrack_meta WHERE key = $1", &[&key]))
        .map_err(err)?;
    match found {
        Some(row) => {
            let v: &[u8] = row.get(0);
            let version = u32::from_be_bytes(v.try_into().map_err(|_| StoreError::Decode {
                tree: "meta",
                reason: "schema_version is not 4 bytes".into(),
            })?);
            if version != SCHEMA_VERSION {
                return Err(StoreError::PgSchemaVersion {
                    url,
                    found: version as i32,
                    expected: SCHEMA_VERSION as i32,
                });
            }
        }
        None => {
            rt.block_on(client.execute(
                "INSERT INTO readtrack_meta (key, record) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &&SCHEMA_VERSION.to_be_bytes()[..]],
            ))
            .map_err(err)?;
        }
    }
    Ok(())
}

/// Who holds a lease: the host, the process, and a random part (a pid is reused).
fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Takes the store's lease if it is free or expired (a new epoch), else refuses, naming the
/// holder and when its lease ends. The database's clock decides, for every process alike.
fn take_lease(conn: &mut Conn, holder: &str) -> Result<()> {
    let url = redact(&conn.url);
    let lease = conn.lease.as_secs_f64();
    let (client, rt) = conn.client_mut()?;
    let err = |source| StoreError::Postgres {
        url: url.clone(),
        source,
    };
    let epoch = rt.block_on(async {
        let tx = client.transaction().await.map_err(err)?;
        tx.execute(
            "INSERT INTO readtrack_owner (id, holder, epoch, expires) \
         VALUES (1, '', 0, '1970-01-01T00:00:00Z') ON CONFLICT (id) DO NOTHING",
            &[],
        )
        .await
        .map_err(err)?;
        let row = tx
            .query_one(
                "SELECT holder, epoch, expires > now(), \
             to_char(expires AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM readtrack_owner WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(err)?;
        let (current, epoch, live, until): (String, i64, bool, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if live {
            return Err(StoreError::Held {
                url: url.clone(),
                holder: current,
                until,
            });
        }
        tx.execute(
            "UPDATE readtrack_owner SET holder = $1, epoch = $2, \
         expires = now() + $3::float8 * interval '1 second' WHERE id = 1",
            &[&holder, &(epoch + 1), &lease],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(epoch)
    })?;
    conn.epoch = epoch + 1;
    tracing::info!(url = %url, holder, epoch = epoch + 1, "store lease taken");
    Ok(())
}

/// Renews the lease on its own connection, a third of the lease apart, so a process that is
/// idle (no commits) keeps its store; one that cannot renew loses it to the next opener when it
/// expires, and its commits are refused from then on.
struct Renewer {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Renewer {
    fn start(url: &str, epoch: i64, lease: Duration) -> Result<Renewer> {
        let config = postgres::Config::from(config_of(url)?);
        let shown = redact(url);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("readtrack-pg-lease".into())
            .spawn(move || {
                let mut client: Option<postgres::Client> = None;
                let every = (lease / 3).max(Duration::from_millis(100));
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if client.as_ref().map_or(true, |c| c.is_closed()) {
                        client = match config.connect(NoTls) {
                            Ok(c) => Some(c),
                            Err(e) => {
                                // Commits renew the lease too; the store's thread retries them.
                                tracing::warn!(url = %shown, "cannot reach the database to renew the store's lease: {}", describe(&e));
                                continue;
                            }
                        };
                    }
                    let Some(c) = client.as_mut() else { continue };
                    match c.execute(
                        "UPDATE readtrack_owner SET expires = now() + $2::float8 * interval '1 second' \
                         WHERE id = 1 AND epoch = $1",
                        &[&epoch, &lease.as_secs_f64()],
                    ) {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::error!(url = %shown, epoch, "the store's lease was taken over by another process; this process can no longer commit");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(url = %shown, "cannot renew the store's lease: {}", describe(&e));
                            // A connection that failed once is not trusted again.
                            client = None;
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Pg(format!("cannot start the lease thread: {e}")))?;
        Ok(Renewer { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// What `readtrack check` reports of a PostgreSQL store, read without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgState {
    /// The server's `server_version`.
    pub server: String,
    /// The newest migration applied (`None`: readtrack has not initialised the database).
    pub schema: Option<i32>,
    /// A live lease: who holds it and until when (UTC).
    pub holder: Option<(String, String)>,
}

/// Connects to `url` and reads the schema version and the lease, on a thread of its own (the
/// caller may be a runtime thread). Creates nothing, migrates nothing, takes no lease.
pub fn inspect_postgres(url: &str) -> Result<PgState> {
    let url = url.to_string();
    std::thread::spawn(move || -> Result<PgState> {
        let shown = redact(&url);
        let err = |source| StoreError::Postgres {
            url: shown.clone(),
            source,
        };
        let mut client = postgres::Config::from(config_of(&url)?)
            .connect(NoTls)
            .map_err(err)?;
        let server: String = client
            .query_one("SHOW server_version", &[])
            .map_err(err)?
            .get(0);
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_name IN ('readtrack_schema', 'readtrack_owner') \
                 AND table_schema = current_schema()",
                &[],
            )
            .map_err(err)?
            .get(0);
        if tables == 0 {
            return Ok(PgState {
                server,
                schema: None,
                holder: None,
            });
        }
        let schema: Option<i32> = client
            .query_one("SELECT max(version) FROM readtrack_schema", &[])
            .map_err(err)?
            .get(0);
        let holder = if tables == 2 {
            client
                .query_opt(
                    "SELECT holder, to_char(expires AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                     FROM readtrack_owner WHERE id = 1 AND expires > now()",
                    &[],
                )
                .map_err(err)?
                .map(|r| (r.get(0), r.get(1)))
        } else {
            None
        };
        Ok(PgState {
            server,
            schema,
            holder,
        })
    })
    .join()
    .unwrap_or_else(|_| Err(StoreError::Pg("the inspection thread panicked".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys;

    fn ints(c: &Cmp) -> Vec<i64> {
        c.params
            .iter()
            .map(|p| match p {
                Param::Int(i) => *i,
                Param::Text(_) => panic!("text"),
            })
            .collect()
    }

    #[test]
    fn a_prefix_bound_compares_the_columns_it_has() {
        let b = super::super::pending::prefix_bounds(&keys::user_prefix(7));
        let lower = typed_bound(T::UserseqMessage, &b.0, true).unwrap().unwrap();
        let upper = typed_bound(T::UserseqMessage, &b.1, false)
            .unwrap()
            .unwrap();
        assert_eq!((lower.op, ints(&lower)), (">=", vec![7]));
        assert_eq!((upper.op, ints(&upper)), ("<", vec![8]));
    }

    #[test]
    fn a_prefix_bound_that_carried_into_an_earlier_byte_is_padded() {
        // The prefix of user 255 ends before the byte sled's bound carried into.
        let b = super::super::pending::prefix_bounds(&keys::user_prefix(255));
        let upper = typed_bound(T::UserdeviceCursor, &b.1, false)
            .unwrap()
            .unwrap();
        assert_eq!((upper.op, ints(&upper)), ("<", vec![256]));
    }

    #[test]
    fn a_bound_above_the_bigint_range_is_cut_to_it() {
        let end = keys::deadline_user_seq(5, u64::MAX, u64::MAX);
        let upper = typed_bound(T::DeadlineUserseq, &Bound::Included(end.to_vec()), false)
            .unwrap()
            .unwrap();
        assert_eq!((upper.op, ints(&upper)), ("<=", vec![5, i64::MAX]));
        let lower = typed_bound(
            T::UserseqMessage,
            &Bound::Included(keys::user_seq(3, u64::MAX).to_vec()),
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!((lower.op, ints(&lower)), (">", vec![3, i64::MAX]));
    }

    #[test]
    fn a_whole_key_keeps_its_bound() {
        let k = keys::user_device_seq(1, 2, 3).to_vec();
        let lower = typed_bound(T::UserdeviceseqDelivery, &Bound::Excluded(k.clone()), true)
            .unwrap()
            .unwrap();
        let upper = typed_bound(T::UserdeviceseqDelivery, &Bound::Included(k), false)
            .unwrap()
            .unwrap();
        assert_eq!((lower.op, ints(&lower)), (">", vec![1, 2, 3]));
        assert_eq!((upper.op, ints(&upper)), ("<=", vec![1, 2, 3]));
    }

    #[test]
    fn a_key_that_does_not_fit_its_table_is_refused() {
        assert!(matches!(
            whole_key(T::UserseqMessage, &[1, 2, 3]),
            Err(StoreError::KeyRange { .. })
        ));
        assert!(matches!(
            whole_key(T::UserseqMessage, &[0; 17]),
            Err(StoreError::BadKey { .. })
        ));
        assert!(matches!(
            whole_key(T::UserseqMessage, &keys::user_seq(1, u64::MAX)),
            Err(StoreError::KeyRange { .. })
        ));
    }

    #[test]
    fn a_lost_connection_is_named_by_its_sqlstate_and_retried_on_a_new_one() {
        for code in [
            "57P01", "57P02", "57P03", "57P05", "53300", "08000", "08003", "08006",
        ] {
            assert_eq!(failure_of_code(code), Failure::Connection, "{code}");
        }
    }

    #[test]
    fn serialisation_failures_and_deadlocks_run_the_transaction_again() {
        for code in ["40001", "40P01", "40003"] {
            assert_eq!(failure_of_code(code), Failure::Conflict, "{code}");
        }
    }

    #[test]
    fn a_refused_statement_is_not_retried() {
        // unique and check violations, a missing table, a bad password, a missing database,
        // a statement timeout, a dropped database, a full disk, a read-only standby.
        for code in [
            "23505", "23514", "42P01", "28P01", "3D000", "57014", "57P04", "53100", "25006",
        ] {
            assert_eq!(failure_of_code(code), Failure::Fatal, "{code}");
        }
    }

    #[test]
    fn a_refused_connection_is_a_connection_loss_and_says_why() {
        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://rt@127.0.0.1:{port}/db");
        let e = std::thread::spawn(move || {
            postgres::Config::from(config_of(&url).unwrap())
                .connect(NoTls)
                .err()
        })
        .join()
        .unwrap()
        .expect("nothing listens there");
        assert_eq!(failure_of(&e), Failure::Connection);
        assert_eq!(
            describe(&e),
            "error connecting to server: Connection refused (os error 111)"
        );
    }

    #[test]
    fn recent_records_stay_within_their_bound_newest_kept() {
        let mut recent = Recent::default();
        let record = IVec::from(vec![7u8; 1000]);
        let n = 3 * RECENT_BYTES / 1000;
        for seq in 0..n as u64 {
            recent.committed(&keys::user_seq(1, seq), Some(&record));
        }
        assert!(recent.bytes <= RECENT_BYTES, "{} bytes", recent.bytes);
        assert!(recent.bytes > RECENT_BYTES - 2000, "{} bytes", recent.bytes);
        assert!(recent.get(&keys::user_seq(1, n as u64 - 1)).is_some());
        assert!(recent.get(&keys::user_seq(1, 0)).is_none());
        // A delete is forgotten at once, and lingering keys do not grow the queue past its bound.
        for round in 0..10_000u64 {
            let key = keys::user_seq(2, round % 3);
            recent.committed(&key, Some(&record));
            recent.committed(&key, None);
            assert_eq!(recent.get(&key), None);
        }
        assert!(recent.order.len() <= 2 * recent.records.len() + 64);
    }

    #[test]
    fn a_short_range_of_the_log_index_is_enumerated_and_a_long_one_is_not() {
        let b = |lo: u64, hi: u64| {
            (
                Bound::Included(keys::user_block(5, lo).to_vec()),
                Bound::Included(keys::user_block(5, hi).to_vec()),
            )
        };
        let few = few_keys(T::UserblockIndex, &b(3, 4)).unwrap();
        assert_eq!(
            few,
            vec![
                keys::user_block(5, 3).to_vec(),
                keys::user_block(5, 4).to_vec()
            ]
        );
        assert_eq!(few_keys(T::UserblockIndex, &b(0, FEW_KEYS)), None);
        assert_eq!(few_keys(T::UserseqMessage, &b(3, 4)), None);
        let other_user = (
            Bound::Included(keys::user_block(5, 1).to_vec()),
            Bound::Included(keys::user_block(6, 1).to_vec()),
        );
        assert_eq!(few_keys(T::UserblockIndex, &other_user), None);
    }

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            redact("postgres://rt:s3cret@127.0.0.1:5432/readtrack"),
            "postgres://rt@127.0.0.1:5432/readtrack"
        );
        assert_eq!(
            redact("host=127.0.0.1 user=rt password=s3cret dbname=x"),
            "host=127.0.0.1 user=rt password=*** dbname=x"
        );
        assert_eq!(
            redact("postgres://rt@h/db?password=s3cret&sslmode=disable"),
            "postgres://rt@h/db?password=***&sslmode=disable"
        );
    }
}
