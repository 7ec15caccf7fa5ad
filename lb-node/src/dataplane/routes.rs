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
//! The pure part (`pod_routes`, `plan`, `Lookup`) is tested without a
//! kernel; `run` is its shell, on the member's rtnetlink connection.

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

/// The endpoints (backend addresses of the table) no route of `lookup`
/// covers: how many of how many, and the first few with a service each.
pub fn unrouted(state: &State, lookup: &Lookup) -> (usize, usize, Vec<String>) {
    let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for service in state.services() {
        for b in &service.backends {
            seen.entry(b.address).or_insert(service.name.as_str());
        }
    }
    let mut count = 0;
    let mut examples = Vec::new();
    for (ip, service) in &seen {
        if !lookup.covers(*ip) {
            count += 1;
            if examples.len() < EXAMPLES {
                examples.push(format!("{ip} ({service})"));
            }
        }
    }
    (seen.len(), count, examples)
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
                    let checked = tokio::task::spawn_blocking(move || {
                        unrouted(&state, &Lookup::new(&routes, defaults))
                    })
                    .await;
                    if let Ok((checked, count, examples)) = checked {
                        report.endpoints_checked = checked as u64;
                        report.endpoints_unrouted = count as u64;
                        report.unrouted_examples = examples;
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
mod tests {
    use super::*;

    fn node(name: &str, cidrs: &[&str], addresses: &[(&str, &str)]) -> (String, Arc<[u8]>) {
        let json = serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDRs": cidrs},
            "status": {"addresses": addresses.iter().map(|(t, a)| serde_json::json!({"type": t, "address": a})).collect::<Vec<_>>()},
        });
        (
            name.to_owned(),
            serde_json::to_vec(&json).expect("json").into(),
        )
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("network")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn each_pod_cidr_goes_to_its_nodes_internal_ip_of_the_same_family() {
        let nodes: imbl::OrdMap<String, Arc<[u8]>> = [
            node(
                "n1",
                &["10.244.1.0/24", "fd00:244:1::/64"],
                &[
                    ("Hostname", "n1"),
                    ("ExternalIP", "192.0.2.11"),
                    ("InternalIP", "10.80.0.11"),
                    ("InternalIP", "fd00:80::11"),
                ],
            ),
            // The older single field, and a CIDR with host bits.
            (
                "n2".to_owned(),
                br#"{"metadata":{"name":"n2"},"spec":{"podCIDR":"10.244.2.7/24"},"status":{"addresses":[{"type":"InternalIP","address":"10.80.0.12"}]}}"#
                    .as_slice()
                    .into(),
            ),
        ]
        .into_iter()
        .collect();
        let r = pod_routes(&nodes);
        assert_eq!(r.warnings, Vec::<String>::new());
        assert_eq!(
            r.routes,
            BTreeMap::from([
                (net("10.244.1.0/24"), ip("10.80.0.11")),
                (net("10.244.2.0/24"), ip("10.80.0.12")),
                (net("fd00:244:1::/64"), ip("fd00:80::11")),
            ])
        );
    }

    #[test]
    fn bad_nodes_and_clashing_cidrs_are_left_out_with_a_warning_naming_them() {
        let nodes: imbl::OrdMap<String, Arc<[u8]>> = [
            node("a", &["10.244.1.0/24"], &[("InternalIP", "10.80.0.11")]),
            node("b", &["10.244.1.0/24"], &[("InternalIP", "10.80.0.12")]),
            node("c", &["fd00:244:3::/64"], &[("InternalIP", "10.80.0.13")]),
            node("d", &["not-a-cidr"], &[("InternalIP", "10.80.0.14")]),
            ("e".to_owned(), b"{\"spec\": 7}".as_slice().into()),
            node("f", &["10.244.6.0/24"], &[]),
        ]
        .into_iter()
        .collect();
        let r = pod_routes(&nodes);
        assert_eq!(
            r.routes,
            BTreeMap::from([(net("10.244.1.0/24"), ip("10.80.0.11"))])
        );
        assert_eq!(r.warnings.len(), 5, "{:?}", r.warnings);
        for (w, name) in r.warnings.iter().zip(["b", "c", "d", "e", "f"]) {
            assert!(w.starts_with(&format!("Node {name}:")), "{w}");
        }
    }

    #[test]
    fn the_plan_adds_what_is_missing_fixes_what_moved_and_removes_what_is_gone() {
        let wanted = BTreeMap::from([
            (net("10.244.1.0/24"), ip("10.80.0.11")),
            (net("10.244.2.0/24"), ip("10.80.0.12")),
            (net("10.244.3.0/24"), ip("10.80.0.13")),
        ]);
        let programmed = BTreeMap::from([
            (net("10.244.1.0/24"), Some(ip("10.80.0.11"))),
            (net("10.244.2.0/24"), Some(ip("10.80.0.99"))),
            (net("10.244.9.0/24"), Some(ip("10.80.0.19"))),
        ]);
        assert_eq!(
            plan(&wanted, &programmed),
            vec![
                RouteChange::Remove {
                    destination: net("10.244.9.0/24")
                },
                RouteChange::Set {
                    destination: net("10.244.2.0/24"),
                    via: ip("10.80.0.12")
                },
                RouteChange::Set {
                    destination: net("10.244.3.0/24"),
                    via: ip("10.80.0.13")
                },
            ]
        );
        assert_eq!(
            plan(
                &wanted,
                &wanted.iter().map(|(d, v)| (*d, Some(*v))).collect()
            ),
            vec![]
        );
    }

    #[test]
    fn with_pod_routes_only_a_route_more_specific_than_a_default_one_counts() {
        let route = |d: &str, unicast: bool| KernelRoute {
            destination: net(d),
            gateway: None,
            nexthops: vec![],
            protocol: 2,
            unicast,
        };
        let table = [
            route("0.0.0.0/0", true),
            route("::/0", true),
            route("10.80.0.0/24", true),
            route("10.244.1.0/24", true),
            route("10.244.2.0/24", false),
            route("fd00:244::/48", true),
        ];
        let lookup = Lookup::new(&table, false);
        assert!(lookup.covers(ip("10.244.1.7")));
        assert!(lookup.covers(ip("10.80.0.200")));
        assert!(
            !lookup.covers(ip("10.244.2.7")),
            "a blackhole route is no path"
        );
        assert!(!lookup.covers(ip("10.244.3.7")), "only the default route");
        assert!(lookup.covers(ip("fd00:244:0:5::9")));
        assert!(!lookup.covers(ip("fd00:245::9")));
        // Into a routed fabric, the default route is the way.
        let fabric = Lookup::new(&table, true);
        assert!(fabric.covers(ip("10.244.3.7")));
        assert!(fabric.covers(ip("fd00:245::9")));
        assert!(
            !fabric.covers(ip("10.244.2.7")),
            "a blackhole route is still no path"
        );
        assert!(!Lookup::new(&table[2..], true).covers(ip("10.244.3.7")));
    }
}
