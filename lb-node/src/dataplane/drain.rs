//! Graceful termination of a removed destination, as a pure state
//! machine: the IPVS dataplane sets its weight to 0 (no new connections,
//! the open ones go on) and deletes it once it has no connection left or
//! its drain time is up. The times and the kernel's connection counts
//! come in; which drains end, and why, comes out.
//!
//! ```text
//!   programmed ──remove (drain > 0)──▶ draining { until } ──┬─ no connection left ─▶ deleted
//!        ▲                                │                 ├─ until passed ────────▶ deleted
//!        └──── added back / updated ──────┘                 └─ gone from the kernel ─▶ forgotten
//! ```
//!
//! Must not: read a clock or talk to the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::dataplane::DestKey;
use crate::model::ServiceKey;

/// Why a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Not in the kernel any more (deleted by hand, or its service): only
    /// forgotten, nothing to delete.
    Gone,
    /// No connection left: delete it.
    Empty,
    /// Its drain time is up, connections or not: delete it.
    TimedOut,
}

impl DrainEnd {
    /// Whether the destination must be deleted now.
    pub fn deletes(self) -> bool {
        !matches!(self, DrainEnd::Gone)
    }

    /// As the log says it.
    pub fn reason(self) -> &'static str {
        match self {
            DrainEnd::Gone => "gone from the kernel",
            DrainEnd::Empty => "no connections left",
            DrainEnd::TimedOut => "drain timeout passed",
        }
    }
}

/// The destinations draining, and when each must go at the latest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drains {
    until: BTreeMap<(ServiceKey, DestKey), Instant>,
}

impl Drains {
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }

    pub fn is_draining(&self, service: &ServiceKey, dest: &DestKey) -> bool {
        self.until.contains_key(&(*service, *dest))
    }

    /// Starts draining `dest` of `service` at `now` for `drain`; false
    /// when it drains already (its deadline stays).
    pub fn start(
        &mut self,
        service: ServiceKey,
        dest: DestKey,
        now: Instant,
        drain: Duration,
    ) -> bool {
        match self.until.entry((service, dest)) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(now + drain);
                true
            }
        }
    }

    /// Ends a drain early: the destination is wanted again (added back,
    /// updated) or was deleted. True when it was draining.
    pub fn stop(&mut self, service: &ServiceKey, dest: &DestKey) -> bool {
        self.until.remove(&(*service, *dest)).is_some()
    }

    /// Forgets every drain of a service that is deleted.
    pub fn stop_service(&mut self, service: &ServiceKey) {
        self.until.retain(|(s, _), _| s != service);
    }

    /// Keeps only the drains `present` says are still in the kernel.
    pub fn retain(&mut self, mut present: impl FnMut(&ServiceKey, &DestKey) -> bool) {
        self.until.retain(|(s, d), _| present(s, d));
    }

    /// The draining destinations.
    pub fn keys(&self) -> impl Iterator<Item = &(ServiceKey, DestKey)> {
        self.until.keys()
    }

    /// The services with a destination draining.
    pub fn services(&self) -> BTreeSet<ServiceKey> {
        self.until.keys().map(|(s, _)| *s).collect()
    }

    /// The drains of `service` that end at `now`, given each destination's
    /// open connections as the kernel counts them (`connections`: None
    /// when the destination is not there); they are no longer draining.
    pub fn finish(
        &mut self,
        service: &ServiceKey,
        connections: impl Fn(&DestKey) -> Option<u64>,
        now: Instant,
    ) -> Vec<(DestKey, DrainEnd)> {
        let ended: Vec<(DestKey, DrainEnd)> = self
            .until
            .range((*service, DestKey::MIN)..)
            .take_while(|((s, _), _)| s == service)
            .filter_map(|((_, d), until)| {
                let end = match connections(d) {
                    None => DrainEnd::Gone,
                    Some(0) => DrainEnd::Empty,
                    Some(_) if now >= *until => DrainEnd::TimedOut,
                    Some(_) => return None,
                };
                Some((*d, end))
            })
            .collect();
        for (d, _) in &ended {
            self.until.remove(&(*service, *d));
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn service(port: u16) -> ServiceKey {
        ServiceKey {
            vip: "192.0.2.10".parse().expect("ip"),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn dest(last: u8) -> DestKey {
        DestKey {
            address: std::net::IpAddr::from([10, 0, 0, last]),
            port: 8080,
        }
    }

    #[test]
    fn a_drain_ends_when_empty_or_when_its_time_is_up() {
        let t0 = Instant::now();
        let (web, other) = (service(80), service(443));
        let mut drains = Drains::default();
        assert!(drains.start(web, dest(1), t0, Duration::from_secs(30)));
        assert!(drains.start(web, dest(2), t0, Duration::from_secs(30)));
        assert!(drains.start(other, dest(1), t0, Duration::from_secs(30)));
        // Started again later: the first deadline stays.
        assert!(!drains.start(
            web,
            dest(1),
            t0 + Duration::from_secs(20),
            Duration::from_secs(30)
        ));
        assert_eq!(drains.services(), BTreeSet::from([web, other]));

        // Both busy before the deadline: nothing ends.
        let busy = |_: &DestKey| Some(3);
        assert!(
            drains
                .finish(&web, busy, t0 + Duration::from_secs(10))
                .is_empty()
        );
        // dest 2 empties: deleted; dest 1 still busy.
        let counts = |d: &DestKey| Some(if *d == dest(2) { 0 } else { 3 });
        assert_eq!(
            drains.finish(&web, counts, t0 + Duration::from_secs(11)),
            vec![(dest(2), DrainEnd::Empty)]
        );
        assert!(!drains.is_draining(&web, &dest(2)));
        // At the deadline, connections or not: deleted.
        let ended = drains.finish(&web, busy, t0 + Duration::from_secs(30));
        assert_eq!(ended, vec![(dest(1), DrainEnd::TimedOut)]);
        assert!(ended[0].1.deletes());
        // The other service's drain was not touched.
        assert!(drains.is_draining(&other, &dest(1)));
    }

    #[test]
    fn a_destination_gone_from_the_kernel_is_forgotten_not_deleted() {
        let t0 = Instant::now();
        let mut drains = Drains::default();
        drains.start(service(80), dest(1), t0, Duration::from_secs(30));
        let ended = drains.finish(&service(80), |_| None, t0);
        assert_eq!(ended, vec![(dest(1), DrainEnd::Gone)]);
        assert!(!ended[0].1.deletes());
        assert!(drains.is_empty());
    }

    #[test]
    fn a_destination_back_before_its_drain_ended_stops_draining() {
        let t0 = Instant::now();
        let mut drains = Drains::default();
        drains.start(service(80), dest(1), t0, Duration::from_secs(30));
        drains.start(service(80), dest(2), t0, Duration::from_secs(30));
        drains.start(service(443), dest(1), t0, Duration::from_secs(30));
        assert!(drains.stop(&service(80), &dest(1)));
        assert!(!drains.stop(&service(80), &dest(1)), "once");
        // Its service deleted: every drain of it forgotten.
        drains.stop_service(&service(80));
        assert_eq!(
            drains.keys().copied().collect::<Vec<_>>(),
            vec![(service(443), dest(1))]
        );
        // A dump that no longer has it: forgotten too.
        drains.retain(|_, _| false);
        assert!(drains.is_empty());
    }
}
