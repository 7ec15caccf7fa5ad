//! LoadBalancer addresses against the planner: examples (a pool never
//! gives an address another Service uses, a status address is kept, a
//! Service no longer ours has its status cleared), then random operator
//! histories with the status writer and the watch played in between: no
//! address is ever given while another Service uses or shows it, no
//! address is ever shown as ours for two Services, and an appliance
//! rebuilt from the objects alone gives every Service the address it had.

use proptest::prelude::*;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn with_status(mut v: serde_json::Value, ips: &[&str]) -> serde_json::Value {
    v["status"] = json!({"loadBalancer": {"ingress": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}});
    v
}

#[test]
fn a_pool_never_gives_an_address_another_service_uses() {
    // 192.0.2.0/30 has .1 and .2: .1 is x's externalIP, .2 a foreign
    // controller's LoadBalancer address.
    let mut state = State::default();
    let mut v = view(&state);
    let x = service_json(
        "x",
        json!({"metadata": {}, "spec": {"clusterIP": "10.96.0.5", "externalIPs": ["192.0.2.1"],
            "ports": [{"name": "http", "port": 80}]}}),
    );
    let foreign = service_json(
        "foreign",
        with_status(
            json!({"metadata": {}, "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/other",
                "clusterIP": "10.96.0.6", "ports": [{"name": "http", "port": 80}]}}),
            &["192.0.2.2"],
        ),
    );
    let plan = v.plan(
        &state,
        vec![
            upsert(KubeKind::Service, "x", x, 1),
            upsert(KubeKind::Service, "foreign", foreign, 2),
            upsert(KubeKind::Service, "a", load_balancer("a", json!({})), 3),
            upsert(
                KubeKind::Service,
                "b",
                load_balancer("b", json!({"spec": {"loadBalancerIP": "192.0.2.1"}})),
                4,
            ),
        ],
    );
    commit(&mut state, &plan);
    assert!(
        state.lb_addresses_in_use().iter().all(|a| a.is_ipv6()),
        "{:?}",
        state.lb_addresses()
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("ns/a") && w.contains("no free IPv4")),
        "{:?}",
        plan.warnings
    );
    assert!(
        plan.warnings.iter().any(|w| w.contains("ns/b")
            && w.contains("192.0.2.1 refused")
            && w.contains("Service ns/x")),
        "{:?}",
        plan.warnings
    );
    assert!(plan.status_writes.is_empty(), "{:?}", plan.status_writes);
    // x drops its externalIP: the address is free, and the waiting
    // Services get it (b asked for it).
    let x = service_json(
        "x",
        json!({"metadata": {}, "spec": {"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80}]}}),
    );
    let plan = v.plan(&state, vec![upsert(KubeKind::Service, "x", x, 5)]);
    commit(&mut state, &plan);
    // Only x was touched; a full reconcile (what the next touch of a or
    // b, or a new leader, does) hands it out.
    let plan = v.reconcile_all(&state);
    commit(&mut state, &plan);
    assert_eq!(state.lb_addresses()["ns/b"], vec![ip("192.0.2.1")]);
}

#[test]
fn a_status_address_is_kept_and_a_rebuild_gives_every_service_its_address() {
    let mut state = State::default();
    let mut v = view(&state);
    // Created with a status (another controller gave it, before a
    // migration): kept, though .1 comes first in the pool.
    let a = service_json(
        "a",
        with_status(
            json!({"metadata": {}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.7",
                "ports": [{"name": "http", "port": 80}]}}),
            &["192.0.2.2"],
        ),
    );
    let plan = v.plan(
        &state,
        vec![
            upsert(KubeKind::Service, "b", load_balancer("b", json!({})), 1),
            upsert(KubeKind::Service, "a", a, 2),
        ],
    );
    commit(&mut state, &plan);
    assert_eq!(state.lb_addresses()["ns/a"], vec![ip("192.0.2.2")]);
    assert_eq!(state.lb_addresses()["ns/b"], vec![ip("192.0.2.1")]);
    let writes: BTreeMap<_, _> = plan.status_writes.iter().cloned().collect();
    assert!(!writes.contains_key("ns/a"), "a's status is right already");
    assert_eq!(writes["ns/b"], vec![ip("192.0.2.1")]);

    // Every member's data wiped: the objects come back with the statuses
    // written, b's listed first; each gets the address it had.
    let objects: BTreeMap<String, Arc<[u8]>> = [
        ("ns/b".to_owned(), service_json("b", with_status(
            json!({"metadata": {}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.99",
                "ports": [{"name": "http", "port": 80}]}}),
            &["192.0.2.1"],
        ))),
        ("ns/a".to_owned(), service_json("a", with_status(
            json!({"metadata": {}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.7",
                "ports": [{"name": "http", "port": 80}]}}),
            &["192.0.2.2"],
        ))),
    ]
    .into();
    let mut fresh = State::default();
    let mut v = view(&fresh);
    let plan = v.plan(
        &fresh,
        vec![Event::Relisted {
            kind: KubeKind::Service,
            objects,
            resource_version: "9".into(),
        }],
    );
    commit(&mut fresh, &plan);
    assert_eq!(fresh.lb_addresses(), state.lb_addresses());
    assert!(plan.status_writes.is_empty(), "{:?}", plan.status_writes);
}

