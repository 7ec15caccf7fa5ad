//! Where a member's memory goes with N Kubernetes Services of 10
//! endpoints each (issue 23), counted by the allocator, not guessed: the
//! committed objects (the replicated state's trimmed JSON), the leader's
//! and the followers' decoded view, and the virtual-service table they
//! translate to.
//!
//! `kube-memory [SERVICES]` (default 100,000): the same objects as
//! `drill scale-100k` (`scale::service`, `scale::slice`), planned by the
//! member's own code (`View::plan`) and applied to a `State` as a member
//! applies them. Prints one JSON line: bytes held after each step and per
//! Service.

use std::sync::Arc;

use lb_node::model::{Command, KubeKind, State};
use lb_node::source::kubernetes::translate::TranslateConfig;
use lb_node::source::kubernetes::view::{Event, View, trim_service, trim_slice};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// The system allocator, counting what it hands out and takes back.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Bytes held now.
fn held() -> isize {
    let s = ALLOCATOR.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

/// What `make` makes, and the bytes it holds.
fn held_by<T, E>(make: impl FnOnce() -> Result<T, E>) -> Result<(T, isize), E> {
    let before = held();
    let made = make()?;
    Ok((made, held() - before))
}

/// One object's trimmed JSON, as the state holds it.
type Json = Arc<[u8]>;

fn trimmed_service(value: serde_json::Value) -> anyhow::Result<Arc<[u8]>> {
    let object: k8s_openapi::api::core::v1::Service = serde_json::from_value(value)?;
    Ok(serde_json::to_vec(&trim_service(object))?.into())
}

fn trimmed_slice(value: serde_json::Value) -> anyhow::Result<Arc<[u8]>> {
    let object: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(value)?;
    Ok(serde_json::to_vec(&trim_slice(object))?.into())
}

fn main() -> anyhow::Result<()> {
    let services: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|e| anyhow::anyhow!("kube-memory: SERVICES {n:?}: {e}"))?,
        None => 100_000,
    };
    let endpoints = 10;
    let start = held();
    let mut events = Vec::with_capacity(2 * services);
    for i in 0..services {
        events.push(Event::Upsert {
            kind: KubeKind::Service,
            name: format!("bench/svc-{i}"),
            json: trimmed_service(ha_tests::scale::service(i))?,
            resource_version: String::new(),
        });
        events.push(Event::Upsert {
            kind: KubeKind::EndpointSlice,
            name: format!("bench/svc-{i}-abcde"),
            json: trimmed_slice(ha_tests::scale::slice(i, endpoints, 0))?,
            resource_version: String::new(),
        });
    }
    let json_bytes: usize = events
        .iter()
        .map(|e| match e {
            Event::Upsert { json, .. } => json.len(),
            _ => 0,
        })
        .sum();
    let events_held = held() - start;

    // The leader's cold start: an empty view plans every object, and the
    // plan is applied as the log would.
    let mut state = State::default();
    let mut warnings = Vec::new();
    let mut view = View::new(
        &state,
        TranslateConfig::default(),
        Vec::new(),
        &mut warnings,
    );
    let plan = view.plan(&state, events);
    let entries = plan.entries.len();
    // The virtual services alone: a state given only the plan's table
    // commands.
    let before_table = held();
    let mut table_only = State::default();
    for command in plan.entries.iter().flatten() {
        if !matches!(command, Command::KubeObjects(_)) {
            table_only
                .apply(command)
                .map_err(|e| anyhow::anyhow!("kube-memory: apply: {e}"))?;
        }
    }
    let table = held() - before_table;
    drop(table_only);
    for command in plan.entries.iter().flatten() {
        state
            .apply(command)
            .map_err(|e| anyhow::anyhow!("kube-memory: apply: {e}"))?;
    }
    drop(plan);
    let with_view_and_state = held() - start;
    drop(view);
    let state_only = held() - start;
    // A follower's (or a new leader's) view, built whole from the state.
    let view = View::new(
        &state,
        TranslateConfig::default(),
        Vec::new(),
        &mut warnings,
    );
    let view_bytes = held() - start - state_only;
    drop(view);
    let objects = state_only - table;
    // The decoded objects alone, as the view holds them.
    let (decoded_services, decoded_slices, compact_slices) = {
        let jsons: Vec<(Json, Json)> = (0..services.min(1000))
            .map(|i| {
                Ok((
                    trimmed_service(ha_tests::scale::service(i))?,
                    trimmed_slice(ha_tests::scale::slice(i, endpoints, 0))?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let (s, one) = held_by(|| {
            jsons
                .iter()
                .map(|(s, _)| serde_json::from_slice(s))
                .collect::<Result<Vec<k8s_openapi::api::core::v1::Service>, _>>()
        })?;
        let (e, other) = held_by(|| {
            jsons
                .iter()
                .map(|(_, e)| serde_json::from_slice(e))
                .collect::<Result<Vec<k8s_openapi::api::discovery::v1::EndpointSlice>, _>>()
        })?;
        let (compact, lean) = held_by(|| {
            Ok::<_, serde_json::Error>(
                e.iter()
                    .cloned()
                    .map(lb_node::source::kubernetes::slice::Slice::from)
                    .collect::<Vec<_>>(),
            )
        })?;
        let n = jsons.len() as isize;
        let (one, other, lean) = (one / n, other / n, lean / n);
        drop((s, e, compact));
        (one, other, lean)
    };
    let per = |b: isize| b / services as isize;
    let report = serde_json::json!({
        "services": services,
        "endpoints_per_service": endpoints,
        "warnings": warnings.len(),
        "entries": entries,
        "trimmed_json_bytes": json_bytes,
        "events_held_bytes": events_held,
        "state_bytes": state_only,
        "state_kube_objects_bytes": objects,
        "state_table_bytes": table,
        "view_bytes": view_bytes,
        "leader_view_and_state_bytes": with_view_and_state,
        "per_service": {
            "trimmed_json": json_bytes / services,
            "state": per(state_only),
            "state_kube_objects": per(objects),
            "state_table": per(table),
            "view": per(view_bytes),
            "decoded_service": decoded_services,
            "decoded_slice": decoded_slices,
            "compact_slice": compact_slices,
        },
    });
    println!("{report}");
    Ok(())
}
