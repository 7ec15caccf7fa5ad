//! Where one kind's list and watch goes next, as a pure state machine:
//! what happened comes in (a list, a watch opened or refused, an event, a
//! 410 Gone, the stream's end), the next step comes out (list, watch from
//! a version, or wait first). `watcher::run` does the IO around it.
//!
//! ```text
//!            ┌────────── 410 Gone (refused, or in the stream) ──────────┐
//!            ▼                                                          │
//!   no cursor: List ──listed (version)──▶ Watch { from: cursor } ──events move the cursor
//!      │  ▲                                  │  ▲                          (bookmarks too)
//!      │  └─ failed: wait (backoff) ─┘       │  └─ ended: at once; broken, or within 1 s:
//!                                            │     wait (backoff) first
//!                                            └─ refused: wait (backoff)
//! ```
//!
//! The backoff doubles from 250 ms to 4 s and starts over after a watch
//! that worked (it carried events, or stayed open 10 s, and ended
//! cleanly). Must not: read a clock or draw random numbers; the jitter is
//! the caller's.

use std::time::Duration;

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Retries stop doubling here. The whole appliance keeps two watches (the
/// leader's), not one per node, so retrying every few seconds costs the
/// API server nothing, and the table catches up within that after an
/// outage (with 30 s, as client-go's reflectors, the `apiserver-outage`
/// drill converged 9.8 s after a 60 s outage ended).
const BACKOFF_CAP: Duration = Duration::from_secs(4);
/// A watch open this long worked, even without events.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// A watch that ends sooner than this is retried after a wait, so that
/// one the server ends at once, again and again, does not spin.
const SPIN_GUARD: Duration = Duration::from_secs(1);

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// List every object, then watch from the list's version.
    List,
    /// Watch from this resource version.
    Watch { from: String },
}

/// One kind's cursor and backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    cursor: String,
    backoff: Duration,
}

impl Resume {
    /// From a committed cursor; empty: list first.
    pub fn new(cursor: String) -> Resume {
        Resume {
            cursor,
            backoff: BACKOFF_FIRST,
        }
    }

    /// The resource version events have reached.
    pub fn cursor(&self) -> &str {
        &self.cursor
    }

    pub fn next(&self) -> Step {
        if self.cursor.is_empty() {
            Step::List
        } else {
            Step::Watch {
                from: self.cursor.clone(),
            }
        }
    }

    /// A list succeeded at `version`.
    pub fn listed(&mut self, version: &str) {
        self.cursor = version.to_owned();
    }

    /// A list, or the opening of a watch, failed: how long to wait
    /// before trying again (before jitter).
    pub fn failed(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
        wait
    }

    /// 410 Gone, from the watch request or inside its stream: the
    /// server's history no longer reaches the cursor; list again (at
    /// once: the server answered).
    pub fn gone(&mut self) {
        self.cursor.clear();
    }

    /// An event (an object, a deletion, a bookmark) at `version`; an
    /// empty version moves nothing.
    pub fn event(&mut self, version: &str) {
        if !version.is_empty() {
            self.cursor = version.to_owned();
        }
    }

    /// The watch ended after `events` events and `lasted`; `broken` when
    /// it failed (a stream error, an error status) rather than ended. The
    /// wait before the next step, if any.
    pub fn watch_ended(&mut self, events: u64, lasted: Duration, broken: bool) -> Option<Duration> {
        if !broken && (events > 0 || lasted > HEALTHY_AFTER) {
            self.backoff = BACKOFF_FIRST;
        }
        (broken || lasted < SPIN_GUARD).then(|| self.failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cursor_lists_then_watches_from_the_list_and_events_move_it() {
        let mut r = Resume::new(String::new());
        assert_eq!(r.next(), Step::List);
        r.listed("100");
        assert_eq!(r.next(), Step::Watch { from: "100".into() });
        r.event("105"); // an object
        r.event(""); // an event without a version: the cursor stays
        r.event("120"); // a bookmark
        assert_eq!(r.next(), Step::Watch { from: "120".into() });
        // The server's timeout ends a healthy watch: resume at once.
        assert_eq!(r.watch_ended(3, Duration::from_secs(290), false), None);
        assert_eq!(r.cursor(), "120");
    }

    #[test]
    fn a_committed_cursor_resumes_without_a_list_and_410_relists() {
        let mut r = Resume::new("7".into());
        assert_eq!(r.next(), Step::Watch { from: "7".into() });
        r.gone();
        assert_eq!(r.next(), Step::List);
        r.listed("900");
        assert_eq!(r.next(), Step::Watch { from: "900".into() });
    }

    #[test]
    fn failures_back_off_to_the_cap_and_a_working_watch_starts_over() {
        let mut r = Resume::new(String::new());
        let waits: Vec<u64> = (0..7).map(|_| r.failed().as_millis() as u64).collect();
        assert_eq!(waits, vec![250, 500, 1000, 2000, 4000, 4000, 4000]);
        // A broken watch waits and does not start the backoff over.
        assert_eq!(
            r.watch_ended(5, Duration::from_secs(30), true),
            Some(Duration::from_secs(4))
        );
        // A watch that carried events and ended cleanly does.
        assert_eq!(r.watch_ended(5, Duration::from_secs(30), false), None);
        assert_eq!(r.failed(), Duration::from_millis(250));
    }

    #[test]
    fn a_watch_that_ends_at_once_again_and_again_does_not_spin() {
        let mut r = Resume::new("1".into());
        let waits: Vec<Option<Duration>> = (0..4)
            .map(|_| r.watch_ended(0, Duration::from_millis(5), false))
            .collect();
        assert_eq!(
            waits,
            vec![
                Some(Duration::from_millis(250)),
                Some(Duration::from_millis(500)),
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
            ]
        );
        // Open 5 s without events, ended cleanly: neither a wait nor a reset.
        assert_eq!(r.watch_ended(0, Duration::from_secs(5), false), None);
        assert_eq!(r.failed(), Duration::from_secs(4));
    }
}
