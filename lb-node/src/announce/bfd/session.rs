//! One BFD session in asynchronous mode (RFC 5880 §6.8) as a pure state
//! machine: packets and the clock in, state changes and packets out. The
//! task in `mod.rs` owns the sockets and the timers.
//!
//! ```text
//!            remote Down            remote Init/Up
//!   Down ───────────────▶ Init ─────────────────▶ Up
//!    │  remote Init                                ▲
//!    └─────────────────────────────────────────────┘
//!   Init/Up ── detection time without a packet, or remote Down/AdminDown ──▶ Down
//! ```
//!
//! Timers (§6.8.2-6.8.4): packets go out every max(our desired min TX,
//! the peer's required min RX), which the task jitters to 75-100 %
//! (75-90 % with a multiplier of 1). Until the session is Up our desired
//! min TX is at least 1 s (§6.8.3); when it comes Up it drops to the
//! configured interval with a Poll Sequence, as the RFC asks for any
//! change of a timer. The session goes Down when nothing valid arrives
//! for the peer's multiplier times max(our required min RX, its desired
//! min TX): 300 ms with 100 ms x 3 on both sides.

use std::time::{Duration, Instant};

use super::packet::{Packet, State, diag};

/// A session's timers, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub desired_min_tx: Duration,
    pub required_min_rx: Duration,
    pub multiplier: u8,
}

/// The default: 50 ms x 3, so that a lost member's routes leave a router
/// that asks for the same rate within 300 ms (detection 150 ms, plus the
/// router's own work; docs/announcement.md, *BFD*).
impl Default for Timers {
    fn default() -> Timers {
        Timers {
            desired_min_tx: Duration::from_millis(50),
            required_min_rx: Duration::from_millis(50),
            multiplier: 3,
        }
    }
}

/// The slow rate of a session that is not Up (RFC 5880 §6.8.3).
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
    pub diag: u8,
}

#[derive(Debug, Clone)]
pub struct Session {
    timers: Timers,
    state: State,
    diag: u8,
    local_discriminator: u32,
    remote_discriminator: u32,
    remote_state: State,
    /// What the peer last asked for, microseconds.
    remote_min_rx: u32,
    remote_desired_min_tx: u32,
    remote_multiplier: u8,
    /// A Poll Sequence of ours in progress.
    polling: bool,
    /// The peer polled: the next packet carries Final.
    final_due: bool,
    last_heard: Option<Instant>,
}

