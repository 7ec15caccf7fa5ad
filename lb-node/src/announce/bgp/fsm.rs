//! One BGP session of the announce-only speaker as a state machine
//! (RFC 4271 §8, the part an announce-only speaker needs): events in,
//! actions out. No socket, no clock: the session task (`mod.rs`) turns
//! bytes and timers into `Event`s and carries the `Action`s out, and the
//! tests drive it message by message.
//!
//! ```text
//!   Connected ──▶ OpenSent ──OPEN──▶ OpenConfirm ──KEEPALIVE──▶ Established
//!                    │                    │                         │
//!                    └── anything else, a NOTIFICATION, an error ───┴──▶ closed
//! ```
//!
//! What it negotiates from the peer's OPEN: the hold time (the smaller of
//! both), the address families both sides announced (IPv4 unicast alone
//! when the peer announced none: RFC 4760), whether the peer takes
//! four-octet ASNs (without, AS_PATH carries AS_TRANS and the true path
//! goes in AS4_PATH: RFC 6793), and route refresh (RFC 2918: a refresh
//! request is answered with every route again). Only routes of a
//! negotiated family are sent. An unexpected message gets RFC 6608's FSM
//! error for the state; a NOTIFICATION is never answered.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;

use super::codec::{Attributes, DecodeError, GracefulRestart, Message, Open, error};

/// IPv4 and IPv6 unicast, as (AFI, SAFI).
pub const IPV4_UNICAST: (u16, u8) = (1, 1);
pub const IPV6_UNICAST: (u16, u8) = (2, 1);

/// Routes per UPDATE, so that each stays under 4,096 bytes (a /128 takes
/// 17 octets).
const WITHDRAWN_PER_UPDATE: usize = 200;
const ANNOUNCED_PER_UPDATE: usize = 150;

/// Communities one route carries besides the session's own: those of
/// the services on its VIP (a service's `bgp_communities`, or a
/// Kubernetes Service's annotation). Sorted, no duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteTags {
    pub communities: Vec<u32>,
    pub large_communities: Vec<(u32, u32, u32)>,
}

/// What a member announces: each route with its own communities.
pub type Routes = BTreeMap<IpNet, RouteTags>;

/// What one session needs to know of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub peer_as: u32,
    /// Proposed hold time, seconds (0 or at least 3).
    pub hold_time: u16,
    /// Path attributes of every announced route; `as_path`, `next_hop`
    /// and `four_octet` are filled in per session.
    pub attributes: Attributes,
    /// Next hops; `None`: the session's own address when of the family.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Graceful restart (RFC 4724), when on.
    pub graceful_restart: Option<GrConfig>,
}

/// This speaker's side of graceful restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrConfig {
    /// Seconds the peer keeps our routes when the session is lost.
    pub restart_time: u16,
    /// This is the first session since the process started: the R bit.
    pub restarting: bool,
}

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not connected yet.
    Idle,
    OpenSent,
    OpenConfirm,
    Established,
    /// Ended: the task closes the connection.
    Closed,
}

/// What was agreed with the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Seconds; 0: no keepalives and no hold timer.
    pub hold_time: u16,
    pub families: BTreeSet<(u16, u8)>,
    pub four_octet: bool,
    pub route_refresh: bool,
    /// Both sides announced graceful restart: End-of-RIB markers go out,
    /// and a stop leaves the routes to the peer's restart timer.
    pub graceful_restart: bool,
    pub peer_id: Ipv4Addr,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The TCP connection is up; `local` is this end's address.
    Connected {
        local: IpAddr,
    },
    Received(Message),
    /// Bytes from the peer that are not a valid message.
    Malformed(DecodeError),
    HoldTimerExpired,
    /// Time for a KEEPALIVE (a third of the hold time).
    KeepaliveDue,
    /// What this member announces now.
    Routes(Arc<Routes>),
    /// A clean stop: withdraw everything, say goodbye; with graceful
    /// restart negotiated, close without a word instead, so that the peer
    /// keeps the routes for the restart time (the kernel forwards on).
    Stop,
    /// What this member announces is decided (its lease holds and its
    /// state is current, or it is standalone and programmed): with
    /// graceful restart, the End-of-RIB can go.
    Settled,
    /// The BFD session with the peer went down: the path is gone.
    BfdDown,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Message),
    /// The session is established with these terms.
    Established(Negotiated),
    /// Routes were announced and withdrawn (for the log).
    RoutesUpdated {
        announced: usize,
        withdrawn: usize,
        /// What the peer holds now.
        total: usize,
    },
    /// Close the connection. `clean`: a stop, not a failure.
    Close {
        reason: String,
        clean: bool,
    },
}

