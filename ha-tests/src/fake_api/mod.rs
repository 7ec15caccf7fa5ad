//! A fake Kubernetes API server for tests: no real kube-apiserver can be
//! installed here, so this one speaks the HTTP protocol that kube-rs and
//! kubectl use, for five resources: `v1/services` (with the `status`
//! subresource), `discovery.k8s.io/v1/endpointslices`, the cluster-scoped
//! `v1/nodes` and `v1/namespaces`, and `apps/v1/daemonsets` (stored only:
//! the README's steps that switch kube-proxy's DaemonSet off and back are
//! run against it).
//!
//! What it implements, as the real server does:
//! - discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>/<v>`)
//!   with short names (`svc`, `ns`, `no`, `ds`) and categories (`all`),
//!   and OpenAPI v3 documents with what kubectl's validation looks up, so
//!   kubectl needs no `--validate=false` (`present.rs`);
//! - list (cluster-wide or per namespace) with `resourceVersion` in the
//!   list metadata, `limit` and `continue` pages, `labelSelector`
//!   (equality terms), and server-side tables (`Accept: ...;as=Table`)
//!   with the columns a real server prints for each kind (`present.rs`);
//! - watch (`?watch=true`) from a `resourceVersion`: the history after it,
//!   then live events, `ADDED`/`MODIFIED`/`DELETED`, `BOOKMARK` when asked
//!   for (`allowWatchBookmarks`), `timeoutSeconds`; a version older than
//!   the compacted history gets an `ERROR` event with a 410 `Expired`
//!   Status, as etcd compaction causes; version "0" or none starts with
//!   synthetic `ADDED` events for every object;
//! - get, create (POST), replace (PUT, with optimistic concurrency on
//!   `metadata.resourceVersion`), JSON merge patch, JSON patch and
//!   strategic merge patch with its directives and the kinds' list merge
//!   keys (`patch.rs`), delete; the `status` subresource (PUT and PATCH
//!   change only `.status`, the main resource ignores it); `dryRun`
//!   (answered, not stored);
//! - validation of what clients send for the fields the appliance reads
//!   (ports, protocols, addresses, types), 422 with causes (`validate.rs`);
//! - namespaces: a namespaced object is created only in one that exists
//!   and is not terminating; deleting one terminates it, and its objects
//!   go with it a moment later;
//! - ClusterIP allocation for new Services (from 10.96.0.0/16), skipping
//!   every clusterIP held; an explicit one already held is refused.
//!
//! What it does not: authentication (any bearer token is accepted), field
//! selectors, server-side apply (415), protobuf bodies (kubectl's `create
//! service` and `create namespace` send protobuf: use manifests), OpenAPI
//! schemas (kubectl apply falls back to its built-in types' patch
//! strategies, which is what it uses for these kinds anyway) and v2,
//! unknown-field checks, consistent pagination across writes (pages are
//! cut from the current objects, not a snapshot; the watch from the
//! list's version repairs any difference, as it would for a real client).
//! `FakeApi::apply`, the tests' own door, stores what it is given without
//! validation (so tests can feed malformed objects to the client) and
//! makes the namespace if it is missing.
//!
//! For tests: per client (by `User-Agent`) it counts connections, requests
//! by verb and resource, and the bytes it sent; it can compact its history,
//! drop every open watch, refuse connections (the port is closed), and
//! answer 500 to the next requests.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

mod patch;
mod present;
mod validate;

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Services,
    EndpointSlices,
    /// Cluster-scoped: stored and listed without a namespace.
    Nodes,
    DaemonSets,
    /// Cluster-scoped; a namespaced object is created only in one that
    /// exists (`default`, `kube-system`, `kube-public` and
    /// `kube-node-lease` do from the start).
    Namespaces,
}

impl Kind {
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::Nodes => "nodes",
            Kind::DaemonSets => "daemonsets",
            Kind::Namespaces => "namespaces",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Services => "Service",
            Kind::EndpointSlices => "EndpointSlice",
            Kind::Nodes => "Node",
            Kind::DaemonSets => "DaemonSet",
            Kind::Namespaces => "Namespace",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::Services | Kind::Nodes | Kind::Namespaces => "v1",
            Kind::EndpointSlices => "discovery.k8s.io/v1",
            Kind::DaemonSets => "apps/v1",
        }
    }
    /// Whether objects live in a namespace.
    fn namespaced(self) -> bool {
        !matches!(self, Kind::Nodes | Kind::Namespaces)
    }
}

