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
mod tests;
