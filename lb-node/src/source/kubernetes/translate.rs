//! Kubernetes objects to virtual services, as a pure function.
//!
//! One `v1/Service` with its `discovery.k8s.io/v1/EndpointSlice`s becomes
//! one virtual service per (VIP, port):
//!
//! - **VIPs**: every `spec.clusterIPs` (dual-stack gives two), every
//!   `spec.externalIPs`, and for `type: LoadBalancer` the load-balancer
//!   addresses (`status.loadBalancer.ingress[].ip`, or those the caller
//!   allocated), when the service's `spec.loadBalancerClass` is ours (or
//!   absent and class-less services are configured to be ours). Headless
//!   (`clusterIP: None`) and `ExternalName` services are skipped.
//! - **Ports**: TCP, UDP and SCTP. A backend's port is the EndpointSlice
//!   port with the service port's name: the endpoints controller has already
//!   resolved a named `targetPort` per pod, and a hand-made slice of a
//!   service without selector names its ports the same way.
//! - **Backends**: the endpoints of every slice of the service, merged, of
//!   the VIP's address family. Conditions map to states: ready → `ready`;
//!   serving and terminating → `serving`; terminating only →
//!   `terminating`; otherwise `not-ready` (absent conditions read as the
//!   API defines them: ready and serving true, terminating false).
//! - **Session affinity**: `ClientIP` becomes persistence with
//!   `sessionAffinityConfig.clientIP.timeoutSeconds` (default 10800 s).
//! - **Annotations**: `lb-node.io/scheduler` (an IPVS scheduler name),
//!   `lb-node.io/forwarding` (`masquerade`, `direct`, `tunnel`) and
//!   `lb-node.io/health-check` (active health checks, docs/health.md).
//! - **Source ranges**: `spec.loadBalancerSourceRanges` restrict the
//!   load-balancer VIPs.
//! - **`externalTrafficPolicy: Local`**: kube-proxy uses it to skip a second
//!   hop between nodes and to keep the client's address. The appliance is
//!   already the only hop and sends straight to the pod, so Local selects
//!   the same backends as Cluster; to keep the client's address, choose
//!   `lb-node.io/forwarding: tunnel` or `direct` (the pods then see the
//!   client, as with Local on a node).
//!
//! Malformed input never fails the whole object: a bad address, port or
//! protocol, a duplicate port, an endpoint of the wrong family, each is left
//! out with a warning that names the object and the field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort};

use super::slice::{AddressType, Slice, protocol_of};
use crate::model::{
    Backend, BackendState, Forwarding, Protocol, Scheduler, ServiceKey, VirtualService,
};

/// Chooses the IPVS scheduler for one service.
pub const ANNOTATION_SCHEDULER: &str = "lb-node.io/scheduler";
/// Chooses the forwarding method for one service.
pub const ANNOTATION_FORWARDING: &str = "lb-node.io/forwarding";
/// BGP communities of the Service's VIPs' routes, comma-separated:
/// "65001:100", large "65001:1:2", or no-export / no-advertise /
/// no-export-subconfed. A bad value is warned about and ignored (the
/// Service is served without them, not dropped for a typo).
pub const ANNOTATION_BGP_COMMUNITIES: &str = "lb-node.io/bgp-communities";
/// Active health checks of the Service's endpoints (issue 22), off unless
/// set: the fields of the services file's `[service.health_check]`,
/// inline: `kind = "http", path = "/healthz"`. For every port of the
/// Service; a check's `port` overrides the endpoint's. A bad value is
/// warned about and the Service served without checks.
pub const ANNOTATION_HEALTH_CHECK: &str = "lb-node.io/health-check";
/// Kubernetes' default session affinity timeout.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// What the translation is configured to handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateConfig {
    /// Our `spec.loadBalancerClass`.
    pub load_balancer_class: String,
    /// Whether LoadBalancer services without a class are ours too.
    pub handle_classless: bool,
    pub default_scheduler: Scheduler,
    pub default_forwarding: Forwarding,
    /// The member config's `[health]`: what an annotation's check leaves
    /// out.
    pub health: crate::health::settings::Defaults,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            load_balancer_class: "lb-node.io/appliance".into(),
            handle_classless: true,
            default_scheduler: Scheduler::Wlc,
            default_forwarding: Forwarding::Masquerade,
            health: crate::health::settings::Defaults::default(),
        }
    }
}

/// The virtual services of one Kubernetes service, and what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    pub services: Vec<VirtualService>,
    /// One line per thing left out, naming the object and the field.
    pub warnings: Vec<String>,
}