/// What one client (one `User-Agent`) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub connections: u64,
    /// By "verb resource", e.g. "list services", "watch endpointslices",
    /// "patch services/status".
    pub requests: BTreeMap<String, u64>,
    /// Bytes of response bodies (lists and watch streams) sent.
    pub bytes_sent: u64,
}

impl ClientStats {
    pub fn count(&self, what: &str) -> u64 {
        self.requests.get(what).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
struct Store {
    version: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// (version, kind, event type, object), oldest first.
    history: VecDeque<(u64, Kind, &'static str, Value)>,
    /// Versions up to this one are compacted away.
    floor: u64,
    next_cluster_ip: u32,
    /// The clusterIPs Services hold: allocation skips them, an explicit
    /// one already held is refused.
    cluster_ips: std::collections::BTreeSet<String>,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    versions: watch::Sender<u64>,
    stats: Mutex<BTreeMap<String, ClientStats>>,
    fail_next: Mutex<u32>,
    refusing: watch::Sender<bool>,
    /// What the accept loop has done of `refusing`.
    refusing_ack: watch::Sender<bool>,
    /// Bumped to end every open watch.
    watch_generation: watch::Sender<u64>,
    bookmark_interval: Duration,
}

impl Shared {
    /// Changes the store and wakes the watches.
    fn change<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = lock(&self.store);
        let out = f(&mut store);
        let version = store.version;
        drop(store);
        self.versions.send_replace(version);
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a change was refused, as the API server says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// The Status's `details` (a 422's causes), or null.
    pub details: Value,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

fn api_error(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        reason,
        message: message.into(),
        details: Value::Null,
    }
}

/// `<plural> "<name>" not found`, as the real server says it.
fn not_found(kind: Kind, name: &str) -> ApiError {
    api_error(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.plural()),
    )
}

fn status_json(e: &ApiError) -> Value {
    let mut status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": e.message, "reason": e.reason, "code": e.code
    });
    if !e.details.is_null() {
        status["details"] = e.details.clone();
    }
    status
}