/// One session's state machine.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    state: State,
    local: Option<IpAddr>,
    negotiated: Option<Negotiated>,
    wanted: Arc<Routes>,
    advertised: Routes,
    settled: bool,
    end_of_rib_sent: bool,
}

impl Session {
    pub fn new(config: SessionConfig) -> Session {
        Session {
            config,
            state: State::Idle,
            local: None,
            negotiated: None,
            wanted: Arc::default(),
            advertised: Routes::new(),
            settled: false,
            end_of_rib_sent: false,
        }
    }

    /// End-of-RIB for every negotiated family, once, when graceful restart
    /// is negotiated, the session established and the routes settled.
    fn maybe_end_of_rib(&mut self, out: &mut Vec<Action>) {
        let Some(n) = &self.negotiated else { return };
        if !n.graceful_restart
            || self.state != State::Established
            || !self.settled
            || self.end_of_rib_sent
        {
            return;
        }
        for (afi, safi) in &n.families {
            out.push(Action::Send(Message::EndOfRib {
                afi: *afi,
                safi: *safi,
            }));
        }
        self.end_of_rib_sent = true;
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The routes the peer holds from this session now.
    pub fn advertised(&self) -> &Routes {
        &self.advertised
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Closed {
            return out;
        }
        match (self.state, event) {
            (_, Event::Routes(wanted)) => {
                self.wanted = wanted;
                if self.state == State::Established {
                    self.sync_routes(&mut out);
                }
            }
            (State::Idle, Event::Connected { local }) => {
                self.local = Some(local);
                out.push(Action::Send(Message::Open(Open {
                    asn: self.config.local_as,
                    hold_time: self.config.hold_time,
                    bgp_id: self.config.router_id,
                    families: vec![IPV4_UNICAST, IPV6_UNICAST],
                    four_octet: true,
                    route_refresh: true,
                    graceful_restart: self.config.graceful_restart.map(|g| GracefulRestart {
                        restarting: g.restarting,
                        time: g.restart_time.min(4095),
                        // The kernel keeps forwarding across a restart.
                        families: vec![(1, 1, true), (2, 1, true)],
                    }),
                })));
                self.state = State::OpenSent;
            }
            (State::Idle, _) => {}
            (_, Event::Malformed(e)) => {
                out.push(Action::Send(Message::Notification {
                    code: e.code,
                    subcode: e.subcode,
                    data: e.data.clone(),
                }));
                self.close(
                    &mut out,
                    format!("malformed message from the peer: {e}"),
                    false,
                );
            }
            (_, Event::Received(Message::Notification { code, subcode, .. })) => {
                // Never answered (RFC 4271 §6.4).
                self.close(
                    &mut out,
                    format!("the peer sent NOTIFICATION {code}/{subcode}"),
                    false,
                );
            }
            (_, Event::HoldTimerExpired) => {
                self.notify(&mut out, error::HOLD_TIMER_EXPIRED, 0);
                self.close(&mut out, "hold timer expired".into(), false);
            }
            (_, Event::BfdDown) => {
                // Cease, BFD Down (RFC 9384), if the path lets it through.
                self.notify(&mut out, error::CEASE, error::CEASE_BFD_DOWN);
                self.close(&mut out, "BFD session down".into(), false);
            }
            (_, Event::Settled) => {
                self.settled = true;
                self.maybe_end_of_rib(&mut out);
            }
            (State::Established, Event::Stop)
                if self.negotiated.as_ref().is_some_and(|n| n.graceful_restart) =>
            {
                // No withdrawal, no NOTIFICATION: the peer keeps the routes
                // as stale for the restart time (RFC 4724 §4.2) while the
                // kernel forwards on; the restarted member refreshes them
                // and sends End-of-RIB.
                self.close(
                    &mut out,
                    "stopping for a restart: routes left to the peer's graceful restart".into(),
                    true,
                );
            }
            (_, Event::Stop) => {
                if self.state == State::Established {
                    let all: Vec<IpNet> = self.advertised.keys().copied().collect();
                    for chunk in all.chunks(WITHDRAWN_PER_UPDATE) {
                        out.push(Action::Send(Message::Update {
                            withdrawn: chunk.to_vec(),
                            announced: vec![],
                            attributes: None,
                        }));
                    }
                }
                self.notify(&mut out, error::CEASE, error::CEASE_ADMINISTRATIVE_SHUTDOWN);
                self.close(
                    &mut out,
                    "stopping: routes withdrawn, Cease sent".into(),
                    true,
                );
            }
            (State::OpenSent, Event::Received(Message::Open(theirs))) => {
                self.open_received(theirs, &mut out)
            }
            (State::OpenSent, Event::Received(_)) => {
                self.notify(&mut out, error::FSM, error::FSM_IN_OPEN_SENT);
                self.close(&mut out, "expected an OPEN".into(), false);
            }
            (State::OpenConfirm, Event::Received(Message::Keepalive)) => {
                self.state = State::Established;
                if let Some(n) = &self.negotiated {
                    out.push(Action::Established(n.clone()));
                }
                self.sync_routes(&mut out);
                self.maybe_end_of_rib(&mut out);
            }
            (State::OpenConfirm, Event::Received(_)) => {
                self.notify(&mut out, error::FSM, error::FSM_IN_OPEN_CONFIRM);
                self.close(&mut out, "expected a KEEPALIVE".into(), false);
            }
            (State::Established, Event::Received(Message::Open(_))) => {
                self.notify(&mut out, error::FSM, error::FSM_IN_ESTABLISHED);
                self.close(&mut out, "an OPEN on an established session".into(), false);
            }
            (State::Established, Event::Received(Message::RouteRefresh { afi, safi })) => {
                // Every route of the family again.
                let family: Vec<(IpNet, RouteTags)> = self
                    .advertised
                    .iter()
                    .filter(|(n, _)| family_of(n) == (afi, safi))
                    .map(|(n, t)| (*n, t.clone()))
                    .collect();
                self.announce(&family, &mut out);
            }
            (State::Established, Event::Received(_)) => {} // KEEPALIVE, UPDATE
            (State::OpenConfirm | State::Established, Event::KeepaliveDue) => {
                out.push(Action::Send(Message::Keepalive));
            }
            (_, Event::KeepaliveDue | Event::Connected { .. }) => {}
            (State::Closed, _) => {}
        }
        out
    }

    fn notify(&self, out: &mut Vec<Action>, code: u8, subcode: u8) {
        out.push(Action::Send(Message::Notification {
            code,
            subcode,
            data: vec![],
        }));
    }

    fn close(&mut self, out: &mut Vec<Action>, reason: String, clean: bool) {
        self.state = State::Closed;
        out.push(Action::Close { reason, clean });
    }

    fn open_received(&mut self, theirs: Open, out: &mut Vec<Action>) {
        if theirs.asn != self.config.peer_as {
            self.notify(out, error::OPEN, error::OPEN_BAD_PEER_AS);
            self.close(
                out,
                format!(
                    "the peer says AS {}, configured {}",
                    theirs.asn, self.config.peer_as
                ),
                false,
            );
            return;
        }
        let theirs_families: BTreeSet<(u16, u8)> = if theirs.families.is_empty() {
            // No multiprotocol capability: IPv4 unicast only (RFC 4760).
            BTreeSet::from([IPV4_UNICAST])
        } else {
            theirs.families.iter().copied().collect()
        };
        let families: BTreeSet<(u16, u8)> = [IPV4_UNICAST, IPV6_UNICAST]
            .into_iter()
            .filter(|f| theirs_families.contains(f))
            .collect();
        self.negotiated = Some(Negotiated {
            hold_time: self.config.hold_time.min(theirs.hold_time),
            families,
            four_octet: theirs.four_octet,
            route_refresh: theirs.route_refresh,
            graceful_restart: self.config.graceful_restart.is_some()
                && theirs.graceful_restart.is_some(),
            peer_id: theirs.bgp_id,
        });
        out.push(Action::Send(Message::Keepalive));
        self.state = State::OpenConfirm;
    }

    /// The next hop for a family, when this session has one.
    fn next_hop(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.config
                .next_hop_v6
                .map(IpAddr::V6)
                .or(self.local.filter(IpAddr::is_ipv6))
        } else {
            self.config
                .next_hop_v4
                .map(IpAddr::V4)
                .or(self.local.filter(IpAddr::is_ipv4))
        }
    }

