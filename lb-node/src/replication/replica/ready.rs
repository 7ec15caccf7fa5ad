//! The ready path: persisting what raft-rs has ready, applying committed
//! entries, installing and taking snapshots. The one place where the log
//! is written and the state changes.

use protobuf::Message as _;
use raft::StateRole;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Snapshot};
use tracing::{info, warn};

use super::{RaftStore, ReadyOutput, Replica, ReplicaError};
use crate::model::{Batch, Command, State};

impl<S: RaftStore> Replica<S> {
    pub fn has_ready(&self) -> bool {
        !self.removed && self.raw.has_ready()
    }

    /// Persists, applies and collects everything raft-rs has ready: the one
    /// place where the log is written and the state changes. Entries are
    /// synced to disk before any message that acknowledges them is returned.
    pub fn handle_ready(&mut self) -> Result<ReadyOutput, ReplicaError> {
        let mut out = ReadyOutput::default();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut ready = self.raw.ready();
        // A leader's messages may go out before its own entries are durable
        // (raft-rs's contract); a follower's acknowledgments are persisted
        // messages, sent only after the sync below.
        out.messages.extend(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone(), &mut out)?;
        }
        self.apply_entries(ready.take_committed_entries(), &mut out)?;
        self.raw.mut_store().append(ready.entries(), ready.hs())?;
        out.messages.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        out.messages.extend(light.take_messages());
        self.apply_entries(light.take_committed_entries(), &mut out)?;
        self.raw.advance_apply_to(self.applied);
        self.note_role_change(&mut out);
        self.ownership.note(&self.view(), &self.state);
        if std::mem::take(&mut self.snapshot_for_new_member) {
            self.snapshot_now()?;
        } else {
            self.maybe_compact()?;
        }
        Ok(out)
    }

    fn note_role_change(&mut self, out: &mut ReadyOutput) {
        let (role, term) = (self.raw.raft.state, self.raw.raft.term);
        if role != self.role || term != self.term {
            if self.role == StateRole::Leader && (role != StateRole::Leader || term != self.term) {
                out.abandoned.extend(std::mem::take(&mut self.pending));
            }
            if role != self.role {
                self.raw.raft.set_priority(self.config.id as i64);
                info!(member = self.config.id, term, role = ?role, leader = self.raw.raft.leader_id, "raft role changed");
                let view = self.view();
                self.ownership
                    .role_changed(&view, role == StateRole::Leader);
            }
            self.role = role;
            self.term = term;
        }
    }

    fn install_snapshot(
        &mut self,
        snapshot: Snapshot,
        out: &mut ReadyOutput,
    ) -> Result<(), ReplicaError> {
        let index = snapshot.get_metadata().index;
        let snapshot_term = snapshot.get_metadata().term;
        let (started, bytes) = (std::time::Instant::now(), snapshot.get_data().len());
        let state = State::decode_snapshot(snapshot.get_data())
            .map_err(|source| ReplicaError::BadSnapshot { index, source })?;
        let decoded = started.elapsed();
        self.raw.mut_store().apply_snapshot(snapshot)?;
        info!(
            member = self.config.id,
            index,
            services = state.len(),
            bytes,
            decode_ms = decoded.as_secs_f64() * 1000.0,
            write_ms = (started.elapsed() - decoded).as_secs_f64() * 1000.0,
            "installed snapshot from the leader"
        );
        self.state = state;
        self.applied = index;
        self.applied_term = snapshot_term;
        out.state_changed = true;
        out.installed_snapshot = Some(index);
        Ok(())
    }

    pub(super) fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        out: &mut ReadyOutput,
    ) -> Result<(), ReplicaError> {
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    // A new leader's empty entry.
                }
                EntryType::EntryNormal => match Batch::decode(&entry.data) {
                    Ok(batch) => {
                        let revision = self.state.revision();
                        let owners_before = batch
                            .commands
                            .iter()
                            .any(|c| matches!(c, Command::SetVipOwners(_)))
                            .then(|| self.state.vip_owners().clone());
                        let outcomes: Vec<_> =
                            batch.commands.iter().map(|c| self.state.apply(c)).collect();
                        if self.state.revision() != revision {
                            self.state
                                .note_change_proposed_at(batch.proposed_at_unix_us);
                        }
                        if let Some(before) = owners_before {
                            let after = self.state.vip_owners();
                            let moved = before
                                .iter()
                                .filter(|(vip, owner)| after.get(vip) != Some(owner))
                                .count()
                                + after.keys().filter(|vip| !before.contains_key(vip)).count();
                            crate::metrics::METRICS
                                .vip_owner_changes
                                .inc_by(moved as u64);
                        }
                        out.state_changed = true;
                        if batch.proposer == self.config.id
                            && self.pending.remove(&batch.proposal_id)
                        {
                            out.completed.push((batch.proposal_id, outcomes));
                        }
                    }
                    // Every member decodes the same bytes the same way, so
                    // skipping keeps them equal.
                    Err(e) => {
                        warn!(index = entry.index, error = %e, "log entry skipped: it does not decode")
                    }
                },
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(raft::Error::CodecError)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.record_members(&[(cc.get_change_type(), cc.node_id)], &entry.context);
                    self.raw.mut_store().set_conf_state(cs)?;
                    out.state_changed = true;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(raft::Error::CodecError)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    let changes: Vec<_> = cc
                        .get_changes()
                        .iter()
                        .map(|c| (c.get_change_type(), c.node_id))
                        .collect();
                    self.record_members(&changes, &entry.context);
                    self.raw.mut_store().set_conf_state(cs)?;
                    out.state_changed = true;
                }
            }
            self.applied = entry.index;
            self.applied_term = entry.term;
        }
        Ok(())
    }

    /// Keeps the replicated member addresses in step with a configuration
    /// change (an added member's address is the change's context).
    fn record_members(&mut self, changes: &[(ConfChangeType, u64)], context: &[u8]) {
        for &(kind, id) in changes {
            match kind {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    let role = if kind == ConfChangeType::AddLearnerNode {
                        "learner"
                    } else {
                        "voter"
                    };
                    if self.state.members().contains_key(&id) {
                        // A promotion or demotion: the same member and
                        // addresses, another role.
                        info!(member = id, role, "member's role changed");
                        continue;
                    }
                    let context = String::from_utf8_lossy(context).into_owned();
                    let mut parts = context.split(' ');
                    let address = parts.next().unwrap_or_default().to_owned();
                    info!(member = id, address, role, "member added");
                    self.state.set_member(id, address);
                    if let Some(admin) = parts.next().filter(|a| !a.is_empty()) {
                        self.state.set_admin_address(id, admin.to_owned());
                    }
                    // A new member starts from a snapshot, and raft-rs
                    // refuses one whose configuration does not hold it: the
                    // next snapshot must be taken after this change.
                    self.snapshot_for_new_member = true;
                }
                ConfChangeType::RemoveNode => {
                    info!(member = id, "member removed");
                    self.state.remove_member(id);
                    if id == self.config.id {
                        self.removed = true;
                    }
                }
            }
        }
    }

    /// Snapshots the applied state and compacts the log once enough entries
    /// have been applied since the last snapshot.
    fn maybe_compact(&mut self) -> Result<(), ReplicaError> {
        let since = self
            .applied
            .saturating_sub(self.raw.store().snapshot_index());
        if since < self.config.snapshot_after_entries {
            return Ok(());
        }
        self.snapshot_now()
    }

    /// Snapshots the applied state and compacts the log now.
    pub fn snapshot_now(&mut self) -> Result<(), ReplicaError> {
        if self.applied == 0 || self.applied == self.raw.store().snapshot_index() {
            return Ok(());
        }
        let term = self.raw.raft.raft_log.term(self.applied)?;
        let started = std::time::Instant::now();
        let mut snapshot = Snapshot::default();
        snapshot.set_data(self.state.encode_snapshot().into());
        let (bytes, encoded) = (snapshot.get_data().len(), started.elapsed());
        let meta = snapshot.mut_metadata();
        meta.index = self.applied;
        meta.term = term;
        meta.set_conf_state(self.raw.store().conf_state());
        self.raw.mut_store().compact(snapshot)?;
        // Its size and cost: what a joiner receives, and what the raft
        // thread spends on it (encoding, then writing and compacting).
        info!(
            member = self.config.id,
            index = self.applied,
            bytes,
            encode_ms = encoded.as_secs_f64() * 1000.0,
            write_ms = (started.elapsed() - encoded).as_secs_f64() * 1000.0,
            "snapshot taken, log compacted"
        );
        Ok(())
    }
}
