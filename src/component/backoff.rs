//! Reconnect delays: exponential from `initial`, capped at `max`, each one jittered by ±20% so a
//! fleet of instances restarted together does not reconnect in lockstep.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Lowest and highest factor applied to the nominal delay.
pub const JITTER_LOW: f64 = 0.8;
pub const JITTER_HIGH: f64 = 1.2;

/// A zero initial delay would never grow by doubling and would spin.
const MIN_INITIAL: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub struct Backoff<R = StdRng> {
    initial: Duration,
    max: Duration,
    /// Nominal delay before jitter of the next call to [`Backoff::next_delay`].
    next_nominal: Duration,
    rng: R,
}

impl Backoff<StdRng> {
    pub fn new(initial: Duration, max: Duration) -> Backoff<StdRng> {
        Backoff::with_rng(initial, max, StdRng::from_entropy())
    }
}

impl<R: Rng> Backoff<R> {
    /// `max` below `initial` is raised to `initial`: the cap never shortens the first delay.
    pub fn with_rng(initial: Duration, max: Duration, rng: R) -> Backoff<R> {
        let initial = initial.max(MIN_INITIAL);
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            next_nominal: initial,
            rng,
        }
    }

    /// The nominal (unjittered) delay the next call will use.
    pub fn nominal(&self) -> Duration {
        self.next_nominal
    }

    /// The delay before the next attempt; within `[0.8 × nominal, min(1.2 × nominal, max)]`.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next_nominal;
        self.next_nominal = nominal.saturating_mul(2).min(self.max);
        let factor = self.rng.gen_range(JITTER_LOW..=JITTER_HIGH);
        // Clamping after jitter keeps `max` a true upper bound, as operators read it.
        nominal.mul_f64(factor).min(self.max)
    }

    /// Back to `initial`, after a connection that stayed up long enough to call healthy.
    pub fn reset(&mut self) {
        self.next_nominal = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nominal_delays_double_then_stay_at_the_cap() {
        let mut backoff = Backoff::with_rng(ms(20), ms(160), StdRng::seed_from_u64(7));
        let mut nominals = Vec::new();
        for _ in 0..7 {
            nominals.push(backoff.nominal());
            backoff.next_delay();
        }
        assert_eq!(
            nominals,
            vec![ms(20), ms(40), ms(80), ms(160), ms(160), ms(160), ms(160)]
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_below_the_cap() {
        for seed in 0..50 {
            let mut backoff = Backoff::with_rng(ms(20), ms(160), StdRng::seed_from_u64(seed));
            for _ in 0..20 {
                let nominal = backoff.nominal();
                let delay = backoff.next_delay();
                assert!(
                    delay >= nominal.mul_f64(0.8),
                    "{delay:?} < 0.8 × {nominal:?}"
                );
                assert!(
                    delay <= nominal.mul_f64(1.2),
                    "{delay:?} > 1.2 × {nominal:?}"
                );
                assert!(delay <= ms(160), "{delay:?} above the cap");
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        // A jitter that always returned the nominal delay would pass the bounds test above.
        let mut backoff = Backoff::with_rng(ms(1000), ms(1000), StdRng::seed_from_u64(1));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        let low = delays.iter().min().unwrap();
        let high = delays.iter().max().unwrap();
        assert!(*low < ms(850), "lowest of 200 delays is {low:?}");
        // The cap equals the nominal here, so the top half of the jitter is clamped to it.
        assert_eq!(*high, ms(1000));
        let mut backoff = Backoff::with_rng(ms(100), ms(10_000), StdRng::seed_from_u64(2));
        let firsts: Vec<Duration> = (0..200)
            .map(|_| {
                backoff.reset();
                backoff.next_delay()
            })
            .collect();
        assert!(firsts.iter().any(|d| *d > ms(115)));
        assert!(firsts.iter().any(|d| *d < ms(85)));
    }

    #[test]
    fn same_seed_same_delays() {
        let run = |seed| {
            let mut backoff = Backoff::with_rng(ms(20), ms(160), StdRng::seed_from_u64(seed));
            (0..6).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }

    #[test]
    fn reset_starts_over_from_initial() {
        let mut backoff = Backoff::with_rng(ms(20), ms(160), StdRng::seed_from_u64(3));
        for _ in 0..5 {
            backoff.next_delay();
        }
        assert_eq!(backoff.nominal(), ms(160));
        backoff.reset();
        assert_eq!(backoff.nominal(), ms(20));
    }

    #[test]
    fn degenerate_settings_cannot_spin_or_shrink() {
        let mut backoff =
            Backoff::with_rng(Duration::ZERO, Duration::ZERO, StdRng::seed_from_u64(4));
        assert_eq!(backoff.nominal(), ms(1));
        assert!(backoff.next_delay() >= Duration::from_micros(800));
        let backoff = Backoff::with_rng(ms(500), ms(100), StdRng::seed_from_u64(5));
        assert_eq!(backoff.nominal(), ms(500));
        assert_eq!(backoff.max, ms(500));
    }
}