/// Whether this service's load-balancer addresses are ours to serve.
pub fn wants_load_balancer(service: &Service, config: &TranslateConfig) -> bool {
    let Some(spec) = &service.spec else {
        return false;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match &spec.load_balancer_class {
        Some(class) => *class == config.load_balancer_class,
        None => config.handle_classless,
    }
}

fn object_name(service: &Service) -> String {
    format!(
        "{}/{}",
        service.metadata.namespace.as_deref().unwrap_or("default"),
        service.metadata.name.as_deref().unwrap_or("<unnamed>")
    )
}

/// How good a state is, to keep the best when an endpoint shows up twice.
fn rank(s: BackendState) -> u8 {
    match s {
        BackendState::Ready => 3,
        BackendState::Serving => 2,
        BackendState::Terminating => 1,
        BackendState::NotReady => 0,
    }
}

/// Translates one service and its slices. `load_balancer_ips` are the
/// addresses allocated to it (used when its status has none yet).
pub fn translate(
    service: &Service,
    slices: &[&Slice],
    load_balancer_ips: &[IpAddr],
    config: &TranslateConfig,
) -> Translation {
    let mut out = Translation::default();
    let name = object_name(service);
    let Some(spec) = &service.spec else {
        out.warnings
            .push(format!("service {name}: no spec; skipped"));
        return out;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        // Headless: DNS only, nothing to balance.
        return out;
    }
    let annotations = service.metadata.annotations.clone().unwrap_or_default();
    let scheduler = match annotations.get(ANNOTATION_SCHEDULER) {
        None => config.default_scheduler,
        Some(v) => match v.parse() {
            Ok(s) => s,
            Err(e) => {
                out.warnings.push(format!(
                    "service {name}: annotation {ANNOTATION_SCHEDULER}: {e}; skipped"
                ));
                return out;
            }
        },
    };
    let forwarding = match annotations.get(ANNOTATION_FORWARDING) {
        None => config.default_forwarding,
        Some(v) => match v.parse() {
            Ok(f) => f,
            Err(e) => {
                out.warnings.push(format!(
                    "service {name}: annotation {ANNOTATION_FORWARDING}: {e}; skipped"
                ));
                return out;
            }
        },
    };
    let (bgp_communities, bgp_large_communities) = match annotations.get(ANNOTATION_BGP_COMMUNITIES)
    {
        None => (Vec::new(), Vec::new()),
        Some(v) => match crate::announce::bgp::codec::split_communities(
            v.split(',').map(str::trim).filter(|t| !t.is_empty()),
        ) {
            Ok(both) => both,
            Err((_, bad)) => {
                out.warnings.push(format!(
                    "service {name}: annotation {ANNOTATION_BGP_COMMUNITIES}: {bad:?} is not {}; served without these communities",
                    crate::announce::bgp::codec::ANY_COMMUNITY_FORMS
                ));
                (Vec::new(), Vec::new())
            }
        },
    };
    let health = match annotations.get(ANNOTATION_HEALTH_CHECK) {
        None => None,
        Some(v) => match crate::health::settings::parse_inline(v, &config.health) {
            Ok(check) => Some(Box::new(check)),
            Err(e) => {
                out.warnings.push(format!(
                    "service {name}: annotation {ANNOTATION_HEALTH_CHECK}: {e}; served without health checks"
                ));
                None
            }
        },
    };
    let persistence_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| (1..=crate::model::MAX_PERSISTENCE_TIMEOUT).contains(t))
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT.min(crate::model::MAX_PERSISTENCE_TIMEOUT))
    });

    // VIPs, each with the source ranges that restrict it.
    let mut vips: Vec<(IpAddr, Vec<IpNet>)> = Vec::new();
    let mut add_vip =
        |field: String, text: &str, ranges: &[IpNet], warnings: &mut Vec<String>| match text
            .parse::<IpAddr>()
        {
            Ok(ip) if !vips.iter().any(|(v, _)| *v == ip) => vips.push((ip, ranges.to_vec())),
            Ok(_) => {}
            Err(_) => warnings.push(format!(
                "service {name}: {field}: {text:?} is not an IP address; left out"
            )),
        };
    let cluster_ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
        _ => vec![],
    };
    for (i, ip) in cluster_ips.iter().enumerate() {
        add_vip(format!("spec.clusterIPs[{i}]"), ip, &[], &mut out.warnings);
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        add_vip(format!("spec.externalIPs[{i}]"), ip, &[], &mut out.warnings);
    }
    if wants_load_balancer(service, config) {
        let mut ranges = Vec::new();
        for (i, r) in spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
        {
            match r.trim().parse::<IpNet>() {
                Ok(net) => ranges.push(net.trunc()),
                Err(_) => out
                    .warnings
                    .push(format!("service {name}: spec.loadBalancerSourceRanges[{i}]: {r:?} is not a network; left out")),
            }
        }
        let ingress: Vec<String> = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|list| list.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        for (i, ip) in ingress.iter().enumerate() {
            add_vip(
                format!("status.loadBalancer.ingress[{i}].ip"),
                ip,
                &ranges,
                &mut out.warnings,
            );
        }
        for ip in load_balancer_ips {
            add_vip(
                "allocated address".into(),
                &ip.to_string(),
                &ranges,
                &mut out.warnings,
            );
        }
    }

    // Ports, without duplicates (same port and protocol).
    let mut ports: Vec<(&ServicePort, u16, Protocol)> = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let at = format!("spec.ports[{i}]");
        let Some(protocol) = protocol_of(p.protocol.as_deref()) else {
            out.warnings.push(format!(
                "service {name}: {at}.protocol: {:?} is not TCP, UDP or SCTP; left out",
                p.protocol.as_deref().unwrap_or_default()
            ));
            continue;
        };
        let Some(port) = u16::try_from(p.port).ok().filter(|p| *p != 0) else {
            out.warnings.push(format!(
                "service {name}: {at}.port: {} is not a port (1-65535); left out",
                p.port
            ));
            continue;
        };
        if ports.iter().any(|(_, q, r)| *q == port && *r == protocol) {
            out.warnings.push(format!(
                "service {name}: {at}: port {port}/{protocol} listed twice; left out"
            ));
            continue;
        }
        ports.push((p, port, protocol));
    }

    for (vip, ranges) in &vips {
        for (sp, port, protocol) in &ports {
            let port_name = sp.name.clone().unwrap_or_default();
            let backends = backends_for(
                &name,
                slices,
                *vip,
                &port_name,
                *protocol,
                &mut out.warnings,
            );
            let label = if port_name.is_empty() {
                port.to_string()
            } else {
                port_name.clone()
            };
            let virtual_service = VirtualService {
                key: ServiceKey {
                    vip: *vip,
                    port: *port,
                    protocol: *protocol,
                },
                name: format!("{name}:{label}"),
                scheduler,
                persistence_timeout,
                fwmark: None,
                forwarding,
                allowed_sources: ranges.clone(),
                backends,
                bgp_communities: bgp_communities.clone(),
                bgp_large_communities: bgp_large_communities.clone(),
                health: health.clone(),
            };
            match virtual_service.normalize() {
                Ok(s) => out.services.push(s),
                Err(e) => out.warnings.push(format!("service {name}: {e}; left out")),
            }
        }
    }
    out
}

