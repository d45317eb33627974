//! What `GET /metrics` shows: the figures of `readtrack stats` as OpenMetrics counters and
//! gauges, the service loop's counters, and histograms of commit, ack and replay times. This
//! file only turns numbers into OpenMetrics text (with `prometheus-client`); [`http`] is the
//! endpoint, the only network I/O of this module.
//!
//! The numbers come from two places: the store's figures are asked of the service task at
//! scrape time (as `readtrack stats` asks them), and the loop's counters and [`Latency`]
//! histograms are atomics the service task writes and a scrape reads, so the message path never
//! waits for a scrape.
//!
//! [`Latency`]: crate::service::Latency

pub mod http;

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::engine::query::StoreStats;
use crate::service::{LatencySnapshot, ServiceStats, LATENCY_BOUNDS_NANOS};

/// The content type of the OpenMetrics text format, version 1.0.0.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything one scrape shows, copied at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `None` when the service task did not answer in time: the scrape then shows the loop's
    /// own figures only, rather than nothing.
    pub store: Option<StoreStats>,
    pub uptime: Duration,
    pub connected: bool,
    pub events: u64,
    pub rejected_stanzas: u64,
    pub rejected_inputs: u64,
    pub commands: u64,
    pub commits: u64,
    pub commit: LatencySnapshot,
    pub ack: LatencySnapshot,
    pub replay: LatencySnapshot,
}

impl Snapshot {
    pub fn of(stats: &ServiceStats, store: Option<StoreStats>, uptime: Duration) -> Snapshot {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        Snapshot {
            store,
            uptime,
            connected: stats.connected.load(Ordering::Relaxed),
            events: get(&stats.events),
            rejected_stanzas: get(&stats.rejected_stanzas),
            rejected_inputs: get(&stats.rejected_inputs),
            commands: get(&stats.commands),
            commits: get(&stats.batches),
            commit: stats.timings.commit.snapshot(),
            ack: stats.timings.ack.snapshot(),
            replay: stats.timings.replay.snapshot(),
        }
    }
}

/// The snapshot as OpenMetrics text, ending with `# EOF`.
pub fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collected(snapshot)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// A snapshot as a `prometheus-client` collector: encoded once, at the scrape that made it.
#[derive(Debug)]
struct Collected(Snapshot);

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> std::fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    latency: &LatencySnapshot,
) -> std::fmt::Result {
    let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_NANOS
        .iter()
        .map(|&nanos| nanos as f64 / 1e9)
        .chain(std::iter::once(f64::INFINITY))
        .zip(latency.buckets.iter().copied())
        .collect();
    // The count is the buckets' total, so `_count` always equals the `+Inf` bucket even when
    // an observation lands between the reads of two atomics.
    let count = latency.buckets.iter().sum();
    encoder
        .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(latency.sum_seconds, count, &buckets, None)
}

