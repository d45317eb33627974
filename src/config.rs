//! `readtrack.toml`: the keys of `readtrack.example.toml`. Every key has a default except the
//! component secret. Unknown keys and bad values are errors that name the key and the line,
//! because a typo silently falling back to a default is worse than refusing to start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::engine::{Dialect, EngineConfig, ReceiptPolicy};
use crate::jid::{DeviceKeyRule, Jid};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no component secret: set [xmpp] secret or secret_file in {path}, or the READTRACK_SECRET environment variable")]
    NoSecret { path: PathBuf },
    #[error("cannot read secret_file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A duration written as text (`"10s"`, `"500ms"`, `"30d"`).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "bad duration {text:?}: {e} (write e.g. \"10s\", \"500ms\", \"30d\")"
        ))
    })
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn from_text<'de, D: Deserializer<'de>, T: std::str::FromStr<Err = String>>(
    d: D,
) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub xmpp: XmppSection,
    pub store: StoreSection,
    pub receipts: ReceiptsSection,
    pub devices: DevicesSection,
    pub retention: RetentionSection,
    pub admin: AdminSection,
    pub log: LogSection,
    pub limits: LimitsSection,
    pub metrics: MetricsSection,
    /// The file this was read from; relative paths in it are relative to its folder.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XmppSection {
    /// The XMPP domain whose users are tracked.
    pub domain: String,
    /// The component's JID; default `readtrack.<domain>`.
    pub component: Option<String>,
    /// The server's component port.
    pub connect: String,
    /// The XEP-0114 link is plaintext, authenticated by a hash of the secret: only a loopback
    /// `connect` is accepted unless this says the path between the two is protected otherwise.
    pub allow_remote_connect: bool,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
}

impl Default for XmppSection {
    fn default() -> Self {
        XmppSection {
            domain: "localhost".into(),
            component: None,
            connect: "127.0.0.1:5347".into(),
            allow_remote_connect: false,
            secret: None,
            secret_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sled` (embedded, the default) or `postgres`.
    #[serde(deserialize_with = "from_text")]
    pub backend: StoreBackend,
    /// sled: the database folder.
    pub path: PathBuf,
    /// sled page cache in MiB.
    pub cache_mb: u64,
    /// postgres: the connection URL (`postgres://user@host:port/database`); a password may be
    /// in it or in the `PGPASSWORD` environment variable.
    pub url: Option<String>,
    /// postgres: how long the store's lease lasts unrenewed, in seconds: a process killed while
    /// holding it keeps others out this long.
    pub lease_seconds: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: StoreBackend::Sled,
            path: PathBuf::from("readtrack-data"),
            cache_mb: 64,
            url: None,
            lease_seconds: 30,
        }
    }
}

/// `[store] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Sled,
    Postgres,
}

impl std::str::FromStr for StoreBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sled" => Ok(StoreBackend::Sled),
            "postgres" => Ok(StoreBackend::Postgres),
            other => Err(format!(
                "unknown store backend {other:?} (use \"sled\" or \"postgres\")"
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptsSection {
    #[serde(deserialize_with = "from_text")]
    pub dialect: Dialect,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "from_text")]
    pub require: ReceiptPolicy,
    /// JIDs (bare or full) whose messages count as system messages, besides the domain itself.
    pub system_senders: Vec<String>,
    /// Under `dialect = "auto"`: resources of clients that speak the seed dialect (`*`
    /// matches any run of characters).
    pub seed_resources: Vec<String>,
}

