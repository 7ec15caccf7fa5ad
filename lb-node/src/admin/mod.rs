//! The admin API (`lb.admin.v1.Admin`, gRPC over tonic): what `lbctl`
//! calls. Reads come from the member's own views (state, source, dataplane,
//! raft status); writes go through Raft (the proposer or the node thread),
//! so they are replicated and survive failover. The admin server owns
//! nothing: it only asks the owners.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proto::admin::v1 as pb;
use proto::admin::v1::admin_server::{Admin, AdminServer};
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::dataplane::reconcile::DataplaneStatus;
use crate::model::{BackendOverride, Command, MAX_WEIGHT, State, override_to_pb, service_to_pb};
use crate::replication::node::{NodeHandle, RaftStatus};
use crate::replication::{ProposeError, Proposer};
use crate::source::SourceStatus;

mod events;
mod members;
mod services;

use services::ServiceFilter;

/// How long a write waits to see its effect (a committed membership change,
/// a new leader) before answering DEADLINE_EXCEEDED.
const WAIT_FOR_EFFECT: Duration = Duration::from_secs(5);

/// The cluster side of a member, absent when standalone.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    pub cluster_id: String,
    pub node: NodeHandle,
}

/// The admin service of one member.
#[derive(Debug, Clone)]
pub struct AdminService {
    pub node_id: u64,
    pub states: watch::Receiver<Arc<State>>,
    pub source: watch::Receiver<SourceStatus>,
    pub dataplane: watch::Receiver<DataplaneStatus>,
    pub routes: watch::Receiver<crate::dataplane::routes::RoutesStatus>,
    /// The BGP peers' sessions (empty unless announcing by BGP).
    pub bgp_peers: watch::Receiver<Vec<crate::announce::bgp::PeerStatus>>,
    /// Which addresses are announced one by one (service CIDRs, gateways).
    pub scope: crate::announce::ownership::AnnounceScope,
    /// Asks the reconciler for kernel counters.
    pub counters: tokio::sync::mpsc::Sender<crate::dataplane::reconcile::CountersQuery>,
    /// This member's own health probe results.
    pub health: crate::health::LocalView,
    pub proposer: Proposer,
    pub cluster: Option<ClusterHandle>,
    pub shutdown: CancellationToken,
}

fn propose_error(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { leader } => proto::errors::not_leader(
            e.to_string(),
            &proto::errors::NotLeader {
                leader,
                leader_admin: None,
            },
        ),
        ProposeError::Dropped(_) => Status::failed_precondition(e.to_string()),
        ProposeError::Unknown => Status::aborted(e.to_string()),
        ProposeError::Stopped => Status::unavailable(e.to_string()),
    }
}

impl AdminService {
    /// The kernel counters of `keys`, from the reconciler.
    async fn read_counters(
        &self,
        keys: Vec<crate::model::ServiceKey>,
    ) -> Result<Vec<pb::ServiceCounters>, String> {
        use crate::dataplane::reconcile::CountersQuery;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.counters
            .send(CountersQuery { keys, reply })
            .await
            .map_err(|_| "the dataplane is not running".to_owned())?;
        let counters = tokio::time::timeout(std::time::Duration::from_secs(5), answer)
            .await
            .map_err(|_| "the dataplane did not answer within 5 s (a long sync?)".to_owned())?
            .map_err(|_| "the dataplane is not running".to_owned())?
            .map_err(|e| e.to_string())?;
        let pb_counters = |c: &crate::dataplane::Counters| pb::Counters {
            connections: c.connections,
            packets_in: c.packets_in,
            packets_out: c.packets_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            connections_per_second: c.connections_per_second,
            bytes_in_per_second: c.bytes_in_per_second,
            bytes_out_per_second: c.bytes_out_per_second,
        };
        Ok(counters
            .iter()
            .map(|s| pb::ServiceCounters {
                key: Some(crate::model::key_to_pb(&s.key)),
                counters: Some(pb_counters(&s.counters)),
                destinations: s
                    .destinations
                    .iter()
                    .map(|d| pb::DestinationCounters {
                        backend: d.dest.to_string(),
                        weight: d.weight,
                        active_connections: d.active_connections,
                        inactive_connections: d.inactive_connections,
                        counters: Some(pb_counters(&d.counters)),
                    })
                    .collect(),
            })
            .collect())
    }