    /// Whether a route may go to this peer: its family was negotiated and
    /// the session has a next hop for it.
    fn sendable(&self, net: &IpNet) -> bool {
        let negotiated = self
            .negotiated
            .as_ref()
            .is_some_and(|n| n.families.contains(&family_of(net)));
        negotiated && self.next_hop(matches!(net, IpNet::V6(_))).is_some()
    }

    /// Sends what changed between what is wanted and what the peer has.
    fn sync_routes(&mut self, out: &mut Vec<Action>) {
        let wanted: Routes = self
            .wanted
            .iter()
            .filter(|(n, _)| self.sendable(n))
            .map(|(n, t)| (*n, t.clone()))
            .collect();
        let withdrawn: Vec<IpNet> = self
            .advertised
            .keys()
            .filter(|n| !wanted.contains_key(n))
            .copied()
            .collect();
        // New routes, and routes whose communities changed (announced
        // again: an UPDATE replaces the peer's path).
        let added: Vec<(IpNet, RouteTags)> = wanted
            .iter()
            .filter(|(n, t)| self.advertised.get(n) != Some(t))
            .map(|(n, t)| (*n, t.clone()))
            .collect();
        for v6 in [false, true] {
            let family: Vec<IpNet> = withdrawn
                .iter()
                .copied()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .collect();
            for chunk in family.chunks(WITHDRAWN_PER_UPDATE) {
                out.push(Action::Send(Message::Update {
                    withdrawn: chunk.to_vec(),
                    announced: vec![],
                    attributes: None,
                }));
            }
        }
        self.announce(&added, out);
        if !withdrawn.is_empty() || !added.is_empty() {
            out.push(Action::RoutesUpdated {
                announced: added.len(),
                withdrawn: withdrawn.len(),
                total: wanted.len(),
            });
        }
        self.advertised = wanted;
    }

