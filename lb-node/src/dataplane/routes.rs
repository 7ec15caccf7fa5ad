//! Routes to pods: where a member sends what IPVS forwards to an
//! endpoint's address.
//!
//! A member reaches a pod in one of two ways (docs/kubernetes.md,
//! *Reaching pods*):
//!
//! - the fabric routes pod CIDRs already (the CNI announces them by BGP,
//!   as Calico and Cilium do, and the member's default route or a route
//!   it learned leads there): nothing to do;
//! - only the nodes know (flat networks, flannel's host-gw): with
//!   `source.kubernetes.pod_routes` the leader also watches Nodes, and
//!   every member routes each node's `spec.podCIDRs` to its InternalIP.
//!
//! The routes carry protocol [`ROUTE_PROTOCOL`], so a member finds its own
//! among the kernel's and repairs them level-based, as the IPVS table:
//! the wanted routes are computed from the committed Nodes, compared with
//! what the kernel has, and only the difference is written; a route
//! removed or changed by hand is put back at the next round, a route of
//! a Node that is gone is removed (also one left by an earlier run).
//!
//! Either way the member checks that every endpoint has a route, and
//! reports those that do not (`lbctl status`, `lb_endpoints_unrouted`).
//! With pod routes on, a default route does not count: the operator said
//! that only the nodes know the pods, so an endpoint outside every node's
//! pod CIDR (and every connected network) goes nowhere useful. Without
//! them, the default route is the usual way into a routed fabric.
//!
//! The pure part (`pod_routes`, `plan`, `Lookup`, `EndpointCheck`) is
//! tested without a kernel; `run` is its shell, on the member's rtnetlink
//! connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::model::State;
use crate::netlink::{KernelRoute, Netlink};

/// The protocol number of lb-node's pod routes (`ip route show proto
/// 76`). Numbers up to 4 are the kernel's own and several above are taken
/// by routing daemons (BIRD 12, FRR's zebra 11 and 186-196, Calico's
/// BIRD 80); 76 ("L") is free in iproute2's list.
pub const ROUTE_PROTOCOL: u8 = 76;

/// How many examples of unrouted endpoints and node problems a status
/// keeps.
const EXAMPLES: usize = 5;

/// The pod routes the committed Nodes mean.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodRoutes {
    /// Pod CIDR to the node address it is routed through.
    pub routes: BTreeMap<IpNet, IpAddr>,
    /// One line per Node or CIDR left out, and why.
    pub warnings: Vec<String>,
}

/// Each Node's pod CIDRs (`spec.podCIDRs`, or the older `spec.podCIDR`)
/// routed through its InternalIP of the same family. A CIDR two Nodes
/// claim goes to the first by name (the IPAM controller never does that;
/// a hand-made Node might), and a Node without an address of the CIDR's
/// family routes nothing for it.
pub fn pod_routes(nodes: &imbl::OrdMap<String, Arc<[u8]>>) -> PodRoutes {
    let mut out = PodRoutes::default();
    for (name, json) in nodes {
        let node = match serde_json::from_slice::<Node>(json) {
            Ok(n) => n,
            Err(e) => {
                out.warnings
                    .push(format!("Node {name}: {e}; no pod routes for it"));
                continue;
            }
        };
        let spec = node.spec.unwrap_or_default();
        let mut cidrs = spec.pod_cidrs.unwrap_or_default();
        if cidrs.is_empty() {
            cidrs.extend(spec.pod_cidr);
        }
        let addresses: Vec<IpAddr> = node
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        for text in cidrs {
            let Ok(cidr) = text.parse::<IpNet>() else {
                out.warnings.push(format!(
                    "Node {name}: pod CIDR {text:?} is not a network; left out"
                ));
                continue;
            };
            let cidr = cidr.trunc();
            let Some(via) = addresses
                .iter()
                .find(|a| a.is_ipv4() == cidr.addr().is_ipv4())
            else {
                out.warnings.push(format!(
                    "Node {name}: no InternalIP of the family of {cidr}; no route for it"
                ));
                continue;
            };
            if let Some(other) = out.routes.get(&cidr) {
                out.warnings.push(format!(
                    "Node {name}: pod CIDR {cidr} is routed via {other} already; left out"
                ));
                continue;
            }
            out.routes.insert(cidr, *via);
        }
    }
    out
}

