//! The life of a VIP in the L2 announcer, as a pure state machine: the
//! times come in, the changes to make come out, and `l2::run` makes them
//! (the ARP answer sets, the VIP's address, gratuitous ARP).
//!
//! ```text
//!            take (address added)            withdraw
//!   (gone) ──────────────────────▶ answering ─────────▶ lingering { until }
//!      ▲                              ▲                    │   │
//!      │  expire (until passed:       └── take (no address │   │
//!      │  address removed)                change: still    │   │
//!      └───────────────────────────────── local) ──────────┘   │
//!      └───────────────────────────────────────────────────────┘
//! ```
//!
//! A withdrawn VIP stops being answered at once, but stays local
//! (answering only the ARP probes that look for its holder), so that
//! clients whose ARP caches still point here are served until the new
//! owner's gratuitous ARP reaches them: for `linger` after another member
//! is heard announcing it, at least `linger` after the withdrawal, and at
//! most `UNREPLACED` while nobody is heard announcing it (a lease that
//! lapsed on a stalled member: the next owner announces only once the
//! lease must have ended and the leader gave the VIP away, which takes
//! longer than `linger`). Taken back while it lingers, it is answered
//! again without touching its address.
//!
//! Must not: read a clock or talk to the kernel or the network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How long a withdrawn VIP stays local at most while no other member is
/// heard announcing it (with a non-zero `linger`; at least `linger`).
pub const UNREPLACED: Duration = Duration::from_secs(30);

/// Where each VIP of the announcer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Vips {
    linger: Duration,
    answering: BTreeSet<IpAddr>,
    /// Withdrawn VIPs still local.
    lingering: BTreeMap<IpAddr, Lingering>,
}

/// A withdrawn VIP still local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lingering {
    since: Instant,
    until: Instant,
    /// Another member was heard announcing it.
    replaced: bool,
}

/// What taking a VIP needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// The VIP is not local (it was not lingering): add its address.
    pub add_address: bool,
}

impl L2Vips {
    pub fn new(linger: Duration) -> L2Vips {
        L2Vips {
            linger,
            answering: BTreeSet::new(),
            lingering: BTreeMap::new(),
        }
    }

    /// The VIPs answered now.
    pub fn answering(&self) -> &BTreeSet<IpAddr> {
        &self.answering
    }

    /// Withdraws every answered VIP not in `wanted`: from `now` it lingers
    /// until another member is heard announcing it (`replaced`), at most
    /// `UNREPLACED`. Returns the VIPs withdrawn (stop answering them, keep
    /// answering their holder probes).
    pub fn withdraw_unwanted(&mut self, wanted: &BTreeSet<IpAddr>, now: Instant) -> Vec<IpAddr> {
        let gone: Vec<IpAddr> = self.answering.difference(wanted).copied().collect();
        let most = if self.linger.is_zero() {
            Duration::ZERO
        } else {
            self.linger.max(UNREPLACED)
        };
        for vip in &gone {
            self.answering.remove(vip);
            self.lingering.insert(
                *vip,
                Lingering {
                    since: now,
                    until: now + most,
                    replaced: false,
                },
            );
        }
        gone
    }

    /// Another member was heard announcing `vip` (by `now`): if it
    /// lingers, it stays local for `linger` more (clients move as that
    /// gratuitous ARP reaches them; the new owner hands this member's
    /// flows back for as long), at least `linger` after its withdrawal.
    /// Returns whether that shortened its stay.
    pub fn replaced(&mut self, vip: IpAddr, now: Instant) -> bool {
        let Some(l) = self.lingering.get_mut(&vip).filter(|l| !l.replaced) else {
            return false;
        };
        l.replaced = true;
        let until = l.until.min((l.since + self.linger).max(now + self.linger));
        let shorter = until < l.until;
        l.until = until;
        shorter
    }

    /// The lingering VIPs no other member was heard announcing yet.
    pub fn unreplaced(&self) -> Vec<IpAddr> {
        self.lingering
            .iter()
            .filter(|(_, l)| !l.replaced)
            .map(|(vip, _)| *vip)
            .collect()
    }

    /// The lingering VIPs whose time is up at `now`: no longer local
    /// (remove their addresses).
    pub fn expire(&mut self, now: Instant) -> Vec<IpAddr> {
        let done: Vec<IpAddr> = self
            .lingering
            .iter()
            .filter(|(_, l)| l.until <= now)
            .map(|(vip, _)| *vip)
            .collect();
        for vip in &done {
            self.lingering.remove(vip);
        }
        done
    }

    /// The VIPs of `wanted` not answered yet.
    pub fn to_take(&self, wanted: &BTreeSet<IpAddr>) -> Vec<IpAddr> {
        wanted.difference(&self.answering).copied().collect()
    }

    /// Answers `vip` from now on.
    pub fn take(&mut self, vip: IpAddr) -> Take {
        let still_local = self.lingering.remove(&vip).is_some();
        self.answering.insert(vip);
        Take {
            add_address: !still_local,
        }
    }

