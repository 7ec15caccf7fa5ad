//! The single-member log: applies each proposal as it arrives. Nothing is
//! written to disk: a standalone member rebuilds its table from its source
//! (the services file) when it starts.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Proposal, Proposer, StateWatch};
use crate::model::State;

/// A standalone log: the proposer handle, the state watch, and the task to
/// spawn (it ends on `shutdown` or when every proposer is dropped).
pub fn standalone(
    initial: State,
    shutdown: CancellationToken,
) -> (Proposer, StateWatch, impl Future<Output = ()> + Send) {
    let (tx, mut rx) = mpsc::channel::<Proposal>(64);
    let (state_tx, state_rx) = watch::channel(Arc::new(initial));
    let task = async move {
        loop {
            let proposal = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            let mut state = State::clone(&state_tx.borrow());
            let revision = state.revision();
            let outcomes: Vec<_> = proposal
                .commands
                .iter()
                .map(|c| {
                    let outcome = state.apply(c);
                    match &outcome {
                        Ok(applied) => debug!(revision = state.revision(), ?applied, "applied"),
                        Err(e) => warn!(revision = state.revision(), error = %e, "command refused"),
                    }
                    outcome
                })
                .collect();
            if state.revision() != revision {
                // Proposed and applied at once: the dataplane's propagation
                // figure (`lb_propagation_seconds`) counts from here, as a
                // cluster's does from the proposal.
                state.note_change_proposed_at(crate::clock::now_unix_us());
            }
            let state = Arc::new(state);
            state_tx.send_replace(state.clone());
            let _ = proposal.done.send(super::Committed { outcomes, state });
        }
    };
    (
        Proposer {
            sink: super::Sink::Standalone(tx),
        },
        state_rx,
        task,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Command;
    use crate::model::fixtures::numbered_service;

    /// A change is stamped when it is applied, so that the dataplane's
    /// propagation figure is kept by a standalone member too (it was by a
    /// cluster's only).
    #[tokio::test]
    async fn a_change_is_stamped_with_its_time() {
        let shutdown = CancellationToken::new();
        let (proposer, states, task) = standalone(State::default(), shutdown.clone());
        let task = tokio::spawn(task);
        assert_eq!(states.borrow().changed_at_unix_us(), 0);
        let before = crate::clock::now_unix_us();
        let add = Command::UpsertService(numbered_service(1, 2));
        proposer.propose(vec![add]).await.expect("applied");
        let stamped = states.borrow().changed_at_unix_us();
        assert!(stamped >= before, "{stamped} < {before}");
        shutdown.cancel();
        task.await.expect("log task ends");
    }
}
