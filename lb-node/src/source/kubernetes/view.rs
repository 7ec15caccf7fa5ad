//! The leader's view of Kubernetes, and the commands a batch of watch
//! events means. Pure: no I/O, no clock.
//!
//! The view is rebuilt from the replicated state (`State::kube`) every time
//! a member becomes leader, so it never holds anything the log does not.
//! A batch of events becomes:
//!
//! 1. per kind, a [`KubeDelta`]: the objects whose trimmed JSON differs from
//!    the committed one (an event that changes only fields the translation
//!    does not read changes nothing) and the new watch cursor;
//! 2. for every Kubernetes service the batch touched (its Service or one of
//!    its EndpointSlices): the LoadBalancer addresses it needs and the
//!    virtual services it now means, diffed against those it had, as
//!    `AssignAddresses`, `UpsertService`, `ReplaceBackends` and
//!    `DeleteService`.
//!
//! All of it goes into one log entry, so the table and the cursor move
//! together: a new leader resumes from a cursor that the table reflects
//! exactly. A batch too big for one entry (a cold start or a relist of a
//! large cluster) is split; only its last entry moves the cursors, and the
//! full reconcile every new leader runs repairs a split batch cut short by
//! a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::slice::Slice;
use super::translate::{TranslateConfig, translate, wants_load_balancer};
use crate::model::{Command, KubeDelta, KubeKind, ServiceKey, State, VirtualService, in_pools};

/// The label that ties an EndpointSlice to its Service.
pub use super::slice::SERVICE_NAME_LABEL;
/// Annotation: the LoadBalancer addresses a Service asks for, separated by
/// commas (one per family).
pub const ANNOTATION_ADDRESSES: &str = "lb-node.io/load-balancer-ips";
/// Annotations under this prefix are kept; the translation reads them.
const ANNOTATION_PREFIX: &str = "lb-node.io/";
/// Most commands in one log entry when a batch must be split.
pub const MAX_COMMANDS_PER_ENTRY: usize = 1_000;

/// What a watch saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An object was added or changed: its trimmed JSON.
    Upsert {
        kind: KubeKind,
        name: String,
        json: Arc<[u8]>,
        resource_version: String,
    },
    Delete {
        kind: KubeKind,
        name: String,
        resource_version: String,
    },
    /// A bookmark: nothing of this kind changed up to here.
    Cursor {
        kind: KubeKind,
        resource_version: String,
    },
    /// The complete list of a kind (first start, or after 410 Gone).
    Relisted {
        kind: KubeKind,
        objects: BTreeMap<String, Arc<[u8]>>,
        resource_version: String,
    },
}

/// What a batch means.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Log entries to propose, in order.
    pub entries: Vec<Vec<Command>>,
    /// LoadBalancer services whose `status.loadBalancer` must be written
    /// ("namespace/name" and the addresses), once the entries commit.
    pub status_writes: Vec<(String, Vec<IpAddr>)>,
    /// One line per object or field left out.
    pub warnings: Vec<String>,
    /// Objects that changed (for metrics).
    pub objects_changed: usize,
    /// Service-table commands (for logs).
    pub service_commands: usize,
    /// What of the view the plan changed.
    pub touched: Touched,
}

/// What of a view a plan changed: stored objects, and the Kubernetes
/// services whose table keys (`View::owned`) it computed again. Until
/// the plan's entries commit, the view may hold there what the committed
/// state does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub objects: BTreeSet<(KubeKind, String)>,
    pub services: BTreeSet<String>,
}

impl Touched {
    pub fn extend(&mut self, other: Touched) {
        self.objects.extend(other.objects);
        self.services.extend(other.services);
    }
}

/// `namespace/name` of an object; the name alone for a cluster-scoped
/// one (a Node).
pub fn object_key(meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("");
    match meta.namespace.as_deref() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    }
}

/// A Service with only what the translation reads: name, namespace, our
/// annotations, spec, `status.loadBalancer`.
pub fn trim_service(s: Service) -> Service {
    let annotations = s.metadata.annotations.map(|a| {
        a.into_iter()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .collect::<BTreeMap<_, _>>()
    });
    Service {
        metadata: ObjectMeta {
            name: s.metadata.name,
            namespace: s.metadata.namespace,
            annotations: annotations.filter(|a| !a.is_empty()),
            ..ObjectMeta::default()
        },
        spec: s.spec,
        status: s
            .status
            .and_then(|st| st.load_balancer)
            .filter(|lb| lb.ingress.as_ref().is_some_and(|i| !i.is_empty()))
            .map(|lb| k8s_openapi::api::core::v1::ServiceStatus {
                load_balancer: Some(lb),
                conditions: None,
            }),
    }
}

