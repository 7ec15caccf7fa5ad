//! The wall clock, in the units the state and the admin API carry.
//!
//! One home for the conversions (they were copied into four modules).
//! Must not: import anything of the crate; every layer may use it.

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` in Unix milliseconds: 0 before 1970, `i64::MAX` past the year
/// 292 million.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now, in Unix milliseconds (0 before 1970).
pub fn now_unix_ms() -> u64 {
    u64::try_from(unix_ms(SystemTime::now())).unwrap_or(0)
}

/// Now, in Unix microseconds (0 before 1970): proposals are stamped with
/// it.
pub fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn units_and_the_edges() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(unix_ms(t), 1_700_000_000_123);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let (ms, us) = (now_unix_ms(), now_unix_us());
        assert!(us / 1000 >= ms && us / 1000 - ms < 60_000, "{ms} {us}");
    }
}
