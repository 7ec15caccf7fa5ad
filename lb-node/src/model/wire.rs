//! Conversions between the model and its protobuf form (`proto::state::v1`):
//! the bytes of a log entry and of a snapshot.
//!
//! Decoding checks everything the model's types promise, because these bytes
//! come from disk and from the network: a decoded value is as valid as one
//! built in memory, and bad bytes give an error naming the field, never a
//! panic.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proto::Message;
use proto::state::v1 as pb;

use super::command::{Command, HealthReport, KubeDelta, KubeKind};
use super::health::{HealthCheck, HealthSeen, OnDown, ProbeKind};
use super::service::{
    Backend, BackendOverride, BackendState, Forwarding, InvalidService, Protocol, Scheduler,
    ServiceKey, VirtualService,
};
use super::state::{KubeObjects, State, StateParts};

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// Why bytes could not be decoded into the model. Never retryable: the same
/// bytes fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes are not the protobuf message (truncated or garbage).
    #[error("not a valid {message} message: {source}")]
    Protobuf {
        message: &'static str,
        #[source]
        source: proto::prost::DecodeError,
    },
    /// A field holds a value the model does not allow.
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
    /// The decoded service breaks the model's rules.
    #[error(transparent)]
    Invalid(#[from] InvalidService),
    /// A snapshot written by a newer (or unknown) format.
    #[error(
        "snapshot format version {found} is not supported (this build reads {SNAPSHOT_FORMAT_VERSION})"
    )]
    SnapshotVersion { found: u32 },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> WireError {
    WireError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

// ---- encoding -------------------------------------------------------------

pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub fn key_to_pb(key: &ServiceKey) -> pb::ServiceKey {
    pb::ServiceKey {
        vip: ip_bytes(key.vip),
        port: u32::from(key.port),
        protocol: match key.protocol {
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
            Protocol::Sctp => pb::Protocol::Sctp,
        } as i32,
    }
}

fn backend_to_pb(b: &Backend) -> pb::Backend {
    pb::Backend {
        address: ip_bytes(b.address),
        port: u32::from(b.port),
        weight: b.weight,
        state: match b.state {
            BackendState::Ready => pb::BackendState::Ready,
            BackendState::Serving => pb::BackendState::Serving,
            BackendState::Terminating => pb::BackendState::Terminating,
            BackendState::NotReady => pb::BackendState::NotReady,
        } as i32,
    }
}

/// The protobuf form of a service, as the admin API also shows it.
pub fn service_to_pb(s: &VirtualService) -> pb::VirtualService {
    pb::VirtualService {
        key: Some(key_to_pb(&s.key)),
        name: s.name.clone(),
        scheduler: scheduler_to_pb(s.scheduler) as i32,
        persistence_timeout: s.persistence_timeout.unwrap_or(0),
        fwmark: s.fwmark.unwrap_or(0),
        forwarding: match s.forwarding {
            Forwarding::Masquerade => pb::Forwarding::Masquerade,
            Forwarding::Direct => pb::Forwarding::Direct,
            Forwarding::Tunnel => pb::Forwarding::Tunnel,
        } as i32,
        allowed_sources: s
            .allowed_sources
            .iter()
            .map(|n| pb::IpNet {
                address: ip_bytes(n.addr()),
                prefix_len: u32::from(n.prefix_len()),
            })
            .collect(),
        backends: s.backends.iter().map(backend_to_pb).collect(),
        bgp_communities: s.bgp_communities.clone(),
        bgp_large_communities: s
            .bgp_large_communities
            .iter()
            .map(|&(global, local1, local2)| pb::LargeCommunity {
                global,
                local1,
                local2,
            })
            .collect(),
        health: s.health.as_deref().map(health_to_pb),
    }
}

fn millis(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn health_to_pb(h: &HealthCheck) -> pb::HealthCheck {
    use pb::health_check::Kind;
    pb::HealthCheck {
        kind: Some(match &h.kind {
            ProbeKind::Tcp => Kind::Tcp(pb::TcpProbe {}),
            ProbeKind::Http {
                tls,
                method,
                path,
                host,
                expect_status,
                expect_body,
            } => Kind::Http(pb::HttpProbe {
                tls: *tls,
                method: method.clone(),
                path: path.clone(),
                host: host.clone(),
                expect_status: expect_status.iter().map(|s| u32::from(*s)).collect(),
                expect_body: expect_body.clone(),
            }),
            ProbeKind::Udp { send, expect } => Kind::Udp(pb::UdpProbe {
                send: send.clone(),
                expect: expect.clone(),
            }),
            ProbeKind::Grpc { service } => Kind::Grpc(pb::GrpcProbe {
                service: service.clone(),
            }),
        }),
        port: h.port.map_or(0, u32::from),
        interval_ms: millis(h.interval),
        timeout_ms: millis(h.timeout),
        rise: h.rise,
        fall: h.fall,
        remove_on_down: h.on_down == OnDown::Remove,
    }
}

fn health_from_pb(h: pb::HealthCheck, at: &str) -> Result<HealthCheck, WireError> {
    use pb::health_check::Kind;
    let kind = match h.kind {
        Some(Kind::Tcp(_)) => ProbeKind::Tcp,
        Some(Kind::Http(p)) => ProbeKind::Http {
            tls: p.tls,
            method: p.method,
            path: p.path,
            host: p.host,
            expect_status: p
                .expect_status
                .into_iter()
                .map(|s| {
                    u16::try_from(s).map_err(|_| {
                        field(
                            format!("{at}.expect_status"),
                            format!("{s} is not a status"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            expect_body: p.expect_body,
        },
        Some(Kind::Udp(p)) => ProbeKind::Udp {
            send: p.send,
            expect: p.expect,
        },
        Some(Kind::Grpc(p)) => ProbeKind::Grpc { service: p.service },
        None => {
            return Err(field(
                format!("{at}.kind"),
                "no probe kind this build knows (written by a newer version?)",
            ));
        }
    };
    Ok(HealthCheck {
        kind,
        port: match h.port {
            0 => None,
            p => Some(port_from(p, &format!("{at}.port"))?),
        },
        interval: std::time::Duration::from_millis(u64::from(h.interval_ms)),
        timeout: std::time::Duration::from_millis(u64::from(h.timeout_ms)),
        rise: h.rise,
        fall: h.fall,
        on_down: if h.remove_on_down {
            OnDown::Remove
        } else {
            OnDown::Drain
        },
    })
}

fn health_report_to_pb(r: &HealthReport, member: u64, since_unix_ms: u64) -> pb::HealthReport {
    use pb::health_report::Verdict;
    pb::HealthReport {
        key: Some(key_to_pb(&r.key)),
        address: ip_bytes(r.address),
        port: u32::from(r.port),
        verdict: match r.down {
            Some(true) => Verdict::Down,
            Some(false) => Verdict::Up,
            None => Verdict::Withdrawn,
        } as i32,
        member,
        since_unix_ms,
    }
}

fn health_report_from_pb(r: pb::HealthReport, at: &str) -> Result<HealthReport, WireError> {
    use pb::health_report::Verdict;
    Ok(HealthReport {
        key: key_from_pb(r.key, &format!("{at}.key"))?,
        address: ip_from(&r.address, &format!("{at}.address"))?,
        port: port_from(r.port, &format!("{at}.port"))?,
        down: match Verdict::try_from(r.verdict) {
            Ok(Verdict::Down) => Some(true),
            Ok(Verdict::Up) => Some(false),
            Ok(Verdict::Withdrawn) => None,
            _ => {
                return Err(field(
                    format!("{at}.verdict"),
                    format!("unknown verdict {}", r.verdict),
                ));
            }
        },
    })
}

fn scheduler_to_pb(s: Scheduler) -> pb::Scheduler {
    match s {
        Scheduler::Rr => pb::Scheduler::Rr,
        Scheduler::Wrr => pb::Scheduler::Wrr,
        Scheduler::Lc => pb::Scheduler::Lc,
        Scheduler::Wlc => pb::Scheduler::Wlc,
        Scheduler::Lblc => pb::Scheduler::Lblc,
        Scheduler::Lblcr => pb::Scheduler::Lblcr,
        Scheduler::Dh => pb::Scheduler::Dh,
        Scheduler::Sh => pb::Scheduler::Sh,
        Scheduler::Sed => pb::Scheduler::Sed,
        Scheduler::Nq => pb::Scheduler::Nq,
        Scheduler::Mh => pb::Scheduler::Mh,
        Scheduler::Fo => pb::Scheduler::Fo,
        Scheduler::Ovf => pb::Scheduler::Ovf,
        Scheduler::Twos => pb::Scheduler::Twos,
    }
}

/// The protobuf form of a backend override (`None`: clear it).
pub fn override_to_pb(
    key: &ServiceKey,
    address: IpAddr,
    port: u16,
    value: Option<BackendOverride>,
) -> pb::BackendOverride {
    use pb::backend_override::Action;
    pb::BackendOverride {
        key: Some(key_to_pb(key)),
        address: ip_bytes(address),
        port: u32::from(port),
        action: value.map(|v| match v {
            BackendOverride::Drain => Action::Drain(true),
            BackendOverride::Weight(w) => Action::Weight(w),
        }),
    }
}

type OverrideParts = (ServiceKey, IpAddr, u16, Option<BackendOverride>);

fn override_from_pb(o: pb::BackendOverride, at: &str) -> Result<OverrideParts, WireError> {
    use pb::backend_override::Action;
    let key = key_from_pb(o.key, &format!("{at}.key"))?;
    let address = ip_from(&o.address, &format!("{at}.address"))?;
    let port = port_from(o.port, &format!("{at}.port"))?;
    let value = match o.action {
        None | Some(Action::Drain(false)) => None,
        Some(Action::Drain(true)) => Some(BackendOverride::Drain),
        Some(Action::Weight(w)) => Some(BackendOverride::Weight(w)),
    };
    Ok((key, address, port, value))
}

fn command_to_pb(c: &Command) -> pb::Command {
    use pb::command::Kind;
    let kind = match c {
        Command::UpsertService(s) => Kind::UpsertService(pb::UpsertService {
            service: Some(service_to_pb(s)),
        }),
        Command::DeleteService(k) => Kind::DeleteService(pb::DeleteService {
            key: Some(key_to_pb(k)),
        }),
        Command::ReplaceBackends { key, backends } => Kind::ReplaceBackends(pb::ReplaceBackends {
            key: Some(key_to_pb(key)),
            backends: backends.iter().map(backend_to_pb).collect(),
        }),
        Command::SetBackendOverride {
            key,
            address,
            port,
            value,
        } => Kind::SetBackendOverride(override_to_pb(key, *address, *port, *value)),
        Command::SetVipOwners(owners) => Kind::SetVipOwners(pb::VipOwners {
            owners: owners_to_pb(owners),
        }),
        Command::AssignAddresses { service, addresses } => {
            Kind::AssignAddresses(pb::AddressAssignment {
                service: service.clone(),
                addresses: addresses.iter().map(|a| ip_bytes(*a)).collect(),
            })
        }
        Command::KubeObjects(d) => Kind::KubeDelta(pb::KubeDelta {
            kind: match d.kind {
                KubeKind::Service => pb::KubeKind::Service,
                KubeKind::EndpointSlice => pb::KubeKind::EndpointSlice,
                KubeKind::Node => pb::KubeKind::Node,
            } as i32,
            upserts: kube_objects_to_pb(d.upserts.iter().map(|(n, j)| (n, j))),
            deletes: d.deletes.clone(),
            resource_version: d.resource_version.clone(),
        }),
        Command::SetMemberDrained { member, drained } => Kind::SetMemberDrain(pb::MemberDrain {
            member: *member,
            drained: *drained,
        }),
        Command::ReportHealth {
            member,
            at_unix_ms,
            reports,
        } => Kind::ReportHealth(pb::HealthReports {
            member: *member,
            at_unix_ms: *at_unix_ms,
            reports: reports
                .iter()
                .map(|r| health_report_to_pb(r, 0, 0))
                .collect(),
        }),
        Command::SetProbers(members) => Kind::SetProbers(pb::Probers {
            members: members.iter().copied().collect(),
        }),
    };
    pb::Command { kind: Some(kind) }
}

fn kube_objects_to_pb<'a>(
    objects: impl Iterator<Item = (&'a String, &'a std::sync::Arc<[u8]>)>,
) -> Vec<pb::KubeObject> {
    objects
        .map(|(name, json)| pb::KubeObject {
            name: name.clone(),
            json: json.to_vec(),
        })
        .collect()
}

fn kube_objects_from_pb(
    list: Vec<pb::KubeObject>,
    at: &str,
) -> Result<imbl::OrdMap<String, std::sync::Arc<[u8]>>, WireError> {
    let mut out = imbl::OrdMap::new();
    for (i, o) in list.into_iter().enumerate() {
        if o.name.is_empty() || out.insert(o.name, o.json.into()).is_some() {
            return Err(field(format!("{at}[{i}].name"), "empty or repeated"));
        }
    }
    Ok(out)
}

impl Command {
    /// The bytes of this command as a log entry.
    pub fn encode(&self) -> Vec<u8> {
        command_to_pb(self).encode_to_vec()
    }

    /// Decodes a log entry; see the module docs for what is checked.
    pub fn decode(bytes: &[u8]) -> Result<Command, WireError> {
        let pb = pb::Command::decode(bytes).map_err(|source| WireError::Protobuf {
            message: "lb.state.v1.Command",
            source,
        })?;
        command_from_pb(pb)
    }
}

impl State {
    /// The bytes of a snapshot of this state.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        pb::Snapshot {
            format_version: SNAPSHOT_FORMAT_VERSION,
            revision: self.revision(),
            services: self.services().map(service_to_pb).collect(),
            members: self
                .members()
                .iter()
                .map(|(&id, address)| pb::Member {
                    id,
                    peer_address: address.clone(),
                    admin_address: self.admin_address(id).unwrap_or_default().to_owned(),
                })
                .collect(),
            overrides: self
                .overrides()
                .iter()
                .map(|((key, address, port), v)| override_to_pb(key, *address, *port, Some(*v)))
                .collect(),
            vip_owners: owners_to_pb(self.vip_owners()),
            drained_members: self.drained_members().iter().copied().collect(),
            lb_addresses: self
                .lb_addresses()
                .iter()
                .map(|(service, addresses)| pb::AddressAssignment {
                    service: service.clone(),
                    addresses: addresses.iter().map(|a| ip_bytes(*a)).collect(),
                })
                .collect(),
            kube_services: kube_objects_to_pb(self.kube().services.iter()),
            kube_endpoint_slices: kube_objects_to_pb(self.kube().endpoint_slices.iter()),
            kube_services_cursor: self.kube().services_cursor.clone(),
            kube_endpoint_slices_cursor: self.kube().endpoint_slices_cursor.clone(),
            kube_nodes: kube_objects_to_pb(self.kube().nodes.iter()),
            kube_nodes_cursor: self.kube().nodes_cursor.clone(),
            changed_at_unix_us: self.changed_at_unix_us(),
            health: self
                .health()
                .iter()
                .flat_map(|((key, address, port), seen)| {
                    seen.iter().map(move |(member, s)| {
                        let r = HealthReport {
                            key: *key,
                            address: *address,
                            port: *port,
                            down: Some(s.down),
                        };
                        health_report_to_pb(&r, *member, s.since_unix_ms)
                    })
                })
                .collect(),
            probers: self.probers().iter().copied().collect(),
        }
        .encode_to_vec()
    }

    /// Restores a state from snapshot bytes; see the module docs.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<State, WireError> {
        let pb = pb::Snapshot::decode(bytes).map_err(|source| WireError::Protobuf {
            message: "lb.state.v1.Snapshot",
            source,
        })?;
        if pb.format_version != SNAPSHOT_FORMAT_VERSION {
            return Err(WireError::SnapshotVersion {
                found: pb.format_version,
            });
        }
        let mut services = BTreeMap::new();
        for (i, s) in pb.services.into_iter().enumerate() {
            let service = service_from_pb(s, &format!("services[{i}]"))?;
            if services.insert(service.key, service).is_some() {
                return Err(field(format!("services[{i}]"), "duplicate service key"));
            }
        }
        let mut members = BTreeMap::new();
        let mut admin_addresses = BTreeMap::new();
        for (i, m) in pb.members.into_iter().enumerate() {
            if !m.admin_address.is_empty() {
                admin_addresses.insert(m.id, m.admin_address);
            }
            if m.id == 0 || members.insert(m.id, m.peer_address).is_some() {
                return Err(field(
                    format!("members[{i}].id"),
                    format!("member id {} is 0 or repeated", m.id),
                ));
            }
        }
        let mut overrides = BTreeMap::new();
        for (i, o) in pb.overrides.into_iter().enumerate() {
            let at = format!("overrides[{i}]");
            match override_from_pb(o, &at)? {
                (key, address, port, Some(v)) => {
                    overrides.insert((key, address, port), v);
                }
                (_, _, _, None) => return Err(field(at, "an override without an action")),
            }
        }
        let vip_owners = owners_from_pb(pb.vip_owners, "vip_owners")?;
        let drained = pb.drained_members.into_iter().collect();
        let mut lb_addresses = BTreeMap::new();
        for (i, a) in pb.lb_addresses.into_iter().enumerate() {
            let addresses = addresses_from_pb(&a.addresses, &format!("lb_addresses[{i}]"))?;
            lb_addresses.insert(a.service, addresses);
        }
        let kube = KubeObjects {
            services: kube_objects_from_pb(pb.kube_services, "kube_services")?,
            endpoint_slices: kube_objects_from_pb(pb.kube_endpoint_slices, "kube_endpoint_slices")?,
            nodes: kube_objects_from_pb(pb.kube_nodes, "kube_nodes")?,
            services_cursor: pb.kube_services_cursor,
            endpoint_slices_cursor: pb.kube_endpoint_slices_cursor,
            nodes_cursor: pb.kube_nodes_cursor,
        };
        let mut health: BTreeMap<_, BTreeMap<u64, HealthSeen>> = BTreeMap::new();
        for (i, r) in pb.health.into_iter().enumerate() {
            let at = format!("health[{i}]");
            let (member, since_unix_ms) = (r.member, r.since_unix_ms);
            let r = health_report_from_pb(r, &at)?;
            let Some(down) = r.down else {
                return Err(field(at, "a withdrawn report in a snapshot"));
            };
            health
                .entry((r.key, r.address, r.port))
                .or_default()
                .insert(
                    member,
                    HealthSeen {
                        down,
                        since_unix_ms,
                    },
                );
        }
        Ok(State::from_parts(StateParts {
            health,
            probers: pb.probers.into_iter().collect(),
            kube,
            changed_at_unix_us: pb.changed_at_unix_us,
            revision: pb.revision,
            services,
            members,
            admin_addresses,
            overrides,
            vip_owners,
            drained,
            lb_addresses,
        }))
    }
}

/// The data of one normal Raft log entry: a batch of commands and who
/// proposed it (`lb.state.v1.LogEntry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The member that proposed it.
    pub proposer: u64,
    /// The proposer's own number for it, to answer its caller.
    pub proposal_id: u64,
    pub commands: Vec<Command>,
    /// When the proposer proposed it (Unix time, µs; 0 if unknown).
    pub proposed_at_unix_us: u64,
}

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        pb::LogEntry {
            proposer: self.proposer,
            proposal_id: self.proposal_id,
            commands: self.commands.iter().map(command_to_pb).collect(),
            proposed_at_unix_us: self.proposed_at_unix_us,
        }
        .encode_to_vec()
    }

    /// Decodes a log entry's data; see the module docs for what is checked.
    pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
        let pb = pb::LogEntry::decode(bytes).map_err(|source| WireError::Protobuf {
            message: "lb.state.v1.LogEntry",
            source,
        })?;
        let commands = pb
            .commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                command_from_pb(c).map_err(|e| match e {
                    WireError::Field { field, reason } => WireError::Field {
                        field: format!("commands[{i}].{field}"),
                        reason,
                    },
                    other => other,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Batch {
            proposer: pb.proposer,
            proposal_id: pb.proposal_id,
            commands,
            proposed_at_unix_us: pb.proposed_at_unix_us,
        })
    }
}

// ---- decoding -------------------------------------------------------------

fn ip_from(bytes: &[u8], at: &str) -> Result<IpAddr, WireError> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::V4(Ipv4Addr::from(b)))
    } else if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        Err(field(
            at,
            format!("an address is 4 or 16 bytes, not {}", bytes.len()),
        ))
    }
}