/// A `u64` figure as a gauge value (OpenMetrics gauges are signed here).
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl prometheus_client::collector::Collector for Collected {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        if let Some(store) = &s.store {
            counter(
                &mut e,
                "readtrack_messages_logged",
                "Messages logged since the store was created (stats: logged).",
                store.logged,
            )?;
            counter(
                &mut e,
                "readtrack_messages_replayed",
                "Messages replayed to devices since the store was created (stats: replays).",
                store.replays,
            )?;
            counter(
                &mut e,
                "readtrack_bounces",
                "Delay bounces sent to senders (stats: bounces).",
                store.bounces,
            )?;
            let receipts = e.encode_descriptor(
                "readtrack_receipts",
                "Receipts from devices by outcome (stats: receipts_accepted, receipts_duplicate, receipts_rejected).",
                None,
                MetricType::Counter,
            )?;
            let mut receipts = receipts;
            for (outcome, value) in [
                ("accepted", store.receipts_accepted),
                ("duplicate", store.receipts_duplicate),
                ("rejected", store.receipts_rejected),
            ] {
                ConstCounter::new(value)
                    .encode(receipts.encode_family(&[("outcome", outcome)])?)?;
            }
            counter(
                &mut e,
                "readtrack_messages_deleted",
                "Messages deleted by retention (stats: messages_deleted).",
                store.messages_deleted,
            )?;
            counter(
                &mut e,
                "readtrack_devices_expired",
                "Devices forgotten after expire_after (stats: devices_expired).",
                store.devices_expired,
            )?;
            counter(
                &mut e,
                "readtrack_replays_truncated",
                "Logins whose replay was cut at max_replay (stats: replays_truncated).",
                store.replays_truncated,
            )?;
            counter(
                &mut e,
                "readtrack_receipt_timers_refused",
                "Messages logged without a receipt timer at max_pending_timers (stats: timers_refused).",
                store.timers_refused,
            )?;
            counter(
                &mut e,
                "readtrack_messages_given_back",
                "Messages readtrack could not log, handed back to the server's offline storage (stats: given_back).",
                store.given_back,
            )?;
            counter(
                &mut e,
                "readtrack_device_key_merges",
                "Sessions that came online under the device key of another live session (stats: device_key_merges).",
                store.device_key_merges,
            )?;
            counter(
                &mut e,
                "readtrack_users_purged",
                "Users deleted with all their data: account deleted on the server, or purge (stats: users_purged).",
                store.users_purged,
            )?;
            counter(
                &mut e,
                "readtrack_devices_evicted",
                "Devices forgotten, the longest idle first, to admit a new one past max_devices_per_user (stats: devices_evicted).",
                store.devices_evicted,
            )?;
            counter(
                &mut e,
                "readtrack_log_limit_given_back",
                "Received messages handed back to the server's offline storage: the user's log was at its limit with nothing acked to delete (stats: log_limit_given_back).",
                store.log_limit_given_back,
            )?;
            counter(
                &mut e,
                "readtrack_sent_not_logged",
                "Users' own sent copies not logged: their log was at its limit with nothing acked to delete (stats: sent_not_logged).",
                store.sent_not_logged,
            )?;
            gauge(
                &mut e,
                "readtrack_users",
                "Users the store knows (stats: users).",
                None,
                signed(store.users),
            )?;
            gauge(
                &mut e,
                "readtrack_devices",
                "Devices the store knows (stats: devices).",
                None,
                signed(store.devices),
            )?;
            gauge(
                &mut e,
                "readtrack_messages",
                "Messages in the log (stats: messages).",
                None,
                signed(store.messages),
            )?;
            gauge(
                &mut e,
                "readtrack_receipt_timers_pending",
                "Receipt timers running (stats: pending_timers).",
                None,
                signed(store.pending_timers),
            )?;
            gauge(
                &mut e,
                "readtrack_store_size",
                "Size of the store on disk (stats: store_bytes).",
                Some(&Unit::Bytes),
                signed(store.store_bytes),
            )?;
        }
        gauge(
            &mut e,
            "readtrack_uptime",
            "Time since the service started (stats: uptime_secs).",
            Some(&Unit::Seconds),
            signed(s.uptime.as_secs()),
        )?;
        gauge(
            &mut e,
            "readtrack_component_connected",
            "1 while the component link to the XMPP server is up.",
            None,
            i64::from(s.connected),
        )?;
        counter(
            &mut e,
            "readtrack_events",
            "Events received from the server since the service started (several per stanza once the module batches them).",
            s.events,
        )?;
        counter(
            &mut e,
            "readtrack_stanzas_rejected",
            "Stanzas from the server, or events of one, that were malformed or not in the hook vocabulary.",
            s.rejected_stanzas,
        )?;
        counter(
            &mut e,
            "readtrack_inputs_rejected",
            "Events the engine refused (wrong domain, no sender...).",
            s.rejected_inputs,
        )?;
        counter(
            &mut e,
            "readtrack_commands",
            "Commands sent to the server since the service started.",
            s.commands,
        )?;
        counter(
            &mut e,
            "readtrack_commits",
            "Store commits (group commits) since the service started.",
            s.commits,
        )?;
        histogram(
            &mut e,
            "readtrack_commit_duration",
            "Time of one commit: the store flush of a batch of events.",
            &s.commit,
        )?;
        histogram(
            &mut e,
            "readtrack_ack_latency",
            "From a message's event leaving the link's queue to its 10013 ack handed to the link's writer.",
            &s.ack,
        )?;
        histogram(
            &mut e,
            "readtrack_replay_duration",
            "From a device's availability leaving the link's queue to the last command of its replay handed to the link's writer.",
            &s.replay,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Latency;

    fn snapshot(store: Option<StoreStats>) -> Snapshot {
        let stats = ServiceStats::default();
        stats.events.store(7, Ordering::Relaxed);
        stats.timings.commit.observe(Duration::from_micros(300));
        stats.timings.commit.observe(Duration::from_secs(100));
        Snapshot::of(&stats, store, Duration::from_secs(42))
    }

    fn store() -> StoreStats {
        StoreStats {
            users: 2,
            devices: 3,
            messages: 4,
            pending_timers: 1,
            logged: 5,
            replays: 6,
            bounces: 0,
            receipts_accepted: 8,
            receipts_duplicate: 9,
            receipts_rejected: 10,
            messages_deleted: 1,
            devices_expired: 0,
            replays_truncated: 0,
            timers_refused: 0,
            given_back: 0,
            device_key_merges: 0,
            users_purged: 0,
            devices_evicted: 7,
            log_limit_given_back: 11,
            sent_not_logged: 12,
            store_bytes: 4096,
        }
    }

    #[test]
    fn counters_end_in_total_and_units_name_seconds_and_bytes() {
        let text = encode(snapshot(Some(store())));
        for line in [
            "# TYPE readtrack_messages_logged counter",
            "readtrack_messages_logged_total 5",
            "readtrack_devices_evicted_total 7",
            "readtrack_log_limit_given_back_total 11",
            "readtrack_sent_not_logged_total 12",
            "readtrack_receipts_total{outcome=\"duplicate\"} 9",
            "# TYPE readtrack_store_size_bytes gauge",
            "# UNIT readtrack_store_size_bytes bytes",
            "readtrack_store_size_bytes 4096",
            "readtrack_uptime_seconds 42",
            "readtrack_events_total 7",
            "readtrack_component_connected 0",
            "# TYPE readtrack_commit_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_is_the_inf_bucket() {
        let text = encode(snapshot(None));
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .to_string()
        };
        assert_eq!(value("readtrack_commit_duration_seconds_count"), "2");
        assert_eq!(
            value("readtrack_commit_duration_seconds_bucket{le=\"0.0001\"}"),
            "0"
        );
        assert_eq!(
            value("readtrack_commit_duration_seconds_bucket{le=\"0.0005\"}"),
            "1"
        );
        assert_eq!(
            value("readtrack_commit_duration_seconds_bucket{le=\"60.0\"}"),
            "1"
        );
        assert_eq!(
            value("readtrack_commit_duration_seconds_bucket{le=\"+Inf\"}"),
            "2"
        );
        assert_eq!(value("readtrack_commit_duration_seconds_sum"), "100.0003");
    }

    #[test]
    fn without_store_figures_the_loop_figures_still_show() {
        let text = encode(snapshot(None));
        assert!(!text.contains("readtrack_messages_logged"), "{text}");
        assert!(text.contains("readtrack_events_total 7"), "{text}");
    }

    #[test]
    fn an_observation_on_a_bound_falls_in_that_bucket() {
        let latency = Latency::default();
        latency.observe(Duration::from_millis(1));
        let buckets = latency.snapshot().buckets;
        assert_eq!(buckets[3], 1, "{buckets:?}");
        assert_eq!(buckets.iter().sum::<u64>(), 1);
    }
}
