//! The last two steps between "this member owns the VIP" and the network
//! hearing it, both pure (what they need of time comes in):
//!
//! - `AnnounceGate`: a VIP is announced only once the dataplane has
//!   programmed the state that gave it (its synced revision), so a member
//!   never attracts traffic for a service its kernel does not have yet; it
//!   is withdrawn at once.
//! - `Linger`: in BGP owner mode, a VIP that moved away stays announced a
//!   little longer while the lease holds (make before break: the new
//!   owner's route is up before the old one goes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Holds back each VIP that is to be announced until the dataplane has
/// synced the state revision current when it was first wanted.
#[derive(Debug, Default)]
pub struct AnnounceGate {
    wanted: Arc<BTreeSet<IpAddr>>,
    waiting: BTreeMap<IpAddr, u64>,
    published: Arc<BTreeSet<IpAddr>>,
}

impl AnnounceGate {
    /// The set to announce when it changed: `wanted` now, the state's
    /// `revision` now, and the revision the dataplane has synced (None
    /// before its first sync).
    pub fn update(
        &mut self,
        wanted: Arc<BTreeSet<IpAddr>>,
        revision: u64,
        synced: Option<u64>,
    ) -> Option<Arc<BTreeSet<IpAddr>>> {
        // Copied only when something changes (most wakes are a sync with
        // nothing waiting).
        let mut published: Option<BTreeSet<IpAddr>> = None;
        // The wanted set is shared, and kept, while it does not change:
        // comparing it costs O(VIPs) only when it did.
        if !Arc::ptr_eq(&wanted, &self.wanted) && *wanted != *self.wanted {
            let mut now = (*self.published).clone();
            now.retain(|v| wanted.contains(v));
            self.waiting.retain(|v, _| wanted.contains(v));
            for v in wanted.iter() {
                if !now.contains(v) {
                    self.waiting.entry(*v).or_insert(revision);
                }
            }
            published = Some(now);
        }
        self.wanted = wanted;
        if let Some(synced) = synced {
            let ready: Vec<IpAddr> = self
                .waiting
                .iter()
                .filter(|(_, needed)| **needed <= synced)
                .map(|(v, _)| *v)
                .collect();
            if !ready.is_empty() {
                let now = published.get_or_insert_with(|| (*self.published).clone());
                for v in ready {
                    self.waiting.remove(&v);
                    now.insert(v);
                }
            }
        }
        let published = published?;
        if published == *self.published {
            return None;
        }
        self.published = Arc::new(published);
        Some(self.published.clone())
    }

    /// Whether a wanted VIP is still held back.
    pub fn holds_back(&self) -> bool {
        !self.waiting.is_empty()
    }
}

/// VIPs that moved away while this member's lease holds, announced until
/// their time is up (BGP owner mode's make before break).
#[derive(Debug)]
pub struct Linger {
    length: Duration,
    until: BTreeMap<IpAddr, Instant>,
    previous: Arc<BTreeSet<IpAddr>>,
}

impl Linger {
    /// VIPs linger `length` after they moved away (zero: never).
    pub fn new(length: Duration) -> Linger {
        Linger {
            length,
            until: BTreeMap::new(),
            previous: Arc::default(),
        }
    }

    /// The VIPs announced besides `current` at `now`: those that left it
    /// less than `length` ago, while the `lease` held throughout. Lingering
    /// needs the lease, not the right to take VIPs: a drained or leaving
    /// member hands its VIPs over make before break too; one that lost its
    /// lease withdraws everything at once.
    pub fn update(
        &mut self,
        current: &Arc<BTreeSet<IpAddr>>,
        lease: bool,
        now: Instant,
    ) -> impl Iterator<Item = &IpAddr> {
        if lease && !self.length.is_zero() {
            // Most wakes are the lease moving on, with the same set.
            if !Arc::ptr_eq(&self.previous, current) {
                for gone in self.previous.difference(current) {
                    self.until.entry(*gone).or_insert(now + self.length);
                }
            }
            self.until
                .retain(|ip, end| *end > now && !current.contains(ip));
        } else {
            self.until.clear();
        }
        self.previous = current.clone();
        self.until.keys()
    }

