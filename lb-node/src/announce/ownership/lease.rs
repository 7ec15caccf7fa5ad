//! The VIP lease: whether a member may go on announcing, counted from
//! what its peers heard of it, whoever leads.
//!
//! Every member tells every other, a few times per lease (the Raft
//! messages it sends anyway, and a beat every heartbeat): its clock (an
//! incarnation and a tick), the latest clock reading it received from the
//! receiver (the echo), and which members it heard within its own lease
//! (its view). A member's lease holds while a majority of the voters (it
//! included) echoed one of its ticks within the lease: it was heard, and
//! heard back, by a quorum. The leader is one voter among others: an
//! election does not end anybody's lease.
//!
//! The other side of the lease is revocation: a member's lease must have
//! lapsed when so many other voters have not heard it for a full lease
//! that the ones left cannot make a quorum with it. Each voter knows its
//! own silence and learns the others' from their views; a leader moves a
//! VIP from a silent owner only once its lease must have lapsed
//! (`lapsed`), however long the leader itself has not heard it.
//!
//! Both sides assume the members' ticks run at the same rate (as the
//! election timeout already does): a lease of `length` ticks counted from
//! when the member sent what was echoed ends no later than `length` ticks
//! after the echoing peer last heard it.
//!
//! Pure: ticks in, answers out; no clock, no I/O.

use std::collections::BTreeMap;

/// One member's knowledge of its peers, for its lease and theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    /// The lease, in ticks (the election timeout).
    length: u64,
    /// Per peer: the latest of this member's ticks the peer echoed.
    confirmed: BTreeMap<u64, u64>,
    /// Per peer: this member's tick when it last heard from the peer.
    heard: BTreeMap<u64, u64>,
    /// Per peer: the members it said it heard within its lease, and this
    /// member's tick when that view arrived.
    views: BTreeMap<u64, (Vec<u64>, u64)>,
}

impl Lease {
    pub fn new(length: u64) -> Lease {
        Lease {
            length,
            ..Lease::default()
        }
    }

    /// A message from `from` arrived at tick `now`; it echoed this
    /// member's tick `echoed` (when the echo is of this member's current
    /// run) and said it heard `view` within its lease (when it said).
    /// Returns whether its view changed.
    pub fn heard(
        &mut self,
        from: u64,
        now: u64,
        echoed: Option<u64>,
        view: Option<&[u64]>,
    ) -> bool {
        self.heard.insert(from, now);
        if let Some(t) = echoed.filter(|t| *t <= now) {
            let c = self.confirmed.entry(from).or_default();
            *c = (*c).max(t);
        }
        let Some(v) = view else { return false };
        let changed = self
            .views
            .get(&from)
            .is_none_or(|(old, _)| old.as_slice() != v);
        self.views.insert(from, (v.to_vec(), now));
        changed
    }

    /// Forgets a member (removed from the cluster, or restarted: its old
    /// run's echoes mean nothing to its new one).
    pub fn forget(&mut self, member: u64) {
        self.confirmed.remove(&member);
        self.heard.remove(&member);
        self.views.remove(&member);
    }

    /// Forgets every echo of this member's ticks (this member restarted
    /// its clock).
    pub fn forget_echoes(&mut self) {
        self.confirmed.clear();
    }

    fn quorum(voters: &[u64]) -> usize {
        voters.len() / 2 + 1
    }

    /// Whether `me`'s lease holds at tick `now`: a quorum of `voters`
    /// (`me` counts if it is one) echoed one of its ticks within the lease.
    pub fn holds(&self, me: u64, voters: &[u64], now: u64) -> bool {
        self.until(me, voters, now).is_some()
    }

