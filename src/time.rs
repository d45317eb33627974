//! Wall-clock instants as plain values. The engine never reads the clock: the caller passes a
//! [`Millis`] in, which keeps every rule deterministic under test.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (UTC).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

impl Millis {
    /// Reads the system clock. Only the binaries (component, admin, main) call this.
    pub fn now() -> Millis {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Millis(since.as_millis() as u64)
    }

    pub fn plus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(d.as_millis() as u64))
    }

    pub fn minus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_sub(d.as_millis() as u64))
    }

    /// RFC 3339 / XEP-0082 timestamp with milliseconds, e.g. `2013-11-20T06:41:36.102Z`.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(self.0)).to_string()
    }

    /// Parses an XEP-0082 timestamp (`Z` or no offset; fractional seconds optional).
    pub fn parse_rfc3339(text: &str) -> Option<Millis> {
        let t = humantime::parse_rfc3339_weak(text.trim()).ok()?;
        Some(Millis(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Millis::parse_rfc3339("2013-11-20T06:41:36.102Z").unwrap();
        assert_eq!(t.rfc3339(), "2013-11-20T06:41:36.102Z");
        assert_eq!(
            t.plus(Duration::from_secs(10)).rfc3339(),
            "2013-11-20T06:41:46.102Z"
        );
    }
}
