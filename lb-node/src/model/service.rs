//! The value types of the service table: what a virtual service and a backend
//! are, and the rules every one of them obeys (`validate`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Highest destination weight. The kernel takes any non-negative `int`, but
/// `ipvsadm` and every peer (keepalived, Seesaw) stay within 16 bits, and a
/// table that `ipvsadm -R` cannot restore would be a trap for an operator.
pub const MAX_WEIGHT: u32 = 65_535;

/// Longest persistence timeout in seconds (one day), as keepalived allows.
pub const MAX_PERSISTENCE_TIMEOUT: u32 = 86_400;

/// Transport protocol of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// IPVS scheduler, by the kernel module's name (`ip_vs_<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheduler {
    /// Round robin.
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connection.
    Lc,
    /// Weighted least connection (the kernel's default).
    Wlc,
    /// Locality-based least connection.
    Lblc,
    /// Locality-based least connection with replication.
    Lblcr,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Maglev hashing: consistent across members, for ECMP.
    Mh,
    /// Weighted failover.
    Fo,
    /// Weighted overflow.
    Ovf,
    /// Weighted random twos choice.
    Twos,
}

impl Scheduler {
    pub const ALL: [Scheduler; 14] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Lblc,
        Scheduler::Lblcr,
        Scheduler::Dh,
        Scheduler::Sh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Mh,
        Scheduler::Fo,
        Scheduler::Ovf,
        Scheduler::Twos,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Lblc => "lblc",
            Scheduler::Lblcr => "lblcr",
            Scheduler::Dh => "dh",
            Scheduler::Sh => "sh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Mh => "mh",
            Scheduler::Fo => "fo",
            Scheduler::Ovf => "ovf",
            Scheduler::Twos => "twos",
        }
    }
}

/// How IPVS hands a packet to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Forwarding {
    /// NAT: the member rewrites the destination; replies must come back
    /// through the member.
    Masquerade,
    /// Direct routing ("gatewaying"): the backend holds the VIP itself and
    /// answers the client directly; backends must share the member's L2.
    Direct,
    /// IP-in-IP tunnel to the backend, which answers the client directly.
    Tunnel,
}

impl Forwarding {
    pub const ALL: [Forwarding; 3] = [
        Forwarding::Masquerade,
        Forwarding::Direct,
        Forwarding::Tunnel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Masquerade => "masquerade",
            Forwarding::Direct => "direct",
            Forwarding::Tunnel => "tunnel",
        }
    }
}

/// Readiness of a backend, following the EndpointSlice conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    /// Ready for new connections.
    Ready,
    /// Terminating but still serving: used for new connections only when a
    /// service has no ready backend at all (as kube-proxy does).
    Serving,
    /// Terminating and not serving: gets no new connections; existing ones
    /// are left to drain.
    Terminating,
    /// Not ready: not programmed.
    NotReady,
}

impl BackendState {
    pub const ALL: [BackendState; 4] = [
        BackendState::Ready,
        BackendState::Serving,
        BackendState::Terminating,
        BackendState::NotReady,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendState::Ready => "ready",
            BackendState::Serving => "serving",
            BackendState::Terminating => "terminating",
            BackendState::NotReady => "not-ready",
        }
    }
}

/// An operator's override of one backend, replicated like any change and
/// kept apart from the source's backends, so a reload never undoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendOverride {
    /// Weight 0: no new connections; open ones go on.
    Drain,
    /// This weight instead of the source's.
    Weight(u32),
}

impl fmt::Display for BackendOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendOverride::Drain => f.write_str("drained"),
            BackendOverride::Weight(w) => write!(f, "weight {w}"),
        }
    }
}

/// Error of parsing one of the enums above from its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {given:?}; expected one of: {expected}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub given: String,
    pub expected: String,
}

macro_rules! from_name {
    ($ty:ty, $kind:literal) => {
        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty>::ALL
                    .into_iter()
                    .find(|v| v.name() == s)
                    .ok_or_else(|| UnknownName {
                        kind: $kind,
                        given: s.to_owned(),
                        expected: <$ty>::ALL.map(|v| v.name()).join(", "),
                    })
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

from_name!(Protocol, "protocol");
from_name!(Scheduler, "scheduler");
from_name!(Forwarding, "forwarding method");
from_name!(BackendState, "backend state");

/// What identifies a virtual service in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, SocketText(self.vip, self.port))
    }
}

/// `ip:port`, with brackets around an IPv6 address.
#[derive(Debug, Clone, Copy)]
pub struct SocketText(pub IpAddr, pub u16);

impl fmt::Display for SocketText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

/// One real server behind a virtual service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
}

impl Backend {
    pub fn endpoint(&self) -> (IpAddr, u16) {
        (self.address, self.port)
    }
}

