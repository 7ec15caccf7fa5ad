//! Translation cases, from objects written as the API server sends them.

use serde_json::json;

use super::*;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The translation of slices as the API sends them (the view holds them
/// compact: `slice::Slice`).
fn translate(
    service: &Service,
    slices: &[EndpointSlice],
    load_balancer_ips: &[IpAddr],
    config: &TranslateConfig,
) -> Translation {
    let compact: Vec<Slice> = slices.iter().cloned().map(Slice::from).collect();
    let refs: Vec<&Slice> = compact.iter().collect();
    super::translate(service, &refs, load_balancer_ips, config)
}

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("a valid Service")
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).expect("a valid EndpointSlice")
}

fn web() -> serde_json::Value {
    json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http-alt", "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}
            ]
        }
    })
}

fn web_slices() -> Vec<EndpointSlice> {
    vec![
        slice(json!({
            "metadata": {"name": "web-a", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                {"addresses": ["10.1.0.4"], "conditions": {"ready": false}}
            ]
        })),
        slice(json!({
            "metadata": {"name": "web-b", "namespace": "shop"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.1.0.5"]}]
        })),
        slice(json!({
            "metadata": {"name": "web-v6", "namespace": "shop"},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["fd00:1::1"], "conditions": {"ready": true}}]
        })),
    ]
}

fn find<'a>(t: &'a Translation, vip: &str, port: u16) -> &'a VirtualService {
    let vip: IpAddr = vip.parse().expect("ip");
    t.services
        .iter()
        .find(|s| s.key.vip == vip && s.key.port == port)
        .unwrap_or_else(|| {
            panic!(
                "no service {vip}:{port} in {:?}",
                t.services.iter().map(|s| s.key).collect::<Vec<_>>()
            )
        })
}

#[test]
fn dual_stack_cluster_ips_with_merged_slices_and_conditions() {
    let t = translate(
        &service(web()),
        &web_slices(),
        &[],
        &TranslateConfig::default(),
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.services.len(), 4, "two VIPs times two ports");
    let http = find(&t, "10.96.0.10", 80);
    assert_eq!(http.name, "shop/web:http");
    assert_eq!(http.key.protocol, Protocol::Tcp);
    let states: Vec<(String, u16, BackendState)> = http
        .backends
        .iter()
        .map(|b| (b.address.to_string(), b.port, b.state))
        .collect();
    assert_eq!(
        states,
        [
            ("10.1.0.1".into(), 8080, BackendState::Ready),
            ("10.1.0.2".into(), 8080, BackendState::Serving),
            ("10.1.0.3".into(), 8080, BackendState::Terminating),
            ("10.1.0.4".into(), 8080, BackendState::NotReady),
            ("10.1.0.5".into(), 8080, BackendState::Ready),
        ],
        "named targetPort resolved from the slices' port, both slices merged, absent conditions read as ready"
    );
    let dns = find(&t, "10.96.0.10", 53);
    assert_eq!(dns.key.protocol, Protocol::Udp);
    assert_eq!(dns.backends.len(), 4, "only slice web-a has the dns port");
    let v6 = find(&t, "fd00:96::10", 80);
    assert_eq!(v6.backends.len(), 1);
    assert_eq!(v6.backends[0].address.to_string(), "fd00:1::1");
}

#[test]
fn headless_and_external_name_are_skipped() {
    let mut headless = web();
    headless["spec"]["clusterIP"] = json!("None");
    headless["spec"]["clusterIPs"] = json!(["None"]);
    assert_eq!(
        translate(
            &service(headless),
            &web_slices(),
            &[],
            &TranslateConfig::default()
        ),
        Translation::default()
    );
    let external = service(
        json!({"metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "example.org"}}),
    );
    assert_eq!(
        translate(&external, &[], &[], &TranslateConfig::default()),
        Translation::default()
    );
}

fn load_balancer(class: Option<&str>) -> serde_json::Value {
    let mut s = web();
    s["spec"]["type"] = json!("LoadBalancer");
    s["spec"]["externalIPs"] = json!(["203.0.113.7"]);
    s["spec"]["loadBalancerSourceRanges"] = json!(["198.51.100.0/24"]);
    if let Some(c) = class {
        s["spec"]["loadBalancerClass"] = json!(c);
    }
    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}});
    s
}