    /// UPDATEs announcing `routes` (of negotiated families), one family
    /// and one set of communities per UPDATE.
    fn announce(&self, routes: &[(IpNet, RouteTags)], out: &mut Vec<Action>) {
        let ebgp = self.config.peer_as != self.config.local_as;
        let four_octet = self.negotiated.as_ref().is_some_and(|n| n.four_octet);
        let mut groups: BTreeMap<(bool, &RouteTags), Vec<IpNet>> = BTreeMap::new();
        for (net, tags) in routes {
            groups
                .entry((matches!(net, IpNet::V6(_)), tags))
                .or_default()
                .push(*net);
        }
        for ((v6, tags), family) in groups {
            let Some(next_hop) = self.next_hop(v6) else {
                continue;
            };
            let mut communities = self.config.attributes.communities.clone();
            communities.extend(&tags.communities);
            communities.sort_unstable();
            communities.dedup();
            let mut large_communities = self.config.attributes.large_communities.clone();
            large_communities.extend(&tags.large_communities);
            large_communities.sort_unstable();
            large_communities.dedup();
            let attributes = Attributes {
                communities,
                large_communities,
                as_path: if ebgp {
                    vec![self.config.local_as]
                } else {
                    vec![]
                },
                four_octet,
                next_hop: Some(next_hop),
                local_pref: if ebgp {
                    None
                } else {
                    self.config.attributes.local_pref
                },
                ..self.config.attributes.clone()
            };
            for chunk in family.chunks(ANNOUNCED_PER_UPDATE) {
                out.push(Action::Send(Message::Update {
                    withdrawn: vec![],
                    announced: chunk.to_vec(),
                    attributes: Some(attributes.clone()),
                }));
            }
        }
    }
}