/// An EndpointSlice with only what the translation reads: name,
/// namespace, the service-name label, address type, ports, and each
/// endpoint's addresses and conditions.
pub fn trim_slice(e: EndpointSlice) -> EndpointSlice {
    let labels = e.metadata.labels.map(|l| {
        l.into_iter()
            .filter(|(k, _)| k == SERVICE_NAME_LABEL)
            .collect::<BTreeMap<_, _>>()
    });
    EndpointSlice {
        metadata: ObjectMeta {
            name: e.metadata.name,
            namespace: e.metadata.namespace,
            labels: labels.filter(|l| !l.is_empty()),
            ..ObjectMeta::default()
        },
        address_type: e.address_type,
        endpoints: e
            .endpoints
            .into_iter()
            .map(|p| k8s_openapi::api::discovery::v1::Endpoint {
                addresses: p.addresses,
                conditions: p.conditions,
                ..Default::default()
            })
            .collect(),
        ports: e.ports,
    }
}

/// A Node with only what pod routes need: its name, pod CIDRs and
/// InternalIP addresses (`dataplane::routes` reads them). Heartbeats,
/// conditions, images and the rest change often and mean nothing here, so
/// they never reach the log.
pub fn trim_node(n: Node) -> Node {
    Node {
        metadata: ObjectMeta {
            name: n.metadata.name,
            ..ObjectMeta::default()
        },
        spec: n.spec.map(|spec| NodeSpec {
            pod_cidr: spec.pod_cidr,
            pod_cidrs: spec.pod_cidrs,
            ..NodeSpec::default()
        }),
        status: n.status.map(|status| NodeStatus {
            addresses: status.addresses.map(|list| {
                list.into_iter()
                    .filter(|a| a.type_ == "InternalIP")
                    .collect()
            }),
            ..NodeStatus::default()
        }),
    }
}

/// The Kubernetes service a table entry came from: `ns/name` of
/// `ns/name:port`. Services from a file have no `/`.
fn owner_of(service: &VirtualService) -> Option<&str> {
    let (owner, _) = service.name.rsplit_once(':')?;
    owner.contains('/').then_some(owner)
}

/// The warning for a stored object that does not decode.
fn left_out_warning(kind: KubeKind, name: &str) -> String {
    let kind = match kind {
        KubeKind::Service => "Service",
        KubeKind::EndpointSlice => "EndpointSlice",
        KubeKind::Node => "Node",
    };
    format!("stored {kind} {name} does not decode; left out")
}

/// Per kind: the last word on each object in a batch (`None`: deleted)
/// and the cursor after the batch.
type Pending = (BTreeMap<String, Option<Arc<[u8]>>>, String);

/// The leader's parsed view of the committed Kubernetes objects.
#[derive(Debug)]
pub struct View {
    config: TranslateConfig,
    pools: Vec<IpNet>,
    services: HashMap<String, Service>,
    /// Compact (`slice::Slice`): every member holds every one.
    slices: HashMap<String, Slice>,
    /// Service -> its slices.
    slices_of: HashMap<String, SmallSet<String>>,
    /// Service -> the table keys it produced.
    owned: HashMap<String, SmallSet<ServiceKey>>,
    /// Address -> the Services that use it other than as a LoadBalancer
    /// address of ours: clusterIPs, externalIPs, and the status addresses
    /// of LoadBalancers that are not ours (another controller's). No pool
    /// address that one Service uses is given to another.
    used: HashMap<IpAddr, SmallSet<String>>,
    /// Address -> the Services of ours whose status shows it: the first
    /// claim on a pool address (a Service keeps the address its status
    /// holds; after a rebuild or a migration, every Service gets back the
    /// address it had).
    claims: HashMap<IpAddr, SmallSet<String>>,
}

impl View {
    /// Parses the committed objects. An object that does not parse (it
    /// cannot happen with objects this build wrote) is left out with a
    /// warning.
    pub fn new(
        state: &State,
        config: TranslateConfig,
        pools: Vec<IpNet>,
        warnings: &mut Vec<String>,
    ) -> View {
        let (view, left_out) = View::built(state, config, pools);
        warnings.extend(
            left_out
                .iter()
                .map(|(kind, name)| left_out_warning(*kind, name)),
        );
        view
    }

