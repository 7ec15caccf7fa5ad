//! The Kubernetes source: the leader is the only member that talks to the
//! API server. It watches Services and EndpointSlices, turns what it sees
//! into commands and proposes them; Raft carries them to the other members,
//! which open no connection to the API server at all.
//!
//! - `translate`: pure: one Service and its slices to virtual services.
//! - `view`: pure: the leader's view and what a batch of events means.
//! - `watcher`: list and watch of one kind with kube-rs, resuming from the
//!   replicated cursor; `resume`: pure: where it goes next, and when.
//!
//! ```text
//!  API server ──watch services──▶ ┐
//!             ──watch slices────▶ ┴─ events ─▶ batcher ─▶ View::plan ─▶ propose (one entry:
//!                                                               objects + cursor + table changes)
//!             ◀──patch status.loadBalancer── status writer ◀── committed address assignments
//! ```
//!
//! Batching: the first change after a quiet spell is proposed at once;
//! changes that arrive while a proposal is in flight, or within
//! `batch_window` of the last one, are coalesced into the next entry.
//! Every proposal waits for its commit before the next is planned, so the
//! view is always in step with the committed state. If a proposal fails
//! (leadership lost), the source stops; the next leader builds its view
//! from the log.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::unix_ms;
use crate::config::KubernetesSourceConfig;
use crate::metrics::METRICS;
use crate::model::{KubeKind, State};
use crate::replication::Proposer;
use crate::source::SourceStatus;

mod resume;
pub mod slice;
pub mod translate;
pub mod view;
pub mod watcher;

use view::{Plan, Touched, View};

/// Most events held for one batch; more wait in the channel.
const MAX_EVENTS_PER_BATCH: usize = 20_000;

/// Kubernetes Services per part of a new leader's full reconcile (25 ms
/// of planning each at 50,000 Services, 40-170 ms at 100,000).
const RECONCILE_PART: usize = 2_000;
/// While events wait, the reconcile takes one part per this long: the
/// changes made during an election (the backlog) go first.
const RECONCILE_YIELDS_FOR: Duration = Duration::from_millis(250);
/// How often a follower brings its view in step. A takeover at 1,000
/// changes/s resumes in 190-310 ms, catching up with up to a period of
/// changes included. The one run with 250 ms had an election storm under
/// the stream (followers' steps of 100-900 ms on a saturated machine; the
/// period not proven the cause), so a shorter one waits for the leaner
/// decoded form (issue 23).
const STANDBY_EVERY: Duration = Duration::from_secs(1);
/// How many warnings of one plan are logged (the rest are counted).
const WARNINGS_LOGGED: usize = 20;

/// The kube-rs client for the configured cluster. Requests carry a user
/// agent naming this member, so the API server's audit log (and the test
/// server) can tell members apart.
pub async fn client(config: &KubernetesSourceConfig, node_id: u64) -> anyhow::Result<kube::Client> {
    let mut kube_config = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("no kubeconfig configured and not running in a cluster")?,
    };
    let agent = format!("lb-node/{} (member {node_id})", env!("CARGO_PKG_VERSION"));
    kube_config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent).context("user agent")?,
    ));
    kube::Client::try_from(kube_config).context("cannot build the Kubernetes client")
}

/// Where the configured API server is, for status.
pub fn location(config: &KubernetesSourceConfig) -> String {
    match &config.kubeconfig {
        Some(path) => format!("kubeconfig {}", path.display()),
        None => "in-cluster".to_owned(),
    }
}

/// Logs a plan's warnings and counts them in the source's status (`lbctl
/// status`, `lbctl events`).
fn log_plan(plan: &Plan, status: &watch::Sender<SourceStatus>) {
    if !plan.warnings.is_empty() {
        let now = unix_ms(SystemTime::now());
        status.send_modify(|s| s.note_warnings(&plan.warnings, now));
    }
    METRICS.skipped_fields.inc_by(plan.warnings.len() as u64);
    for w in plan.warnings.iter().take(WARNINGS_LOGGED) {
        warn!("{w}");
    }
    if plan.warnings.len() > WARNINGS_LOGGED {
        warn!(
            more = plan.warnings.len() - WARNINGS_LOGGED,
            "more objects or fields left out"
        );
    }
}

