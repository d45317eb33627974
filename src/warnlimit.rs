//! Rate limiting of the warnings a peer can trigger (a bad stanza, a refused input, a flood
//! past a limit). Each is worth a log line, but a user repeating it must not be able to fill
//! the disk or drown every other line: per kind, [`LINES_PER_INTERVAL`] lines pass per
//! [`INTERVAL`], the rest are counted, and the next line that passes (or [`flush`]) first says
//! how many were left out.
//!
//! [`RateLimiter`] is sans clock: the time is an argument, so the engine can use it with the
//! `now` it is given. The process has one, behind [`admit`], because the warn sites are spread
//! over layers that share nothing else (link, service, engine) and the counts go to `stats`.

use std::sync::Mutex;
use std::time::Duration;

use crate::time::Millis;

/// Lines of one kind logged per interval before the rest are only counted.
pub const LINES_PER_INTERVAL: u32 = 10;
pub const INTERVAL: Duration = Duration::from_secs(60);

/// What a warning is about. The names are the keys of the `warnings` object in `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warning {
    /// A stanza over the framer's size or depth limit, skipped on the component stream.
    StanzaSkipped,
    /// A stanza from the server that is not a hook event (malformed, unknown).
    StanzaRejected,
    /// A hook event the engine refused.
    InputRejected,
    /// A replay cut at `max_replay`.
    ReplayCut,
    /// A message a client sent that the engine refused while logging the recipient's copy.
    SentRejected,
    /// A message logged without a receipt timer: the timers are at their limit.
    TimersFull,
    /// A bounce that cannot be written (sender or id unusable).
    BounceUnusable,
    /// A session of the reconnect snapshot the engine refused.
    SnapshotSessionRejected,
    /// A message not logged: its user's log is at `max_log_messages_per_user` or
    /// `max_log_bytes_per_user` with nothing acked left to delete.
    LogLimit,
    /// A new device admitted past `max_devices_per_user`: every device of the user is online.
    DevicesAllOnline,
}