/// A virtual service: a VIP, port and protocol spread over backends.
///
/// Invariant after [`VirtualService::validate`]: `backends` is sorted by
/// `(address, port)` with no duplicates, so two equal tables compare equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    pub key: ServiceKey,
    /// The file's service name, or `namespace/name:port` for Kubernetes.
    pub name: String,
    pub scheduler: Scheduler,
    /// Seconds a client sticks to its backend; `None` for no persistence.
    pub persistence_timeout: Option<u32>,
    /// Program the service as an IPVS firewall-mark service: traffic to the
    /// VIP, port and protocol is marked with this (non-zero) mark and IPVS
    /// balances by the mark. Unique per address family.
    pub fwmark: Option<u32>,
    pub forwarding: Forwarding,
    /// Client networks allowed to reach the VIP; empty means everybody.
    pub allowed_sources: Vec<IpNet>,
    pub backends: Vec<Backend>,
    /// BGP communities of the VIP's route (with those of the other
    /// services on the VIP, the member's and the peer's); sorted, no
    /// duplicates. Nothing to IPVS.
    pub bgp_communities: Vec<u32>,
    /// RFC 8092 large communities, the same way.
    pub bgp_large_communities: Vec<(u32, u32, u32)>,
    /// Active health checks of the backends (issue 22); none by default.
    /// Boxed: most services have none, and a command carrying a service
    /// stays small.
    pub health: Option<Box<super::HealthCheck>>,
}

/// Why a virtual service or backend breaks the model's rules. Never
/// retryable: the same input gives the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidService {
    /// A service must have a name to be shown and found by.
    #[error("service {key}: name is empty")]
    EmptyName { key: ServiceKey },
    /// Port 0 means "any port" to IPVS, which a service never wants.
    #[error("service {key}: port 0 is not a service port")]
    ZeroPort { key: ServiceKey },
    /// The VIP is not an address one can serve on.
    #[error("service {key}: {vip} cannot be a VIP (unspecified, multicast or broadcast)")]
    BadVip { key: ServiceKey, vip: IpAddr },
    #[error(
        "service {key}: persistence timeout {timeout}s is out of range 1..={MAX_PERSISTENCE_TIMEOUT}"
    )]
    PersistenceTimeout { key: ServiceKey, timeout: u32 },
    #[error("service {key}: backend {backend}: port 0 is not a backend port")]
    BackendZeroPort { key: ServiceKey, backend: String },
    #[error("service {key}: backend {backend}: {address} cannot be a backend address")]
    BadBackendAddress {
        key: ServiceKey,
        backend: String,
        address: IpAddr,
    },
    #[error("service {key}: backend {backend}: weight {weight} is over {MAX_WEIGHT}")]
    Weight {
        key: ServiceKey,
        backend: String,
        weight: u32,
    },
    /// IPVS mixes address families only over a tunnel.
    #[error(
        "service {key}: backend {backend} is of another address family than the VIP, which only forwarding = \"tunnel\" allows"
    )]
    MixedFamily { key: ServiceKey, backend: String },
    #[error("service {key}: backend {backend} is listed twice")]
    DuplicateBackend { key: ServiceKey, backend: String },
    #[error("service {key}: health check {field}: {why}")]
    Health {
        key: ServiceKey,
        field: &'static str,
        why: String,
    },
}

impl VirtualService {
    /// Sorts the backends into their canonical order and checks every rule.
    pub fn normalize(mut self) -> Result<Self, InvalidService> {
        self.backends.sort_by_key(Backend::endpoint);
        self.bgp_communities.sort_unstable();
        self.bgp_communities.dedup();
        self.bgp_large_communities.sort_unstable();
        self.bgp_large_communities.dedup();
        self.validate()?;
        Ok(self)
    }

    /// Checks every rule of the model; see [`InvalidService`].
    pub fn validate(&self) -> Result<(), InvalidService> {
        let key = self.key;
        if self.name.trim().is_empty() {
            return Err(InvalidService::EmptyName { key });
        }
        if key.port == 0 {
            return Err(InvalidService::ZeroPort { key });
        }
        if !is_unicast(key.vip) {
            return Err(InvalidService::BadVip { key, vip: key.vip });
        }
        if let Some(timeout) = self.persistence_timeout
            && !(1..=MAX_PERSISTENCE_TIMEOUT).contains(&timeout)
        {
            return Err(InvalidService::PersistenceTimeout { key, timeout });
        }
        if let Some((field, why)) = self.health.as_deref().and_then(super::HealthCheck::problem) {
            return Err(InvalidService::Health { key, field, why });
        }
        let mut seen = std::collections::BTreeSet::new();
        for b in &self.backends {
            let backend = SocketText(b.address, b.port).to_string();
            if b.port == 0 {
                return Err(InvalidService::BackendZeroPort { key, backend });
            }
            if !is_unicast(b.address) {
                return Err(InvalidService::BadBackendAddress {
                    key,
                    backend,
                    address: b.address,
                });
            }
            if b.weight > MAX_WEIGHT {
                return Err(InvalidService::Weight {
                    key,
                    backend,
                    weight: b.weight,
                });
            }
            if b.address.is_ipv4() != key.vip.is_ipv4() && self.forwarding != Forwarding::Tunnel {
                return Err(InvalidService::MixedFamily { key, backend });
            }
            if !seen.insert(b.endpoint()) {
                return Err(InvalidService::DuplicateBackend { key, backend });
            }
        }
        Ok(())
    }
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}
