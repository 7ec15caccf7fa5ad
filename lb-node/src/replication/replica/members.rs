//! The configuration's members, voters and learners, and the changes
//! the leader proposes to it (add, promote or demote, remove).

use raft::eraftpb::{ConfChange, ConfChangeType};

use super::{ProposeError, RaftStore, Replica};

impl<S: RaftStore> Replica<S> {
    /// Voters of the current configuration.
    pub fn voters(&self) -> Vec<u64> {
        let mut voters: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        voters.sort_unstable();
        voters
    }

    /// Learners of the current configuration: members that replicate,
    /// program and announce, but never vote nor lead.
    pub fn learners(&self) -> Vec<u64> {
        let mut learners: Vec<u64> = self
            .raw
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        learners.sort_unstable();
        learners
    }

    /// Proposes adding a member reachable at `peer_address`, a voter or a
    /// learner, with its admin API at `admin_address` if given (the
    /// change's context carries both, separated by a space).
    pub fn propose_add_member(
        &mut self,
        id: u64,
        peer_address: &str,
        admin_address: Option<&str>,
        learner: bool,
    ) -> Result<(), ProposeError> {
        let context = match admin_address {
            Some(admin) => format!("{peer_address} {admin}"),
            None => peer_address.to_owned(),
        };
        let kind = if learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        self.propose_conf_change(kind, id, context.into_bytes())
    }

    /// Proposes making a member a voter (`learner` false: promote a
    /// learner) or a learner (demote a voter). Its addresses stay as they
    /// are. The leader cannot demote itself: transfer leadership first.
    pub fn propose_member_role(&mut self, id: u64, learner: bool) -> Result<(), ProposeError> {
        if learner && id == self.config.id && self.is_leader() {
            return Err(ProposeError::Dropped(format!(
                "member {id} leads the cluster: transfer leadership to another member before demoting it"
            )));
        }
        let Some(member) = self.state.members().get(&id).cloned() else {
            return Err(ProposeError::Dropped(format!(
                "member {id} is not a member"
            )));
        };
        let context = match self.state.admin_address(id) {
            Some(admin) => format!("{member} {admin}"),
            None => member,
        };
        let kind = if learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        self.propose_conf_change(kind, id, context.into_bytes())
    }

    /// Proposes removing a member. The leader cannot remove itself: transfer
    /// leadership away first, so the cluster is never without a leader that
    /// knows it is leaving.
    pub fn propose_remove_member(&mut self, id: u64) -> Result<(), ProposeError> {
        if id == self.config.id && self.is_leader() {
            return Err(ProposeError::Dropped(format!(
                "member {id} leads the cluster: transfer leadership to another member before removing it"
            )));
        }
        self.propose_conf_change(ConfChangeType::RemoveNode, id, Vec::new())
    }

    fn propose_conf_change(
        &mut self,
        kind: ConfChangeType,
        id: u64,
        context: Vec<u8>,
    ) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        self.raw
            .propose_conf_change(context, cc)
            .map_err(|e| ProposeError::Dropped(e.to_string()))
    }
}