#[test]
fn a_service_no_longer_ours_has_its_status_cleared() {
    let mut state = State::default();
    let mut v = view(&state);
    let plan = v.plan(
        &state,
        vec![upsert(
            KubeKind::Service,
            "a",
            load_balancer("a", json!({})),
            1,
        )],
    );
    commit(&mut state, &plan);
    assert_eq!(state.lb_addresses()["ns/a"], vec![ip("192.0.2.1")]);
    // Back to ClusterIP, its status still showing our address.
    let a = service_json(
        "a",
        with_status(
            json!({"metadata": {}, "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.99",
                "ports": [{"name": "http", "port": 80}]}}),
            &["192.0.2.1"],
        ),
    );
    let plan = v.plan(&state, vec![upsert(KubeKind::Service, "a", a, 2)]);
    commit(&mut state, &plan);
    assert!(!state.lb_addresses().contains_key("ns/a"));
    assert_eq!(plan.status_writes, vec![("ns/a".to_owned(), Vec::new())]);
    // Until the cleared status comes back, the address it shows counts
    // as used: nobody else gets it meanwhile.
    let plan = v.plan(
        &state,
        vec![upsert(
            KubeKind::Service,
            "b",
            load_balancer("b", json!({})),
            3,
        )],
    );
    commit(&mut state, &plan);
    assert_eq!(state.lb_addresses()["ns/b"], vec![ip("192.0.2.2")]);
}

#[derive(Debug, Clone)]
enum Op {
    /// A LoadBalancer (ours, or another controller's with a status).
    LoadBalancer {
        svc: u8,
        request: Option<u8>,
        status: Option<u8>,
        foreign: bool,
        dual: bool,
    },
    /// Plain ClusterIP, maybe with an externalIP in the pools' range.
    ClusterIp {
        svc: u8,
        external: Option<u8>,
    },
    Delete {
        svc: u8,
    },
    /// The pools configured (a new leader with the new configuration).
    Pools {
        wide: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..5u8, proptest::option::of(0..7u8), proptest::option::of(0..7u8), proptest::bool::weighted(0.2), any::<bool>())
            .prop_map(|(svc, request, status, foreign, dual)| Op::LoadBalancer { svc, request, status, foreign, dual }),
        2 => (0..5u8, proptest::option::of(0..7u8)).prop_map(|(svc, external)| Op::ClusterIp { svc, external }),
        1 => (0..5u8).prop_map(|svc| Op::Delete { svc }),
        1 => any::<bool>().prop_map(|wide| Op::Pools { wide }),
    ]
}

fn addr(k: u8) -> String {
    format!("192.0.2.{}", k + 1)
}

fn pools(wide: bool) -> Vec<IpNet> {
    let v4 = if wide { "192.0.2.0/29" } else { "192.0.2.0/30" };
    vec![
        v4.parse().expect("net"),
        "2001:db8::/126".parse().expect("net"),
    ]
}

/// The API server's objects (with their statuses), the appliance's
/// state and view, and the statuses it wrote.
struct World {
    objects: BTreeMap<String, serde_json::Value>,
    state: State,
    view: View,
    wide: bool,
    rv: u64,
    written: BTreeMap<String, Vec<IpAddr>>,
}

impl World {
    fn event(&mut self, name: &str) -> Event {
        self.rv += 1;
        let resource_version = self.rv.to_string();
        match self.objects.get(name) {
            Some(v) => Event::Upsert {
                kind: KubeKind::Service,
                name: name.to_owned(),
                json: trimmed(name, v),
                resource_version,
            },
            None => Event::Delete {
                kind: KubeKind::Service,
                name: name.to_owned(),
                resource_version,
            },
        }
    }

    /// Plans, commits, checks the grants, writes the statuses back
    /// and lets the watch bring them, until nothing is left to write.
    fn settle(&mut self, mut plan: Plan) -> Result<(), TestCaseError> {
        for _ in 0..5 {
            let before = self.state.lb_addresses().clone();
            commit(&mut self.state, &plan);
            for (service, held) in self.state.lb_addresses() {
                for ip in held {
                    if before.get(service).is_some_and(|b| b.contains(ip)) {
                        continue;
                    }
                    for (other, v) in &self.objects {
                        prop_assert!(
                            other == service || !uses(v, ip),
                            "{ip} given to {service} while {other} uses it: {v}"
                        );
                    }
                }
            }
            if plan.status_writes.is_empty() {
                return Ok(());
            }
            let mut events = Vec::new();
            for (service, ips) in &plan.status_writes {
                if let Some(v) = self.objects.get_mut(service) {
                    self.written.insert(service.clone(), ips.clone());
                    let texts: Vec<String> = ips.iter().map(ToString::to_string).collect();
                    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                    *v = with_status(v.clone(), &texts);
                    events.push(self.event(service));
                }
            }
            plan = self.view.plan(&self.state, events);
        }
        Err(TestCaseError::fail("status writes did not settle"))
    }
}