/// Proposes a plan's entries in order (`Proposer::propose_pipelined`: at
/// once when they are few; what commits is a prefix of them, so a split
/// plan's cursors, last, never commit without the objects before them);
/// false when one failed. `held` follows what
/// the view holds: what the plan touched is unsure until its last entry
/// commits, and the state published with that entry is then the view's
/// base.
async fn propose(
    proposer: &Proposer,
    plan: Plan,
    status_writes: &StatusWriter,
    held: &mut Held,
) -> bool {
    held.unsure.extend(plan.touched);
    let entries = plan.entries.len();
    let started = Instant::now();
    let committed = match proposer.propose_pipelined(plan.entries).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "proposal failed; the source stops, and its view takes what it proposed from the committed state again");
            return false;
        }
    };
    debug!(
        entries,
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "plan committed"
    );
    // A plan with no entries changed nothing the state does not hold:
    // what it touched stays unsure until a later commit.
    if let Some(c) = committed {
        held.base = c.state;
        held.unsure = Touched::default();
    }
    for (service, addresses) in plan.status_writes {
        status_writes.send(service, addresses);
    }
    true
}

/// Plans on a blocking thread: at 100,000 Services a part of the
/// reconcile or a backlog's batch plans for 40-240 ms, which on the async
/// runtime would hold up the member's BFD, Raft and admin tasks. `None`
/// when planning panicked (the view is lost; the source restarts and the
/// view is built again).
async fn off_the_runtime<T: Send + 'static>(
    view: &mut Option<View>,
    plan: impl FnOnce(&mut View) -> T + Send + 'static,
) -> Option<T> {
    let mut v = view.take()?;
    match tokio::task::spawn_blocking(move || {
        let planned = plan(&mut v);
        (v, planned)
    })
    .await
    {
        Ok((v, planned)) => {
            *view = Some(v);
            Some(planned)
        }
        Err(e) => {
            error!(error = %e, "planning failed; the Kubernetes source restarts");
            None
        }
    }
}

/// A follower's view of the stored objects, kept in step (`standby`),
/// for the source to start from when this member becomes leader.
pub type Standby = Arc<tokio::sync::Mutex<Option<view::Warm>>>;

/// On a cluster member that does not lead: keeps the view of the stored
/// Kubernetes objects in step with the applied state (every
/// `STANDBY_EVERY`, on a blocking thread; a pass costs what changed since
/// the last), so that a new leader's source starts from it instead of
/// building it whole. Idle while this member leads (its source holds the
/// view then, and gives it back when it stops: `Warm::resumed`); built
/// whole only when there is none (the first term, or a source that ended
/// without giving it back).
pub async fn standby(
    cache: Standby,
    config: KubernetesSourceConfig,
    states: watch::Receiver<Arc<State>>,
    raft: watch::Receiver<crate::replication::node::RaftStatus>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(STANDBY_EVERY) => {}
        }
        if raft.borrow().is_leader() {
            continue;
        }
        let state = states.borrow().clone();
        let (translate, pools) = (config.translate.clone(), config.address_pools.clone());
        let mut guard = cache.clone().lock_owned().await;
        // Leading since: the source took the view (or is about to).
        if raft.borrow().is_leader() {
            continue;
        }
        let stepped = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            // Out of the cache while it steps, back only once done: a
            // step cut short (a panic) leaves no half-stepped view there.
            let (warm, changed, built) = match guard.take() {
                Some(mut warm) => {
                    let changed = warm.catch_up(&state);
                    (warm, changed, false)
                }
                None => {
                    let warm = view::Warm::new(state, translate, pools);
                    let objects = warm.len();
                    (warm, objects, true)
                }
            };
            *guard = Some(warm);
            (changed, built, started.elapsed(), guard)
        })
        .await;
        match stepped {
            Ok((changed, built, took, guard)) => {
                if built || took >= Duration::from_millis(100) {
                    info!(
                        changed,
                        built,
                        objects = guard.as_ref().map_or(0, view::Warm::len),
                        took_ms = took.as_millis() as u64,
                        "Kubernetes view kept ready for a takeover"
                    );
                }
            }
            Err(e) => warn!(error = %e, "keeping the Kubernetes view ready failed"),
        }
    }
}

