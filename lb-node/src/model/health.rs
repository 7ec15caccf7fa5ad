//! Active health checks as replicated data (issue 22): what a service asks
//! probes to check (`HealthCheck`, part of the service), what each member
//! reports of the backends it probes (`HealthSeen`), which members probe a
//! backend (`probers_of`) and what they decide together (`verdict`).
//!
//! Pure like the rest of the model. The probes themselves and their state
//! machines are in `crate::health`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// How many members probe each backend (fewer when the cluster has fewer).
pub const PROBERS_PER_BACKEND: usize = 2;

/// What a probe does, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP connection is opened (and closed): up when it is accepted.
    Tcp,
    /// An HTTP/1.1 request (over TLS with `tls`): up when the status is
    /// one of `expect_status` and, if set, the body holds `expect_body`.
    Http {
        tls: bool,
        method: String,
        path: String,
        /// The Host header; the backend's address when empty.
        host: String,
        /// Status codes that mean up; empty: 200-399.
        expect_status: Vec<u16>,
        expect_body: Option<String>,
    },
    /// A UDP datagram `send` is sent; up when an answer comes back that
    /// holds `expect` (any answer when empty).
    Udp { send: Vec<u8>, expect: Vec<u8> },
    /// grpc.health.v1.Health/Check for `service` (empty: the server as a
    /// whole): up when it answers SERVING.
    Grpc { service: String },
}

impl ProbeKind {
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Tcp => "tcp",
            ProbeKind::Http { tls: false, .. } => "http",
            ProbeKind::Http { tls: true, .. } => "https",
            ProbeKind::Udp { .. } => "udp",
            ProbeKind::Grpc { .. } => "grpc",
        }
    }
}

/// What to do with a backend the probes found down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnDown {
    /// Weight 0: no new connections, open ones go on (the default).
    #[default]
    Drain,
    /// Taken out of the kernel's table: open connections break.
    Remove,
}

/// A service's health check, the same for each of its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: ProbeKind,
    /// The port probed; the backend's own when `None`.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that bring a backend up, failures in a row that
    /// take it down.
    pub rise: u32,
    pub fall: u32,
    pub on_down: OnDown,
}

/// Limits of the settings, checked where they are read.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
pub const MAX_RISE_FALL: u32 = 100;

impl HealthCheck {
    /// Why these settings cannot work, naming the setting.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.interval < MIN_INTERVAL || self.interval > MAX_INTERVAL {
            return Some((
                "interval",
                format!(
                    "{:?} is out of range {MIN_INTERVAL:?}-{MAX_INTERVAL:?}",
                    self.interval
                ),
            ));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Some((
                "timeout",
                format!(
                    "{:?} must be more than 0 and at most the interval ({:?})",
                    self.timeout, self.interval
                ),
            ));
        }
        for (name, v) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=MAX_RISE_FALL).contains(&v) {
                return Some((name, format!("{v} is out of range 1-{MAX_RISE_FALL}")));
            }
        }
        if self.port == Some(0) {
            return Some(("port", "0 is not a port".into()));
        }
        if let ProbeKind::Http {
            method,
            path,
            host,
            expect_status,
            ..
        } = &self.kind
        {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Some((
                    "method",
                    format!("{method:?} is not an HTTP method (GET, HEAD, ...)"),
                ));
            }
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Some((
                    "path",
                    format!("{path:?} must start with / and hold no spaces or control characters"),
                ));
            }
            if host.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Some((
                    "host",
                    format!("{host:?} holds spaces or control characters"),
                ));
            }
            if let Some(s) = expect_status.iter().find(|s| !(100..=599).contains(*s)) {
                return Some((
                    "expect_status",
                    format!("{s} is not an HTTP status (100-599)"),
                ));
            }
        }
        if let ProbeKind::Udp { send, .. } = &self.kind
            && send.is_empty()
        {
            return Some(("send", "a UDP probe needs something to send".into()));
        }
        None
    }
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} every {:?} (timeout {:?}, rise {}, fall {})",
            self.kind.name(),
            self.interval,
            self.timeout,
            self.rise,
            self.fall
        )
    }
}

/// What one member reported of one backend, and since when (the
/// member's clock, Unix ms: for display only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSeen {
    pub down: bool,
    pub since_unix_ms: u64,
}

/// One backend of one service, as health reports name it.
pub type BackendSlot = (super::ServiceKey, IpAddr, u16);

/// The members that probe a backend: `PROBERS_PER_BACKEND` of `members`,
/// chosen by rendezvous hashing of the backend's address and port, so each
/// member gets its share and a member joining or leaving moves only the
/// backends it takes or had.
pub fn probers_of(members: &BTreeSet<u64>, address: IpAddr, port: u16) -> Vec<u64> {
    let mut ranked: Vec<(u64, u64)> = members
        .iter()
        .map(|m| (rendezvous(*m, address, port), *m))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked
        .into_iter()
        .take(PROBERS_PER_BACKEND)
        .map(|(_, m)| m)
        .collect()
}

