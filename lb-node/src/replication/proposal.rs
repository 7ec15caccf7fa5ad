//! What becomes of a proposal: why it was not committed (one type for the
//! replica, the node thread and the `Proposer` alike), or the outcome of
//! each of its commands; and how entries proposed together reach the log
//! (in order, a prefix of them committed).
//!
//! Must not: import anything but the model (the replica, the node and the
//! proposer all use it).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::model::{Applied, ApplyError, Command, State};

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

/// Where a proposal's outcome goes.
pub type Answer = oneshot::Sender<Result<Committed, ProposeError>>;

/// Proposes entries in order; once `propose` refuses one, the rest are
/// refused without being proposed, so what commits is a prefix.
pub fn propose_in_order(
    proposals: Vec<(Vec<Command>, Answer)>,
    mut propose: impl FnMut(Vec<Command>) -> Result<u64, ProposeError>,
    waiting: &mut HashMap<u64, Answer>,
) {
    let mut refused: Option<ProposeError> = None;
    for (commands, done) in proposals {
        if let Some(e) = &refused {
            let _ = done.send(Err(e.clone()));
            continue;
        }
        match propose(commands) {
            Ok(id) => {
                waiting.insert(id, done);
            }
            Err(e) => {
                let _ = done.send(Err(e.clone()));
                refused = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log that refuses the second entry but would take the third must
    /// not be given the third: a split plan's cursors, last, would move
    /// past objects that never committed.
    #[test]
    fn entries_after_a_refused_one_are_refused_unproposed() {
        let mut answers = Vec::new();
        let proposals: Vec<(Vec<Command>, Answer)> = (0..3)
            .map(|_| {
                let (done, answer) = oneshot::channel();
                answers.push(answer);
                (Vec::new(), done)
            })
            .collect();
        let mut calls = 0u64;
        let mut waiting = HashMap::new();
        propose_in_order(
            proposals,
            |_| {
                calls += 1;
                if calls == 2 {
                    Err(ProposeError::Dropped("a transfer".into()))
                } else {
                    Ok(calls)
                }
            },
            &mut waiting,
        );
        assert_eq!(calls, 2, "the entry after the refused one was proposed");
        assert_eq!(waiting.keys().copied().collect::<Vec<_>>(), vec![1]);
        let mut answers = answers.into_iter();
        let first = answers.next().map(|mut a| a.try_recv());
        assert!(
            matches!(first, Some(Err(oneshot::error::TryRecvError::Empty))),
            "the first entry is waiting for its commit"
        );
        for mut a in answers {
            assert!(matches!(a.try_recv(), Ok(Err(ProposeError::Dropped(_)))));
        }
    }
}