fn family_of(net: &IpNet) -> (u16, u8) {
    match net {
        IpNet::V4(_) => IPV4_UNICAST,
        IpNet::V6(_) => IPV6_UNICAST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(peer_as: u32) -> SessionConfig {
        SessionConfig {
            local_as: 65001,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            peer_as,
            hold_time: 9,
            attributes: Attributes {
                communities: vec![0xfde9_0064],
                local_pref: Some(150),
                ..Attributes::default()
            },
            next_hop_v4: None,
            next_hop_v6: None,
            graceful_restart: None,
        }
    }

    fn routes(list: &[&str]) -> Arc<Routes> {
        Arc::new(
            list.iter()
                .map(|s| (s.parse().expect("net"), RouteTags::default()))
                .collect(),
        )
    }

    fn open(asn: u32, families: Vec<(u16, u8)>, four_octet: bool) -> Message {
        Message::Open(Open {
            asn,
            hold_time: 6,
            bgp_id: Ipv4Addr::new(10, 0, 0, 254),
            families,
            four_octet,
            route_refresh: true,
            graceful_restart: None,
        })
    }

    /// Through OPEN and KEEPALIVE to Established; returns the actions of
    /// the last step.
    fn establish(s: &mut Session, theirs: Message) -> Vec<Action> {
        let a = s.handle(Event::Connected {
            local: "10.0.0.1".parse().expect("ip"),
        });
        assert!(matches!(a.as_slice(), [Action::Send(Message::Open(_))]));
        assert_eq!(
            s.handle(Event::Received(theirs)),
            vec![Action::Send(Message::Keepalive)]
        );
        s.handle(Event::Received(Message::Keepalive))
    }

    fn sent(actions: &[Action]) -> Vec<&Message> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// Routes with their own communities go in UPDATEs of their own,
    /// with the session's communities added; a change of a route's
    /// communities alone announces it again, and nothing else.
    #[test]
    fn each_route_carries_its_services_communities() {
        let mut s = Session::new(config(65000));
        let tagged = |c: Vec<u32>, l: Vec<(u32, u32, u32)>| RouteTags {
            communities: c,
            large_communities: l,
        };
        let mut wanted = Routes::new();
        wanted.insert("192.0.2.10/32".parse().expect("net"), RouteTags::default());
        wanted.insert("192.0.2.11/32".parse().expect("net"), RouteTags::default());
        wanted.insert(
            "192.0.2.12/32".parse().expect("net"),
            tagged(vec![0xfde9_0001, 0xfde9_0064], vec![(65001, 1, 2)]),
        );
        s.handle(Event::Routes(Arc::new(wanted.clone())));
        let a = establish(&mut s, open(65000, vec![IPV4_UNICAST], true));
        let updates: Vec<(
            Vec<IpNet>,
            Vec<u32>,
            Vec<crate::announce::bgp::codec::LargeCommunity>,
        )> = sent(&a)
            .into_iter()
            .filter_map(|m| match m {
                Message::Update {
                    announced,
                    attributes: Some(at),
                    ..
                } => Some((
                    announced.clone(),
                    at.communities.clone(),
                    at.large_communities.clone(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(updates.len(), 2, "{updates:?}");
        assert!(updates.contains(&(
            vec![
                "192.0.2.10/32".parse().expect("net"),
                "192.0.2.11/32".parse().expect("net")
            ],
            vec![0xfde9_0064],
            vec![]
        )));
        // The session's 65001:100 once, with the route's own.
        assert!(updates.contains(&(
            vec!["192.0.2.12/32".parse().expect("net")],
            vec![0xfde9_0001, 0xfde9_0064],
            vec![(65001, 1, 2)]
        )));
        // Only the communities of one route change: that route again.
        wanted.insert(
            "192.0.2.11/32".parse().expect("net"),
            tagged(vec![7], vec![]),
        );
        let a = s.handle(Event::Routes(Arc::new(wanted)));
        assert!(
            matches!(
                sent(&a).as_slice(),
                [Message::Update { announced, withdrawn, attributes: Some(at) }]
                    if announced == &vec!["192.0.2.11/32".parse::<IpNet>().expect("net")]
                        && withdrawn.is_empty()
                        && at.communities == vec![7, 0xfde9_0064]
            ),
            "{a:?}"
        );
    }

    #[test]
    fn only_the_families_both_sides_negotiated_are_sent() {
        let mut s = Session::new(config(65000));
        s.handle(Event::Routes(routes(&[
            "192.0.2.10/32",
            "2001:db8::10/128",
        ])));
        // The peer speaks IPv4 unicast only; and an IPv6 next hop exists.
        let mut c = config(65000);
        c.next_hop_v6 = Some("2001:db8::1".parse().expect("ip"));
        let mut s2 = Session::new(c);
        s2.handle(Event::Routes(routes(&[
            "192.0.2.10/32",
            "2001:db8::10/128",
        ])));
        for s in [&mut s, &mut s2] {
            let a = establish(s, open(65000, vec![IPV4_UNICAST], true));
            let updates = sent(&a);
            assert_eq!(updates.len(), 1, "{a:?}");
            assert!(
                matches!(updates[0], Message::Update { announced, .. } if announced.len() == 1 && matches!(announced[0], IpNet::V4(_)))
            );
            assert_eq!(s.negotiated().expect("terms").hold_time, 6);
        }
        // No multiprotocol capability at all: IPv4 unicast is implied.
        let mut s = Session::new(config(65000));
        s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
        let a = establish(&mut s, open(65000, vec![], true));
        assert_eq!(sent(&a).len(), 1);
        // IPv6 only: the IPv4 route waits.
        let mut s = Session::new(config(65000));
        s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
        let a = establish(&mut s, open(65000, vec![IPV6_UNICAST], true));
        assert!(sent(&a).is_empty(), "{a:?}");
    }

    #[test]
    fn a_peer_without_four_octet_asns_gets_as_trans_and_as4_path() {
        let mut c = config(65000);
        c.local_as = 4_200_000_001;
        let mut s = Session::new(c);
        s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
        let a = establish(&mut s, open(65000, vec![IPV4_UNICAST], false));
        let Some(Message::Update {
            attributes: Some(attributes),
            ..
        }) = sent(&a).first().copied()
        else {
            panic!("an UPDATE: {a:?}")
        };
        assert!(!attributes.four_octet);
        let bytes = sent(&a)[0].encode();
        // AS_PATH (type 2): one AS_SEQUENCE of one two-octet ASN, AS_TRANS.
        assert!(
            bytes
                .windows(7)
                .any(|w| w == [0x40, 2, 4, 2, 1, 0x5b, 0xa0])
        );
        // AS4_PATH (type 17) with the real ASN.
        let asn = 4_200_000_001u32.to_be_bytes();
        assert!(
            bytes
                .windows(9)
                .any(|w| w[..5] == [0xc0, 17, 6, 2, 1] && w[5..] == asn)
        );
        // iBGP or a four-octet peer: no AS4_PATH.
        let mut s = Session::new(config(65000));
        s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
        let a = establish(&mut s, open(65000, vec![IPV4_UNICAST], true));
        assert!(!sent(&a)[0].encode().windows(2).any(|w| w == [0xc0, 17]));
    }

    #[test]
    fn unexpected_messages_get_the_fsm_error_of_their_state_and_notifications_none() {
        let fsm = |subcode| {
            Action::Send(Message::Notification {
                code: error::FSM,
                subcode,
                data: vec![],
            })
        };
        // OpenSent: a KEEPALIVE before the OPEN.
        let mut s = Session::new(config(65000));
        s.handle(Event::Connected {
            local: "10.0.0.1".parse().expect("ip"),
        });
        let a = s.handle(Event::Received(Message::Keepalive));
        assert_eq!(a[0], fsm(error::FSM_IN_OPEN_SENT));
        assert_eq!(s.state(), State::Closed);
        // OpenConfirm: an UPDATE, or a second OPEN.
        for m in [
            Message::Update {
                withdrawn: vec![],
                announced: vec![],
                attributes: None,
            },
            open(65000, vec![], true),
        ] {
            let mut s = Session::new(config(65000));
            s.handle(Event::Connected {
                local: "10.0.0.1".parse().expect("ip"),
            });
            s.handle(Event::Received(open(65000, vec![], true)));
            let a = s.handle(Event::Received(m));
            assert_eq!(a[0], fsm(error::FSM_IN_OPEN_CONFIRM));
            assert!(matches!(a[1], Action::Close { clean: false, .. }));
        }
        // Established: an OPEN gets 5/3.
        let mut s = Session::new(config(65000));
        establish(&mut s, open(65000, vec![], true));
        let a = s.handle(Event::Received(open(65000, vec![], true)));
        assert_eq!(a[0], fsm(error::FSM_IN_ESTABLISHED));
        // A NOTIFICATION is never answered.
        let mut s = Session::new(config(65000));
        establish(&mut s, open(65000, vec![], true));
        let a = s.handle(Event::Received(Message::Notification {
            code: 6,
            subcode: 4,
            data: vec![],
        }));
        assert!(sent(&a).is_empty(), "{a:?}");
        assert!(matches!(a[0], Action::Close { clean: false, .. }));
        // The wrong AS: 2/2.
        let mut s = Session::new(config(65000));
        s.handle(Event::Connected {
            local: "10.0.0.1".parse().expect("ip"),
        });
        let a = s.handle(Event::Received(open(64999, vec![], true)));
        assert_eq!(
            a[0],
            Action::Send(Message::Notification {
                code: error::OPEN,
                subcode: error::OPEN_BAD_PEER_AS,
                data: vec![]
            })
        );
    }

    #[test]
    fn routes_follow_changes_refresh_and_a_stop_withdraws_then_ceases() {
        let mut s = Session::new(config(65001));
        s.handle(Event::Routes(routes(&["192.0.2.10/32", "10.96.0.0/12"])));
        let a = establish(&mut s, open(65001, vec![IPV4_UNICAST], true));
        // iBGP: empty AS path, LOCAL_PREF kept.
        let Some(Message::Update {
            announced,
            attributes: Some(attr),
            ..
        }) = sent(&a).first().copied()
        else {
            panic!("{a:?}")
        };
        assert_eq!(announced.len(), 2);
        assert!(attr.as_path.is_empty());
        assert_eq!(attr.local_pref, Some(150));
        assert_eq!(attr.communities, vec![0xfde9_0064]);
        // One route goes, one comes.
        let a = s.handle(Event::Routes(routes(&["192.0.2.11/32", "10.96.0.0/12"])));
        assert_eq!(sent(&a).len(), 2);
        assert!(a.contains(&Action::RoutesUpdated {
            announced: 1,
            withdrawn: 1,
            total: 2
        }));
        // A refresh: everything of the family again.
        let a = s.handle(Event::Received(Message::RouteRefresh { afi: 1, safi: 1 }));
        assert!(matches!(sent(&a)[0], Message::Update { announced, .. } if announced.len() == 2));
        // Keepalives only once the OPENs are exchanged.
        assert_eq!(
            s.handle(Event::KeepaliveDue),
            vec![Action::Send(Message::Keepalive)]
        );
        let a = s.handle(Event::Stop);
        assert!(matches!(sent(&a)[0], Message::Update { withdrawn, .. } if withdrawn.len() == 2));
        assert_eq!(
            sent(&a)[1],
            &Message::Notification {
                code: error::CEASE,
                subcode: error::CEASE_ADMINISTRATIVE_SHUTDOWN,
                data: vec![]
            }
        );
        assert!(matches!(a.last(), Some(Action::Close { clean: true, .. })));
        assert!(s.handle(Event::KeepaliveDue).is_empty(), "closed");
    }

    #[test]
    fn graceful_restart_end_of_rib_once_settled_and_a_stop_leaves_the_routes() {
        let gr = GrConfig {
            restart_time: 30,
            restarting: true,
        };
        let mut s = Session::new(SessionConfig {
            graceful_restart: Some(gr),
            ..config(65000)
        });
        s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
        let a = s.handle(Event::Connected {
            local: "10.0.0.1".parse().expect("ip"),
        });
        let Some(Message::Open(ours)) = sent(&a).first().copied() else {
            panic!("{a:?}")
        };
        assert_eq!(
            ours.graceful_restart,
            Some(GracefulRestart {
                restarting: true,
                time: 30,
                families: vec![(1, 1, true), (2, 1, true)],
            })
        );
        let Message::Open(mut theirs) = open(65000, vec![IPV4_UNICAST], true) else {
            unreachable!()
        };
        theirs.graceful_restart = Some(GracefulRestart::default());
        s.handle(Event::Received(Message::Open(theirs)));
        let a = s.handle(Event::Received(Message::Keepalive));
        // The routes, but no End-of-RIB before the member settled.
        assert!(
            matches!(sent(&a).as_slice(), [Message::Update { .. }]),
            "{a:?}"
        );
        let a = s.handle(Event::Settled);
        assert_eq!(
            sent(&a),
            vec![&Message::EndOfRib { afi: 1, safi: 1 }],
            "only the negotiated family"
        );
        assert!(s.handle(Event::Settled).is_empty(), "once");
        // A stop: no withdrawal, no NOTIFICATION.
        let a = s.handle(Event::Stop);
        assert!(sent(&a).is_empty(), "{a:?}");
        assert!(matches!(a.last(), Some(Action::Close { clean: true, .. })));

        // A peer without the capability: the usual withdraw and Cease, and
        // no End-of-RIB.
        let mut s = Session::new(SessionConfig {
            graceful_restart: Some(gr),
            ..config(65000)
        });
        s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
        s.handle(Event::Settled);
        let a = establish(&mut s, open(65000, vec![IPV4_UNICAST], true));
        assert!(
            !sent(&a)
                .iter()
                .any(|m| matches!(m, Message::EndOfRib { .. }))
        );
        let a = s.handle(Event::Stop);
        assert!(matches!(sent(&a)[0], Message::Update { withdrawn, .. } if withdrawn.len() == 1));
    }

    #[test]
    fn the_hold_timer_and_malformed_input_end_the_session_with_their_notification() {
        let mut s = Session::new(config(65000));
        establish(&mut s, open(65000, vec![], true));
        let a = s.handle(Event::HoldTimerExpired);
        assert!(matches!(
            &a[0],
            Action::Send(Message::Notification { code: 4, .. })
        ));
        let mut s = Session::new(config(65000));
        establish(&mut s, open(65000, vec![], true));
        let e = DecodeError {
            code: 1,
            subcode: 1,
            data: vec![],
            reason: "marker".into(),
        };
        let a = s.handle(Event::Malformed(e));
        assert!(matches!(
            &a[0],
            Action::Send(Message::Notification {
                code: 1,
                subcode: 1,
                ..
            })
        ));
        assert!(matches!(a[1], Action::Close { clean: false, .. }));
    }
}