    /// A write refused; a follower names the leader, and where its admin API
    /// is when known, in the message for people and as a typed detail
    /// (`proto::errors::NotLeader`) for the client to go there.
    fn refused(&self, e: ProposeError) -> Status {
        if let ProposeError::NotLeader { leader } = e
            && let Some(address) = self.states.borrow().admin_address(leader)
        {
            return proto::errors::not_leader(
                format!("{e}; leader admin API at {address}"),
                &proto::errors::NotLeader {
                    leader,
                    leader_admin: Some(address.to_string()),
                },
            );
        }
        propose_error(e)
    }

    fn cluster(&self) -> Result<&ClusterHandle, Status> {
        self.cluster.as_ref().ok_or_else(|| {
            Status::failed_precondition("this member is standalone: it has no cluster")
        })
    }

    /// Waits until `done` holds for the raft status and state, or fails
    /// with DEADLINE_EXCEEDED saying `what`.
    async fn wait_for(
        &self,
        what: String,
        done: impl Fn(&RaftStatus, &State) -> bool,
    ) -> Result<(), Status> {
        let cluster = self.cluster()?;
        let deadline = tokio::time::Instant::now() + WAIT_FOR_EFFECT;
        loop {
            let status = cluster.node.status.borrow().clone();
            if done(&status, &self.states.borrow()) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Status::deadline_exceeded(format!(
                    "{what} did not happen within {WAIT_FOR_EFFECT:?} (leader: {})",
                    status.leader
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let state = self.states.borrow().clone();
        let source = self.source.borrow().clone();
        let dataplane = self.dataplane.borrow().clone();
        let routes = self.routes.borrow().clone();
        Ok(Response::new(pb::GetStatusResponse {
            node_id: self.node_id,
            version: env!("CARGO_PKG_VERSION").into(),
            revision: state.revision(),
            services: state.len() as u64,
            source: Some(pb::SourceStatus {
                kind: source.kind.into(),
                location: source.location,
                last_loaded_unix_ms: source.last_loaded_unix_ms,
                last_error: source.last_error,
                disconnected_since_unix_ms: source.disconnected_since_unix_ms,
                services_cursor: state.kube().services_cursor.clone(),
                endpoint_slices_cursor: state.kube().endpoint_slices_cursor.clone(),
                warnings: source.warnings,
                recent_warnings: source
                    .recent_warnings
                    .iter()
                    .map(|(unix_ms, message)| pb::SourceWarning {
                        unix_ms: *unix_ms,
                        message: message.clone(),
                    })
                    .collect(),
            }),
            dataplane: Some(pb::DataplaneStatus {
                kind: dataplane.kind.into(),
                last_sync_unix_ms: dataplane.last_sync_unix_ms,
                last_sync_ops: dataplane.last_sync_ops,
                last_error: dataplane.last_error,
                programmed_services: dataplane.programmed_services,
                programmed_destinations: dataplane.programmed_destinations,
                routes: Some(pb::RoutesStatus {
                    pod_routes: routes.pod_routes,
                    wanted: routes.wanted,
                    installed: routes.installed,
                    node_warning_count: routes.node_warning_count,
                    node_warnings: routes.node_warnings,
                    endpoints_checked: routes.endpoints_checked,
                    endpoints_unrouted: routes.endpoints_unrouted,
                    unrouted_examples: routes.unrouted_examples,
                    last_error: routes.last_error,
                }),
            }),
            bgp_peers: self
                .bgp_peers
                .borrow()
                .iter()
                .map(|p| pb::BgpPeerStatus {
                    address: p.address.to_string(),
                    asn: p.asn,
                    state: p.state.into(),
                    established_since_unix_ms: p.established_since_unix_ms,
                    routes: p.routes as u64,
                    last_error: p.last_error.clone(),
                    bfd_state: p
                        .bfd
                        .as_ref()
                        .map(|b| b.state.name().into())
                        .unwrap_or_default(),
                    bfd_diagnostic: p
                        .bfd
                        .as_ref()
                        .filter(|b| b.diag != 0)
                        .map(|b| crate::announce::bfd::packet::diag::name(b.diag).into())
                        .unwrap_or_default(),
                    bfd_flaps: p.bfd.as_ref().map_or(0, |b| b.flaps),
                })
                .collect(),
            cluster: self.cluster.as_ref().map(|c| {
                let raft = c.node.status.borrow().clone();
                pb::ClusterStatus {
                    cluster_id: c.cluster_id.clone(),
                    role: raft.role.name().into(),
                    term: raft.term,
                    leader: raft.leader,
                    commit_index: raft.commit_index,
                    applied_index: raft.applied_index,
                    members: state
                        .members()
                        .iter()
                        .map(|(&id, address)| proto::state::v1::Member {
                            id,
                            peer_address: address.clone(),
                            admin_address: state.admin_address(id).unwrap_or_default().to_owned(),
                        })
                        .collect(),
                    voters: raft.voters,
                    learners: raft.learners,
                    drained: state.drained_members().iter().copied().collect(),
                    lease_held: raft.lease_held,
                    may_announce: raft.may_announce,
                    peers: raft
                        .peers
                        .iter()
                        .map(|p| pb::PeerHealth {
                            id: p.id,
                            healthy: p.healthy,
                            match_index: p.match_index,
                        })
                        .collect(),
                }
            }),
        }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let name = request.into_inner().name;
        let state = self.states.borrow().clone();
        let wanted = ServiceFilter::parse(&name);
        let services: Vec<_> = state.services().filter(|s| wanted.matches(s)).collect();
        if !name.is_empty() && services.is_empty() {
            return Err(Status::not_found(format!(
                "no service matches {name:?} (a name like shop/web:http or shop/web, or an address like 192.0.2.1:80)"
            )));
        }
        let overrides = state
            .overrides()
            .iter()
            .filter(|((key, _, _), _)| services.iter().any(|s| s.key == *key))
            .map(|((key, address, port), v)| override_to_pb(key, *address, *port, Some(*v)))
            .collect();
        let (counters, counters_error) = if name.is_empty() {
            (Vec::new(), String::new())
        } else {
            match self
                .read_counters(services.iter().map(|s| s.key).collect())
                .await
            {
                Ok(c) => (c, String::new()),
                Err(e) => (Vec::new(), e),
            }
        };
        let health = self.backend_health(&state, &services);
        Ok(Response::new(pb::ListServicesResponse {
            services: services.into_iter().map(service_to_pb).collect(),
            overrides,
            counters,
            counters_error,
            health,
        }))
    }

    async fn set_backend_override(
        &self,
        request: Request<pb::SetBackendOverrideRequest>,
    ) -> Result<Response<pb::SetBackendOverrideResponse>, Status> {
        use pb::set_backend_override_request::Action;
        let r = request.into_inner();
        let backend: SocketAddr = r.backend.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "backend: {:?} is not an address:port like \"10.0.0.1:8080\" or \"[fd00::1]:80\"",
                r.backend
            ))
        })?;
        let value = match r.action {
            Some(Action::Drain(true)) => Some(BackendOverride::Drain),
            Some(Action::Weight(w)) if w <= MAX_WEIGHT => Some(BackendOverride::Weight(w)),
            Some(Action::Weight(w)) => {
                return Err(Status::invalid_argument(format!(
                    "weight: {w} is over {MAX_WEIGHT}"
                )));
            }
            Some(Action::Clear(true)) => None,
            _ => {
                return Err(Status::invalid_argument(
                    "action: one of drain, weight or clear is required",
                ));
            }
        };
        if r.service.is_empty() {
            return Err(Status::invalid_argument(
                "service: a service name is required",
            ));
        }
        let state = self.states.borrow().clone();
        let named: Vec<_> = state.services().filter(|s| s.name == r.service).collect();
        if named.is_empty() {
            return Err(Status::not_found(format!(
                "no service named {:?}",
                r.service
            )));
        }
        let commands: Vec<Command> = named
            .iter()
            .filter(|s| {
                s.backends
                    .iter()
                    .any(|b| b.address == backend.ip() && b.port == backend.port())
            })
            .map(|s| Command::SetBackendOverride {
                key: s.key,
                address: backend.ip(),
                port: backend.port(),
                value,
            })
            .collect();
        if commands.is_empty() && value.is_some() {
            return Err(Status::not_found(format!(
                "service {:?} has no backend {backend}",
                r.service
            )));
        }
        let commands = if commands.is_empty() {
            // Clearing an override of a backend that has since left the
            // service is still allowed.
            named
                .iter()
                .map(|s| Command::SetBackendOverride {
                    key: s.key,
                    address: backend.ip(),
                    port: backend.port(),
                    value: None,
                })
                .collect()
        } else {
            commands
        };
        let outcomes = self
            .proposer
            .propose(commands)
            .await
            .map_err(|e| self.refused(e))?;
        if let Some(Err(e)) = outcomes.into_iter().find(Result::is_err) {
            return Err(Status::failed_precondition(e.to_string()));
        }
        Ok(Response::new(pb::SetBackendOverrideResponse {}))
    }

    async fn transfer_leadership(
        &self,
        request: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
        let to = request.into_inner().to;
        let cluster = self.cluster()?;
        let raft = cluster.node.status.borrow().clone();
        if to == 0 {
            return Err(Status::invalid_argument(
                "to: a member id (1 or more) is required",
            ));
        }
        if !raft.voters.contains(&to) {
            return Err(Status::not_found(format!(
                "member {to} is not a voting member (voters: {:?})",
                raft.voters
            )));
        }
        if raft.leader != to {
            cluster
                .node
                .transfer_leader(to)
                .map_err(|e| self.refused(e))?;
            self.wait_for(format!("leadership transfer to member {to}"), |s, _| {
                s.leader == to
            })
            .await?;
        }
        Ok(Response::new(pb::TransferLeadershipResponse { leader: to }))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        self.member_add(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_member_role(
        &self,
        request: Request<pb::SetMemberRoleRequest>,
    ) -> Result<Response<pb::SetMemberRoleResponse>, Status> {
        self.member_role(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        self.member_remove(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_vips(
        &self,
        _request: Request<pb::ListVipsRequest>,
    ) -> Result<Response<pb::ListVipsResponse>, Status> {
        let state = self.states.borrow().clone();
        // One pass over the table, not one per VIP.
        let mut by_vip: std::collections::BTreeMap<std::net::IpAddr, Vec<String>> =
            std::collections::BTreeMap::new();
        for s in state.services() {
            let names = by_vip.entry(s.key.vip).or_default();
            if !names.contains(&s.name) {
                names.push(s.name.clone());
            }
        }
        let gateways = self
            .scope
            .gateways
            .iter()
            .map(|g| (*g, Vec::new()))
            .collect::<Vec<_>>();
        let announced = self
            .cluster
            .as_ref()
            .map(|c| c.node.status.borrow().announced.clone());
        let vips = by_vip
            .into_iter()
            .chain(gateways)
            .map(|(vip, services)| {
                let routed_by = if self.scope.gateways.contains(&vip) {
                    "service gateway".to_owned()
                } else {
                    self.scope
                        .aggregates
                        .iter()
                        .find(|n| n.contains(&vip))
                        .map(|n| format!("service CIDR {n}"))
                        .unwrap_or_default()
                };
                let own = routed_by.starts_with("service CIDR");
                // A standalone member is the only one: it owns and announces
                // every VIP it serves.
                match &announced {
                    None => pb::Vip {
                        vip: vip.to_string(),
                        owner: if own { 0 } else { self.node_id },
                        services,
                        announced_here: !own,
                        routed_by,
                    },
                    Some(announced) => pb::Vip {
                        vip: vip.to_string(),
                        owner: state.vip_owners().get(&vip).copied().unwrap_or(0),
                        services,
                        announced_here: announced.contains(&vip),
                        routed_by,
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::ListVipsResponse {
            vips,
            drained: state.drained_members().iter().copied().collect(),
        }))
    }

    async fn drain_member(
        &self,
        request: Request<pb::DrainMemberRequest>,
    ) -> Result<Response<pb::DrainMemberResponse>, Status> {
        self.member_drain(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn trigger_snapshot(
        &self,
        _request: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::TriggerSnapshotResponse>, Status> {
        let cluster = self.cluster()?;
        cluster.node.snapshot().map_err(|e| self.refused(e))?;
        Ok(Response::new(pb::TriggerSnapshotResponse {
            applied_index: cluster.node.status.borrow().applied_index,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Ok(Response::new(events::stream(self)))
    }
}

/// Serves the admin API on `listener` until `shutdown`. The caller binds the
/// listener, so tests can use port 0.
pub async fn serve(
    listener: crate::listener::GuardedListener,
    service: AdminService,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder().add_service(AdminServer::new(service));
    listener.serve(router, tls, shutdown).await
}