impl Default for ReceiptsSection {
    fn default() -> Self {
        ReceiptsSection {
            dialect: Dialect::Auto,
            timeout: Duration::from_secs(10),
            require: ReceiptPolicy::All,
            system_senders: Vec::new(),
            seed_resources: crate::engine::default_seed_resources(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesSection {
    #[serde(deserialize_with = "from_text")]
    pub key: DeviceKeyRule,
    pub history: u64,
    #[serde(deserialize_with = "opt_duration")]
    pub history_max_age: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub expire_after: Duration,
}

impl Default for DevicesSection {
    fn default() -> Self {
        DevicesSection {
            key: DeviceKeyRule::Resource,
            history: 100,
            history_max_age: Some(Duration::from_secs(30 * 86_400)),
            expire_after: Duration::from_secs(90 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    /// How often a retention pass runs.
    #[serde(deserialize_with = "duration")]
    pub every: Duration,
    /// At most this many messages deleted per pass, so message handling never waits long.
    pub batch: u64,
}

/// Bounds that keep one user or one login from taking the service over.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Messages replayed to one device per login; the rest follows at its next login.
    pub max_replay: usize,
    /// Receipt timers running at once; past it, messages are logged without a timer.
    pub max_pending_timers: usize,
    /// Longest stanza taken from the component stream; a longer one is skipped and counted.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting in one stanza from the component stream (the stanza's root is
    /// 1); a deeper one is skipped and counted.
    pub max_stanza_depth: usize,
    /// Devices kept per user; a new one past it makes the longest idle offline device go.
    pub max_devices_per_user: usize,
    /// Messages in one user's log; past it the oldest history every device acked goes first,
    /// else the new message goes back to the server's offline storage.
    pub max_log_messages_per_user: u64,
    /// Stanza bytes in one user's log; at it, as `max_log_messages_per_user`.
    pub max_log_bytes_per_user: u64,
    /// Stanza bytes one login's replay writes; the rest follows at the next login.
    pub max_replay_bytes: u64,
    /// Stanza bytes of a replay in flight to one device before the server reports them flushed
    /// (the next chunk waits for that); 0 writes a replay at once.
    pub replay_window_bytes: u64,
    /// Index entries one receipt or marker may examine looking for the message it names.
    pub max_receipt_scan: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let framer = crate::stanza::Limits::default();
        LimitsSection {
            max_replay: 10_000,
            max_pending_timers: 1_000_000,
            max_stanza_bytes: framer.max_stanza_bytes,
            max_stanza_depth: framer.max_depth,
            max_devices_per_user: 32,
            max_log_messages_per_user: 100_000,
            max_log_bytes_per_user: 256 * 1024 * 1024,
            max_replay_bytes: 8 * 1024 * 1024,
            replay_window_bytes: 256 * 1024,
            max_receipt_scan: 100_000,
        }
    }
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            max_age: Duration::from_secs(365 * 86_400),
            every: Duration::from_secs(60),
            batch: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub socket: PathBuf,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            socket: PathBuf::from("readtrack.sock"),
        }
    }
}

/// The OpenMetrics endpoint (`GET /metrics`). Off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `IP:port` to serve on, e.g. `127.0.0.1:9464`.
    pub listen: Option<String>,
    /// The endpoint has no authentication and names the service's load, so an address other
    /// than loopback must be asked for explicitly.
    pub allow_remote: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text; `path` is where it came from (for messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe(text, &e),
        })?;
        config.source = path.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            message,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let domain = Jid::prepare(&self.xmpp.domain)
            .map_err(|e| self.invalid(format!("[xmpp] domain: {e}")))?;
        if domain.local().is_some() || domain.is_full() {
            return Err(self.invalid(format!(
                "[xmpp] domain: {:?} is a user JID, not a domain",
                self.xmpp.domain
            )));
        }
        Jid::prepare(&self.component())
            .map_err(|e| self.invalid(format!("[xmpp] component: {e}")))?;
        for s in &self.receipts.system_senders {
            Jid::prepare(s).map_err(|e| self.invalid(format!("[receipts] system_senders: {e}")))?;
        }
        if self.store.backend == StoreBackend::Postgres
            && self.store.url.as_deref().map_or(true, str::is_empty)
        {
            return Err(self.invalid(
                "[store] backend = \"postgres\" needs url = \"postgres://user@host:port/database\""
                    .into(),
            ));
        }
        if self.store.lease_seconds == 0 {
            return Err(self.invalid("[store] lease_seconds must be above zero".into()));
        }
        if self.receipts.timeout.is_zero() {
            return Err(self.invalid("[receipts] timeout must be above zero".into()));
        }
        // Below these the module's own events (a stanza inside three levels of wrapping, the
        // snapshot's pages) would be skipped.
        if self.limits.max_stanza_bytes < 64 * 1024 {
            return Err(self.invalid("[limits] max_stanza_bytes must be at least 65536".into()));
        }
        if self.limits.max_stanza_depth < 8 {
            return Err(self.invalid("[limits] max_stanza_depth must be at least 8".into()));
        }
        // Zero would refuse every device, message, replay or receipt: never what is meant.
        let l = &self.limits;
        for (key, value) in [
            ("max_replay", l.max_replay as u64),
            ("max_devices_per_user", l.max_devices_per_user as u64),
            ("max_log_messages_per_user", l.max_log_messages_per_user),
            ("max_log_bytes_per_user", l.max_log_bytes_per_user),
            ("max_replay_bytes", l.max_replay_bytes),
            ("max_receipt_scan", l.max_receipt_scan as u64),
        ] {
            if value == 0 {
                return Err(self.invalid(format!("[limits] {key} must be above zero")));
            }
        }
        self.metrics_listen()?;
        Ok(())
    }