fn us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Session {
    /// A session in Down with a nonzero local discriminator.
    pub fn new(timers: Timers, local_discriminator: u32) -> Session {
        Session {
            timers,
            state: State::Down,
            diag: diag::NONE,
            local_discriminator: local_discriminator.max(1),
            remote_discriminator: 0,
            remote_state: State::Down,
            remote_min_rx: 1,
            remote_desired_min_tx: 0,
            remote_multiplier: 0,
            polling: false,
            final_due: false,
            last_heard: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The state the peer last reported.
    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discriminator
    }

    /// The desired min TX we advertise now.
    fn advertised_min_tx(&self) -> Duration {
        if self.state == State::Up {
            self.timers.desired_min_tx
        } else {
            self.timers.desired_min_tx.max(SLOW_TX)
        }
    }

    /// How often to send, before jitter; `None`: not at all (the peer
    /// asked for no packets, required min RX 0: §6.8.7).
    pub fn tx_interval(&self) -> Option<Duration> {
        if self.remote_min_rx == 0 || self.state == State::AdminDown {
            return None;
        }
        Some(
            self.advertised_min_tx()
                .max(Duration::from_micros(u64::from(self.remote_min_rx))),
        )
    }

    /// The detection time (§6.8.4); `None` before the peer was heard.
    pub fn detection_time(&self) -> Option<Duration> {
        if self.remote_multiplier == 0 {
            return None;
        }
        let interval = self
            .timers
            .required_min_rx
            .max(Duration::from_micros(u64::from(self.remote_desired_min_tx)));
        Some(interval * u32::from(self.remote_multiplier))
    }

    /// When the session goes Down unless a packet arrives (Init and Up
    /// only).
    pub fn deadline(&self) -> Option<Instant> {
        if !matches!(self.state, State::Init | State::Up) {
            return None;
        }
        Some(self.last_heard? + self.detection_time()?)
    }

    /// Whether a packet must go out now, out of turn (a Final owed).
    pub fn reply_due(&self) -> bool {
        self.final_due
    }

    /// The next packet to send.
    pub fn packet(&mut self) -> Packet {
        let final_ = std::mem::take(&mut self.final_due);
        Packet {
            diag: self.diag,
            state: self.state,
            // A Poll and a Final never go together (§6.8.7).
            poll: self.polling && !final_,
            final_,
            detect_mult: self.timers.multiplier,
            my_discriminator: self.local_discriminator,
            your_discriminator: self.remote_discriminator,
            desired_min_tx: us(self.advertised_min_tx()),
            required_min_rx: us(self.timers.required_min_rx),
            required_min_echo_rx: 0,
        }
    }

    fn set(&mut self, to: State, diag: u8) -> Option<Change> {
        if self.state == to {
            return None;
        }
        let from = self.state;
        self.state = to;
        self.diag = diag;
        if to == State::Up && self.timers.desired_min_tx < SLOW_TX {
            // Faster than the slow rate: tell the peer by a Poll
            // Sequence.
            self.polling = true;
        }
        if from == State::Up {
            self.polling = false;
        }
        Some(Change { from, to, diag })
    }

    /// A valid packet from the peer (§6.8.6).
    pub fn receive(&mut self, p: &Packet, now: Instant) -> Option<Change> {
        if p.your_discriminator != 0 && p.your_discriminator != self.local_discriminator {
            return None;
        }
        self.remote_discriminator = p.my_discriminator;
        self.remote_state = p.state;
        self.remote_min_rx = p.required_min_rx;
        self.remote_desired_min_tx = p.desired_min_tx;
        self.remote_multiplier = p.detect_mult;
        self.last_heard = Some(now);
        if p.final_ {
            self.polling = false;
        }
        if p.poll {
            self.final_due = true;
        }
        match (self.state, p.state) {
            (State::AdminDown, _) => None,
            (State::Down, State::AdminDown) => None,
            (_, State::AdminDown) => self.set(State::Down, diag::NEIGHBOR_SIGNALED_DOWN),
            (State::Down, State::Down) => self.set(State::Init, diag::NONE),
            (State::Down, State::Init) => self.set(State::Up, diag::NONE),
            (State::Init, State::Init | State::Up) => self.set(State::Up, diag::NONE),
            (State::Up, State::Down) => self.set(State::Down, diag::NEIGHBOR_SIGNALED_DOWN),
            _ => None,
        }
    }

    /// The clock: the session goes Down when its detection time passed
    /// without a packet.
    pub fn tick(&mut self, now: Instant) -> Option<Change> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        let change = self.set(State::Down, diag::DETECTION_TIME_EXPIRED);
        // A new session starts from scratch (§6.8.1: the remote
        // discriminator is forgotten when the detection time passes).
        self.remote_discriminator = 0;
        self.remote_multiplier = 0;
        self.remote_min_rx = 1;
        change
    }

    /// Administratively down (a clean stop): the peer is told, and does
    /// not count it as a failure of the path (RFC 5882 §3.2).
    pub fn admin_down(&mut self) -> Option<Change> {
        let change = self.set(State::AdminDown, diag::ADMINISTRATIVELY_DOWN);
        self.polling = false;
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sessions talking to each other through `deliver`, at 100 ms x
    /// 3 (round figures for the tests).
    fn pair() -> (Session, Session) {
        let timers = Timers {
            desired_min_tx: Duration::from_millis(100),
            required_min_rx: Duration::from_millis(100),
            multiplier: 3,
        };
        (Session::new(timers, 11), Session::new(timers, 22))
    }

    fn deliver(from: &mut Session, to: &mut Session, now: Instant) -> Option<Change> {
        let p = from.packet();
        let bytes = p.encode();
        let decoded = Packet::decode(&bytes).expect("valid");
        to.receive(&decoded, now)
    }

    #[test]
    fn three_way_handshake_then_fast_timers_by_poll() {
        let t = Instant::now();
        let (mut a, mut b) = pair();
        assert_eq!(a.tx_interval(), Some(SLOW_TX), "slow until Up");
        // a: Down -> b: Init.
        assert_eq!(deliver(&mut a, &mut b, t).map(|c| c.to), Some(State::Init));
        // b (Init) -> a: Up.
        assert_eq!(deliver(&mut b, &mut a, t).map(|c| c.to), Some(State::Up));
        // a (Up, polling) -> b: Up, owes a Final.
        let p = a.packet();
        assert!(p.poll && p.state == State::Up);
        assert_eq!(p.desired_min_tx, 100_000);
        assert_eq!(b.receive(&p, t).map(|c| c.to), Some(State::Up));
        assert!(b.reply_due());
        // b answers with Final (and its own Poll waits); a's poll ends.
        let f = b.packet();
        assert!(f.final_ && !f.poll);
        a.receive(&f, t);
        assert!(!a.packet().poll, "poll sequence over");
        // Both at 100 ms once each knows the other's rate.
        deliver(&mut b, &mut a, t);
        deliver(&mut a, &mut b, t);
        assert_eq!(a.tx_interval(), Some(Duration::from_millis(100)));
        assert_eq!(b.tx_interval(), Some(Duration::from_millis(100)));
        assert_eq!(a.detection_time(), Some(Duration::from_millis(300)));
    }

    fn up_pair(t: Instant) -> (Session, Session) {
        let (mut a, mut b) = pair();
        for _ in 0..4 {
            deliver(&mut a, &mut b, t);
            deliver(&mut b, &mut a, t);
        }
        assert_eq!((a.state(), b.state()), (State::Up, State::Up));
        (a, b)
    }

    #[test]
    fn silence_for_the_detection_time_brings_it_down() {
        let t = Instant::now();
        let (mut a, _b) = up_pair(t);
        assert_eq!(a.tick(t + Duration::from_millis(299)), None);
        let c = a.tick(t + Duration::from_millis(300)).expect("down");
        assert_eq!((c.from, c.to), (State::Up, State::Down));
        assert_eq!(c.diag, diag::DETECTION_TIME_EXPIRED);
        assert_eq!(a.remote_discriminator(), 0, "forgotten");
        assert_eq!(a.deadline(), None, "Down has no deadline");
        assert_eq!(a.tx_interval(), Some(SLOW_TX), "back to the slow rate");
    }

    #[test]
    fn a_packet_in_time_keeps_it_up() {
        let t = Instant::now();
        let (mut a, mut b) = up_pair(t);
        for i in 1..=20u32 {
            let now = t + Duration::from_millis(100) * i;
            deliver(&mut b, &mut a, now);
            assert_eq!(a.tick(now + Duration::from_millis(250)), None);
        }
    }

    #[test]
    fn the_peer_going_down_or_admin_down() {
        let t = Instant::now();
        let (mut a, mut b) = up_pair(t);
        b.admin_down();
        let c = deliver(&mut b, &mut a, t).expect("a change");
        assert_eq!((c.to, c.diag), (State::Down, diag::NEIGHBOR_SIGNALED_DOWN));
        // An AdminDown peer sends nothing that brings us back up.
        assert_eq!(deliver(&mut b, &mut a, t), None);
        assert_eq!(a.state(), State::Down);
        assert_eq!(b.tx_interval(), None, "AdminDown is not sent periodically");
    }

    #[test]
    fn a_packet_for_another_session_is_ignored() {
        let t = Instant::now();
        let (mut a, _) = up_pair(t);
        let mut p = a.packet();
        p.your_discriminator = 999;
        p.state = State::Down;
        assert_eq!(a.receive(&p, t), None);
        assert_eq!(a.state(), State::Up);
    }

    #[test]
    fn slower_peer_sets_the_pace_and_detection() {
        let t = Instant::now();
        let (mut a, mut b) = pair();
        b.timers.desired_min_tx = Duration::from_millis(500);
        b.timers.required_min_rx = Duration::from_millis(400);
        for _ in 0..4 {
            deliver(&mut a, &mut b, t);
            deliver(&mut b, &mut a, t);
        }
        // a sends no faster than b takes; a detects after 3 x b's TX.
        assert_eq!(a.tx_interval(), Some(Duration::from_millis(400)));
        assert_eq!(a.detection_time(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn required_min_rx_zero_stops_periodic_packets() {
        let t = Instant::now();
        let (mut a, mut b) = pair();
        let mut p = b.packet();
        p.required_min_rx = 0;
        a.receive(&p, t);
        assert_eq!(a.tx_interval(), None);
    }
}
