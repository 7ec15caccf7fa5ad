//! How commands become committed state. Sources hold a [`Proposer`]; every
//! member reads the applied state from a `watch` channel.
//!
//! Two implementations behind the same `Proposer`: `standalone`, a single
//! member that applies each proposal at once, and the Raft-replicated log
//! (`replica` driven by the `node` thread, `storage` on raft-engine, the
//! `transport` between members; `sim` runs replicas on a simulated
//! network). `start` opens the log and starts the node thread and the
//! peer server; `leave` is a member's clean stop (its VIPs and leadership
//! handed over first).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::model::{Command, State};

mod proposal;
mod standalone;

pub use proposal::{Committed, Outcomes, ProposeError};
pub use standalone::standalone;

struct Proposal {
    commands: Vec<Command>,
    done: oneshot::Sender<Committed>,
}

/// A cloneable handle to propose commands to the log.
#[derive(Clone, Debug)]
pub struct Proposer {
    sink: Sink,
}

#[derive(Clone, Debug)]
enum Sink {
    Standalone(mpsc::Sender<Proposal>),
    Raft(std::sync::mpsc::Sender<node::Input>),
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal")
            .field("commands", &self.commands.len())
            .finish()
    }
}

impl Proposer {
    /// Proposes a batch as one log entry and waits until it is committed
    /// and applied; returns what each command did. An empty batch is
    /// answered at once.
    pub async fn propose(&self, commands: Vec<Command>) -> Result<Outcomes, ProposeError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.propose_committed(commands).await?.outcomes)
    }

    /// `propose`, with the state published with the proposal (`Committed`).
    /// `commands` must not be empty.
    pub async fn propose_committed(
        &self,
        commands: Vec<Command>,
    ) -> Result<Committed, ProposeError> {
        let started = std::time::Instant::now();
        let result = self.send(commands).await;
        let metrics = &crate::metrics::METRICS;
        match &result {
            Ok(_) => {
                metrics.proposals.with_label_values(&["committed"]).inc();
                metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(ProposeError::NotLeader { .. }) => {
                metrics.proposals.with_label_values(&["not_leader"]).inc()
            }
            Err(_) => metrics.proposals.with_label_values(&["failed"]).inc(),
        }
        result
    }

    async fn send(&self, commands: Vec<Command>) -> Result<Committed, ProposeError> {
        match &self.sink {
            Sink::Standalone(tx) => {
                let (done, answer) = oneshot::channel();
                tx.send(Proposal { commands, done })
                    .await
                    .map_err(|_| ProposeError::Stopped)?;
                answer.await.map_err(|_| ProposeError::Stopped)
            }
            Sink::Raft(tx) => {
                let (done, answer) = oneshot::channel();
                tx.send(node::Input::Propose(commands, done))
                    .map_err(|_| ProposeError::Stopped)?;
                answer.await.map_err(|_| ProposeError::Stopped)?
            }
        }
    }

    /// Proposes commands from any member (the leader or a follower) and
    /// does not wait: for reports that the caller checks against the
    /// applied state and sends again if lost (health verdicts).
    pub fn report(&self, commands: Vec<Command>) {
        if commands.is_empty() {
            return;
        }
        match &self.sink {
            Sink::Standalone(tx) => {
                let (done, _answer) = oneshot::channel();
                let _ = tx.try_send(Proposal { commands, done });
            }
            Sink::Raft(tx) => {
                let _ = tx.send(node::Input::Report(commands));
            }
        }
    }

    /// A proposer into a Raft node thread.
    pub fn raft(inputs: std::sync::mpsc::Sender<node::Input>) -> Proposer {
        Proposer {
            sink: Sink::Raft(inputs),
        }
    }
}

/// The applied state, as every member publishes it.
pub type StateWatch = watch::Receiver<Arc<State>>;

pub mod leave;
pub mod node;
mod raft_log;
pub mod replica;
#[cfg(test)]
mod sim;
pub mod start;
pub mod storage;
pub mod transport;