    /// What the framer accepts from the component stream.
    pub fn stanza_limits(&self) -> crate::stanza::Limits {
        crate::stanza::Limits {
            max_stanza_bytes: self.limits.max_stanza_bytes,
            max_depth: self.limits.max_stanza_depth,
        }
    }

    /// Where the metrics endpoint listens, if it is on. A name (`localhost:9464`) is refused:
    /// what it resolves to could change under the loopback rule.
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(listen) = &self.metrics.listen else {
            return Ok(None);
        };
        let addr: SocketAddr = listen.parse().map_err(|_| {
            self.invalid(format!(
                "[metrics] listen: {listen:?} is not IP:port (write e.g. \"127.0.0.1:9464\" or \"[::1]:9464\")"
            ))
        })?;
        if !addr.ip().is_loopback() && !self.metrics.allow_remote {
            return Err(self.invalid(format!(
                "[metrics] listen: {addr} is not a loopback address; the endpoint has no authentication, so set [metrics] allow_remote = true to serve it there"
            )));
        }
        Ok(Some(addr))
    }

    /// The folder relative paths are resolved against.
    fn base(&self) -> PathBuf {
        self.source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    pub fn component(&self) -> String {
        self.xmpp
            .component
            .clone()
            .unwrap_or_else(|| format!("readtrack.{}", self.xmpp.domain))
    }

    pub fn store_path(&self) -> PathBuf {
        self.base().join(&self.store.path)
    }

    /// Where the store lives: the sled folder, or the PostgreSQL URL.
    pub fn store_location(&self) -> crate::store::Location {
        match self.store.backend {
            StoreBackend::Sled => crate::store::Location::Sled(self.store_path()),
            StoreBackend::Postgres => {
                crate::store::Location::Postgres(self.store.url.clone().unwrap_or_default())
            }
        }
    }

    /// The store's options from `[store]`.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            cache_bytes: self.store.cache_mb * 1024 * 1024,
            lease: Duration::from_secs(self.store.lease_seconds),
            ..crate::store::StoreOptions::default()
        }
    }

    pub fn socket_path(&self) -> PathBuf {
        self.base().join(&self.admin.socket)
    }

    /// The component secret from config, secret file or environment (in that order).
    pub fn secret(&self) -> Result<String, ConfigError> {
        if let Some(s) = self.xmpp.secret.clone().filter(|s| !s.is_empty()) {
            return Ok(s);
        }
        if let Some(file) = &self.xmpp.secret_file {
            let path = self.base().join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::SecretFile { path, source })?;
            return Ok(text.trim().to_string());
        }
        match std::env::var("READTRACK_SECRET") {
            Ok(s) if !s.is_empty() => Ok(s),
            _ => Err(ConfigError::NoSecret {
                path: self.source.clone(),
            }),
        }
    }

    pub fn engine(&self) -> EngineConfig {
        // Validated at load: the domain prepares (as the server prepares its host names).
        let domain = Jid::prepare(&self.xmpp.domain)
            .map(|d| d.to_string())
            .unwrap_or_else(|_| self.xmpp.domain.clone());
        let mut e = EngineConfig::new(&domain);
        e.dialect = self.receipts.dialect;
        e.seed_resources = self.receipts.seed_resources.clone();
        e.policy = self.receipts.require;
        e.receipt_timeout = self.receipts.timeout;
        e.system_senders = self
            .receipts
            .system_senders
            .iter()
            .filter_map(|s| Jid::prepare(s).ok())
            .collect();
        e.device_key = self.devices.key;
        e.history = self.devices.history;
        e.history_max_age = self.devices.history_max_age;
        e.expire_after = self.devices.expire_after;
        e.retention_max_age = self.retention.max_age;
        e.max_replay = self.limits.max_replay;
        e.max_pending_timers = self.limits.max_pending_timers;
        e.max_devices_per_user = self.limits.max_devices_per_user;
        e.max_log_messages_per_user = self.limits.max_log_messages_per_user;
        e.max_log_bytes_per_user = self.limits.max_log_bytes_per_user;
        e.max_replay_bytes = self.limits.max_replay_bytes;
        e.replay_window_bytes = self.limits.replay_window_bytes;
        e.max_receipt_scan = self.limits.max_receipt_scan;
        e
    }
}

