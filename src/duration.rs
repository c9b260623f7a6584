//! Human durations in configuration files: `250ms`, `30s`, `5m`, `1h`, `1d`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A `Duration` that deserializes from a human string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{s}` has no unit (use ms, s, m, h or d)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` must start with a whole number"))?;
        let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
        let d = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86400),
            _ => {
                return Err(format!(
                    "`{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"
                ));
            }
        };
        d.filter(|d| *d <= MAX)
            .map(HumanDuration)
            .ok_or_else(|| format!("`{s}` is too long (at most 3650d)"))
    }
}

/// The longest accepted duration, 10 years: far beyond any sensible setting, and far below
/// what breaks the libraries (`Instant + d` overflows and panics on every connection; moka
/// panics on cache lifetimes over 1000 years), so `check` refuses what `serve` cannot run.
const MAX: Duration = Duration::from_secs(3650 * 86400);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl From<HumanDuration> for Duration {
    fn from(h: HumanDuration) -> Duration {
        h.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(
            HumanDuration::parse("30s").unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            HumanDuration::parse("5m").unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(
            HumanDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert!(HumanDuration::parse("30").is_err());
        assert!(HumanDuration::parse("s").is_err());
        assert!(HumanDuration::parse("3x").is_err());
        assert!(HumanDuration::parse("-3s").is_err());
    }

    #[test]
    fn durations_that_would_overflow_instants_or_caches_are_refused() {
        assert!(HumanDuration::parse("3650d").is_ok());
        assert!(HumanDuration::parse("3651d").is_err());
        assert!(HumanDuration::parse("500000d").is_err());
        assert!(HumanDuration::parse("200000000000000d").is_err());
        assert!(HumanDuration::parse("18446744073709551615ms").is_err());
    }
}
