//! The membership calls of the admin API: add a member (a voter or a
//! learner), change its role, remove it, drain it. Each is the leader's
//! to judge (`leader_only`): a follower sends the caller on.

use proto::admin::v1 as pb;
use tonic::Status;

use super::{AdminService, ClusterHandle};
use crate::model::Command;
use crate::replication::ProposeError;

impl AdminService {
    /// Membership changes (and drains, which name a member) are the
    /// leader's: a follower sends the caller there before it judges
    /// membership from its own view, which may not have applied the latest
    /// change yet (a `member add` the leader has just confirmed, then a
    /// `member remove` sent to a follower).
    /// A call about member `id` (1 or more), on the leader.
    fn leader_for(&self, id: u64) -> Result<&ClusterHandle, Status> {
        let cluster = self.cluster()?;
        if id == 0 {
            return Err(Status::invalid_argument("id: must be 1 or more"));
        }
        self.leader_only(cluster)?;
        Ok(cluster)
    }

    fn leader_only(&self, cluster: &ClusterHandle) -> Result<(), Status> {
        let status = cluster.node.status.borrow();
        if status.leader == status.id {
            return Ok(());
        }
        let leader = status.leader;
        drop(status);
        Err(self.refused(ProposeError::NotLeader { leader }))
    }

    pub(super) async fn member_add(
        &self,
        r: pb::AddMemberRequest,
    ) -> Result<pb::AddMemberResponse, Status> {
        let cluster = self.cluster()?;
        if r.id == 0 {
            return Err(Status::invalid_argument("id: must be 1 or more"));
        }
        let address_ok = r.peer_address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !address_ok {
            return Err(Status::invalid_argument(format!(
                "peer_address: {:?} is not a host:port",
                r.peer_address
            )));
        }
        self.leader_only(cluster)?;
        {
            let status = cluster.node.status.borrow();
            if status.voters.contains(&r.id) || status.learners.contains(&r.id) {
                let role = if status.voters.contains(&r.id) {
                    "a voter"
                } else {
                    "a learner"
                };
                return Err(Status::already_exists(format!(
                    "member {} is already a member ({role}; `lbctl member promote` or `demote` changes its role)",
                    r.id
                )));
            }
        }
        let admin_address = (!r.admin_address.is_empty()).then_some(r.admin_address);
        let learner = r.learner;
        cluster
            .node
            .add_member(r.id, r.peer_address, admin_address, learner)
            .await
            .map_err(|e| self.refused(e))?;
        let id = r.id;
        self.wait_for(format!("adding member {id}"), |s, _| {
            s.has_role(id, learner)
        })
        .await?;
        Ok(pb::AddMemberResponse {})
    }

    pub(super) async fn member_role(
        &self,
        r: pb::SetMemberRoleRequest,
    ) -> Result<pb::SetMemberRoleResponse, Status> {
        let cluster = self.leader_for(r.id)?;
        let (voter, learner) = {
            let s = cluster.node.status.borrow();
            (s.has_role(r.id, false), s.has_role(r.id, true))
        };
        let (id, to_learner) = (r.id, r.learner);
        match (voter, learner) {
            (false, false) => {
                return Err(Status::not_found(format!("member {id} is not a member")));
            }
            (true, _) if !to_learner => {
                return Err(Status::already_exists(format!(
                    "member {id} is already a voter"
                )));
            }
            (_, true) if to_learner => {
                return Err(Status::already_exists(format!(
                    "member {id} is already a learner"
                )));
            }
            _ => {}
        }
        cluster
            .node
            .set_member_role(id, to_learner)
            .await
            .map_err(|e| self.refused(e))?;
        self.wait_for(
            format!(
                "making member {id} a {}",
                if to_learner { "learner" } else { "voter" }
            ),
            |s, _| s.has_role(id, to_learner),
        )
        .await?;
        Ok(pb::SetMemberRoleResponse {})
    }

    pub(super) async fn member_remove(
        &self,
        r: pb::RemoveMemberRequest,
    ) -> Result<pb::RemoveMemberResponse, Status> {
        let id = r.id;
        let cluster = self.leader_for(id)?;
        if !cluster.node.status.borrow().is_member(id) {
            return Err(Status::not_found(format!("member {id} is not a member")));
        }
        cluster
            .node
            .remove_member(id)
            .await
            .map_err(|e| self.refused(e))?;
        self.wait_for(format!("removing member {id}"), |s, _| !s.is_member(id))
            .await?;
        Ok(pb::RemoveMemberResponse {})
    }

    pub(super) async fn member_drain(
        &self,
        r: pb::DrainMemberRequest,
    ) -> Result<pb::DrainMemberResponse, Status> {
        let cluster = self.leader_for(r.id)?;
        if !cluster.node.status.borrow().is_member(r.id) {
            return Err(Status::not_found(format!(
                "member {} is not a member",
                r.id
            )));
        }
        self.proposer
            .propose(vec![Command::SetMemberDrained {
                member: r.id,
                drained: r.drained,
            }])
            .await
            .map_err(|e| self.refused(e))?;
        Ok(pb::DrainMemberResponse {})
    }
}
