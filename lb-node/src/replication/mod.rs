//! How commands become committed state. Sources hold a [`Proposer`]; every
//! member reads the applied state from a `watch` channel.
//!
//! Today there is one implementation, `standalone`: a single member that
//! applies each proposal at once. The Raft-replicated log takes the same
//! place behind the same `Proposer`, so sources and the reconciler do not
//! change when it lands.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::model::{Applied, ApplyError, Command, State};

mod standalone;

pub use standalone::standalone;

/// Why a proposal was not committed. Retryable: propose again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The log has stopped (the member is shutting down).
    #[error("the replicated log is not running")]
    Stopped,
}

/// The outcome of each command of a committed proposal, in order.
pub type Outcomes = Vec<Result<Applied, ApplyError>>;

struct Proposal {
    commands: Vec<Command>,
    done: oneshot::Sender<Outcomes>,
}

/// A cloneable handle to propose commands to the log.
#[derive(Clone, Debug)]
pub struct Proposer {
    tx: mpsc::Sender<Proposal>,
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
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Proposal { commands, done })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.map_err(|_| ProposeError::Stopped)
    }
}

/// The applied state, as every member publishes it.
pub type StateWatch = watch::Receiver<Arc<State>>;

mod raft_log;
pub mod replica;
pub mod sim;
pub mod storage;
