//! The admin API (`lb.admin.v1.Admin`, gRPC over tonic): what `lbctl`
//! calls. Read-only views of the member's state, source and dataplane; it
//! owns nothing and changes nothing.

use std::sync::Arc;

use proto::admin::v1 as pb;
use proto::admin::v1::admin_server::{Admin, AdminServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::dataplane::reconcile::DataplaneStatus;
use crate::model::{State, service_to_pb};
use crate::replication::node::RaftStatus;
use crate::source::SourceStatus;

/// The admin service of one member.
#[derive(Debug, Clone)]
pub struct AdminService {
    pub node_id: u64,
    pub states: watch::Receiver<Arc<State>>,
    pub source: watch::Receiver<SourceStatus>,
    pub dataplane: watch::Receiver<DataplaneStatus>,
    /// The cluster id and the Raft node's status; `None` when standalone.
    pub cluster: Option<(String, watch::Receiver<RaftStatus>)>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let state = self.states.borrow().clone();
        let source = self.source.borrow().clone();
        let dataplane = self.dataplane.borrow().clone();
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
            }),
            dataplane: Some(pb::DataplaneStatus {
                kind: dataplane.kind.into(),
                last_sync_unix_ms: dataplane.last_sync_unix_ms,
                last_sync_ops: dataplane.last_sync_ops,
                last_error: dataplane.last_error,
                programmed_services: dataplane.programmed_services,
                programmed_destinations: dataplane.programmed_destinations,
            }),
            cluster: self.cluster.as_ref().map(|(cluster_id, raft)| {
                let raft = raft.borrow().clone();
                pb::ClusterStatus {
                    cluster_id: cluster_id.clone(),
                    role: raft.role.into(),
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
                        })
                        .collect(),
                    voters: raft.voters,
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
        let services: Vec<_> = state
            .services()
            .filter(|s| name.is_empty() || s.name == name)
            .map(service_to_pb)
            .collect();
        if !name.is_empty() && services.is_empty() {
            return Err(Status::not_found(format!("no service named {name:?}")));
        }
        Ok(Response::new(pb::ListServicesResponse { services }))
    }
}

/// Serves the admin API on `listener` until `shutdown`. The caller binds the
/// listener, so tests can use port 0.
pub async fn serve(
    listener: TcpListener,
    service: AdminService,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(AdminServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await
}