fn trimmed(name: &str, v: &serde_json::Value) -> Arc<[u8]> {
    service_json(name.trim_start_matches("ns/"), v.clone())
}

/// Whether a Service uses `ip` other than as a LoadBalancer address
/// of ours: clusterIP, externalIP, the status of a Service that is not
/// ours (another controller's, or a stale one on a Service that is no
/// LoadBalancer: it shows the address, so it is not given again).
fn uses(v: &serde_json::Value, ip: &IpAddr) -> bool {
    let text = ip.to_string();
    let spec = &v["spec"];
    let foreign = spec["loadBalancerClass"].is_string() || spec["type"] != "LoadBalancer";
    spec["clusterIP"] == text
        || spec["externalIPs"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| *e == text))
        || (foreign
            && v["status"]["loadBalancer"]["ingress"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["ip"] == text)))
}

fn apply(w: &mut World, op: &Op) -> Result<(), TestCaseError> {
    let plan = match op {
        Op::LoadBalancer {
            svc,
            request,
            status,
            foreign,
            dual,
        } => {
            let name = format!("ns/s{svc}");
            let mut v = json!({"metadata": {}, "spec": {"type": "LoadBalancer",
                "clusterIP": format!("10.96.0.{}", svc + 10), "ports": [{"name": "http", "port": 80}]}});
            if *foreign {
                v["spec"]["loadBalancerClass"] = json!("example.com/other");
            }
            if *dual {
                v["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
            }
            if let Some(r) = request {
                v["spec"]["loadBalancerIP"] = json!(addr(*r));
            }
            // An update keeps the status the object has; a status
            // given here is a migration's (another controller wrote
            // it before).
            let kept = w.objects.get(&name).map(|old| old["status"].clone());
            match (status, kept) {
                (Some(s), None) => v = with_status(v, &[&addr(*s)]),
                (_, Some(old)) if !old.is_null() => v["status"] = old,
                _ => {}
            }
            w.objects.insert(name.clone(), v);
            let event = w.event(&name);
            w.view.plan(&w.state, vec![event])
        }
        Op::ClusterIp { svc, external } => {
            let name = format!("ns/s{svc}");
            let mut v = json!({"metadata": {}, "spec": {"type": "ClusterIP",
                "clusterIP": format!("10.96.0.{}", svc + 10), "ports": [{"name": "http", "port": 80}]}});
            if let Some(e) = external {
                v["spec"]["externalIPs"] = json!([addr(*e)]);
            }
            if let Some(old) = w.objects.get(&name)
                && !old["status"].is_null()
            {
                v["status"] = old["status"].clone();
            }
            w.objects.insert(name.clone(), v);
            let event = w.event(&name);
            w.view.plan(&w.state, vec![event])
        }
        Op::Delete { svc } => {
            let name = format!("ns/s{svc}");
            w.objects.remove(&name);
            // Its status goes with it.
            w.written.remove(&name);
            let event = w.event(&name);
            w.view.plan(&w.state, vec![event])
        }
        Op::Pools { wide } => {
            w.wide = *wide;
            w.view = View::new(
                &w.state,
                TranslateConfig::default(),
                pools(*wide),
                &mut Vec::new(),
            );
            w.view.reconcile_all(&w.state)
        }
    };
    w.settle(plan)?;
    // Every full reconcile (a new leader's) finds the same.
    let again = w.view.reconcile_all(&w.state);
    w.settle(again)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn never_one_address_for_two_services_and_a_rebuild_gives_the_same(ops in proptest::collection::vec(op(), 1..30)) {
        let state = State::default();
        let view = View::new(&state, TranslateConfig::default(), pools(false), &mut Vec::new());
        let mut w = World { objects: BTreeMap::new(), state, view, wide: false, rv: 0, written: BTreeMap::new() };
        for op in &ops {
            apply(&mut w, op)?;
            // No address shown as ours for two Services.
            let mut shown: BTreeMap<IpAddr, &String> = BTreeMap::new();
            for (service, ips) in &w.written {
                for ip in ips {
                    if let Some(other) = shown.insert(*ip, service) {
                        prop_assert!(false, "{ip} written for {other} and {service}");
                    }
                }
            }
        }
        // A conflict an operator made after the grant (an externalIP
        // on an address already given) is resolved the other way by a
        // rebuild: the externalIP was there first, as the rebuild sees
        // it. Such histories are not compared.
        let conflicted = w.state.lb_addresses().iter().any(|(service, held)| {
            held.iter().any(|ip| w.objects.iter().any(|(other, v)| other != service && uses(v, ip)))
        });
        if conflicted {
            return Ok(());
        }
        let mut fresh = State::default();
        let mut view = View::new(&fresh, TranslateConfig::default(), pools(w.wide), &mut Vec::new());
        let objects = w.objects.iter().map(|(n, v)| (n.clone(), trimmed(n, v))).collect();
        let plan = view.plan(&fresh, vec![Event::Relisted { kind: KubeKind::Service, objects, resource_version: "1".into() }]);
        commit(&mut fresh, &plan);
        prop_assert_eq!(fresh.lb_addresses(), w.state.lb_addresses());
    }
}