fn port_from(port: u32, at: &str) -> Result<u16, WireError> {
    u16::try_from(port).map_err(|_| field(at, format!("port {port} is over 65535")))
}

fn key_from_pb(k: Option<pb::ServiceKey>, at: &str) -> Result<ServiceKey, WireError> {
    let k = k.ok_or_else(|| field(at, "missing"))?;
    let protocol = match pb::Protocol::try_from(k.protocol) {
        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
        Ok(pb::Protocol::Udp) => Protocol::Udp,
        Ok(pb::Protocol::Sctp) => Protocol::Sctp,
        _ => {
            return Err(field(
                format!("{at}.protocol"),
                format!("unknown protocol {}", k.protocol),
            ));
        }
    };
    Ok(ServiceKey {
        vip: ip_from(&k.vip, &format!("{at}.vip"))?,
        port: port_from(k.port, &format!("{at}.port"))?,
        protocol,
    })
}

fn backends_from_pb(list: Vec<pb::Backend>, at: &str) -> Result<Vec<Backend>, WireError> {
    list.into_iter()
        .enumerate()
        .map(|(i, b)| {
            let at = format!("{at}.backends[{i}]");
            let state = match pb::BackendState::try_from(b.state) {
                Ok(pb::BackendState::Ready) => BackendState::Ready,
                Ok(pb::BackendState::Serving) => BackendState::Serving,
                Ok(pb::BackendState::Terminating) => BackendState::Terminating,
                Ok(pb::BackendState::NotReady) => BackendState::NotReady,
                _ => {
                    return Err(field(
                        format!("{at}.state"),
                        format!("unknown backend state {}", b.state),
                    ));
                }
            };
            Ok(Backend {
                address: ip_from(&b.address, &format!("{at}.address"))?,
                port: port_from(b.port, &format!("{at}.port"))?,
                weight: b.weight,
                state,
            })
        })
        .collect()
}

