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

/// The most entries `Proposer::propose_pipelined` proposes at once (a
/// plan with more goes an entry at a time).
const PIPELINE_ENTRIES: usize = 8;

/// Where a proposal's outcome arrives.
enum Answer {
    Standalone(oneshot::Receiver<Committed>),
    Raft(oneshot::Receiver<Result<Committed, ProposeError>>),
}

impl Answer {
    async fn wait(self) -> Result<Committed, ProposeError> {
        match self {
            Answer::Standalone(a) => a.await.map_err(|_| ProposeError::Stopped),
            Answer::Raft(a) => a.await.map_err(|_| ProposeError::Stopped)?,
        }
    }
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
        Self::count(&result, started);
        result
    }

    /// Proposes entries in order; a plan of at most `PIPELINE_ENTRIES`
    /// entries goes at once, without waiting for each to commit (one
    /// append and one round trip instead of one per entry: a takeover's
    /// backlog), a bigger one an entry at a time as before. At 100,000
    /// Services a cold start's 201 entries all at once (one run), and in
    /// groups of 8 (two runs of three), were followed by elections again
    /// and again for minutes; the likely cause, not proven: the followers
    /// apply on the thread that answers the leader. The ones committed
    /// are always a prefix of `entries`: the log takes a group in order
    /// and refuses the rest once it refuses one, and an entry after a
    /// group goes only once the group committed. Answers with the last entry's `Committed`, or the first
    /// failure. Empty entries are skipped; `None` when all were.
    pub async fn propose_pipelined(
        &self,
        entries: Vec<Vec<Command>>,
    ) -> Result<Option<Committed>, ProposeError> {
        let entries: Vec<Vec<Command>> = entries.into_iter().filter(|c| !c.is_empty()).collect();
        let group = if entries.len() <= PIPELINE_ENTRIES {
            entries.len().max(1)
        } else {
            1
        };
        let mut entries = entries.into_iter().peekable();
        let mut last = None;
        while entries.peek().is_some() {
            let group: Vec<Vec<Command>> = entries.by_ref().take(group).collect();
            if let Some(c) = self.propose_group(group).await? {
                last = Some(c);
            }
        }
        Ok(last)
    }

    async fn propose_group(
        &self,
        entries: Vec<Vec<Command>>,
    ) -> Result<Option<Committed>, ProposeError> {
        let started = std::time::Instant::now();
        let mut answers = Vec::with_capacity(entries.len());
        match &self.sink {
            Sink::Standalone(_) => {
                for commands in entries {
                    answers.push(self.enqueue(commands).await?);
                }
            }
            Sink::Raft(tx) => {
                let mut proposals = Vec::with_capacity(entries.len());
                for commands in entries {
                    let (done, answer) = oneshot::channel();
                    proposals.push((commands, done));
                    answers.push(Answer::Raft(answer));
                }
                if !proposals.is_empty() {
                    tx.send(node::Input::ProposeAll(proposals))
                        .map_err(|_| ProposeError::Stopped)?;
                }
            }
        }
        let mut last = None;
        for answer in answers {
            let result = answer.wait().await;
            Self::count(&result, started);
            last = Some(result?);
        }
        Ok(last)
    }

    fn count(result: &Result<Committed, ProposeError>, started: std::time::Instant) {
        let metrics = &crate::metrics::METRICS;
        match result {
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
    }

    async fn send(&self, commands: Vec<Command>) -> Result<Committed, ProposeError> {
        self.enqueue(commands).await?.wait().await
    }

    /// Hands a proposal to the log; what it becomes arrives later.
    async fn enqueue(&self, commands: Vec<Command>) -> Result<Answer, ProposeError> {
        match &self.sink {
            Sink::Standalone(tx) => {
                let (done, answer) = oneshot::channel();
                tx.send(Proposal { commands, done })
                    .await
                    .map_err(|_| ProposeError::Stopped)?;
                Ok(Answer::Standalone(answer))
            }
            Sink::Raft(tx) => {
                let (done, answer) = oneshot::channel();
                tx.send(node::Input::Propose(commands, done))
                    .map_err(|_| ProposeError::Stopped)?;
                Ok(Answer::Raft(answer))
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