    /// When the next lingering VIP's time is up.
    pub fn next_end(&self) -> Option<Instant> {
        self.until.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(vips: &[&str]) -> Arc<BTreeSet<IpAddr>> {
        Arc::new(vips.iter().map(|v| v.parse().expect("address")).collect())
    }

    #[test]
    fn a_vip_is_announced_once_the_dataplane_synced_the_state_that_gave_it() {
        let mut gate = AnnounceGate::default();
        // Wanted at revision 7, before the dataplane's first sync: held.
        assert_eq!(gate.update(set(&["10.0.0.1"]), 7, None), None);
        assert!(gate.holds_back());
        // A sync of an older revision does not release it.
        assert_eq!(gate.update(set(&["10.0.0.1"]), 8, Some(6)), None);
        // Revision 7 synced: announced.
        assert_eq!(
            gate.update(set(&["10.0.0.1"]), 8, Some(7)),
            Some(set(&["10.0.0.1"]))
        );
        assert!(!gate.holds_back());
        // A second VIP waits for its own revision; the first stays.
        assert_eq!(
            gate.update(set(&["10.0.0.1", "10.0.0.2"]), 9, Some(8)),
            None
        );
        assert_eq!(
            gate.update(set(&["10.0.0.1", "10.0.0.2"]), 9, Some(9)),
            Some(set(&["10.0.0.1", "10.0.0.2"]))
        );
        // Withdrawn at once, whatever the dataplane did.
        assert_eq!(
            gate.update(set(&["10.0.0.2"]), 10, Some(9)),
            Some(set(&["10.0.0.2"]))
        );
        // Wanted again: waits again, for the revision current now.
        assert_eq!(
            gate.update(set(&["10.0.0.1", "10.0.0.2"]), 12, Some(11)),
            None
        );
        assert_eq!(
            gate.update(set(&["10.0.0.1", "10.0.0.2"]), 12, Some(12)),
            Some(set(&["10.0.0.1", "10.0.0.2"]))
        );
        // Nothing changed: nothing to send.
        assert_eq!(
            gate.update(set(&["10.0.0.1", "10.0.0.2"]), 13, Some(13)),
            None
        );
    }

    fn lingering(
        l: &mut Linger,
        current: &Arc<BTreeSet<IpAddr>>,
        lease: bool,
        at: Instant,
    ) -> Vec<String> {
        l.update(current, lease, at)
            .map(|ip| ip.to_string())
            .collect()
    }

    #[test]
    fn a_vip_that_moved_away_lingers_while_the_lease_holds() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = Linger::new(2 * s);
        let both = set(&["10.0.0.1", "10.0.0.2"]);
        let one = set(&["10.0.0.2"]);
        assert!(lingering(&mut l, &both, true, t0).is_empty());
        // 10.0.0.1 moved away: announced on for two seconds.
        assert_eq!(lingering(&mut l, &one, true, t0 + s), ["10.0.0.1"]);
        assert_eq!(l.next_end(), Some(t0 + 3 * s));
        assert_eq!(lingering(&mut l, &one, true, t0 + 2 * s), ["10.0.0.1"]);
        assert!(lingering(&mut l, &one, true, t0 + 3 * s).is_empty());
        assert_eq!(l.next_end(), None);
        // Moved away and back: announced as its own, not lingering.
        assert_eq!(lingering(&mut l, &set(&[]), true, t0 + 4 * s), ["10.0.0.2"]);
        assert!(lingering(&mut l, &one, true, t0 + 4 * s).is_empty());
        // The lease lapsed: nothing lingers, at once.
        assert_eq!(lingering(&mut l, &set(&[]), true, t0 + 5 * s), ["10.0.0.2"]);
        assert!(lingering(&mut l, &set(&[]), false, t0 + 5 * s).is_empty());
        // A zero linger never lingers.
        let mut never = Linger::new(Duration::ZERO);
        assert!(lingering(&mut never, &both, true, t0).is_empty());
        assert!(lingering(&mut never, &one, true, t0 + s).is_empty());
    }
}