/// One change to the kernel's pod routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// Add the route, or replace the one the kernel has for the CIDR.
    Set {
        destination: IpNet,
        via: IpAddr,
    },
    Remove {
        destination: IpNet,
    },
}

/// The changes that turn `programmed` (lb-node's routes in the kernel:
/// destination and gateway) into `wanted`.
pub fn plan(
    wanted: &BTreeMap<IpNet, IpAddr>,
    programmed: &BTreeMap<IpNet, Option<IpAddr>>,
) -> Vec<RouteChange> {
    let mut changes: Vec<RouteChange> = programmed
        .keys()
        .filter(|d| !wanted.contains_key(*d))
        .map(|d| RouteChange::Remove { destination: *d })
        .collect();
    for (destination, via) in wanted {
        if programmed.get(destination) != Some(&Some(*via)) {
            changes.push(RouteChange::Set {
                destination: *destination,
                via: *via,
            });
        }
    }
    changes
}

/// Longest-prefix lookups over a routing table's destinations, as the
/// kernel picks a route: the most specific one decides, and a blackhole or
/// unreachable route there means no path.
#[derive(Debug, Default)]
pub struct Lookup {
    /// Per family (false: IPv4) and prefix length, the networks and
    /// whether each is a path (unicast).
    networks: BTreeMap<(bool, u8), HashMap<IpAddr, bool>>,
    /// Whether a default route counts as a path.
    defaults: bool,
}

impl Lookup {
    /// The routes of a table; a default route is a path only with
    /// `defaults`.
    pub fn new(routes: &[KernelRoute], defaults: bool) -> Lookup {
        let mut networks: BTreeMap<(bool, u8), HashMap<IpAddr, bool>> = BTreeMap::new();
        for r in routes {
            let d = r.destination.trunc();
            let path = networks
                .entry((d.addr().is_ipv6(), d.prefix_len()))
                .or_default()
                .entry(d.addr())
                .or_insert(false);
            *path |= r.unicast;
        }
        Lookup { networks, defaults }
    }

    /// Whether the route the kernel would pick for `ip` is a path.
    pub fn covers(&self, ip: IpAddr) -> bool {
        let v6 = ip.is_ipv6();
        for ((_, len), nets) in self.networks.range((v6, 0)..=(v6, u8::MAX)).rev() {
            let Ok(net) = IpNet::new(ip, *len) else {
                continue;
            };
            if let Some(path) = nets.get(&net.trunc().addr()) {
                return *path && (*len > 0 || self.defaults);
            }
        }
        false
    }
}

/// The endpoints of the table (backend addresses) and whether a route
/// covers each, kept up to date by the services that changed: checking
/// after a change costs the change, not the table (at 50,000 services x
/// 10 the whole walk ran beside every change the kernel lab's benchmark
/// made, docs/ipvs.md). Built whole again when the routes changed.
#[derive(Debug, Default)]
pub struct EndpointCheck {
    /// Each endpoint: how many services use it, whether a route covers it,
    /// and the service named in the examples (one that uses it; empty
    /// when that one stopped, found again when an example needs it).
    endpoints: HashMap<IpAddr, Endpoint>,
    /// The endpoints no route covers, in order (the examples are the
    /// first few).
    unrouted: BTreeSet<IpAddr>,
}

#[derive(Debug)]
struct Endpoint {
    services: u32,
    covered: bool,
    service: String,
}

/// A service's endpoint addresses, each once.
fn addresses(service: Option<&crate::model::VirtualService>) -> BTreeSet<IpAddr> {
    service
        .map(|s| s.backends.iter().map(|b| b.address).collect())
        .unwrap_or_default()
}

impl EndpointCheck {
    /// Every endpoint of `state`, checked against `lookup`.
    pub fn new(state: &State, lookup: &Lookup) -> EndpointCheck {
        let mut check = EndpointCheck::default();
        for service in state.services() {
            for ip in addresses(Some(service)) {
                check.add(ip, &service.name, lookup);
            }
        }
        check
    }