fn service_from_pb(s: pb::VirtualService, at: &str) -> Result<VirtualService, WireError> {
    let key = key_from_pb(s.key, &format!("{at}.key"))?;
    let scheduler = Scheduler::ALL
        .into_iter()
        .find(|v| scheduler_to_pb(*v) as i32 == s.scheduler)
        .ok_or_else(|| {
            field(
                format!("{at}.scheduler"),
                format!("unknown scheduler {}", s.scheduler),
            )
        })?;
    let forwarding = match pb::Forwarding::try_from(s.forwarding) {
        Ok(pb::Forwarding::Masquerade) => Forwarding::Masquerade,
        Ok(pb::Forwarding::Direct) => Forwarding::Direct,
        Ok(pb::Forwarding::Tunnel) => Forwarding::Tunnel,
        _ => {
            return Err(field(
                format!("{at}.forwarding"),
                format!("unknown forwarding method {}", s.forwarding),
            ));
        }
    };
    let allowed_sources = s
        .allowed_sources
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let at = format!("{at}.allowed_sources[{i}]");
            let addr = ip_from(&n.address, &at)?;
            let prefix = u8::try_from(n.prefix_len)
                .ok()
                .and_then(|p| IpNet::new(addr, p).ok())
                .ok_or_else(|| field(&at, format!("prefix length {} is too long", n.prefix_len)))?;
            Ok(prefix)
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let service = VirtualService {
        key,
        name: s.name,
        scheduler,
        persistence_timeout: (s.persistence_timeout != 0).then_some(s.persistence_timeout),
        fwmark: (s.fwmark != 0).then_some(s.fwmark),
        forwarding,
        allowed_sources,
        backends: backends_from_pb(s.backends, at)?,
        bgp_communities: s.bgp_communities,
        bgp_large_communities: s
            .bgp_large_communities
            .into_iter()
            .map(|c| (c.global, c.local1, c.local2))
            .collect(),
        health: s
            .health
            .map(|h| health_from_pb(h, &format!("{at}.health")).map(Box::new))
            .transpose()?,
    };
    Ok(service.normalize()?)
}

