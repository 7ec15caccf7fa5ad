//! List and watch of one kind with the kube-rs client, resuming from a
//! cursor.
//!
//! A watch starts from the committed cursor (`resourceVersion`); only when
//! there is none yet, or the API server answers 410 Gone (its history no
//! longer reaches back that far), does it list, page by page, and hand the
//! complete list over to be diffed against the committed objects.
//! Bookmarks are requested and move the cursor. A watch that ends (the
//! server's timeout) resumes from the last event's version at once; one
//! that fails retries with capped exponential backoff while the table keeps
//! serving what it has ("fail static"). Where to go next, and when, is
//! `resume`'s (pure); this file does the requests.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kube::api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::resume::{Resume, Step};
use super::view::{Event, object_key};
use crate::metrics::METRICS;
use crate::model::KubeKind;

/// How long the API server keeps one watch open (it ends it then, and the
/// watch resumes from its last version).
const WATCH_TIMEOUT_SECONDS: u32 = 290;
/// Page size of a list.
const LIST_PAGE: u32 = 500;

/// Whether the watches reach the API server, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// When the first failure of the current outage happened; `None` when
    /// connected.
    pub disconnected_since: Option<SystemTime>,
    pub last_error: String,
}

/// A wait of the backoff, up to a quarter longer, so that members do not
/// retry in step.
fn jitter(base: Duration) -> Duration {
    base + base.mul_f64(rand::random::<f64>() / 4.0)
}

/// What one kind's watch needs. The API is untyped so that one malformed
/// object costs only itself: each object is decoded on its own, and a
/// list with a bad item is still a list.
#[derive(Debug)]
pub struct KindWatch<K> {
    pub api: Api<DynamicObject>,
    pub kind: KubeKind,
    pub trim: fn(K) -> K,
    pub label_selector: Option<String>,
    /// Where to resume; empty: list first.
    pub cursor: String,
    pub events: mpsc::Sender<Event>,
    pub connection: watch::Sender<Connection>,
}

/// The typed object, or why it is malformed (counted and logged).
fn decode<K: DeserializeOwned>(kind: KubeKind, object: DynamicObject) -> Option<K> {
    let name = object_key(&object.metadata);
    match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(k) => Some(k),
        Err(e) => {
            warn!(kind = kind.as_str(), object = name, error = %e, "malformed object; skipped (what it had stays programmed)");
            METRICS
                .malformed_objects
                .with_label_values(&[kind.as_str()])
                .inc();
            None
        }
    }
}

fn encode<K: Serialize>(kind: KubeKind, name: &str, object: &K) -> Option<Arc<[u8]>> {
    match serde_json::to_vec(object) {
        Ok(bytes) => Some(bytes.into()),
        Err(e) => {
            warn!(kind = kind.as_str(), object = name, error = %e, "cannot encode object; skipped");
            None
        }
    }
}

fn failed(connection: &watch::Sender<Connection>, kind: KubeKind, error: &str) {
    METRICS
        .watch_errors
        .with_label_values(&[kind.as_str()])
        .inc();
    connection.send_if_modified(|c| {
        let was = c.clone();
        c.disconnected_since.get_or_insert_with(SystemTime::now);
        c.last_error = format!("{}: {error}", kind.as_str());
        *c != was
    });
}

fn connected(connection: &watch::Sender<Connection>) {
    connection.send_if_modified(|c| {
        let was = c.disconnected_since.is_some();
        if was {
            info!("API server reachable again");
        }
        *c = Connection::default();
        was
    });
}

/// Lists every object of the kind, page by page.
async fn list_all<K>(w: &KindWatch<K>) -> Result<(BTreeMap<String, Arc<[u8]>>, String), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let mut objects = BTreeMap::new();
    let mut params = ListParams::default().limit(LIST_PAGE);
    if let Some(selector) = &w.label_selector {
        params = params.labels(selector);
    }
    let mut version = String::new();
    loop {
        let page = w.api.list(&params).await?;
        if version.is_empty() {
            version = page.metadata.resource_version.clone().unwrap_or_default();
        }
        for item in page.items {
            let name = object_key(&item.metadata);
            let Some(item) = decode::<K>(w.kind, item) else {
                continue;
            };
            let trimmed = (w.trim)(item);
            if let Some(json) = encode(w.kind, &name, &trimmed) {
                objects.insert(name, json);
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params.continue_token = Some(token),
            None => break,
        }
    }
    Ok((objects, version))
}