    /// The view of `state`, and the stored objects left out because they
    /// do not decode.
    fn built(
        state: &State,
        config: TranslateConfig,
        pools: Vec<IpNet>,
    ) -> (View, BTreeSet<(KubeKind, String)>) {
        let mut left_out = BTreeSet::new();
        let mut view = View {
            config,
            pools,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            owned: HashMap::new(),
            used: HashMap::new(),
            claims: HashMap::new(),
        };
        let kube = state.kube();
        for (name, json) in &kube.services {
            match serde_json::from_slice::<Service>(json) {
                Ok(service) => view.put_service(name.clone(), Some(service)),
                Err(_) => {
                    left_out.insert((KubeKind::Service, name.clone()));
                }
            }
        }
        for (name, json) in &kube.endpoint_slices {
            match serde_json::from_slice::<EndpointSlice>(json) {
                Ok(slice) => {
                    view.put_slice(name.clone(), Some(Slice::from(slice)));
                }
                Err(_) => {
                    left_out.insert((KubeKind::EndpointSlice, name.clone()));
                }
            }
        }
        for service in state.services() {
            if let Some(owner) = owner_of(service) {
                view.owned
                    .entry(owner.to_owned())
                    .or_default()
                    .insert(service.key);
            }
        }
        (view, left_out)
    }

    /// Replaces (or with `None` removes) a Service, and the addresses it
    /// uses and claims.
    fn put_service(&mut self, name: String, service: Option<Service>) {
        if let Some(old) = self.services.remove(&name) {
            let (used, claims) = self.addresses_of(&old);
            for (ips, index) in [(used, &mut self.used), (claims, &mut self.claims)] {
                for ip in ips {
                    if let Some(users) = index.get_mut(&ip) {
                        users.remove(&name);
                        if users.is_empty() {
                            index.remove(&ip);
                        }
                    }
                }
            }
        }
        if let Some(service) = service {
            let (used, claims) = self.addresses_of(&service);
            for ip in used {
                self.used.entry(ip).or_default().insert(name.clone());
            }
            for ip in claims {
                self.claims.entry(ip).or_default().insert(name.clone());
            }
            self.services.insert(name, service);
        }
    }