#[test]
fn load_balancer_addresses_follow_the_class_filter() {
    let config = TranslateConfig::default();
    let ours = translate(
        &service(load_balancer(Some("lb-node.io/appliance"))),
        &web_slices(),
        &[],
        &config,
    );
    let lb = find(&ours, "192.0.2.50", 80);
    assert_eq!(
        lb.allowed_sources,
        vec!["198.51.100.0/24".parse::<IpNet>().expect("net")],
        "source ranges restrict the LB VIP"
    );
    assert!(
        find(&ours, "203.0.113.7", 80).allowed_sources.is_empty(),
        "externalIPs are not LB addresses"
    );
    assert!(find(&ours, "10.96.0.10", 80).allowed_sources.is_empty());

    let theirs = translate(
        &service(load_balancer(Some("other.io/lb"))),
        &web_slices(),
        &[],
        &config,
    );
    assert!(
        theirs
            .services
            .iter()
            .all(|s| s.key.vip.to_string() != "192.0.2.50"),
        "another class's address is not ours"
    );
    assert!(
        theirs
            .services
            .iter()
            .any(|s| s.key.vip.to_string() == "10.96.0.10"),
        "its cluster IP still is"
    );

    let classless = service(load_balancer(None));
    assert!(
        translate(&classless, &web_slices(), &[], &config)
            .services
            .iter()
            .any(|s| s.key.vip.to_string() == "192.0.2.50")
    );
    let strict = TranslateConfig {
        handle_classless: false,
        ..config.clone()
    };
    assert!(
        translate(&classless, &web_slices(), &[], &strict)
            .services
            .iter()
            .all(|s| s.key.vip.to_string() != "192.0.2.50")
    );

    // An address allocated but not yet written to the status.
    let mut fresh = load_balancer(None);
    fresh["status"] = json!({});
    let t = translate(
        &service(fresh),
        &web_slices(),
        &["192.0.2.51".parse().expect("ip")],
        &config,
    );
    find(&t, "192.0.2.51", 53);
}

#[test]
fn session_affinity_and_annotations() {
    let mut s = web();
    s["spec"]["sessionAffinity"] = json!("ClientIP");
    s["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 600}});
    s["metadata"]["annotations"] =
        json!({"lb-node.io/scheduler": "mh", "lb-node.io/forwarding": "tunnel"});
    let t = translate(
        &service(s.clone()),
        &web_slices(),
        &[],
        &TranslateConfig::default(),
    );
    let http = find(&t, "10.96.0.10", 80);
    assert_eq!(http.persistence_timeout, Some(600));
    assert_eq!(http.scheduler, Scheduler::Mh);
    assert_eq!(http.forwarding, Forwarding::Tunnel);
    // Without a timeout: Kubernetes' default.
    s["spec"]["sessionAffinityConfig"] = json!(null);
    let t = translate(
        &service(s.clone()),
        &web_slices(),
        &[],
        &TranslateConfig::default(),
    );
    assert_eq!(
        find(&t, "10.96.0.10", 80).persistence_timeout,
        Some(DEFAULT_AFFINITY_TIMEOUT.min(crate::model::MAX_PERSISTENCE_TIMEOUT))
    );
    // A bad annotation skips the service and says why.
    s["metadata"]["annotations"] = json!({"lb-node.io/scheduler": "fastest"});
    let t = translate(&service(s), &web_slices(), &[], &TranslateConfig::default());
    assert!(t.services.is_empty());
    assert!(
        t.warnings[0]
            .contains("shop/web: annotation lb-node.io/scheduler: unknown scheduler \"fastest\""),
        "{:?}",
        t.warnings
    );
}

/// The communities annotation rides on every port of the Service; a bad
/// one is warned about and the Service kept without them.
#[test]
fn the_bgp_communities_annotation() {
    let mut s = web();
    s["metadata"]["annotations"] =
        json!({"lb-node.io/bgp-communities": "65001:100, 65001:1:2,no-export"});
    let t = translate(
        &service(s.clone()),
        &web_slices(),
        &[],
        &TranslateConfig::default(),
    );
    let http = find(&t, "10.96.0.10", 80);
    assert_eq!(http.bgp_communities, vec![(65001 << 16) | 100, 0xFFFF_FF01]);
    assert_eq!(http.bgp_large_communities, vec![(65001, 1, 2)]);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    s["metadata"]["annotations"] = json!({"lb-node.io/bgp-communities": "65001:100,65001"});
    let t = translate(&service(s), &web_slices(), &[], &TranslateConfig::default());
    let http = find(&t, "10.96.0.10", 80);
    assert!(http.bgp_communities.is_empty());
    assert!(
        t.warnings[0].contains("lb-node.io/bgp-communities: \"65001\" is not a community"),
        "{:?}",
        t.warnings
    );
}

#[test]
fn external_traffic_policy_local_selects_the_same_backends() {
    let mut s = load_balancer(None);
    let cluster = translate(
        &service(s.clone()),
        &web_slices(),
        &[],
        &TranslateConfig::default(),
    );
    s["spec"]["externalTrafficPolicy"] = json!("Local");
    let local = translate(&service(s), &web_slices(), &[], &TranslateConfig::default());
    assert_eq!(cluster, local);
}

#[test]
fn selectorless_service_with_a_hand_made_slice() {
    let s = service(json!({
        "metadata": {"name": "db", "namespace": "ops"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 5432}]}
    }));
    let hand_made = slice(json!({
        "metadata": {"name": "db-1", "namespace": "ops", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"port": 5432}],
        "endpoints": [{"addresses": ["192.168.5.5"]}]
    }));
    let t = translate(&s, &[hand_made], &[], &TranslateConfig::default());
    let db = find(&t, "10.96.0.20", 5432);
    assert_eq!(db.name, "ops/db:5432");
    assert_eq!(db.backends.len(), 1);
    assert_eq!(db.backends[0].port, 5432);
    assert_eq!(db.backends[0].state, BackendState::Ready);
}