impl Warning {
    pub const ALL: [Warning; 10] = [
        Warning::StanzaSkipped,
        Warning::StanzaRejected,
        Warning::InputRejected,
        Warning::ReplayCut,
        Warning::SentRejected,
        Warning::TimersFull,
        Warning::BounceUnusable,
        Warning::SnapshotSessionRejected,
        Warning::LogLimit,
        Warning::DevicesAllOnline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Warning::StanzaSkipped => "stanza_skipped",
            Warning::StanzaRejected => "stanza_rejected",
            Warning::InputRejected => "input_rejected",
            Warning::ReplayCut => "replay_cut",
            Warning::SentRejected => "sent_rejected",
            Warning::TimersFull => "timers_full",
            Warning::BounceUnusable => "bounce_unusable",
            Warning::SnapshotSessionRejected => "snapshot_session_rejected",
            Warning::LogLimit => "log_limit",
            Warning::DevicesAllOnline => "devices_all_online",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What to do with one warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` lines of this kind were left out since the last one logged.
    Log { suppressed: u64 },
    /// Only count it.
    Suppress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: u64,
    logged: u32,
    /// Left out since the last line of this kind.
    pending: u64,
    seen: u64,
    suppressed: u64,
}

impl Window {
    /// No interval open yet: the first warning opens one (a start in the future reads as a
    /// clock that went back).
    const NEW: Window = Window {
        start: u64::MAX,
        logged: 0,
        pending: 0,
        seen: 0,
        suppressed: 0,
    };
}

/// Counts of one kind since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub seen: u64,
    pub suppressed: u64,
}

#[derive(Debug, Clone)]
pub struct RateLimiter {
    lines: u32,
    interval_ms: u64,
    windows: [Window; Warning::ALL.len()],
}

impl RateLimiter {
    pub const fn new(lines: u32, interval: Duration) -> RateLimiter {
        RateLimiter {
            lines,
            interval_ms: interval.as_millis() as u64,
            windows: [Window::NEW; Warning::ALL.len()],
        }
    }

    pub fn check(&mut self, kind: Warning, now: Millis) -> Verdict {
        let w = &mut self.windows[kind.index()];
        w.seen += 1;
        if now.0 >= w.start.saturating_add(self.interval_ms) || now.0 < w.start {
            w.start = now.0;
            w.logged = 0;
        }
        if w.logged < self.lines {
            w.logged += 1;
            let suppressed = std::mem::take(&mut w.pending);
            return Verdict::Log { suppressed };
        }
        w.pending += 1;
        w.suppressed += 1;
        Verdict::Suppress
    }

    /// Kinds whose window has ended with lines left out, with how many; they are then
    /// reported, so a burst's count is not held back until the next warning of its kind.
    pub fn overdue(&mut self, now: Millis) -> Vec<(Warning, u64)> {
        let mut out = Vec::new();
        for kind in Warning::ALL {
            let w = &mut self.windows[kind.index()];
            if w.pending > 0 && now.0 >= w.start.saturating_add(self.interval_ms) {
                out.push((kind, std::mem::take(&mut w.pending)));
            }
        }
        out
    }

    pub fn counts(&self, kind: Warning) -> Counts {
        let w = &self.windows[kind.index()];
        Counts {
            seen: w.seen,
            suppressed: w.suppressed,
        }
    }
}

static WARNINGS: Mutex<RateLimiter> = Mutex::new(RateLimiter::new(LINES_PER_INTERVAL, INTERVAL));

fn limiter() -> std::sync::MutexGuard<'static, RateLimiter> {
    // A panic while holding the lock leaves only counters behind: still usable.
    WARNINGS.lock().unwrap_or_else(|e| e.into_inner())
}

fn say_suppressed(kind: Warning, suppressed: u64) {
    tracing::warn!(
        kind = kind.name(),
        suppressed,
        "suppressed {suppressed} similar warnings"
    );
}

/// Whether the warning at this site is to be logged (see the module doc). Call it as
/// `if warnlimit::admit(Warning::X, now) { tracing::warn!(...) }`.
pub fn admit(kind: Warning, now: Millis) -> bool {
    let verdict = limiter().check(kind, now);
    match verdict {
        Verdict::Log { suppressed } => {
            if suppressed > 0 {
                say_suppressed(kind, suppressed);
            }
            true
        }
        Verdict::Suppress => false,
    }
}

/// Logs the counts of bursts that have ended; the service calls it from its loop.
pub fn flush(now: Millis) {
    let overdue = limiter().overdue(now);
    for (kind, suppressed) in overdue {
        say_suppressed(kind, suppressed);
    }
}

/// Counts of every kind, for `stats`.
pub fn counts() -> Vec<(Warning, Counts)> {
    let limiter = limiter();
    Warning::ALL
        .iter()
        .map(|&kind| (kind, limiter.counts(kind)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_n_lines_per_interval_then_counts_the_rest() {
        let mut limiter = RateLimiter::new(2, Duration::from_secs(10));
        let t = Millis(1_000);
        let kind = Warning::StanzaSkipped;
        assert_eq!(limiter.check(kind, t), Verdict::Log { suppressed: 0 });
        assert_eq!(limiter.check(kind, t), Verdict::Log { suppressed: 0 });
        assert_eq!(limiter.check(kind, t), Verdict::Suppress);
        assert_eq!(limiter.check(kind, Millis(10_999)), Verdict::Suppress);
        // The next interval's first line says how many were left out.
        assert_eq!(
            limiter.check(kind, Millis(11_000)),
            Verdict::Log { suppressed: 2 }
        );
        assert_eq!(
            limiter.counts(kind),
            Counts {
                seen: 5,
                suppressed: 2
            }
        );
    }

    #[test]
    fn kinds_are_limited_separately() {
        let mut limiter = RateLimiter::new(1, Duration::from_secs(10));
        let t = Millis(0);
        assert_eq!(
            limiter.check(Warning::StanzaRejected, t),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(limiter.check(Warning::StanzaRejected, t), Verdict::Suppress);
        assert_eq!(
            limiter.check(Warning::InputRejected, t),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(limiter.counts(Warning::InputRejected).suppressed, 0);
    }

    #[test]
    fn an_ended_burst_is_reported_once_without_a_new_warning() {
        let mut limiter = RateLimiter::new(1, Duration::from_secs(10));
        let kind = Warning::ReplayCut;
        limiter.check(kind, Millis(0));
        limiter.check(kind, Millis(1));
        limiter.check(kind, Millis(2));
        assert_eq!(limiter.overdue(Millis(9_999)), vec![]);
        assert_eq!(limiter.overdue(Millis(10_000)), vec![(kind, 2)]);
        assert_eq!(limiter.overdue(Millis(20_000)), vec![]);
        // Reported already: the next line owes no count.
        assert_eq!(
            limiter.check(kind, Millis(20_000)),
            Verdict::Log { suppressed: 0 }
        );
    }

    #[test]
    fn a_clock_that_goes_back_opens_a_new_interval() {
        let mut limiter = RateLimiter::new(1, Duration::from_secs(10));
        let kind = Warning::TimersFull;
        limiter.check(kind, Millis(50_000));
        assert_eq!(limiter.check(kind, Millis(50_001)), Verdict::Suppress);
        assert_eq!(
            limiter.check(kind, Millis(1_000)),
            Verdict::Log { suppressed: 1 }
        );
    }

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<_> = Warning::ALL.iter().map(|w| w.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Warning::ALL.len());
        for (i, w) in Warning::ALL.iter().enumerate() {
            assert_eq!(w.index(), i);
        }
    }
}