fn command_from_pb(c: pb::Command) -> Result<Command, WireError> {
    use pb::command::Kind;
    match c.kind {
        Some(Kind::UpsertService(u)) => {
            let s = u
                .service
                .ok_or_else(|| field("upsert_service.service", "missing"))?;
            Ok(Command::UpsertService(service_from_pb(
                s,
                "upsert_service.service",
            )?))
        }
        Some(Kind::DeleteService(d)) => Ok(Command::DeleteService(key_from_pb(
            d.key,
            "delete_service.key",
        )?)),
        Some(Kind::ReplaceBackends(r)) => Ok(Command::ReplaceBackends {
            key: key_from_pb(r.key, "replace_backends.key")?,
            backends: backends_from_pb(r.backends, "replace_backends")?,
        }),
        Some(Kind::SetBackendOverride(o)) => {
            let (key, address, port, value) = override_from_pb(o, "set_backend_override")?;
            Ok(Command::SetBackendOverride {
                key,
                address,
                port,
                value,
            })
        }
        Some(Kind::SetVipOwners(o)) => Ok(Command::SetVipOwners(owners_from_pb(
            o.owners,
            "set_vip_owners.owners",
        )?)),
        Some(Kind::AssignAddresses(a)) => Ok(Command::AssignAddresses {
            addresses: addresses_from_pb(&a.addresses, "assign_addresses.addresses")?,
            service: a.service,
        }),
        Some(Kind::KubeDelta(d)) => {
            let kind = match pb::KubeKind::try_from(d.kind) {
                Ok(pb::KubeKind::Service) => KubeKind::Service,
                Ok(pb::KubeKind::EndpointSlice) => KubeKind::EndpointSlice,
                Ok(pb::KubeKind::Node) => KubeKind::Node,
                _ => {
                    return Err(field(
                        "kube_delta.kind",
                        format!("{} is not a known kind", d.kind),
                    ));
                }
            };
            Ok(Command::KubeObjects(KubeDelta {
                kind,
                upserts: d
                    .upserts
                    .into_iter()
                    .map(|o| (o.name, o.json.into()))
                    .collect(),
                deletes: d.deletes,
                resource_version: d.resource_version,
            }))
        }
        Some(Kind::SetMemberDrain(d)) => Ok(Command::SetMemberDrained {
            member: d.member,
            drained: d.drained,
        }),
        Some(Kind::ReportHealth(h)) => Ok(Command::ReportHealth {
            member: h.member,
            at_unix_ms: h.at_unix_ms,
            reports: h
                .reports
                .into_iter()
                .enumerate()
                .map(|(i, r)| health_report_from_pb(r, &format!("report_health.reports[{i}]")))
                .collect::<Result<_, _>>()?,
        }),
        Some(Kind::SetProbers(p)) => Ok(Command::SetProbers(p.members.into_iter().collect())),
        None => Err(field(
            "kind",
            "no command kind this build knows (written by a newer version?)",
        )),
    }
}

fn addresses_from_pb(list: &[Vec<u8>], at: &str) -> Result<Vec<IpAddr>, WireError> {
    list.iter()
        .enumerate()
        .map(|(i, b)| ip_from(b, &format!("{at}[{i}]")))
        .collect()
}

fn owners_to_pb(owners: &BTreeMap<IpAddr, u64>) -> Vec<pb::VipOwner> {
    owners
        .iter()
        .map(|(vip, member)| pb::VipOwner {
            vip: ip_bytes(*vip),
            member: *member,
        })
        .collect()
}

fn owners_from_pb(list: Vec<pb::VipOwner>, at: &str) -> Result<BTreeMap<IpAddr, u64>, WireError> {
    let mut owners = BTreeMap::new();
    for (i, o) in list.into_iter().enumerate() {
        let vip = ip_from(&o.vip, &format!("{at}[{i}].vip"))?;
        if owners.insert(vip, o.member).is_some() {
            return Err(field(
                format!("{at}[{i}].vip"),
                format!("{vip} listed twice"),
            ));
        }
    }
    Ok(owners)
}