    /// The addresses a Service uses (its clusterIPs and externalIPs, and
    /// its status addresses when it is not ours), and those it claims
    /// (its status addresses in our pools, when it is ours).
    fn addresses_of(&self, service: &Service) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let spec = service.spec.as_ref();
        let mut used: Vec<IpAddr> = spec
            .into_iter()
            .flat_map(|s| {
                s.cluster_ip
                    .iter()
                    .chain(s.cluster_ips.iter().flatten())
                    .chain(s.external_ips.iter().flatten())
            })
            .filter_map(|text| text.parse().ok())
            .collect();
        let mut claims = Vec::new();
        let shown = status_ips(service);
        if self.ours(service) {
            claims = shown
                .into_iter()
                .filter(|ip| in_pools(&self.pools, ip))
                .collect();
        } else {
            used.extend(shown);
        }
        used.sort_unstable();
        used.dedup();
        (used, claims)
    }

    /// Whether this appliance gives the Service its LoadBalancer
    /// addresses.
    fn ours(&self, service: &Service) -> bool {
        !self.pools.is_empty() && wants_load_balancer(service, &self.config)
    }

    /// Replaces (or with `None` removes) a slice; returns the services
    /// whose backends it touched (before and after).
    fn put_slice(&mut self, name: String, slice: Option<Slice>) -> Vec<String> {
        let mut touched = Vec::new();
        if let Some(old) = self.slices.remove(&name)
            && let Some(owner) = old.service.as_deref()
        {
            if let Some(set) = self.slices_of.get_mut(owner) {
                set.remove(&name);
                if set.is_empty() {
                    self.slices_of.remove(owner);
                }
            }
            touched.push(owner.to_owned());
        }
        if let Some(slice) = slice {
            if let Some(owner) = slice.service.as_deref() {
                self.slices_of
                    .entry(owner.to_owned())
                    .or_default()
                    .insert(name.clone());
                touched.push(owner.to_owned());
            }
            self.slices.insert(name, slice);
        }
        touched
    }

    /// Every Kubernetes service the view or the table knows: what a new
    /// leader reconciles.
    fn all_services(&self) -> BTreeSet<String> {
        self.services
            .keys()
            .chain(self.owned.keys())
            .cloned()
            .collect()
    }

    /// A new leader's full reconcile: everything the objects mean against
    /// everything the table holds. Empty when they agree.
    pub fn reconcile_all(&mut self, state: &State) -> Plan {
        let names = self.reconcile_list(state);
        self.reconcile_some(state, &names)
    }

    /// The Kubernetes Services a full reconcile covers (sorted), for doing
    /// it in parts with `reconcile_some`.
    pub fn reconcile_list(&self, state: &State) -> Vec<String> {
        let mut affected = self.all_services();
        affected.extend(state.lb_addresses().keys().cloned());
        affected.into_iter().collect()
    }

    /// A part of the full reconcile: what the objects of Services `names`
    /// mean against what the table holds for them.
    pub fn reconcile_some(&mut self, state: &State, names: &[String]) -> Plan {
        let affected: BTreeSet<String> = names.iter().cloned().collect();
        let mut plan = Plan::default();
        let commands = self.services_commands(state, &affected, &mut plan);
        plan.touched.services = affected;
        plan.service_commands = commands.len();
        plan.entries = commands
            .chunks(MAX_COMMANDS_PER_ENTRY)
            .map(<[Command]>::to_vec)
            .collect();
        plan
    }

    /// What a batch of events means against the committed `state` (which
    /// this view is in step with). Updates the view as if the plan were
    /// committed; if it is not, `plan.touched` says what to take from the
    /// committed state again (`Warm::resumed`).
    pub fn plan(&mut self, state: &State, events: Vec<Event>) -> Plan {
        let mut plan = Plan::default();
        // Last word per object and the cursor, per kind.
        let mut pending: BTreeMap<KubeKind, Pending> = BTreeMap::new();
        for event in events {
            match event {
                Event::Upsert {
                    kind,
                    name,
                    json,
                    resource_version,
                } => {
                    let p = pending.entry(kind).or_default();
                    p.0.insert(name, Some(json));
                    p.1 = resource_version;
                }
                Event::Delete {
                    kind,
                    name,
                    resource_version,
                } => {
                    let p = pending.entry(kind).or_default();
                    p.0.insert(name, None);
                    p.1 = resource_version;
                }
                Event::Cursor {
                    kind,
                    resource_version,
                } => pending.entry(kind).or_default().1 = resource_version,
                Event::Relisted {
                    kind,
                    objects,
                    resource_version,
                } => {
                    let p = pending.entry(kind).or_default();
                    // Whatever is not in the list is gone.
                    let gone: Vec<String> = state
                        .kube()
                        .objects(kind)
                        .keys()
                        .chain(p.0.keys())
                        .filter(|n| !objects.contains_key(*n))
                        .cloned()
                        .collect();
                    for name in gone {
                        p.0.insert(name, None);
                    }
                    for (name, json) in objects {
                        p.0.insert(name, Some(json));
                    }
                    p.1 = resource_version;
                }
            }
        }

        let mut deltas = Vec::new();
        let mut affected = BTreeSet::new();
        for (kind, (objects, cursor)) in pending {
            let committed = state.kube().objects(kind);
            let mut delta = KubeDelta {
                kind,
                upserts: Vec::new(),
                deletes: Vec::new(),
                resource_version: String::new(),
            };
            for (name, json) in objects {
                match json {
                    Some(json) if committed.get(&name) == Some(&json) => {}
                    None if !committed.contains_key(&name) => {}
                    Some(json)
                        if kind == KubeKind::Service && self.worse(&name, &json, &mut plan) =>
                    {
                        // Skipped: the previous version stays in effect.
                    }
                    Some(json) => {
                        self.load(kind, &name, Some(&json), &mut affected, &mut plan);
                        plan.touched.objects.insert((kind, name.clone()));
                        delta.upserts.push((name, json));
                    }
                    None => {
                        self.load(kind, &name, None, &mut affected, &mut plan);
                        plan.touched.objects.insert((kind, name.clone()));
                        delta.deletes.push(name);
                    }
                }
            }
            if cursor != state.kube().cursor(kind) {
                delta.resource_version = cursor;
            }
            plan.objects_changed += delta.upserts.len() + delta.deletes.len();
            deltas.push(delta);
        }

        let commands = self.services_commands(state, &affected, &mut plan);
        plan.touched.services = affected;
        plan.service_commands = commands.len();
        let size: usize = deltas
            .iter()
            .map(|d| d.upserts.len() + d.deletes.len())
            .sum::<usize>()
            + commands.len();
        if size <= MAX_COMMANDS_PER_ENTRY {
            let mut entry: Vec<Command> = deltas
                .into_iter()
                .filter(|d| {
                    !d.upserts.is_empty() || !d.deletes.is_empty() || !d.resource_version.is_empty()
                })
                .map(Command::KubeObjects)
                .collect();
            entry.extend(commands);
            if !entry.is_empty() {
                plan.entries.push(entry);
            }
            return plan;
        }
        // Too big for one entry: objects first, then what they mean, then
        // the cursors alone.
        let mut cursors = Vec::new();
        for delta in deltas {
            let kind = delta.kind;
            for chunk in delta.upserts.chunks(MAX_COMMANDS_PER_ENTRY) {
                plan.entries.push(vec![Command::KubeObjects(KubeDelta {
                    kind,
                    upserts: chunk.to_vec(),
                    deletes: Vec::new(),
                    resource_version: String::new(),
                })]);
            }
            for chunk in delta.deletes.chunks(MAX_COMMANDS_PER_ENTRY) {
                plan.entries.push(vec![Command::KubeObjects(KubeDelta {
                    kind,
                    upserts: Vec::new(),
                    deletes: chunk.to_vec(),
                    resource_version: String::new(),
                })]);
            }
            if !delta.resource_version.is_empty() {
                cursors.push(Command::KubeObjects(KubeDelta {
                    kind,
                    upserts: Vec::new(),
                    deletes: Vec::new(),
                    resource_version: delta.resource_version,
                }));
            }
        }
        for chunk in commands.chunks(MAX_COMMANDS_PER_ENTRY) {
            plan.entries.push(chunk.to_vec());
        }
        if !cursors.is_empty() {
            plan.entries.push(cursors);
        }
        plan
    }

    /// Whether a new version of a Service translates with more problems
    /// than the version in effect: then the update is rejected (with a
    /// warning) and the previous version keeps serving. A first version
    /// with problems is taken, without its bad parts.
    fn worse(&self, name: &str, json: &[u8], plan: &mut Plan) -> bool {
        let Some(old) = self.services.get(name) else {
            return false;
        };
        let new = match serde_json::from_slice::<Service>(json) {
            Ok(s) => s,
            Err(e) => {
                plan.warnings.push(format!(
                    "Service {name}: {e}; update rejected, the previous version stays"
                ));
                return true;
            }
        };
        let slices: Vec<&Slice> = self
            .slices_of
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|n| self.slices.get(n))
            .collect();
        let before = translate(old, &slices, &[], &self.config).warnings;
        let after = translate(&new, &slices, &[], &self.config).warnings;
        if after.len() > before.len() {
            for w in after.into_iter().filter(|w| !before.contains(w)) {
                plan.warnings.push(format!(
                    "{w} (update rejected: the previous version of the Service stays in effect)"
                ));
            }
            return true;
        }
        false
    }

    /// Takes one changed object into the view and notes which Kubernetes
    /// services it touches.
    fn load(
        &mut self,
        kind: KubeKind,
        name: &str,
        json: Option<&[u8]>,
        affected: &mut BTreeSet<String>,
        plan: &mut Plan,
    ) {
        match kind {
            KubeKind::Service => {
                affected.insert(name.to_owned());
                match json.map(serde_json::from_slice::<Service>) {
                    Some(Ok(s)) => self.put_service(name.to_owned(), Some(s)),
                    Some(Err(e)) => {
                        plan.warnings
                            .push(format!("Service {name}: {e}; treated as deleted"));
                        self.put_service(name.to_owned(), None);
                    }
                    None => self.put_service(name.to_owned(), None),
                }
            }
            KubeKind::EndpointSlice => {
                let slice = match json.map(serde_json::from_slice::<EndpointSlice>) {
                    Some(Ok(e)) => Some(Slice::from(e)),
                    Some(Err(e)) => {
                        plan.warnings
                            .push(format!("EndpointSlice {name}: {e}; treated as deleted"));
                        None
                    }
                    None => None,
                };
                affected.extend(self.put_slice(name.to_owned(), slice));
            }
            // Nodes mean pod routes (`dataplane::routes`, on every member),
            // not table entries: they are only recorded.
            KubeKind::Node => {}
        }
    }
}

mod addresses;
mod commands;
mod small_set;
mod warm;

use addresses::status_ips;
use small_set::SmallSet;

pub use warm::Warm;

#[cfg(test)]
mod tests;
