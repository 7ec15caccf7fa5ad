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
            state_tx.send_replace(Arc::new(state));
            let _ = proposal.done.send(outcomes);
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