#[test]
fn malformed_fields_are_left_out_with_a_named_warning() {
    let s = service(json!({
        "metadata": {"name": "bad", "namespace": "x"},
        "spec": {
            "clusterIPs": ["10.96.0.300", "10.96.0.30"],
            "externalIPs": ["not-an-ip"],
            "ports": [
                {"name": "a", "port": 0},
                {"name": "b", "port": 70000},
                {"name": "c", "port": 80, "protocol": "ICMP"},
                {"name": "d", "port": 81},
                {"name": "e", "port": 81}
            ]
        }
    }));
    let sl = slice(json!({
        "metadata": {"name": "bad-1"},
        "addressType": "IPv4",
        "ports": [{"name": "d", "port": 9000}],
        "endpoints": [{"addresses": ["10.1.1.1", "garbage", "fd00::1"]}]
    }));
    let t = translate(&s, &[sl], &[], &TranslateConfig::default());
    assert_eq!(t.services.len(), 1, "only 10.96.0.30:81 survives");
    assert_eq!(find(&t, "10.96.0.30", 81).backends.len(), 1);
    let w = t.warnings.join("\n");
    for expected in [
        "x/bad: spec.clusterIPs[0]: \"10.96.0.300\" is not an IP address",
        "x/bad: spec.externalIPs[0]: \"not-an-ip\" is not an IP address",
        "x/bad: spec.ports[0].port: 0 is not a port",
        "x/bad: spec.ports[1].port: 70000 is not a port",
        "x/bad: spec.ports[2].protocol: \"ICMP\" is not TCP, UDP or SCTP",
        "x/bad: spec.ports[4]: port 81/tcp listed twice",
        "EndpointSlice bad-1: endpoints[0].addresses[1]: \"garbage\"",
        "EndpointSlice bad-1: endpoints[0].addresses[2]: \"fd00::1\" is not an IPv4 address",
    ] {
        assert!(
            w.contains(expected),
            "missing warning {expected:?} in:\n{w}"
        );
    }
}

#[test]
fn a_slice_of_thousands_of_endpoints_translates() {
    let endpoints: Vec<serde_json::Value> = (0..5_000u32)
        .map(|i| json!({"addresses": [format!("10.{}.{}.{}", 2 + i / 65536, (i / 256) % 256, i % 256)]}))
        .collect();
    let big = slice(json!({
        "metadata": {"name": "big"},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints
    }));
    let t = translate(&service(web()), &[big], &[], &TranslateConfig::default());
    assert_eq!(find(&t, "10.96.0.10", 80).backends.len(), 5_000);
}

#[test]
fn a_health_check_annotation_checks_every_port_and_a_bad_one_is_warned_about() {
    let mut s = web();
    s["metadata"]["annotations"] =
        json!({"lb-node.io/health-check": "kind = \"http\", path = \"/healthz\", fall = 2"});
    let t = translate(
        &service(s.clone()),
        &web_slices(),
        &[],
        &TranslateConfig::default(),
    );
    let http = find(&t, "10.96.0.10", 80);
    let check = http.health.as_deref().expect("a check");
    assert_eq!(check.fall, 2);
    assert!(
        matches!(&check.kind, crate::model::ProbeKind::Http { path, .. } if path == "/healthz")
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    s["metadata"]["annotations"] = json!({"lb-node.io/health-check": "kind = \"ping\""});
    let t = translate(&service(s), &web_slices(), &[], &TranslateConfig::default());
    assert!(find(&t, "10.96.0.10", 80).health.is_none());
    assert!(
        t.warnings[0].contains("lb-node.io/health-check: health_check.kind: unknown kind \"ping\""),
        "{:?}",
        t.warnings
    );
}