/// A 64-bit FNV-1a of the member and the endpoint, mixed (so that close
/// member ids and addresses spread), the same on every member and build.
fn rendezvous(member: u64, address: IpAddr, port: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&member.to_be_bytes());
    match address {
        IpAddr::V4(a) => eat(&a.octets()),
        IpAddr::V6(a) => eat(&a.octets()),
    }
    eat(&port.to_be_bytes());
    // splitmix64's finaliser.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The members' verdict on one backend from what its probers reported:
/// down when at least one prober says down and none says up. A prober that
/// has not reported yet (just assigned) has no say either way, so a
/// member's death, which hands its backends to another, does not bring a
/// dead backend back while the new prober makes up its mind; a member
/// whose own path to the backend is broken is outvoted by one that
/// reaches it.
pub fn verdict(probers: &[u64], seen: Option<&BTreeMap<u64, HealthSeen>>) -> bool {
    let Some(seen) = seen else { return false };
    let mut down = false;
    for p in probers {
        match seen.get(p) {
            Some(s) if s.down => down = true,
            Some(_) => return false,
            None => {}
        }
    }
    down
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(entries: &[(u64, bool)]) -> BTreeMap<u64, HealthSeen> {
        entries
            .iter()
            .map(|(m, down)| {
                (
                    *m,
                    HealthSeen {
                        down: *down,
                        since_unix_ms: 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn down_needs_one_prober_saying_so_and_none_saying_up() {
        assert!(!verdict(&[1, 2], None));
        assert!(verdict(&[1, 2], Some(&seen(&[(1, true)]))));
        assert!(verdict(&[1, 2], Some(&seen(&[(1, true), (2, true)]))));
        // One member's broken path: the other reaches the backend.
        assert!(!verdict(&[1, 2], Some(&seen(&[(1, true), (2, false)]))));
        // A member that no longer probes it has no say.
        assert!(!verdict(&[2, 3], Some(&seen(&[(1, true)]))));
        assert!(verdict(&[2, 3], Some(&seen(&[(1, false), (3, true)]))));
    }

    #[test]
    fn probers_are_two_spread_evenly_and_stable_when_a_member_leaves() {
        let three: BTreeSet<u64> = [1, 2, 3].into();
        let mut load: BTreeMap<u64, usize> = BTreeMap::new();
        let mut moved = 0;
        for i in 0..3000u32 {
            let address = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            let p = probers_of(&three, address, 8080);
            assert_eq!(p.len(), 2);
            assert_ne!(p[0], p[1]);
            for m in &p {
                *load.entry(*m).or_default() += 1;
            }
            // Member 3 gone: a backend keeps its probers other than 3.
            let two = probers_of(&[1, 2].into(), address, 8080);
            for m in p.iter().filter(|m| **m != 3) {
                assert!(two.contains(m));
            }
            if !p.contains(&3) {
                assert_eq!(two.len(), p.len());
            } else {
                moved += 1;
            }
        }
        // Each member probes about two thirds of 3,000 backends.
        for (m, n) in &load {
            assert!((1800..2200).contains(n), "member {m} probes {n}");
        }
        assert!((1800..2200).contains(&moved));
        assert_eq!(probers_of(&[7].into(), IpAddr::from([10, 0, 0, 1]), 1), [7]);
        assert!(probers_of(&BTreeSet::new(), IpAddr::from([10, 0, 0, 1]), 1).is_empty());
    }

    #[test]
    fn settings_that_cannot_work_name_the_setting() {
        let good = HealthCheck {
            kind: ProbeKind::Tcp,
            port: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            on_down: OnDown::Drain,
        };
        assert_eq!(good.problem(), None);
        let field = |h: HealthCheck| h.problem().map(|(f, _)| f);
        assert_eq!(
            field(HealthCheck {
                timeout: Duration::from_secs(2),
                ..good.clone()
            }),
            Some("timeout")
        );
        assert_eq!(
            field(HealthCheck {
                interval: Duration::from_millis(10),
                ..good.clone()
            }),
            Some("interval")
        );
        assert_eq!(
            field(HealthCheck {
                fall: 0,
                ..good.clone()
            }),
            Some("fall")
        );
        assert_eq!(
            field(HealthCheck {
                kind: ProbeKind::Http {
                    tls: false,
                    method: "GET".into(),
                    path: "/x y".into(),
                    host: String::new(),
                    expect_status: vec![],
                    expect_body: None,
                },
                ..good.clone()
            }),
            Some("path")
        );
        assert_eq!(
            field(HealthCheck {
                kind: ProbeKind::Udp {
                    send: vec![],
                    expect: vec![]
                },
                ..good
            }),
            Some("send")
        );
    }
}