/// The backends of one (VIP, port) from every slice of the service.
fn backends_for(
    name: &str,
    slices: &[&Slice],
    vip: IpAddr,
    port_name: &str,
    protocol: Protocol,
    warnings: &mut Vec<String>,
) -> Vec<Backend> {
    let (family, wanted) = if vip.is_ipv4() {
        ("IPv4", AddressType::V4)
    } else {
        ("IPv6", AddressType::V6)
    };
    let mut found: BTreeMap<(IpAddr, u16), BackendState> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != wanted {
            continue;
        }
        let slice_name = &slice.name;
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| &*p.name == port_name && p.protocol == Some(protocol))
        else {
            continue;
        };
        let Some(target_port) = target
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            warnings.push(format!(
                "service {name}: EndpointSlice {slice_name}: port {port_name:?} has no valid port number; left out"
            ));
            continue;
        };
        for endpoint in &slice.endpoints {
            let state = endpoint.state;
            match endpoint.address.ip() {
                Some(ip) if ip.is_ipv4() == vip.is_ipv4() => {
                    let slot = found.entry((ip, target_port)).or_insert(state);
                    if rank(state) > rank(*slot) {
                        *slot = state;
                    }
                }
                _ => warnings.push(format!(
                    "service {name}: EndpointSlice {slice_name}: endpoints[{}].addresses[{}]: {:?} is not an {family} address; left out",
                    endpoint.endpoint,
                    endpoint.index,
                    endpoint.address.text()
                )),
            }
        }
    }
    found
        .into_iter()
        .map(|((address, port), state)| Backend {
            address,
            port,
            weight: 1,
            state,
        })
        .collect()
}

#[cfg(test)]
mod tests;
