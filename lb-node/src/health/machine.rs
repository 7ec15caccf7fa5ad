//! One backend's health as its prober sees it: a pure state machine of
//! probe results with rise/fall hysteresis, and when the next probe is
//! due. No clock and no IO: the probe task feeds it results and sleeps
//! for it.

use std::time::Duration;

/// What a prober says of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not decided yet (fewer than `rise` successes or `fall` failures in
    /// a row since probing started): no report.
    Unknown,
    Up,
    Down,
}

#[derive(Clone, Debug)]
pub struct Machine {
    rise: u32,
    fall: u32,
    state: Health,
    /// Results in a row of the same kind (successes when `ok_run`).
    run: u32,
    ok_run: bool,
}

impl Machine {
    pub fn new(rise: u32, fall: u32) -> Machine {
        Machine {
            rise: rise.max(1),
            fall: fall.max(1),
            state: Health::Unknown,
            run: 0,
            ok_run: false,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Whether the last results point away from the state (a failure
    /// while up, a success while down) or nothing is decided yet: then the
    /// next probe comes sooner (`next_in`).
    pub fn transitioning(&self) -> bool {
        match self.state {
            Health::Unknown => true,
            Health::Up => self.run > 0 && !self.ok_run,
            Health::Down => self.run > 0 && self.ok_run,
        }
    }

    /// When the next probe is due, from the start of the last one: every
    /// `interval`, or while transitioning every half interval (never
    /// sooner than `timeout`, so probes never overlap). HAProxy's
    /// `fastinter`: a dead backend is found in about `fall` half
    /// intervals after its first failed probe, and `fall` results in a
    /// row are still needed.
    pub fn next_in(&self, interval: Duration, timeout: Duration) -> Duration {
        if self.transitioning() {
            (interval / 2).max(timeout)
        } else {
            interval
        }
    }

    /// Feeds one probe result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<Health> {
        if ok == self.ok_run {
            self.run = self.run.saturating_add(1);
        } else {
            self.ok_run = ok;
            self.run = 1;
        }
        let next = match (self.state, ok) {
            (Health::Up, true) | (Health::Down, false) => return None,
            (_, true) if self.run >= self.rise => Health::Up,
            (_, false) if self.run >= self.fall => Health::Down,
            _ => return None,
        };
        self.state = next;
        Some(next)
    }
}

/// When a backend's first probe is due after its probing starts: spread
/// over one interval by a hash of the backend (`spread`, any u64), so that
/// many backends' probes do not all fire together.
pub fn first_delay(interval: Duration, spread: u64) -> Duration {
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(spread % ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_decides_after_rise_successes_or_fall_failures_and_not_before() {
        let mut m = Machine::new(2, 3);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.state(), Health::Unknown);
        assert_eq!(m.observe(true), Some(Health::Up));
        assert_eq!(m.observe(true), None);
        // Two failures and a success: still up (fall is 3).
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.state(), Health::Up);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), Some(Health::Down));
        assert_eq!(m.observe(false), None);
        // One success is not enough to come back (rise is 2).
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(true), Some(Health::Up));
    }

    #[test]
    fn a_backend_that_never_answers_goes_down_from_unknown() {
        let mut m = Machine::new(2, 3);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), Some(Health::Down));
    }

    #[test]
    fn a_flapping_backend_changes_state_only_through_the_hysteresis() {
        // Alternating results never make a run of 2 or 3: no change at all.
        let mut m = Machine::new(2, 3);
        m.observe(true);
        m.observe(true);
        let changes = (0..1000)
            .filter(|i| m.observe(i % 2 == 0).is_some())
            .count();
        assert_eq!(changes, 0);
        assert_eq!(m.state(), Health::Up);
    }

    #[test]
    fn probes_come_sooner_while_a_change_is_pending() {
        let (i, t) = (Duration::from_secs(1), Duration::from_millis(500));
        let mut m = Machine::new(2, 3);
        assert_eq!(m.next_in(i, t), t);
        m.observe(true);
        m.observe(true);
        assert_eq!(m.next_in(i, t), i);
        m.observe(false);
        assert_eq!(m.next_in(i, t), t);
        m.observe(true);
        assert_eq!(m.next_in(i, t), i);
        // A timeout longer than half the interval: never overlapping.
        m.observe(false);
        assert_eq!(
            m.next_in(i, Duration::from_millis(900)),
            Duration::from_millis(900)
        );
    }

    #[test]
    fn first_probes_spread_over_the_interval() {
        let i = Duration::from_secs(1);
        assert_eq!(first_delay(i, 1500), Duration::from_millis(500));
        assert!(first_delay(i, u64::MAX) < i);
        assert_eq!(first_delay(Duration::ZERO, 7), Duration::ZERO);
    }
}