/// A toml error as one line: `line N: [section] key: <what>`. toml names the key itself only for
/// unknown fields; a bad value's message (ours or toml's) says what is wrong with the value but
/// not where it belongs, so the key and its table are read back from the line the error points at.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            match key_at(text, start) {
                Some(key) => format!("line {line}: {key}: {message}"),
                None => format!("line {line}: {message}"),
            }
        }
        None => message,
    }
}

/// The `[table] key` whose value contains byte `at`, when `at` lies after the `=` of a
/// `key = value` line; `None` when it points at a key or a header (the message names those).
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    if at <= line_start + key.len() || key.trim().is_empty() || key.trim_start().starts_with('#') {
        return None;
    }
    let key = key.trim();
    let table = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        (l.starts_with('[') && !l.starts_with("[[")).then(|| l.split(']').next().unwrap_or(l))
    });
    Some(match table {
        Some(table) => format!("{table}] {key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/readtrack/readtrack.toml"))
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.xmpp.domain, "localhost");
        assert_eq!(c.component(), "readtrack.localhost");
        assert_eq!(
            c.store_path(),
            PathBuf::from("/etc/readtrack/readtrack-data")
        );
        assert_eq!(c.receipts.timeout, Duration::from_secs(10));
        assert_eq!(c.devices.key, DeviceKeyRule::Resource);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("[xmpp]\ndomain = \"example.com\"\nsecrett = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "config /etc/readtrack/readtrack.toml: line 3: unknown field `secrett`"
            ),
            "{err}"
        );
    }

    /// Regression: a bad value was reported as `line 3: bad duration "ten seconds"`, naming the
    /// line but not the key, although a custom deserializer error carries no key; the key and
    /// table are now read back from the line.
    #[test]
    fn bad_duration_names_key_and_line() {
        let err = parse("[receipts]\n\ntimeout = \"ten seconds\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "config /etc/readtrack/readtrack.toml: line 3: [receipts] timeout: bad duration \"ten seconds\""
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_enum_value_is_explained() {
        let err = parse("[devices]\nkey = \"hash\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: [devices] key: unknown device key rule \"hash\" (expected \"resource\" or \"after-hash\")"), "{err}");
    }

    #[test]
    fn user_jid_as_domain_is_refused() {
        let err = parse("[xmpp]\ndomain = \"bob@example.com\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config /etc/readtrack/readtrack.toml: [xmpp] domain: \"bob@example.com\" is a user JID, not a domain");
    }

    #[test]
    fn stanza_limits_are_read_and_bounded_below() {
        let c = parse("[limits]\nmax_stanza_bytes = 2000000\nmax_stanza_depth = 40\n").unwrap();
        assert_eq!(
            c.stanza_limits(),
            crate::stanza::Limits {
                max_stanza_bytes: 2_000_000,
                max_depth: 40
            }
        );
        let err = parse("[limits]\nmax_stanza_bytes = 1000\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config /etc/readtrack/readtrack.toml: [limits] max_stanza_bytes must be at least 65536");
        let err = parse("[limits]\nmax_stanza_depth = 3\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config /etc/readtrack/readtrack.toml: [limits] max_stanza_depth must be at least 8"
        );
    }

    #[test]
    fn per_user_limits_have_defaults_and_reach_the_engine() {
        let e = parse("").unwrap().engine();
        assert_eq!(
            (
                e.max_devices_per_user,
                e.max_log_messages_per_user,
                e.max_log_bytes_per_user,
                e.max_replay_bytes,
                e.max_receipt_scan
            ),
            (32, 100_000, 256 * 1024 * 1024, 8 * 1024 * 1024, 100_000)
        );
        let e = parse(
            "[limits]\nmax_devices_per_user = 4\nmax_log_messages_per_user = 50\nmax_log_bytes_per_user = 9000\nmax_replay_bytes = 7000\nmax_receipt_scan = 64\n",
        )
        .unwrap()
        .engine();
        assert_eq!(
            (
                e.max_devices_per_user,
                e.max_log_messages_per_user,
                e.max_log_bytes_per_user,
                e.max_replay_bytes,
                e.max_receipt_scan
            ),
            (4, 50, 9000, 7000, 64)
        );
    }

    #[test]
    fn the_replay_window_defaults_to_256_kib_and_zero_turns_pacing_off() {
        assert_eq!(parse("").unwrap().engine().replay_window_bytes, 256 * 1024);
        let e = parse("[limits]\nreplay_window_bytes = 0\n")
            .unwrap()
            .engine();
        assert_eq!(e.replay_window_bytes, 0);
        let e = parse("[limits]\nreplay_window_bytes = 65536\n")
            .unwrap()
            .engine();
        assert_eq!(e.replay_window_bytes, 65536);
    }

    #[test]
    fn a_zero_limit_is_refused_by_name() {
        for key in [
            "max_replay",
            "max_devices_per_user",
            "max_log_messages_per_user",
            "max_log_bytes_per_user",
            "max_replay_bytes",
            "max_receipt_scan",
        ] {
            let err = parse(&format!("[limits]\n{key} = 0\n"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("config /etc/readtrack/readtrack.toml: [limits] {key} must be above zero")
            );
        }
    }

    #[test]
    fn metrics_are_off_by_default() {
        assert_eq!(parse("").unwrap().metrics_listen().unwrap(), None);
    }

    #[test]
    fn metrics_on_loopback_are_accepted() {
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(
            c.metrics_listen().unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let c = parse("[metrics]\nlisten = \"[::1]:9464\"\n").unwrap();
        assert_eq!(
            c.metrics_listen().unwrap(),
            Some("[::1]:9464".parse().unwrap())
        );
    }

    #[test]
    fn metrics_on_a_remote_address_need_allow_remote() {
        let err = parse("[metrics]\nlisten = \"0.0.0.0:9464\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config /etc/readtrack/readtrack.toml: [metrics] listen: 0.0.0.0:9464 is not a loopback address; the endpoint has no authentication, so set [metrics] allow_remote = true to serve it there");
        let c = parse("[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n").unwrap();
        assert_eq!(
            c.metrics_listen().unwrap(),
            Some("0.0.0.0:9464".parse().unwrap())
        );
    }

    #[test]
    fn metrics_listen_must_be_ip_and_port() {
        let err = parse("[metrics]\nlisten = \"localhost:9464\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config /etc/readtrack/readtrack.toml: [metrics] listen: \"localhost:9464\" is not IP:port (write e.g. \"127.0.0.1:9464\" or \"[::1]:9464\")");
    }

    #[test]
    fn secret_from_config_wins() {
        let c = parse("[xmpp]\nsecret = \"s3cret\"\n").unwrap();
        assert_eq!(c.secret().unwrap(), "s3cret");
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// The shipped example must stay loadable and equal to the defaults it documents.
    #[test]
    fn example_config_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("readtrack.example.toml");
        let c = Config::load(&path).unwrap();
        let d = Config::parse("", &path).unwrap();
        assert_eq!(c.component(), d.component());
        assert_eq!(c.xmpp.connect, d.xmpp.connect);
        assert_eq!(c.store_path(), d.store_path());
        assert_eq!(
            (c.receipts.timeout, c.receipts.require, c.receipts.dialect),
            (d.receipts.timeout, d.receipts.require, d.receipts.dialect)
        );
        assert_eq!(
            (c.devices.key, c.devices.history, c.devices.history_max_age),
            (d.devices.key, d.devices.history, d.devices.history_max_age)
        );
        assert_eq!(c.socket_path(), d.socket_path());
        assert_eq!(
            (c.retention.max_age, c.retention.every, c.retention.batch),
            (d.retention.max_age, d.retention.every, d.retention.batch)
        );
        assert_eq!(
            (c.limits.max_replay, c.limits.max_pending_timers),
            (d.limits.max_replay, d.limits.max_pending_timers)
        );
        assert_eq!(
            (
                c.limits.max_devices_per_user,
                c.limits.max_log_messages_per_user,
                c.limits.max_log_bytes_per_user,
                c.limits.max_replay_bytes,
                c.limits.max_receipt_scan
            ),
            (
                d.limits.max_devices_per_user,
                d.limits.max_log_messages_per_user,
                d.limits.max_log_bytes_per_user,
                d.limits.max_replay_bytes,
                d.limits.max_receipt_scan
            )
        );
        assert_eq!(c.devices.expire_after, d.devices.expire_after);
        assert_eq!(c.stanza_limits(), d.stanza_limits());
        assert_eq!(c.xmpp.allow_remote_connect, d.xmpp.allow_remote_connect);
        assert_eq!(
            (c.metrics.listen, c.metrics.allow_remote),
            (d.metrics.listen, d.metrics.allow_remote)
        );
    }
}