    /// From `older`'s endpoints to `newer`'s, with the same routes: only
    /// the services that differ are looked at.
    pub fn update(&mut self, older: &State, newer: &State, lookup: &Lookup) {
        for (key, name, _) in newer.service_changes_since(older) {
            let before = addresses(older.service(&key));
            let after = addresses(newer.service(&key));
            for ip in before.difference(&after) {
                self.remove(*ip, &name);
            }
            for ip in after.difference(&before) {
                self.add(*ip, &name, lookup);
            }
        }
    }

    fn add(&mut self, ip: IpAddr, service: &str, lookup: &Lookup) {
        let endpoint = self.endpoints.entry(ip).or_insert_with(|| Endpoint {
            services: 0,
            covered: lookup.covers(ip),
            service: service.to_owned(),
        });
        endpoint.services += 1;
        if !endpoint.covered {
            self.unrouted.insert(ip);
        }
    }

    fn remove(&mut self, ip: IpAddr, service: &str) {
        if let Some(endpoint) = self.endpoints.get_mut(&ip) {
            endpoint.services = endpoint.services.saturating_sub(1);
            if endpoint.services == 0 {
                self.endpoints.remove(&ip);
                self.unrouted.remove(&ip);
            } else if endpoint.service == service {
                endpoint.service.clear();
            }
        }
    }

    /// Endpoints checked, how many no route covers, and the first few of
    /// those with a service of `state` (the one checked) each.
    pub fn report(&self, state: &State) -> (usize, usize, Vec<String>) {
        let examples = self
            .unrouted
            .iter()
            .take(EXAMPLES)
            .map(|ip| {
                let known = self.endpoints.get(ip).map_or("", |e| e.service.as_str());
                let service = if known.is_empty() {
                    state
                        .services()
                        .find(|s| s.backends.iter().any(|b| b.address == *ip))
                        .map_or("", |s| s.name.as_str())
                } else {
                    known
                };
                format!("{ip} ({service})")
            })
            .collect();
        (self.endpoints.len(), self.unrouted.len(), examples)
    }
}

/// What the routes task did last, for `lbctl status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutesStatus {
    /// Whether this member installs pod routes (`pod_routes`).
    pub pod_routes: bool,
    /// Pod routes the committed Nodes mean, and how many the kernel has.
    pub wanted: u64,
    pub installed: u64,
    /// Nodes or CIDRs left out (the first few), and how many.
    pub node_warnings: Vec<String>,
    pub node_warning_count: u64,
    /// Endpoints checked (0: not checked, e.g. the memory dataplane), and
    /// those without a route (with pod routes: without one more specific
    /// than a default route), with the first few.
    pub endpoints_checked: u64,
    pub endpoints_unrouted: u64,
    pub unrouted_examples: Vec<String>,
    /// The last failure to read or write routes; empty when none.
    pub last_error: String,
}

/// Settings of the routes task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesSettings {
    /// Install pod routes from the Nodes (otherwise remove any left).
    pub pod_routes: bool,
    /// Check that endpoints have routes (needs a kernel dataplane).
    pub check_endpoints: bool,
    /// How often the kernel's routes are read again when nothing changed.
    pub repair_interval: Duration,
}