fn meta_str(obj: &Value, field: &str) -> String {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn now_rfc3339() -> String {
    // Seconds are enough for creationTimestamp.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

impl Store {
    fn record(&mut self, kind: Kind, kind_of_event: &'static str, obj: &mut Value) -> u64 {
        self.version += 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert(
                "resourceVersion".into(),
                Value::String(self.version.to_string()),
            );
        }
        self.history
            .push_back((self.version, kind, kind_of_event, obj.clone()));
        // Bounded like etcd's history; older versions answer 410.
        while self.history.len() > 1_000_000 {
            if let Some((v, ..)) = self.history.pop_front() {
                self.floor = v;
            }
        }
        self.version
    }

    fn defaults(&mut self, kind: Kind, obj: &mut Value) {
        if obj.get("apiVersion").is_none() {
            obj["apiVersion"] = json!(kind.api_version());
        }
        if obj.get("kind").is_none() {
            obj["kind"] = json!(kind.kind());
        }
        if kind != Kind::Services {
            return;
        }
        let spec = obj
            .as_object_mut()
            .map(|o| o.entry("spec").or_insert(json!({})));
        let Some(Value::Object(spec)) = spec else {
            return;
        };
        spec.entry("type").or_insert(json!("ClusterIP"));
        spec.entry("sessionAffinity").or_insert(json!("None"));
        let external_name = spec.get("type") == Some(&json!("ExternalName"));
        if !external_name && !spec.contains_key("clusterIP") {
            // The next address of 10.96.0.0/16 that no Service holds.
            let ip = loop {
                self.next_cluster_ip = (self.next_cluster_ip + 1) % 65_534;
                let n = self.next_cluster_ip.max(10);
                let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                if !self.cluster_ips.contains(&ip) {
                    break ip;
                }
            };
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
        }
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports {
                if let Value::Object(p) = p {
                    p.entry("protocol").or_insert(json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        p.entry("targetPort").or_insert(port);
                    }
                }
            }
        }
    }

    fn create(&mut self, kind: Kind, namespace: &str, mut obj: Value) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(api_error(400, "BadRequest", "the body is not an object"));
        }
        let mut name = meta_str(&obj, "name");
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName");
            if prefix.is_empty() {
                return Err(api_error(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = format!("{prefix}{:05x}", self.version + 1);
        }
        let key = (kind, namespace.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(api_error(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", kind.plural()),
            ));
        }
        let meta = obj
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert(json!({})));
        if let Some(Value::Object(meta)) = meta {
            meta.insert("name".into(), json!(name));
            if kind.namespaced() {
                meta.insert("namespace".into(), json!(namespace));
            } else {
                meta.remove("namespace");
            }
            meta.insert(
                "uid".into(),
                json!(format!("00000000-0000-0000-0000-{:012x}", self.version + 1)),
            );
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.remove("generateName");
        }
        self.defaults(kind, &mut obj);
        if kind == Kind::Services
            && let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str)
            && ip != "None"
        {
            self.cluster_ips.insert(ip.to_owned());
        }
        if kind == Kind::Namespaces {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        self.record(kind, "ADDED", &mut obj);
        self.objects.insert(key, obj.clone());
        Ok(obj)
    }

    /// Replaces an object; `status` says which part (`true`: only
    /// `.status`, `false`: all but `.status`).
    fn replace(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut obj: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        let Some(current) = self.objects.get(&key).cloned() else {
            return Err(not_found(kind, name));
        };
        let asked = meta_str(&obj, "resourceVersion");
        if !asked.is_empty() && asked != meta_str(&current, "resourceVersion") {
            return Err(api_error(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    kind.plural()
                ),
            ));
        }
        let mut next = if status {
            let mut next = current.clone();
            next["status"] = obj.get("status").cloned().unwrap_or(json!({}));
            next
        } else {
            if let Some(o) = obj.as_object_mut() {
                match current.get("status") {
                    Some(s) => {
                        o.insert("status".into(), s.clone());
                    }
                    None => {
                        o.remove("status");
                    }
                }
            }
            // Identity stays the server's.
            for field in ["name", "namespace", "uid", "creationTimestamp"] {
                if let Some(v) = current.pointer(&format!("/metadata/{field}")) {
                    obj["metadata"][field] = v.clone();
                }
            }
            self.defaults(kind, &mut obj);
            if kind == Kind::Services {
                // clusterIP is immutable.
                for f in ["clusterIP", "clusterIPs", "ipFamilies"] {
                    if let Some(v) = current.pointer(&format!("/spec/{f}")) {
                        obj["spec"][f] = v.clone();
                    }
                }
            }
            obj
        };
        self.record(kind, "MODIFIED", &mut next);
        self.objects.insert(key, next.clone());
        Ok(next)
    }

    fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        if kind == Kind::Namespaces
            && let Some(ns) = self.objects.get_mut(&key)
        {
            // Terminating first, as a real server does: its objects go,
            // and then it, when `finalize_namespace` runs (a moment later).
            ns["status"]["phase"] = json!("Terminating");
            ns["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            let mut obj = ns.clone();
            self.record(kind, "MODIFIED", &mut obj);
            self.objects.insert(key, obj.clone());
            return Ok(obj);
        }
        let Some(mut obj) = self.objects.remove(&key) else {
            return Err(not_found(kind, name));
        };
        if kind == Kind::Services
            && let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str)
        {
            self.cluster_ips.remove(ip);
        }
        self.record(kind, "DELETED", &mut obj);
        Ok(obj)
    }

    /// Ends a terminating namespace: its objects are deleted, then it.
    fn finalize_namespace(&mut self, name: &str) -> Result<Value, ApiError> {
        let inside: Vec<(Kind, String, String)> = self
            .objects
            .keys()
            .filter(|(k, ns, _)| k.namespaced() && ns == name)
            .cloned()
            .collect();
        for (k, ns, n) in inside {
            self.delete(k, &ns, &n)?;
        }
        let key = (Kind::Namespaces, String::new(), name.to_owned());
        let Some(mut obj) = self.objects.remove(&key) else {
            return Err(not_found(Kind::Namespaces, name));
        };
        self.record(Kind::Namespaces, "DELETED", &mut obj);
        Ok(obj)
    }

    /// A namespaced object may be created only in a namespace that exists.
    fn namespace_exists(&self, kind: Kind, namespace: &str) -> Result<(), ApiError> {
        if !kind.namespaced() {
            return Ok(());
        }
        match self
            .objects
            .get(&(Kind::Namespaces, String::new(), namespace.to_owned()))
        {
            None => Err(not_found(Kind::Namespaces, namespace)),
            Some(ns) if ns["status"]["phase"] == "Terminating" => Err(api_error(
                403,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {namespace} because it is being terminated"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// An explicit clusterIP must be free (and an address).
    fn cluster_ip_free(&self, kind: Kind, obj: &Value) -> Result<(), ApiError> {
        let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str) else {
            return Ok(());
        };
        if kind != Kind::Services || ip.is_empty() || ip == "None" || !self.cluster_ips.contains(ip)
        {
            return Ok(());
        }
        let name = meta_str(obj, "name");
        let message = format!(
            "Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"
        );
        let mut e = api_error(
            422,
            "Invalid",
            format!("Service \"{name}\" is invalid: spec.clusterIPs: {message}"),
        );
        e.details = json!({"name": name, "kind": "Service", "causes": [
            {"reason": "FieldValueInvalid", "message": message, "field": "spec.clusterIPs"}
        ]});
        Err(e)
    }
}

/// The running fake API server.
#[derive(Debug)]
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeApi {
    /// Starts a server on a free loopback port, with bookmarks every
    /// `bookmark_interval` on watches that ask for them.
    pub async fn start(bookmark_interval: Duration) -> anyhow::Result<FakeApi> {
        FakeApi::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), bookmark_interval).await
    }

    /// Starts a server on `addr` (the cluster lab's API server listens on
    /// the node network).
    pub async fn start_on(
        addr: SocketAddr,
        bookmark_interval: Duration,
    ) -> anyhow::Result<FakeApi> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                version: 1000,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                floor: 0,
                next_cluster_ip: 9,
                cluster_ips: Default::default(),
            }),
            versions: watch::channel(1000).0,
            stats: Mutex::new(BTreeMap::new()),
            fail_next: Mutex::new(0),
            refusing: watch::channel(false).0,
            refusing_ack: watch::channel(false).0,
            watch_generation: watch::channel(0).0,
            bookmark_interval,
        });
        shared.change(|s| {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let _ = s.create(Kind::Namespaces, "", json!({"metadata": {"name": ns}}));
            }
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, addr, shared.clone(), stop.clone()));
        Ok(FakeApi { addr, shared, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {name}\n    namespace: default\ncurrent-context: fake\nusers:\n- name: {name}\n  user:\n    token: {name}-token\n",
            self.url()
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn change<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        self.shared.change(f)
    }

    /// Creates the object, or replaces it (status included) if it exists.
    pub fn apply(&self, kind: Kind, obj: Value) -> Result<Value, ApiError> {
        let namespace = match meta_str(&obj, "namespace") {
            _ if !kind.namespaced() => String::new(),
            n if n.is_empty() => "default".to_owned(),
            n => n,
        };
        let name = meta_str(&obj, "name");
        self.change(|s| {
            // The tests' door: the namespace is made as a setup script's
            // `kubectl create namespace` would.
            if kind.namespaced() && s.namespace_exists(kind, &namespace).is_err() {
                s.create(
                    Kind::Namespaces,
                    "",
                    json!({"metadata": {"name": namespace}}),
                )?;
            }
            if s.objects
                .contains_key(&(kind, namespace.clone(), name.clone()))
            {
                let status = obj.get("status").cloned();
                let mut out = s.replace(kind, &namespace, &name, obj, false)?;
                if let Some(status) = status {
                    out = s.replace(kind, &namespace, &name, json!({ "status": status }), true)?;
                }
                Ok(out)
            } else {
                s.create(kind, &namespace, obj)
            }
        })
    }

    /// Deletes an object (a namespace at once, with its objects).
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.change(|s| {
            let out = s.delete(kind, namespace, name)?;
            if kind == Kind::Namespaces {
                return s.finalize_namespace(name);
            }
            Ok(out)
        })
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared.store)
            .objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).version
    }

    /// Forgets the history: watches from any version before now get 410.
    pub fn compact(&self) {
        let mut store = lock(&self.shared.store);
        store.floor = store.version;
        store.history.clear();
    }

    /// Ends every open watch (clients resume from their last version).
    pub fn drop_watches(&self) {
        self.shared.watch_generation.send_modify(|g| *g += 1);
    }

    /// Closes the port (connections refused, open ones cut) or opens it
    /// again; returns when done.
    pub async fn set_refusing(&self, refusing: bool) {
        let mut ack = self.shared.refusing_ack.subscribe();
        self.shared.refusing.send_replace(refusing);
        let _ = ack.wait_for(|done| *done == refusing).await;
    }

    /// Answers 500 to the next `n` requests.
    pub fn fail_next(&self, n: u32) {
        *lock(&self.shared.fail_next) = n;
    }

    /// What each client did, by User-Agent.
    pub fn stats(&self) -> BTreeMap<String, ClientStats> {
        lock(&self.shared.stats).clone()
    }

    /// Forgets the counts.
    pub fn reset_stats(&self) {
        lock(&self.shared.stats).clear();
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut refusing = shared.refusing.subscribe();
    loop {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = refusing.changed() => if *refusing.borrow() { break },
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let shared = shared.clone();
                    connections.spawn(serve_connection(stream, shared));
                }
            }
        }
        // Refusing: close the port and cut every connection.
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        drop(listener);
        shared.refusing_ack.send_replace(true);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = refusing.changed() => {}
            }
            if !*refusing.borrow() {
                break;
            }
        }
        listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        shared.refusing_ack.send_replace(false);
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let seen = Arc::new(Mutex::new(false));
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let seen = seen.clone();
        async move { Ok::<_, Infallible>(handle(req, shared, seen).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes)).boxed()
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(full(bytes));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    respond(e.code, &status_json(e))
}

