//! What becomes of a proposal: why it was not committed (one type for the
//! replica, the node thread and the `Proposer` alike), or the outcome of
//! each of its commands.
//!
//! Must not: import anything but the model (the replica, the node and the
//! proposer all use it).

use std::sync::Arc;

use crate::model::{Applied, ApplyError, State};

/// Why a proposal was not committed. Retryable: propose again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The log has stopped (the member is shutting down).
    #[error("the replicated log is not running")]
    Stopped,
    /// Only the leader takes proposals; `leader` is 0 when none is known.
    #[error("this member is not the leader (leader: {leader})")]
    NotLeader { leader: u64 },
    /// Raft refused the proposal (a leadership transfer in progress, say).
    #[error("proposal dropped: {0}")]
    Dropped(String),
    /// Leadership was lost before the proposal was applied: it may or may
    /// not be applied later. Sources propose differences against the
    /// applied state, so proposing again is safe.
    #[error("leadership changed; the proposal's outcome is unknown")]
    Unknown,
}

/// The outcome of each command of a committed proposal, in order.
pub type Outcomes = Vec<Result<Applied, ApplyError>>;

/// A committed proposal: what each command did, and the applied state
/// published with it, which holds this proposal and nothing of a later
/// leader's (a proposal completes only in its proposer's term): a state a
/// source that keeps its own view of the objects can take as its base.
#[derive(Debug, Clone)]
pub struct Committed {
    pub outcomes: Outcomes,
    pub state: Arc<State>,
}
