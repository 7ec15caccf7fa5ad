//! Wires a member's tasks together.
//!
//! ```text
//!   services file ──(SIGHUP, content change)──▶ source::file::run
//!                                                   │ Vec<Command>
//!                                                   ▼
//!                                          replication (Proposer)
//!                                                   │ watch<Arc<State>>
//!                          ┌────────────────────────┼─────────────────┐
//!                          ▼                        ▼                 ▼
//!             dataplane::reconcile::run      admin::serve       (announce, later)
//!             plan(desired, programmed)      GetStatus,
//!             ─▶ Dataplane::apply            ListServices
//! ```
//!
//! Each task owns its resource and ends on the shared `CancellationToken`.

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::{self, AdminService};
use crate::config::{Config, DataplaneKind, SourceConfig};
use crate::dataplane::MemoryDataplane;
use crate::dataplane::reconcile::{self, DataplaneStatus};
use crate::model::{State, commands_towards};
use crate::replication;
use crate::source::{SourceStatus, file};

/// Runs a member until `shutdown`. The admin listener is bound by the
/// caller. Returns an error when the initial services file is invalid.
pub async fn run(
    config: Config,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let SourceConfig::File {
        path,
        check_interval,
    } = &config.source;
    // Registered before anything else, so a SIGHUP never kills the member.
    let hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let services = file::load_services(path)?;
    let mut initial = State::default();
    for c in commands_towards(&initial.clone(), services) {
        initial.apply(&c)?;
    }
    info!(
        node = config.node_id,
        services = initial.len(),
        file = %path.display(),
        admin = %admin_listener.local_addr()?,
        "lb-node starting"
    );

    let (proposer, states, log_task) = replication::standalone(initial, shutdown.clone());
    let log_task = tokio::spawn(log_task);

    let (source_tx, source_rx) = watch::channel(SourceStatus {
        kind: "file",
        location: path.display().to_string(),
        last_loaded_unix_ms: reconcile::unix_ms(std::time::SystemTime::now()),
        last_error: String::new(),
    });
    let source_task = tokio::spawn(file::run(
        path.clone(),
        *check_interval,
        hangups,
        proposer,
        states.clone(),
        source_tx,
        shutdown.clone(),
    ));

    let (dataplane_tx, dataplane_rx) = watch::channel(DataplaneStatus::default());
    let dataplane = match config.dataplane.kind {
        DataplaneKind::Memory => MemoryDataplane::new(),
    };
    let reconcile_task = tokio::spawn(reconcile::run(
        dataplane,
        states.clone(),
        config.dataplane.repair_interval,
        dataplane_tx,
        shutdown.clone(),
    ));

    let admin = AdminService {
        node_id: config.node_id,
        states,
        source: source_rx,
        dataplane: dataplane_rx,
    };
    let admin_result = admin::serve(admin_listener, admin, shutdown.clone()).await;
    // The admin server ends only on shutdown (or a fatal error): stop the rest.
    shutdown.cancel();
    let _ = tokio::join!(log_task, source_task, reconcile_task);
    admin_result.context("admin server failed")?;
    info!("lb-node stopped");
    Ok(())
}