/// Runs one kind's list and watch until `stop`.
pub async fn run<K>(mut w: KindWatch<K>, stop: CancellationToken)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
    let kind = w.kind;
    let label = kind.as_str();
    // Where to resume and when (`resume`, pure).
    let mut resume = Resume::new(std::mem::take(&mut w.cursor));
    loop {
        if stop.is_cancelled() {
            return;
        }
        if resume.next() == Step::List {
            info!(kind = label, "listing");
            METRICS.relists.with_label_values(&[label]).inc();
            match list_all(&w).await {
                Ok((objects, version)) => {
                    connected(&w.connection);
                    info!(kind = label, objects = objects.len(), version = %version, "listed");
                    resume.listed(&version);
                    let event = Event::Relisted {
                        kind,
                        objects,
                        resource_version: version,
                    };
                    if w.events.send(event).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(kind = label, error = %e, "list failed; the table keeps serving");
                    failed(&w.connection, kind, &e.to_string());
                    if sleep_or_stop(jitter(resume.failed()), &stop).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECONDS);
        if let Some(selector) = &w.label_selector {
            params = params.labels(selector);
        }
        let started = Instant::now();
        let from = resume.cursor().to_owned();
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            s = w.api.watch(&params, &from) => s,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(kube::Error::Api(status)) if status.code == 410 => {
                warn!(kind = label, version = %from, "410 Gone: history compacted; relisting");
                resume.gone();
                continue;
            }
            Err(e) => {
                warn!(kind = label, error = %e, "watch failed; the table keeps serving");
                failed(&w.connection, kind, &e.to_string());
                if sleep_or_stop(jitter(resume.failed()), &stop).await {
                    return;
                }
                continue;
            }
        };
        connected(&w.connection);
        let mut stream = std::pin::pin!(stream);
        let mut events = 0u64;
        let mut broken = false;
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => return,
                item = stream.next() => item,
            };
            let event = match item {
                None => break,
                Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                    let name = object_key(&o.metadata);
                    let version = o.resource_version().unwrap_or_default();
                    match decode::<K>(kind, o).and_then(|o| encode(kind, &name, &(w.trim)(o))) {
                        Some(json) => Event::Upsert {
                            kind,
                            name,
                            json,
                            resource_version: version,
                        },
                        // Skipped, but the cursor moves past it.
                        None => Event::Cursor {
                            kind,
                            resource_version: version,
                        },
                    }
                }
                Some(Ok(WatchEvent::Deleted(o))) => Event::Delete {
                    kind,
                    name: object_key(&o.metadata),
                    resource_version: o.resource_version().unwrap_or_default(),
                },
                Some(Ok(WatchEvent::Bookmark(b))) => Event::Cursor {
                    kind,
                    resource_version: b.metadata.resource_version,
                },
                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                    warn!(kind = label, version = %resume.cursor(), "410 Gone: history compacted; relisting");
                    resume.gone();
                    break;
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    warn!(kind = label, code = status.code, message = %status.message, "watch error");
                    failed(&w.connection, kind, &status.message);
                    broken = true;
                    break;
                }
                Some(Err(kube::Error::SerdeError(e))) => {
                    // One malformed object: skip it, keep the watch.
                    warn!(kind = label, error = %e, "malformed object in the watch; skipped");
                    METRICS.malformed_objects.with_label_values(&[label]).inc();
                    continue;
                }
                Some(Err(e)) => {
                    warn!(kind = label, error = %e, "watch stream broke; resuming");
                    broken = true;
                    break;
                }
            };
            events += 1;
            match &event {
                Event::Upsert {
                    resource_version, ..
                }
                | Event::Delete {
                    resource_version, ..
                }
                | Event::Cursor {
                    resource_version, ..
                } => resume.event(resource_version),
                Event::Relisted { .. } => {}
            }
            METRICS.watch_events.with_label_values(&[label]).inc();
            if w.events.send(event).await.is_err() {
                return;
            }
        }
        if let Some(wait) = resume.watch_ended(events, started.elapsed(), broken)
            && sleep_or_stop(jitter(wait), &stop).await
        {
            return;
        }
    }
}

/// Sleeps; true when stopped meanwhile.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