/// Runs the Kubernetes source until `stop` or a failed proposal.
pub async fn run(
    config: KubernetesSourceConfig,
    node_id: u64,
    proposer: Proposer,
    states: watch::Receiver<Arc<State>>,
    status: watch::Sender<SourceStatus>,
    standby: Option<Standby>,
    stop: CancellationToken,
) {
    let client = match client(&config, node_id).await {
        Ok(c) => c,
        Err(e) => {
            error!(
                error = format!("{e:#}"),
                "cannot start the Kubernetes source; the table keeps serving"
            );
            status.send_modify(|s| s.last_error = format!("{e:#}"));
            // The supervisor restarts a source that ended.
            return;
        }
    };
    let stop = stop.child_token();
    let _stop_children = stop.clone().drop_guard();
    let started = Instant::now();
    // The standby slot is held while the source runs (the follower's
    // task waits for it), and the view goes back into it when the source
    // ends: this member's next term, or a takeover after a later one,
    // starts from it instead of a view built whole.
    let mut slot = match standby {
        Some(cache) => Some(cache.lock_owned().await),
        None => None,
    };
    let warm = slot.as_mut().and_then(|s| s.take());
    let ready = warm.as_ref().map_or(0, view::Warm::len);
    let state = states.borrow().clone();
    // The watches start from the committed cursors at once; what they
    // deliver waits in the channel while the view is built from the same
    // state.
    let (events_tx, mut events) = mpsc::channel(MAX_EVENTS_PER_BATCH);
    let (connection_tx, mut connection) = watch::channel(watcher::Connection::default());
    let namespace = config.namespace.clone();
    let api_of = |resource: ApiResource| -> Api<DynamicObject> {
        match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        }
    };
    let services = api_of(ApiResource::erase::<Service>(&()));
    let slices = api_of(ApiResource::erase::<EndpointSlice>(&()));
    tokio::spawn(watcher::run(
        watcher::KindWatch {
            api: services,
            kind: KubeKind::Service,
            trim: view::trim_service as fn(Service) -> Service,
            label_selector: config.label_selector.clone(),
            cursor: state.kube().services_cursor.clone(),
            events: events_tx.clone(),
            connection: connection_tx.clone(),
        },
        stop.clone(),
    ));
    tokio::spawn(watcher::run(
        watcher::KindWatch {
            api: slices,
            kind: KubeKind::EndpointSlice,
            trim: view::trim_slice as fn(EndpointSlice) -> EndpointSlice,
            label_selector: None,
            cursor: state.kube().endpoint_slices_cursor.clone(),
            events: events_tx.clone(),
            connection: connection_tx.clone(),
        },
        stop.clone(),
    ));
    if config.pod_routes {
        // Cluster-scoped: all Nodes, whatever `namespace` says.
        tokio::spawn(watcher::run(
            watcher::KindWatch {
                api: Api::all_with(client.clone(), &ApiResource::erase::<Node>(&())),
                kind: KubeKind::Node,
                trim: view::trim_node as fn(Node) -> Node,
                label_selector: None,
                cursor: state.kube().nodes_cursor.clone(),
                events: events_tx,
                connection: connection_tx,
            },
            stop.clone(),
        ));
    } else {
        // The channel closes when the watches that hold it end.
        drop((events_tx, connection_tx));
    }
    let mut warnings = Vec::new();
    let (translate, pools, at) = (
        config.translate.clone(),
        config.address_pools.clone(),
        state.clone(),
    );
    // What the view holds: the view of `base` except for `unsure`.
    let mut held = Held {
        base: state.clone(),
        unsure: Touched::default(),
    };
    let built = tokio::task::spawn_blocking(move || {
        let view = match warm {
            // The follower's view, caught up with the last changes.
            Some(mut warm) => {
                warm.catch_up(&at);
                warm.into_view(&mut warnings)
            }
            None => View::new(&at, translate, pools, &mut warnings),
        };
        (view, warnings)
    })
    .await;
    let Ok((view, warnings)) = built else {
        error!("building the view of the Kubernetes objects failed; the source restarts");
        return;
    };
    for w in &warnings {
        warn!("{w}");
    }
    if !warnings.is_empty() {
        let now = unix_ms(SystemTime::now());
        status.send_modify(|s| s.note_warnings(&warnings, now));
    }
    let writer = StatusWriter::start(client.clone(), stop.clone());

    // A new leader also makes the table agree with the committed objects
    // (a no-op unless the last leader died in a split batch, or the
    // translation settings changed). At 50,000 Services that takes most of
    // a second, so it is done in parts between event batches: changes
    // flow at once, and a batch plans its Services against the table
    // whatever the reconcile has reached.
    let mut unreconciled = view.reconcile_list(&state);
    // Lent to a blocking thread for each plan (`off_the_runtime`).
    let mut view = Some(view);
    unreconciled.reverse();
    let (mut reconcile_commands, reconcile_started) = (0usize, Instant::now());
    info!(
        services = state.kube().services.len(),
        endpoint_slices = state.kube().endpoint_slices.len(),
        services_cursor = %state.kube().services_cursor,
        endpoint_slices_cursor = %state.kube().endpoint_slices_cursor,
        view_ready = ready,
        took_ms = started.elapsed().as_millis() as u64,
        "Kubernetes source: resuming from the committed objects"
    );
    drop(state);

    let mut last_proposal: Option<Instant> = None;
    // The reconcile's parts wait while events do (until it has waited
    // `RECONCILE_YIELDS_FOR`): what changed is planned before what is
    // only checked.
    let mut last_part = Instant::now();
    // Runs until the source stops; then the view is kept (below).
    async {
        loop {
            if !unreconciled.is_empty()
                && (events.is_empty() || last_part.elapsed() >= RECONCILE_YIELDS_FOR)
            {
                last_part = Instant::now();
                let part: Vec<String> =
                    unreconciled.split_off(unreconciled.len().saturating_sub(RECONCILE_PART));
                let (state, services) = (states.borrow().clone(), part.len());
                let planning = Instant::now();
                let Some(plan) =
                    off_the_runtime(&mut view, move |v| v.reconcile_some(&state, &part)).await
                else {
                    return;
                };
                debug!(
                    services,
                    commands = plan.service_commands,
                    took_ms = planning.elapsed().as_secs_f64() * 1e3,
                    "reconcile part planned"
                );
                log_plan(&plan, &status);
                if !plan.entries.is_empty() {
                    info!(
                        commands = plan.service_commands,
                        "the table disagreed with the committed Kubernetes objects; reconciling"
                    );
                }
                reconcile_commands += plan.service_commands;
                if !propose(&proposer, plan, &writer, &mut held).await {
                    return;
                }
                if unreconciled.is_empty() {
                    info!(
                        commands = reconcile_commands,
                        took_ms = reconcile_started.elapsed().as_millis() as u64,
                        "Kubernetes source: the table agrees with the committed objects"
                    );
                }
            }
            let mut batch = Vec::new();
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                changed = connection.changed() => {
                    if changed.is_err() { return; }
                    let c = connection.borrow_and_update().clone();
                    status.send_modify(|s| {
                        s.disconnected_since_unix_ms = c.disconnected_since.map_or(0, unix_ms);
                        s.last_error = c.last_error.clone();
                    });
                    continue;
                }
                event = events.recv() => match event {
                    Some(e) => batch.push(e),
                    None => return,
                },
                // Nothing waiting: go on with the reconcile.
                () = std::future::ready(()), if !unreconciled.is_empty() => continue,
            }
            // Coalesce: everything already waiting, and under load whatever
            // arrives until the window since the last proposal has passed.
            if let Some(last) = last_proposal {
                let until = last + config.batch_window;
                while batch.len() < MAX_EVENTS_PER_BATCH {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.into()) => break,
                        event = events.recv() => match event {
                            Some(e) => batch.push(e),
                            None => break,
                        },
                    }
                }
            }
            while batch.len() < MAX_EVENTS_PER_BATCH {
                match events.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let state = states.borrow().clone();
            let events_in_batch = batch.len();
            let planning = Instant::now();
            let Some(plan) = off_the_runtime(&mut view, move |v| v.plan(&state, batch)).await
            else {
                return;
            };
            METRICS
                .kube_plan_seconds
                .observe(planning.elapsed().as_secs_f64());
            METRICS.kube_batch_events.observe(events_in_batch as f64);
            log_plan(&plan, &status);
            debug!(
                events = events_in_batch,
                objects = plan.objects_changed,
                commands = plan.service_commands,
                entries = plan.entries.len(),
                took_ms = planning.elapsed().as_secs_f64() * 1e3,
                "batch"
            );
            last_proposal = Some(Instant::now());
            if !propose(&proposer, plan, &writer, &mut held).await {
                return;
            }
            status.send_modify(|s| {
                s.last_loaded_unix_ms = unix_ms(SystemTime::now());
            });
        }
    }
    .await;
    if let (Some(mut slot), Some(view)) = (slot, view) {
        let state = states.borrow().clone();
        let unsure = held.unsure.objects.len() + held.unsure.services.len();
        let kept = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            *slot = Some(view::Warm::resumed(view, held.base, &held.unsure, &state));
            started.elapsed()
        })
        .await;
        match kept {
            Ok(took) => info!(
                unsure,
                took_ms = took.as_millis() as u64,
                "Kubernetes source stopped; its view kept for the next takeover"
            ),
            Err(e) => warn!(error = %e, "keeping the Kubernetes view failed; it is built again"),
        }
    }
}

