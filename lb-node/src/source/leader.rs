//! Runs the configured source where it may propose: always on a
//! standalone member, and in a cluster only while this member leads (a
//! new leader starts it, a former one stops it).
//!
//! Must not: read the source itself (`file`, `kubernetes` do) or decide
//! leadership (Raft does).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::SourceConfig;
use crate::health::settings::Defaults;
use crate::model::State;
use crate::replication::Proposer;
use crate::replication::node::RaftStatus;
use crate::source::{SourceStatus, file, kubernetes};

/// What a source needs to run.
#[derive(Debug)]
pub struct SourceParts {
    pub source: SourceConfig,
    pub node_id: u64,
    /// The member config's health check defaults (`[health]`).
    pub health: Defaults,
    /// Counts SIGHUPs: the services file reloads on each.
    pub hangups: watch::Receiver<u64>,
    pub proposer: Proposer,
    pub states: watch::Receiver<Arc<State>>,
    pub status: watch::Sender<SourceStatus>,
    /// A follower's view of the Kubernetes objects, kept in step, for a
    /// quick start (`kubernetes::standby`).
    pub standby: Option<kubernetes::Standby>,
    /// The services file's text a standalone member applied at start
    /// (`file::run`'s `applied`): taken by the source's first run.
    pub applied_text: std::sync::Mutex<Option<String>>,
}

/// Starts the source: at once (`raft` None, standalone), or whenever this
/// member leads. The task ends on `shutdown`.
pub fn spawn(
    parts: SourceParts,
    raft: Option<watch::Receiver<RaftStatus>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let run_source = move |stop: CancellationToken| -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let p = &parts;
        match &p.source {
            SourceConfig::File(file) => Box::pin(file::run(
                p.applied_text
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take(),
                file.clone(),
                p.health,
                p.hangups.clone(),
                p.proposer.clone(),
                p.states.clone(),
                p.status.clone(),
                stop,
            )),
            SourceConfig::Kubernetes(k) => Box::pin(kubernetes::run(
                k.clone(),
                p.node_id,
                p.proposer.clone(),
                p.states.clone(),
                p.status.clone(),
                p.standby.clone(),
                stop,
            )),
        }
    };
    match raft {
        None => tokio::spawn(run_source(shutdown)),
        Some(status) => tokio::spawn(run_source_while_leader(status, run_source, shutdown)),
    }
}

/// Runs the source only while this member leads.
async fn run_source_while_leader<F, Fut>(
    mut status: watch::Receiver<RaftStatus>,
    run_source: F,
    shutdown: CancellationToken,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut running: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    loop {
        // A new leader starts the source only once it applied its first
        // entry: entries of the last leader that it commits on taking over
        // are then in the state the source starts from (otherwise its view
        // of the objects lags the table it compares against).
        let leader = {
            let s = status.borrow_and_update();
            s.is_leader() && s.applied_current_term
        };
        match (leader, running.is_some()) {
            (true, false) => {
                info!("leader: starting the source");
                let stop = shutdown.child_token();
                running = Some((stop.clone(), tokio::spawn(run_source(stop))));
            }
            (false, true) => {
                info!("no longer leader: stopping the source");
                if let Some((stop, task)) = running.take() {
                    stop.cancel();
                    let _ = task.await;
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = status.changed() => if changed.is_err() { break },
            // A source that ended on its own is restarted while leading.
            _ = tokio::time::sleep(Duration::from_secs(1)), if running.as_ref().is_some_and(|(_, t)| t.is_finished()) => {
                running = None;
            }
        }
    }
    if let Some((stop, task)) = running {
        stop.cancel();
        let _ = task.await;
    }
}
