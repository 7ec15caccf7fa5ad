//! Which member announces which VIP: a pure function of the VIPs, the
//! members that may own one, and the current owners.
//!
//! - **One owner each**: every VIP gets exactly one eligible owner (none when
//!   no member is eligible).
//! - **Balanced**: owners' VIP counts differ by at most one.
//! - **Sticky**: a VIP keeps its owner while that owner is eligible and not
//!   above its fair share; so a member joining takes only its share, a member
//!   leaving gives up only its own VIPs, and nothing moves when nothing
//!   changed. Every move is a failover of that VIP, so fewer is better.
//!
//! The leader computes this and commits the result; members only read it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::State;

/// Which addresses are announced one by one, and so get an owner: every
/// VIP of the table outside the service CIDRs (those are announced whole:
/// BGP aggregates from every healthy member, or L2 gateways), plus the
/// service gateways, which no service uses but which are owned and fail
/// over like VIPs. The same on every member (it comes from
/// `[announce]`, which must agree across the cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceScope {
    /// Announced as whole networks: the Kubernetes service CIDRs.
    pub aggregates: Vec<IpNet>,
    /// Announced like VIPs although no service uses them.
    pub gateways: BTreeSet<IpAddr>,
}

impl AnnounceScope {
    /// The addresses of `state` announced one by one.
    pub fn vips(&self, state: &State) -> BTreeSet<IpAddr> {
        let mut vips = state.vips();
        if !self.aggregates.is_empty() {
            vips.retain(|vip| !self.aggregates.iter().any(|n| n.contains(vip)));
        }
        vips.extend(self.gateways.iter().copied());
        vips
    }
}

/// The owners after a change; see the module docs for the promises.
pub fn assign_owners(
    vips: &BTreeSet<IpAddr>,
    eligible: &BTreeSet<u64>,
    current: &BTreeMap<IpAddr, u64>,
) -> BTreeMap<IpAddr, u64> {
    let mut owners = BTreeMap::new();
    if eligible.is_empty() {
        return owners;
    }
    let members = eligible.len();
    // `extra` members may hold one more than `base`.
    let base = vips.len() / members;
    let mut extra = vips.len() % members;
    let mut load: BTreeMap<u64, usize> = eligible.iter().map(|m| (*m, 0)).collect();
    // Keep current owners, up to their fair share, in VIP order.
    let mut unowned = Vec::new();
    for vip in vips {
        match current
            .get(vip)
            .and_then(|m| load.get_mut(m).map(|l| (*m, l)))
        {
            Some((member, count)) if *count < base || (*count == base && extra > 0) => {
                if *count == base {
                    extra -= 1;
                }
                *count += 1;
                owners.insert(*vip, member);
            }
            _ => unowned.push(*vip),
        }
    }
    // The rest to the least loaded members (lowest id first on a tie).
    for vip in unowned {
        // The shares add up to the VIP count, so a member with room is
        // always found; the least loaded of all is only a fallback.
        let with_room = load
            .iter()
            .filter(|(_, c)| **c < base || (**c == base && extra > 0))
            .min_by_key(|(m, c)| (**c, **m))
            .map(|(m, _)| *m);
        let Some(member) =
            with_room.or_else(|| load.iter().min_by_key(|(m, c)| (**c, **m)).map(|(m, _)| *m))
        else {
            break;
        };
        let count = load.entry(member).or_default();
        if *count == base && extra > 0 {
            extra -= 1;
        }
        *count += 1;
        owners.insert(vip, member);
    }
    owners
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn vips(n: u32) -> BTreeSet<IpAddr> {
        (0..n)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)))
            .collect()
    }

    fn members(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn counts(owners: &BTreeMap<IpAddr, u64>) -> BTreeMap<u64, usize> {
        let mut c = BTreeMap::new();
        for m in owners.values() {
            *c.entry(*m).or_default() += 1;
        }
        c
    }

    fn moved(a: &BTreeMap<IpAddr, u64>, b: &BTreeMap<IpAddr, u64>) -> usize {
        a.iter()
            .filter(|(v, m)| b.get(v).is_some_and(|n| n != *m))
            .count()
    }

    proptest! {
        #[test]
        fn one_eligible_owner_each_and_balanced(
            n in 0u32..40,
            eligible in prop::collection::btree_set(1u64..8, 0..6),
            current in prop::collection::btree_map(0u32..40, 1u64..10, 0..40),
        ) {
            let vips = vips(n);
            let current = current.into_iter().map(|(v, m)| (IpAddr::V4(Ipv4Addr::from(0xc000_0200 + v)), m)).collect();
            let owners = assign_owners(&vips, &eligible, &current);
            if eligible.is_empty() {
                prop_assert!(owners.is_empty());
            } else {
                prop_assert_eq!(&owners.keys().copied().collect::<BTreeSet<_>>(), &vips);
                prop_assert!(owners.values().all(|m| eligible.contains(m)));
                let c = counts(&owners);
                let max = c.values().max().copied().unwrap_or(0);
                let min = if c.len() < eligible.len() { 0 } else { c.values().min().copied().unwrap_or(0) };
                prop_assert!(max - min <= 1, "unbalanced: {c:?}");
                // Nothing moves when nothing changes.
                prop_assert_eq!(assign_owners(&vips, &eligible, &owners), owners);
            }
        }

        #[test]
        fn a_joining_member_takes_only_its_share(n in 1u32..60, m in 1u64..6) {
            let vips = vips(n);
            let before = assign_owners(&vips, &(1..=m).collect(), &BTreeMap::new());
            let after = assign_owners(&vips, &(1..=m + 1).collect(), &before);
            let share = (n as usize).div_ceil(m as usize + 1);
            prop_assert!(moved(&before, &after) <= share, "{} moved for a share of {share}", moved(&before, &after));
            prop_assert!(after.values().all(|o| *o != m + 1) || moved(&before, &after) > 0);
        }

        #[test]
        fn a_leaving_member_gives_up_only_its_own(n in 1u32..60, m in 2u64..7, leaving in 1u64..7) {
            let leaving = 1 + (leaving - 1) % m;
            let vips = vips(n);
            let all: BTreeSet<u64> = (1..=m).collect();
            let before = assign_owners(&vips, &all, &BTreeMap::new());
            let rest: BTreeSet<u64> = all.iter().copied().filter(|x| *x != leaving).collect();
            let after = assign_owners(&vips, &rest, &before);
            for (vip, owner) in &before {
                if *owner != leaving {
                    prop_assert_eq!(after.get(vip), Some(owner), "{} moved although its owner stayed", vip);
                }
            }
        }
    }

    #[test]
    fn a_drained_member_owns_nothing() {
        let vips = vips(6);
        let before = assign_owners(&vips, &members(&[1, 2, 3]), &BTreeMap::new());
        assert_eq!(counts(&before), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
        let after = assign_owners(&vips, &members(&[1, 3]), &before);
        assert_eq!(counts(&after), BTreeMap::from([(1, 3), (3, 3)]));
        assert_eq!(moved(&before, &after), 2, "only member 2's two VIPs move");
    }
}