    /// When the next lingering VIP's time is up.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.lingering.values().map(|l| l.until).min()
    }

    /// Shutdown: every VIP that is local (answered or lingering), all of
    /// them now gone.
    pub fn withdraw_all(&mut self) -> Vec<IpAddr> {
        let all: Vec<IpAddr> = self
            .answering
            .iter()
            .chain(self.lingering.keys())
            .copied()
            .collect();
        self.answering.clear();
        self.lingering.clear();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn set(vips: &[&str]) -> BTreeSet<IpAddr> {
        vips.iter().map(|s| ip(s)).collect()
    }

    #[test]
    fn a_vip_taken_then_withdrawn_lingers_then_goes() {
        let t0 = Instant::now();
        let mut vips = L2Vips::new(Duration::from_secs(2));
        let wanted = set(&["10.0.0.1", "10.0.0.2"]);
        assert_eq!(vips.to_take(&wanted), vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        for vip in vips.to_take(&wanted) {
            assert_eq!(vips.take(vip), Take { add_address: true });
        }
        assert_eq!(vips.answering(), &wanted);
        assert!(vips.to_take(&wanted).is_empty());
        assert_eq!(vips.next_expiry(), None);

        // 10.0.0.2 goes elsewhere: no longer answered, still local, and
        // so until another member is heard announcing it.
        let withdrawn = vips.withdraw_unwanted(&set(&["10.0.0.1"]), t0);
        assert_eq!(withdrawn, vec![ip("10.0.0.2")]);
        assert_eq!(vips.answering(), &set(&["10.0.0.1"]));
        assert_eq!(vips.next_expiry(), Some(t0 + UNREPLACED));
        assert_eq!(vips.unreplaced(), vec![ip("10.0.0.2")]);
        // Heard at once (the new owner announced first: a planned move):
        // `linger` from the withdrawal, as before.
        assert!(vips.replaced(ip("10.0.0.2"), t0 + Duration::from_millis(10)));
        assert!(vips.unreplaced().is_empty());
        assert!(
            !vips.replaced(ip("10.0.0.2"), t0 + Duration::from_secs(1)),
            "once"
        );
        assert_eq!(vips.next_expiry(), Some(t0 + Duration::from_millis(2010)));
        assert!(vips.expire(t0 + Duration::from_millis(2009)).is_empty());
        assert_eq!(
            vips.expire(t0 + Duration::from_millis(2010)),
            vec![ip("10.0.0.2")]
        );
        assert_eq!(vips.next_expiry(), None);
        // Gone: taking it again adds its address again.
        assert_eq!(vips.take(ip("10.0.0.2")), Take { add_address: true });
    }

    #[test]
    fn a_vip_nobody_announces_stays_local_until_someone_does_or_at_most_unreplaced() {
        let t0 = Instant::now();
        let linger = Duration::from_secs(2);
        let mut vips = L2Vips::new(linger);
        vips.take(ip("10.0.0.1"));
        vips.take(ip("10.0.0.2"));
        // A lapsed lease: both withdrawn, nobody announces them yet.
        vips.withdraw_unwanted(&BTreeSet::new(), t0);
        assert!(
            vips.expire(t0 + linger * 2).is_empty(),
            "past linger: still local"
        );
        // The next owner of 10.0.0.1 announces 5 s later: local for
        // `linger` more, then gone; 10.0.0.2 is never announced again.
        assert!(vips.replaced(ip("10.0.0.1"), t0 + Duration::from_secs(5)));
        assert_eq!(vips.next_expiry(), Some(t0 + Duration::from_secs(7)));
        assert!(vips.expire(t0 + Duration::from_millis(6999)).is_empty());
        assert_eq!(
            vips.expire(t0 + Duration::from_secs(7)),
            vec![ip("10.0.0.1")]
        );
        assert_eq!(vips.next_expiry(), Some(t0 + UNREPLACED));
        assert!(
            vips.expire(t0 + UNREPLACED - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(vips.expire(t0 + UNREPLACED), vec![ip("10.0.0.2")]);
        // Heard only near the cap: the cap holds.
        vips.take(ip("10.0.0.3"));
        let t1 = t0 + UNREPLACED;
        vips.withdraw_unwanted(&BTreeSet::new(), t1);
        assert!(!vips.replaced(ip("10.0.0.3"), t1 + UNREPLACED - Duration::from_millis(500)));
        assert_eq!(vips.next_expiry(), Some(t1 + UNREPLACED));
    }

    #[test]
    fn a_vip_taken_back_while_it_lingers_keeps_its_address() {
        let t0 = Instant::now();
        let mut vips = L2Vips::new(Duration::from_secs(2));
        vips.take(ip("10.0.0.1"));
        vips.withdraw_unwanted(&BTreeSet::new(), t0);
        assert_eq!(vips.take(ip("10.0.0.1")), Take { add_address: false });
        assert_eq!(vips.next_expiry(), None, "no longer lingering");
        // Its old deadline does not remove it.
        assert!(vips.expire(t0 + Duration::from_secs(3)).is_empty());
        assert_eq!(vips.answering(), &set(&["10.0.0.1"]));
    }

    #[test]
    fn without_linger_a_withdrawn_vip_goes_in_the_same_round() {
        let t0 = Instant::now();
        let mut vips = L2Vips::new(Duration::ZERO);
        vips.take(ip("fd00::1"));
        assert_eq!(
            vips.withdraw_unwanted(&BTreeSet::new(), t0),
            vec![ip("fd00::1")]
        );
        assert_eq!(vips.expire(t0), vec![ip("fd00::1")]);
        assert!(vips.withdraw_all().is_empty());
    }

    #[test]
    fn shutdown_withdraws_the_answered_and_the_lingering() {
        let t0 = Instant::now();
        let mut vips = L2Vips::new(Duration::from_secs(5));
        vips.take(ip("10.0.0.1"));
        vips.take(ip("10.0.0.2"));
        vips.withdraw_unwanted(&set(&["10.0.0.1"]), t0);
        assert_eq!(vips.withdraw_all(), vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        assert!(vips.answering().is_empty());
        assert_eq!(vips.next_expiry(), None);
    }
}