/// A parsed resource path.
#[derive(Debug)]
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest): (&str, &[&str]) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => ("discovery.k8s.io", rest),
        ["apis", "apps", "v1", rest @ ..] => ("apps", rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some(*sub)),
        _ => return None,
    };
    let kind = match (group, plural) {
        ("", "services") => Kind::Services,
        ("", "nodes") if namespace.is_none() => Kind::Nodes,
        ("", "namespaces") if namespace.is_none() => Kind::Namespaces,
        ("discovery.k8s.io", "endpointslices") => Kind::EndpointSlices,
        ("apps", "daemonsets") => Kind::DaemonSets,
        _ => return None,
    };
    let status = match sub {
        None => false,
        Some("status") if kind == Kind::Services => true,
        Some(_) => return None,
    };
    Some(Target {
        kind,
        namespace,
        name,
        status,
    })
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Equality terms of a label selector ("a=b,c==d,e!=f"); anything else
/// matches nothing.
fn selector_matches(selector: &str, obj: &Value) -> bool {
    let labels = obj.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                label(k.trim()) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                label(k.trim()) == Some(v.trim())
            } else {
                label(term).is_some()
            }
        })
}

fn visible(obj: &Value, namespace: Option<&str>, selector: Option<&str>) -> bool {
    namespace.is_none_or(|ns| meta_str(obj, "namespace") == ns)
        && selector.is_none_or(|s| selector_matches(s, obj))
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    seen: Arc<Mutex<bool>>,
) -> Response<Body> {
    let agent = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_owned();
    let first = !std::mem::replace(&mut *lock(&seen), true);
    if first {
        lock(&shared.stats)
            .entry(agent.clone())
            .or_default()
            .connections += 1;
    }
    {
        let mut fail = lock(&shared.fail_next);
        if *fail > 0 {
            *fail -= 1;
            let e = api_error(500, "InternalError", "injected failure");
            return error_response(&e);
        }
    }
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET
        && let Some(body) = present::discovery(&path).or_else(|| present::openapi(&path))
    {
        count(&shared, &agent, "discovery", 0);
        return respond(200, &body);
    }
    let Some(target) = parse_path(&path) else {
        count(&shared, &agent, "unknown", 0);
        return error_response(&api_error(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ));
    };
    let q = query(&req);
    // kubectl get asks for a server-side table.
    let as_table = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let include = q.get("includeObject").cloned().unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let resource = if target.status {
        format!("{}/status", target.kind.plural())
    } else {
        target.kind.plural().to_owned()
    };
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let parsed = || -> Result<Value, ApiError> {
        serde_json::from_slice(&body)
            .map_err(|e| api_error(400, "BadRequest", format!("the body is not JSON: {e}")))
    };
    let namespace = target.namespace.clone();
    // `dryRun=All` (`kubectl ... --dry-run=server`): the same checks and
    // answer, on a copy that is thrown away.
    let dry_run = q.contains_key("dryRun");
    let change = |f: &mut dyn FnMut(&mut Store) -> Result<Value, ApiError>| {
        if dry_run {
            let mut copy = lock(&shared.store).clone();
            f(&mut copy)
        } else {
            shared.change(f)
        }
    };
    let result = match (&method, &target.name) {
        (&Method::GET, None) => {
            let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
            if watching {
                count(&shared, &agent, &format!("watch {resource}"), 0);
                return watch_response(shared, agent, target, q);
            }
            count(&shared, &agent, &format!("list {resource}"), 0);
            list(&shared, &target, &q).map(|l| {
                if as_table {
                    let items = l["items"].as_array().cloned().unwrap_or_default();
                    present::table(target.kind, &items, l["metadata"].clone(), &include, now)
                } else {
                    l
                }
            })
        }
        (&Method::GET, Some(name)) => {
            count(&shared, &agent, &format!("get {resource}"), 0);
            let store = lock(&shared.store);
            store
                .objects
                .get(&(
                    target.kind,
                    namespace.clone().unwrap_or_default(),
                    name.clone(),
                ))
                .cloned()
                .ok_or_else(|| not_found(target.kind, name))
                .map(|o| {
                    if as_table {
                        let rv = json!({"resourceVersion": meta_str(&o, "resourceVersion")});
                        present::table(target.kind, &[o], rv, &include, now)
                    } else {
                        o
                    }
                })
        }
        (&Method::POST, None) => {
            count(&shared, &agent, &format!("create {resource}"), 0);
            let namespace = namespace
                .clone()
                .or((!target.kind.namespaced()).then(String::new));
            match (namespace.as_deref(), parsed()) {
                (None, _) => Err(api_error(
                    405,
                    "MethodNotAllowed",
                    "create needs a namespace",
                )),
                (_, Err(e)) => Err(e),
                (Some(ns), Ok(obj)) => {
                    match validate::object(target.kind, &meta_str(&obj, "name"), &obj) {
                        Err(e) => Err(e),
                        Ok(()) => {
                            let mut obj = Some(obj);
                            change(&mut |s| {
                                s.namespace_exists(target.kind, ns)?;
                                if let Some(o) = obj.as_ref() {
                                    s.cluster_ip_free(target.kind, o)?;
                                }
                                s.create(target.kind, ns, obj.take().unwrap_or_default())
                            })
                        }
                    }
                }
            }
        }
        (&Method::PUT, Some(name)) => {
            count(&shared, &agent, &format!("update {resource}"), 0);
            match parsed().and_then(|obj| {
                if !target.status {
                    validate::object(target.kind, name, &obj)?;
                }
                Ok(obj)
            }) {
                Err(e) => Err(e),
                Ok(obj) => {
                    let ns = namespace.clone().unwrap_or_default();
                    let mut obj = Some(obj);
                    change(&mut |s| {
                        s.replace(
                            target.kind,
                            &ns,
                            name,
                            obj.take().unwrap_or_default(),
                            target.status,
                        )
                    })
                }
            }
        }
        (&Method::PATCH, Some(name)) => {
            count(&shared, &agent, &format!("patch {resource}"), 0);
            let kind_of_patch = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            if !matches!(
                kind_of_patch.as_str(),
                "application/merge-patch+json"
                    | "application/strategic-merge-patch+json"
                    | "application/json-patch+json"
            ) {
                Err(api_error(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (not {content_type:?}: server-side apply is not served here)"
                    ),
                ))
            } else {
                match parsed() {
                    Err(e) => Err(e),
                    Ok(body) => {
                        let ns = namespace.clone().unwrap_or_default();
                        change(&mut |s| {
                            let Some(mut obj) = s
                                .objects
                                .get(&(target.kind, ns.clone(), name.clone()))
                                .cloned()
                            else {
                                return Err(not_found(target.kind, name));
                            };
                            match kind_of_patch.as_str() {
                                "application/json-patch+json" => {
                                    patch::json_patch(&mut obj, &body)?
                                }
                                "application/strategic-merge-patch+json" => {
                                    patch::strategic_merge_patch(target.kind, &mut obj, &body)?
                                }
                                _ => patch::merge_patch(&mut obj, &body),
                            }
                            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
                            {
                                m.remove("resourceVersion");
                            }
                            if !target.status {
                                validate::object(target.kind, name, &obj)?;
                            }
                            s.replace(target.kind, &ns, name, obj, target.status)
                        })
                    }
                }
            }
        }
        (&Method::DELETE, Some(name)) => {
            count(&shared, &agent, &format!("delete {resource}"), 0);
            let ns = namespace.clone().unwrap_or_default();
            let out = change(&mut |s| s.delete(target.kind, &ns, name));
            if target.kind == Kind::Namespaces && out.is_ok() && !dry_run {
                let (shared, name) = (shared.clone(), name.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = shared.change(|s| s.finalize_namespace(&name));
                });
            }
            out
        }
        _ => Err(api_error(405, "MethodNotAllowed", "not supported here")),
    };
    match result {
        Ok(v) => {
            let code = if method == Method::POST { 201 } else { 200 };
            let r = respond(code, &v);
            count_bytes(&shared, &agent, &r);
            r
        }
        Err(e) => error_response(&e),
    }
}

