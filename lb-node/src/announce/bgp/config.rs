//! The BGP speaker's configuration: `[announce]` with `mode = "bgp"`, its
//! peers, and each peer's line in the status.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::codec::Attributes;
use super::fsm::{self, SessionConfig};
use super::md5;

/// `[announce]` with `mode = "bgp"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub peers: Vec<PeerConfig>,
    /// Proposed hold time, seconds (0 or 3..=65535).
    pub hold_time: u16,
    pub communities: Vec<u32>,
    /// RFC 8092 large communities: (global administrator, data 1, data 2).
    pub large_communities: Vec<(u32, u32, u32)>,
    /// MULTI_EXIT_DISC of every route, when set.
    pub med: Option<u32>,
    /// LOCAL_PREF on iBGP sessions.
    pub local_pref: u32,
    /// Next hop for IPv4 routes; `None`: the session's own address.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Next hop for IPv6 routes; `None`: the session's own address when it
    /// is IPv6 (IPv6 VIPs are not announced otherwise).
    pub next_hop_v6: Option<std::net::Ipv6Addr>,
    /// Every healthy member announces every VIP (ECMP), rather than only
    /// the owner.
    pub ecmp: bool,
    /// Announced whole by every healthy member, and the VIPs inside them
    /// not one by one (the Kubernetes service CIDRs).
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// BFD for every peer that does not opt out (`[announce.bfd]`).
    pub bfd: Option<crate::announce::bfd::Timers>,
    /// Graceful restart's restart time, seconds (RFC 4724); `None`: off.
    pub graceful_restart: Option<u16>,
    /// Owner mode: how long a VIP that moved to another member stays
    /// announced here (make before break: the new owner's route is up by
    /// then; both members' kernels serve it meanwhile). Never past the
    /// lease: a member that may not serve withdraws everything at once.
    pub linger: Duration,
    /// Where passive peers connect to; `None`: port 179 on every address.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: SocketAddr,
    pub asn: u32,
    /// The local address the session starts from; `None`: the kernel's
    /// choice.
    pub source: Option<IpAddr>,
    /// The TTL (hop limit) of the session's packets: 1 for a directly
    /// connected eBGP peer, more for multihop; `None`: the system default.
    pub ttl: Option<u32>,
    /// Only routes inside these networks go to this peer; empty: all.
    pub prefixes: Vec<IpNet>,
    /// Added to the global communities on this peer's routes.
    pub communities: Vec<u32>,
    pub large_communities: Vec<(u32, u32, u32)>,
    /// Overrides the global MED on this peer's routes.
    pub med: Option<u32>,
    /// BFD with this peer when `[announce.bfd]` is on (the default).
    pub bfd: bool,
    /// The peer connects to us (`BgpConfig::listen`); we never connect to
    /// it. A connection from any other address is closed at once.
    pub passive: bool,
    /// TCP MD5 signature of the session's segments (RFC 2385).
    pub password: Option<md5::Key>,
}

/// One peer as `lbctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: SocketAddr,
    pub asn: u32,
    /// "connecting", "open-sent", "open-confirm" or "established".
    pub state: &'static str,
    /// Unix milliseconds; 0 when not established.
    pub established_since_unix_ms: i64,
    /// Routes the peer has from this member.
    pub routes: usize,
    /// Why the last session ended; empty before any ended.
    pub last_error: String,
    /// `None` when BFD is off for this peer.
    pub bfd: Option<crate::announce::bfd::Status>,
}

impl PeerConfig {
    /// A peer with only an address and an AS.
    pub fn new(address: SocketAddr, asn: u32) -> PeerConfig {
        PeerConfig {
            address,
            asn,
            source: None,
            ttl: None,
            prefixes: Vec::new(),
            communities: Vec::new(),
            large_communities: Vec::new(),
            med: None,
            bfd: true,
            passive: false,
            password: None,
        }
    }

    /// The BFD session this peer gets, if any: single hop unless the
    /// session is multihop (a TTL above 1).
    pub(super) fn bfd_spec(&self, config: &BgpConfig) -> Option<crate::announce::bfd::PeerSpec> {
        (config.bfd.is_some() && self.bfd).then(|| crate::announce::bfd::PeerSpec {
            address: self.address.ip(),
            source: self.source,
            multihop: self.ttl.is_some_and(|t| t > 1),
        })
    }

    /// Whether `route` goes to this peer.
    pub(super) fn takes(&self, route: &IpNet) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| p.contains(route))
    }

    /// What its session needs of the configuration; `first`: the first
    /// session since the process started.
    pub(super) fn session_config(&self, config: &BgpConfig, first: bool) -> SessionConfig {
        let mut communities = config.communities.clone();
        communities.extend(self.communities.iter().copied());
        let mut large = config.large_communities.clone();
        large.extend(self.large_communities.iter().copied());
        SessionConfig {
            local_as: config.local_as,
            router_id: config.router_id,
            peer_as: self.asn,
            hold_time: config.hold_time,
            attributes: Attributes {
                communities,
                large_communities: large,
                med: self.med.or(config.med),
                local_pref: Some(config.local_pref),
                ..Attributes::default()
            },
            next_hop_v4: config.next_hop_v4,
            next_hop_v6: config.next_hop_v6,
            graceful_restart: config.graceful_restart.map(|t| fsm::GrConfig {
                restart_time: t,
                restarting: first,
            }),
        }
    }
}