/// What a leader's view holds: the view of `base` (the state its last
/// committed proposal was published with) except for `unsure`, what
/// plans since changed in it that is not committed yet, or was not.
#[derive(Debug)]
struct Held {
    base: Arc<State>,
    unsure: Touched,
}

/// Writes `status.loadBalancer.ingress` of Services, latest wish per
/// Service, retrying failures with backoff.
#[derive(Debug, Clone)]
struct StatusWriter {
    tx: mpsc::UnboundedSender<(String, Vec<IpAddr>)>,
}

impl StatusWriter {
    fn start(client: kube::Client, stop: CancellationToken) -> StatusWriter {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Vec<IpAddr>)>();
        tokio::spawn(async move {
            let mut pending: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
            let mut retry = Duration::from_millis(250);
            loop {
                if pending.is_empty() {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        item = rx.recv() => match item {
                            Some((s, a)) => { pending.insert(s, a); }
                            None => return,
                        },
                    }
                }
                while let Ok((s, a)) = rx.try_recv() {
                    pending.insert(s, a);
                }
                let mut failed = false;
                for (service, addresses) in std::mem::take(&mut pending) {
                    match write_status(&client, &service, &addresses).await {
                        Ok(()) => {
                            METRICS.status_writes.with_label_values(&["ok"]).inc();
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            debug!(service, "service gone; status not written");
                        }
                        Err(e) => {
                            METRICS.status_writes.with_label_values(&["error"]).inc();
                            warn!(service, error = %e, "cannot write status.loadBalancer; retrying");
                            pending.entry(service).or_insert(addresses);
                            failed = true;
                        }
                    }
                }
                if failed {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(30));
                } else {
                    retry = Duration::from_millis(250);
                }
            }
        });
        StatusWriter { tx }
    }

    fn send(&self, service: String, addresses: Vec<IpAddr>) {
        let _ = self.tx.send((service, addresses));
    }
}

async fn write_status(
    client: &kube::Client,
    service: &str,
    addresses: &[IpAddr],
) -> Result<(), kube::Error> {
    let Some((namespace, name)) = service.split_once('/') else {
        return Ok(());
    };
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let ingress: Vec<serde_json::Value> = addresses
        .iter()
        .map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"}))
        .collect();
    // None left (the Service is no longer ours): the list goes, as a real
    // controller leaves it (`loadBalancer: {}`).
    let ingress = if ingress.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::Array(ingress)
    };
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