fn count(shared: &Shared, agent: &str, what: &str, bytes: u64) {
    let mut stats = lock(&shared.stats);
    let entry = stats.entry(agent.to_owned()).or_default();
    *entry.requests.entry(what.to_owned()).or_default() += 1;
    entry.bytes_sent += bytes;
}

fn count_bytes(shared: &Shared, agent: &str, r: &Response<Body>) {
    use hyper::body::Body as _;
    let n = r.body().size_hint().exact().unwrap_or(0);
    lock(&shared.stats)
        .entry(agent.to_owned())
        .or_default()
        .bytes_sent += n;
}

fn list(shared: &Shared, target: &Target, q: &BTreeMap<String, String>) -> Result<Value, ApiError> {
    let store = lock(&shared.store);
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let (version, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let Some((v, key)) = token.split_once('|') else {
                return Err(api_error(400, "BadRequest", "malformed continue token"));
            };
            let v: u64 = v.parse().unwrap_or(0);
            if v < store.floor {
                return Err(api_error(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                ));
            }
            (v, Some(key.to_owned()))
        }
        None => (store.version, None),
    };
    let namespace = target.namespace.as_deref();
    let selector = q.get("labelSelector").map(String::as_str);
    let mut items = Vec::new();
    let mut next = None;
    // A page starts where the last one ended, found in the store's order
    // (as etcd ranges over its keys): walking the whole store from its
    // start for every page made a list of 100,000 objects in pages of
    // 500 quadratic, most of the scale drill's cold start.
    use std::ops::Bound;
    let from = match &after {
        Some(a) => {
            let (ns, name) = a.split_once('/').unwrap_or(("", a.as_str()));
            Bound::Excluded((target.kind, ns.to_owned(), name.to_owned()))
        }
        None => Bound::Included((target.kind, String::new(), String::new())),
    };
    for ((kind, _, _), obj) in store.objects.range((from, Bound::Unbounded)) {
        if *kind != target.kind {
            break;
        }
        if !visible(obj, namespace, selector) {
            continue;
        }
        if items.len() == limit {
            next = items.last().map(|o: &Value| {
                format!(
                    "{version}|{}/{}",
                    meta_str(o, "namespace"),
                    meta_str(o, "name")
                )
            });
            break;
        }
        items.push(obj.clone());
    }
    let mut metadata = json!({"resourceVersion": version.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    Ok(json!({
        "kind": format!("{}List", target.kind.kind()),
        "apiVersion": target.kind.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

fn watch_line(kind_of_event: &str, obj: &Value) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&json!({"type": kind_of_event, "object": obj})).unwrap_or_default();
    line.push(b'\n');
    line
}

fn watch_response(
    shared: Arc<Shared>,
    agent: String,
    target: Target,
    q: BTreeMap<String, String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let selector = q.get("labelSelector").cloned();
    let from = q.get("resourceVersion").cloned().unwrap_or_default();
    tokio::spawn(async move {
        let send = |bytes: Vec<u8>| {
            let tx = tx.clone();
            let shared = shared.clone();
            let agent = agent.clone();
            async move {
                let n = bytes.len() as u64;
                let ok = tx.send(Ok(Frame::data(Bytes::from(bytes)))).await.is_ok();
                if ok {
                    lock(&shared.stats).entry(agent).or_default().bytes_sent += n;
                }
                ok
            }
        };
        let namespace = target.namespace.clone();
        let visible_here = |obj: &Value| visible(obj, namespace.as_deref(), selector.as_deref());
        let mut versions = shared.versions.subscribe();
        let mut generation = shared.watch_generation.subscribe();
        generation.borrow_and_update();
        let deadline = tokio::time::Instant::now() + timeout;
        // Where this watch stands, and what it sends first.
        let start: Result<(u64, Vec<Vec<u8>>), ApiError> = {
            let store = lock(&shared.store);
            if from.is_empty() || from == "0" {
                let lines = store
                    .objects
                    .iter()
                    .filter(|((k, ..), o)| *k == target.kind && visible_here(o))
                    .map(|(_, o)| watch_line("ADDED", o))
                    .collect();
                Ok((store.version, lines))
            } else {
                let v: u64 = from.parse().unwrap_or(0);
                if v < store.floor {
                    Err(api_error(
                        410,
                        "Expired",
                        format!("too old resource version: {v} ({})", store.floor),
                    ))
                } else {
                    Ok((v, Vec::new()))
                }
            }
        };
        let (mut position, first) = match start {
            Ok(s) => s,
            Err(e) => {
                let _ = send(watch_line("ERROR", &status_json(&e))).await;
                return;
            }
        };
        for line in first {
            if !send(line).await {
                return;
            }
        }
        let mut bookmark = tokio::time::interval(shared.bookmark_interval);
        bookmark.tick().await;
        loop {
            // A dropped watch sends nothing more.
            if generation.has_changed().unwrap_or(true) {
                return;
            }
            // Everything after `position`.
            let lines: Option<Vec<Vec<u8>>> = {
                let store = lock(&shared.store);
                if position < store.floor {
                    None
                } else {
                    let start = store.history.partition_point(|(v, ..)| *v <= position);
                    let lines = store
                        .history
                        .range(start..)
                        .filter(|(_, k, _, o)| *k == target.kind && visible_here(o))
                        .map(|(_, _, t, o)| watch_line(t, o))
                        .collect();
                    position = position.max(store.version);
                    Some(lines)
                }
            };
            let Some(lines) = lines else {
                let e = api_error(
                    410,
                    "Expired",
                    "the watch fell behind the compacted history",
                );
                let _ = send(watch_line("ERROR", &status_json(&e))).await;
                return;
            };
            for line in lines {
                if !send(line).await {
                    return;
                }
            }
            tokio::select! {
                biased;
                _ = generation.changed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                changed = versions.changed() => if changed.is_err() { return },
                _ = bookmark.tick(), if bookmarks => {
                    let b = json!({
                        "kind": target.kind.kind(),
                        "apiVersion": target.kind.api_version(),
                        "metadata": {"resourceVersion": position.to_string()}
                    });
                    if !send(watch_line("BOOKMARK", &b)).await {
                        return;
                    }
                }
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let mut r = Response::new(body);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