    /// The last tick at which `me`'s lease holds without news, or None
    /// when it does not hold now.
    pub fn until(&self, me: u64, voters: &[u64], now: u64) -> Option<u64> {
        if voters.is_empty() {
            return None;
        }
        let mut needed = Self::quorum(voters);
        if voters.contains(&me) {
            needed -= 1;
        }
        if needed == 0 {
            // A cluster of one: its own quorum.
            return Some(u64::MAX);
        }
        let mut echoes: Vec<u64> = voters
            .iter()
            .filter(|v| **v != me)
            .filter_map(|v| self.confirmed.get(v).copied())
            .collect();
        echoes.sort_unstable_by(|a, b| b.cmp(a));
        let t = *echoes.get(needed - 1)?;
        let end = t + self.length;
        (now <= end).then_some(end)
    }

    /// The members this member heard within the lease at tick `now`: its
    /// view, sent to the others.
    pub fn view(&self, now: u64) -> Vec<u64> {
        self.heard
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) <= self.length)
            .map(|(m, _)| *m)
            .collect()
    }

    /// Whether `peer` echoed one of this member's ticks within the lease:
    /// heard and heard back.
    pub fn echoed_by(&self, peer: u64, now: u64) -> bool {
        self.confirmed
            .get(&peer)
            .is_some_and(|t| now.saturating_sub(*t) <= self.length)
    }

    /// Per voter other than `me`: ticks since this member heard it, and
    /// since the tick of this member's it last echoed (None: never), at
    /// tick `now`. What a lapsed lease is told with.
    pub fn ages(&self, me: u64, voters: &[u64], now: u64) -> Vec<(u64, Option<u64>, Option<u64>)> {
        voters
            .iter()
            .filter(|v| **v != me)
            .map(|v| {
                let since = |t: Option<&u64>| t.map(|t| now.saturating_sub(*t));
                (*v, since(self.heard.get(v)), since(self.confirmed.get(v)))
            })
            .collect()
    }

    /// How many ticks this member has not heard `member` for (forever:
    /// never heard).
    pub fn silent_for(&self, member: u64, now: u64) -> u64 {
        self.heard
            .get(&member)
            .map_or(u64::MAX, |t| now.saturating_sub(*t))
    }

    /// Whether this member has heard `member` within the lease.
    pub fn hears(&self, member: u64, now: u64) -> bool {
        self.heard
            .get(&member)
            .is_some_and(|t| now.saturating_sub(*t) <= self.length)
    }

    /// Whether `member`'s lease must have lapsed by tick `now`, as `me`
    /// knows: so many voters other than it have not heard it for a full
    /// lease (`me` by its own ear, the others by their views received
    /// within the lease) that those left cannot make a quorum (with it,
    /// when it votes: a learner's lease is the voters' echoes alone).
    /// Whether `member` belongs to the configuration at all is the
    /// caller's to check.
    pub fn lapsed(&self, me: u64, member: u64, voters: &[u64], now: u64) -> bool {
        let others: Vec<u64> = voters.iter().copied().filter(|v| *v != member).collect();
        let silent = others
            .iter()
            .filter(|x| {
                if **x == me {
                    !self.hears(member, now)
                } else {
                    self.views.get(x).is_some_and(|(heard, at)| {
                        now.saturating_sub(*at) <= self.length && !heard.contains(&member)
                    })
                }
            })
            .count();
        // At most this many others can still echo it, plus itself if it
        // votes.
        let itself = usize::from(voters.contains(&member));
        others.len() - silent + itself < Self::quorum(voters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOTERS: [u64; 3] = [1, 2, 3];

    #[test]
    fn a_lease_holds_on_a_quorum_of_echoes_whoever_leads() {
        let mut l = Lease::new(10);
        assert!(!l.holds(1, &VOTERS, 0), "nobody heard it yet");
        // Member 2 (a follower, not the leader) echoed tick 5.
        l.heard(2, 6, Some(5), Some(&[1, 3]));
        assert_eq!(l.until(1, &VOTERS, 6), Some(15));
        assert!(l.holds(1, &VOTERS, 15));
        assert!(
            !l.holds(1, &VOTERS, 16),
            "lapsed a full lease after the echoed tick"
        );
        // An echo of a tick not reached yet (another run's) is ignored.
        l.heard(3, 16, Some(99), None);
        assert!(!l.holds(1, &VOTERS, 16));
        l.heard(3, 17, Some(17), None);
        assert_eq!(l.until(1, &VOTERS, 17), Some(27));
    }

    #[test]
    fn five_voters_need_two_echoes_and_a_lone_member_its_own() {
        let voters = [1, 2, 3, 4, 5];
        let mut l = Lease::new(10);
        l.heard(2, 3, Some(3), None);
        assert!(!l.holds(1, &voters, 3));
        l.heard(5, 4, Some(1), None);
        assert_eq!(
            l.until(1, &voters, 4),
            Some(11),
            "the older of the two echoes"
        );
        assert_eq!(Lease::new(10).until(7, &[7], 1_000), Some(u64::MAX));
        assert!(!Lease::new(10).holds(7, &[], 0));
    }

    #[test]
    fn a_silent_member_lapsed_only_once_the_others_cannot_make_its_quorum() {
        let mut l = Lease::new(10);
        // Member 1 (this one) last heard 3 at tick 0.
        l.heard(3, 0, None, None);
        l.heard(2, 12, None, Some(&[1, 3]));
        assert!(
            !l.lapsed(1, 3, &VOTERS, 12),
            "2 still hears 3: 3 and 2 are a quorum"
        );
        l.heard(2, 14, None, Some(&[1]));
        assert!(l.lapsed(1, 3, &VOTERS, 14));
        // A view older than a lease says nothing.
        assert!(!l.lapsed(1, 3, &VOTERS, 25));
        // This member hears 3 again.
        l.heard(3, 26, None, None);
        l.heard(2, 26, None, Some(&[1]));
        assert!(!l.lapsed(1, 3, &VOTERS, 26));
    }

    #[test]
    fn a_learners_lease_is_the_voters_echoes_alone() {
        // Member 4 learns: it needs two of the three voters' echoes, and
        // its own ear does not count.
        let mut l = Lease::new(10);
        l.heard(1, 5, Some(4), None);
        assert!(!l.holds(4, &VOTERS, 5), "one voter of three");
        l.heard(2, 6, Some(5), None);
        assert_eq!(l.until(4, &VOTERS, 6), Some(14), "the older echo");
        // Seen from voter 1: 2 and 3 still hear 4, so its lease may hold.
        let mut v = Lease::new(10);
        v.heard(2, 20, None, Some(&[3, 4]));
        v.heard(3, 20, None, Some(&[2, 4]));
        assert!(!v.lapsed(1, 4, &VOTERS, 20));
        // Only 3 hears it now: one voter of three cannot make a quorum,
        // and the learner is not one of its quorum itself (a voter heard
        // by one other voter still has that one and itself).
        v.heard(2, 21, None, Some(&[3]));
        assert!(v.lapsed(1, 4, &VOTERS, 21));
        v.heard(2, 22, None, Some(&[3, 4]));
        assert!(!v.lapsed(1, 4, &VOTERS, 22), "2 hears 4 again");
    }

    #[test]
    fn with_five_voters_three_silent_others_suffice() {
        let voters = [1, 2, 3, 4, 5];
        let mut l = Lease::new(10);
        l.heard(2, 20, None, Some(&[1, 3, 4]));
        l.heard(3, 20, None, Some(&[1, 2, 4]));
        l.heard(4, 20, None, Some(&[1, 2, 3, 5]));
        // 1 (this one, never heard 5), 2 and 3 silent; 4 hears 5: 4 and 5
        // are two of five, no quorum.
        assert!(l.lapsed(1, 5, &voters, 20));
        l.heard(3, 21, None, Some(&[1, 2, 4, 5]));
        assert!(!l.lapsed(1, 5, &voters, 21), "3, 4 and 5 would be a quorum");
    }

    #[test]
    fn the_view_is_who_was_heard_within_the_lease() {
        let mut l = Lease::new(10);
        l.heard(2, 1, None, None);
        l.heard(3, 8, None, None);
        assert_eq!(l.view(11), vec![2, 3]);
        assert_eq!(l.view(12), vec![3]);
        l.forget(3);
        assert!(l.view(12).is_empty());
    }
}