/// Keeps lb-node's pod routes equal to what the committed Nodes mean and
/// reports endpoints without a route. Rounds run when the state changes
/// (at most once a second: under a stream of endpoint changes the check
/// is not redone for each) and every `repair_interval`.
pub async fn run(
    netlink: Netlink,
    mut states: watch::Receiver<Arc<State>>,
    settings: RoutesSettings,
    status: watch::Sender<RoutesStatus>,
    shutdown: CancellationToken,
) {
    const SPACING: Duration = Duration::from_secs(1);
    let mut last_nodes: Option<imbl::OrdMap<String, Arc<[u8]>>> = None;
    let mut wanted = PodRoutes::default();
    // The endpoint check, with the routes and the state it was made for.
    let mut checked: Option<(EndpointCheck, Vec<KernelRoute>, Arc<State>)> = None;
    loop {
        let started = tokio::time::Instant::now();
        let state = states.borrow_and_update().clone();
        let mut report = RoutesStatus {
            pod_routes: settings.pod_routes,
            ..RoutesStatus::default()
        };
        if settings.pod_routes {
            let nodes = &state.kube().nodes;
            if last_nodes.as_ref().is_none_or(|n| !n.ptr_eq(nodes)) {
                wanted = pod_routes(nodes);
                for w in wanted.warnings.iter().take(EXAMPLES) {
                    warn!("{w}");
                }
                last_nodes = Some(nodes.clone());
            }
        } else {
            wanted = PodRoutes::default();
        }
        report.wanted = wanted.routes.len() as u64;
        report.node_warning_count = wanted.warnings.len() as u64;
        report.node_warnings = wanted.warnings.iter().take(EXAMPLES).cloned().collect();
        match round(&netlink, &wanted.routes).await {
            Ok(routes) => {
                report.installed = routes
                    .iter()
                    .filter(|r| {
                        r.protocol == ROUTE_PROTOCOL
                            && r.gateway.is_some()
                            && wanted.routes.get(&r.destination) == r.gateway.as_ref()
                    })
                    .count() as u64;
                if settings.check_endpoints {
                    let state = state.clone();
                    let defaults = !settings.pod_routes;
                    let previous = checked.take();
                    let done = tokio::task::spawn_blocking(move || {
                        let lookup = Lookup::new(&routes, defaults);
                        let check = match previous {
                            // The same routes: the changed services only.
                            Some((mut check, before, older)) if before == routes => {
                                check.update(&older, &state, &lookup);
                                check
                            }
                            _ => EndpointCheck::new(&state, &lookup),
                        };
                        let found = check.report(&state);
                        (found, (check, routes, state))
                    })
                    .await;
                    if let Ok(((endpoints, count, examples), done)) = done {
                        report.endpoints_checked = endpoints as u64;
                        report.endpoints_unrouted = count as u64;
                        report.unrouted_examples = examples;
                        checked = Some(done);
                    }
                }
            }
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "pod routes: retried at the next round"
                );
                report.last_error = format!("{e:#}");
            }
        }
        status.send_if_modified(|s| {
            let changed = *s != report;
            if changed && s.endpoints_unrouted != report.endpoints_unrouted {
                if report.endpoints_unrouted > 0 {
                    warn!(
                        unrouted = report.endpoints_unrouted,
                        examples = ?report.unrouted_examples,
                        "endpoints without a route: traffic to them follows the default route, if any"
                    );
                } else if s.endpoints_unrouted > 0 {
                    info!("every endpoint has a route again");
                }
            }
            *s = report;
            changed
        });
        let next_repair = started + settings.repair_interval;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = states.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(started + SPACING) => {}
                }
            }
            _ = tokio::time::sleep_until(next_repair) => {}
        }
    }
}

/// Reads the main table, writes what differs from `wanted`, and returns
/// the table as it is after.
async fn round(
    netlink: &Netlink,
    wanted: &BTreeMap<IpNet, IpAddr>,
) -> anyhow::Result<Vec<KernelRoute>> {
    let routes = netlink.main_routes().await?;
    let programmed: BTreeMap<IpNet, Option<IpAddr>> = routes
        .iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL)
        .map(|r| (r.destination, r.gateway))
        .collect();
    let changes = plan(wanted, &programmed);
    if changes.is_empty() {
        return Ok(routes);
    }
    let mut failed = Vec::new();
    let (mut set, mut removed) = (BTreeSet::new(), 0usize);
    for change in &changes {
        let result = match change {
            RouteChange::Set { destination, via } => {
                set.insert(*destination);
                netlink
                    .replace_route(*destination, *via, ROUTE_PROTOCOL)
                    .await
            }
            RouteChange::Remove { destination } => {
                removed += 1;
                netlink.delete_route(*destination, ROUTE_PROTOCOL).await
            }
        };
        if let Err(e) = result {
            failed.push(format!("{e:#}"));
        }
    }
    info!(
        set = set.len(),
        removed,
        failed = failed.len(),
        "pod routes changed"
    );
    if let Some(first) = failed.first() {
        anyhow::bail!(
            "{} of {} route changes failed, first: {first}",
            failed.len(),
            changes.len()
        );
    }
    netlink.main_routes().await
}

#[cfg(test)]
mod tests;
