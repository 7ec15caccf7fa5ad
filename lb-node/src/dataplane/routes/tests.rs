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

fn service(vip: &str, backends: &[&str]) -> crate::model::VirtualService {
    use crate::model::{Backend, BackendState};
    let mut s = crate::model::fixtures::numbered_service(0, 0);
    s.key.vip = ip(vip);
    s.name = format!("s{vip}");
    // Each address twice (two ports): an endpoint counts once.
    s.backends = backends
        .iter()
        .flat_map(|a| {
            [8080, 8081].map(|port| Backend {
                address: ip(a),
                port,
                weight: 1,
                state: BackendState::Ready,
            })
        })
        .collect();
    s
}

fn apply(state: &State, command: crate::model::Command) -> State {
    let mut next = state.clone();
    next.apply(&command).expect("valid test command");
    next
}

/// Only 10.1.0.0/16 is routed (no default route counts).
fn lookup() -> Lookup {
    Lookup::new(
        &[KernelRoute {
            destination: net("10.1.0.0/16"),
            gateway: None,
            nexthops: vec![],
            protocol: 2,
            unicast: true,
        }],
        false,
    )
}

#[test]
fn the_endpoint_check_follows_changes_as_a_whole_check_would() {
    use crate::model::Command;
    let lookup = lookup();
    let mut state = State::default();
    let mut check = EndpointCheck::new(&state, &lookup);
    assert_eq!(check.report(&state), (0, 0, vec![]));
    let steps = [
        Command::UpsertService(service("192.0.2.1", &["10.1.0.1", "10.9.0.1"])),
        // An endpoint shared by two services.
        Command::UpsertService(service("192.0.2.2", &["10.9.0.1", "10.9.0.2"])),
        Command::UpsertService(service("192.0.2.1", &["10.1.0.1", "10.1.0.2"])),
        Command::DeleteService(service("192.0.2.2", &[]).key),
        Command::UpsertService(service("192.0.2.3", &["10.9.0.3"])),
    ];
    // The counts and the unrouted examples' addresses are a whole
    // check's; each example names a service that uses the address.
    let addresses_of = |r: &(usize, usize, Vec<String>)| {
        let ips: Vec<String> =
            r.2.iter()
                .map(|e| e.split(' ').next().unwrap_or("").to_owned())
                .collect();
        (r.0, r.1, ips)
    };
    for command in steps {
        let next = apply(&state, command);
        check.update(&state, &next, &lookup);
        let report = check.report(&next);
        assert_eq!(
            addresses_of(&report),
            addresses_of(&EndpointCheck::new(&next, &lookup).report(&next)),
            "after {} services",
            next.len()
        );
        for example in &report.2 {
            let (address, named) = example.split_once(" (").expect("ip (service)");
            let named = named.trim_end_matches(')');
            assert!(
                next.services()
                    .any(|s| s.name == named
                        && s.backends.iter().any(|b| b.address == ip(address))),
                "{example}: that service does not use that address"
            );
        }
        state = next;
    }
    // What is left: 10.1.0.1, 10.1.0.2 (routed) and 10.9.0.3 (not);
    // 10.9.0.1 went with the last service that used it.
    assert_eq!(
        check.report(&state),
        (3, 1, vec!["10.9.0.3 (s192.0.2.3)".to_owned()])
    );
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
