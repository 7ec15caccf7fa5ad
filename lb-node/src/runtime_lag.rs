//! Watches the member's async runtime for stalls. BFD, the Raft
//! transport, the admin API, the Kubernetes watches and the announcers
//! all run on it; work that holds a worker thread (a long computation not
//! moved to a blocking thread, a blocking call) delays every one of them,
//! and BFD at 50 ms x 3 turns 150 ms of it into a lost path on the
//! routers. A task asks to be woken every `PERIOD` and measures how late
//! it was: every lateness goes to `lb_runtime_lag_seconds`, and one over
//! `WARN_OVER` is logged (at most one line per `WARN_EVERY`, with the
//! count and the worst since the last line).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::METRICS;

/// How often the watch asks to be woken.
const PERIOD: Duration = Duration::from_millis(10);
/// Lateness logged as a stall.
const WARN_OVER: Duration = Duration::from_millis(100);
/// At most one stall line this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Runs until `stop`.
pub async fn watch(stop: CancellationToken) {
    let mut stalls = Stalls::default();
    loop {
        let asked = Instant::now() + PERIOD;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(asked) => {}
        }
        let now = Instant::now();
        let late = now.saturating_duration_since(asked);
        METRICS.runtime_lag_seconds.observe(late.as_secs_f64());
        if let Some((count, worst)) = stalls.note(late, now.into_std()) {
            warn!(
                stalls = count,
                worst_ms = worst.as_secs_f64() * 1e3,
                "the async runtime stalled (a worker held: BFD, Raft and admin tasks waited)"
            );
        }
    }
}

/// Stalls since the last line.
#[derive(Debug, Default)]
struct Stalls {
    count: u64,
    worst: Duration,
    last_line: Option<std::time::Instant>,
}

impl Stalls {
    /// Notes one lateness; the count and worst to log, when a line is due.
    fn note(&mut self, late: Duration, now: std::time::Instant) -> Option<(u64, Duration)> {
        if late <= WARN_OVER {
            return None;
        }
        self.count += 1;
        self.worst = self.worst.max(late);
        if self
            .last_line
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return None;
        }
        self.last_line = Some(now);
        let line = (self.count, self.worst);
        (self.count, self.worst) = (0, Duration::ZERO);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_are_logged_at_most_once_per_period_with_what_came_between() {
        let start = std::time::Instant::now();
        let ms = Duration::from_millis;
        let mut s = Stalls::default();
        assert_eq!(s.note(ms(5), start), None, "a small lateness is no stall");
        assert_eq!(s.note(ms(150), start), Some((1, ms(150))));
        assert_eq!(s.note(ms(300), start + ms(1)), None);
        assert_eq!(s.note(ms(120), start + ms(2)), None);
        assert_eq!(
            s.note(ms(110), start + WARN_EVERY),
            Some((3, ms(300))),
            "the line after the period counts the stalls held back"
        );
    }
}
