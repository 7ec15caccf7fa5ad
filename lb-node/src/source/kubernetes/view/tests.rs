//! The planner against a state that applies its plans, as the log would.

use serde_json::json;

use super::*;
use crate::model::Command;

fn service_json(name: &str, v: serde_json::Value) -> Arc<[u8]> {
    let mut s: Service = serde_json::from_value(v).expect("a Service");
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("ns".into());
    serde_json::to_vec(&trim_service(s)).expect("json").into()
}

fn cluster_ip(name: &str, ip: &str, port: i64) -> Arc<[u8]> {
    service_json(
        name,
        json!({"metadata": {}, "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port}]}}),
    )
}

fn load_balancer(name: &str, extra: serde_json::Value) -> Arc<[u8]> {
    let mut v = json!({"metadata": {}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.99",
        "ports": [{"name": "http", "port": 80}]}});
    merge(&mut v, &extra);
    service_json(name, v)
}

fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn slice_json(name: &str, service: &str, hosts: &[&str]) -> Arc<[u8]> {
    let s: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": hosts.iter().map(|h| json!({"addresses": [h]})).collect::<Vec<_>>(),
    }))
    .expect("a slice");
    serde_json::to_vec(&trim_slice(s)).expect("json").into()
}

fn upsert(kind: KubeKind, name: &str, json: Arc<[u8]>, rv: u64) -> Event {
    Event::Upsert {
        kind,
        name: format!("ns/{name}"),
        json,
        resource_version: rv.to_string(),
    }
}

fn commit(state: &mut State, plan: &Plan) {
    for entry in &plan.entries {
        for c in entry {
            let _ = state.apply(c);
        }
    }
}

fn pools() -> Vec<IpNet> {
    vec![
        "192.0.2.0/30".parse().expect("net"),
        "2001:db8::/126".parse().expect("net"),
    ]
}

fn view(state: &State) -> View {
    View::new(state, TranslateConfig::default(), pools(), &mut Vec::new())
}

fn service_commands(plan: &Plan) -> Vec<&Command> {
    plan.entries
        .iter()
        .flatten()
        .filter(|c| !matches!(c, Command::KubeObjects(_)))
        .collect()
}

#[test]
fn a_service_and_its_slice_in_one_entry_with_the_cursors() {
    let mut state = State::default();
    let mut v = view(&state);
    let plan = v.plan(
        &state,
        vec![
            upsert(
                KubeKind::Service,
                "web",
                cluster_ip("web", "10.96.0.1", 80),
                5,
            ),
            upsert(
                KubeKind::EndpointSlice,
                "web-1",
                slice_json("web-1", "web", &["10.1.0.1", "10.1.0.2"]),
                6,
            ),
        ],
    );
    assert_eq!(plan.entries.len(), 1, "{plan:?}");
    commit(&mut state, &plan);
    assert_eq!(state.kube().services_cursor, "5");
    assert_eq!(state.kube().endpoint_slices_cursor, "6");
    let web = state.services().next().expect("one service");
    assert_eq!(web.name, "ns/web:http");
    assert_eq!(web.backends.len(), 2);

    // The same objects again (only their resourceVersion moved): only the
    // cursor moves, no service command.
    let plan = v.plan(
        &state,
        vec![upsert(
            KubeKind::EndpointSlice,
            "web-1",
            slice_json("web-1", "web", &["10.1.0.1", "10.1.0.2"]),
            9,
        )],
    );
    assert!(service_commands(&plan).is_empty(), "{plan:?}");
    assert_eq!(plan.objects_changed, 0);
    commit(&mut state, &plan);
    assert_eq!(state.kube().endpoint_slices_cursor, "9");

    // A scale-down is one ReplaceBackends.
    let plan = v.plan(
        &state,
        vec![upsert(
            KubeKind::EndpointSlice,
            "web-1",
            slice_json("web-1", "web", &["10.1.0.2"]),
            10,
        )],
    );
    assert!(
        matches!(service_commands(&plan).as_slice(), [Command::ReplaceBackends { backends, .. }] if backends.len() == 1),
        "{plan:?}"
    );
    commit(&mut state, &plan);

    // A new view built from the state plans nothing: it is in step.
    let mut fresh = view(&state);
    assert!(fresh.reconcile_all(&state).entries.is_empty());
}

#[test]
fn relist_proposes_only_the_differences() {
    let mut state = State::default();
    let mut v = view(&state);
    let events = (0..5)
        .map(|i| {
            upsert(
                KubeKind::Service,
                &format!("s{i}"),
                cluster_ip(&format!("s{i}"), &format!("10.96.0.{}", i + 1), 80),
                10 + i,
            )
        })
        .collect();
    let plan = v.plan(&state, events);
    commit(&mut state, &plan);
    assert_eq!(state.len(), 5);

    // The list: s0 changed port, s1 gone, the rest equal.
    let mut objects = BTreeMap::new();
    objects.insert("ns/s0".to_owned(), cluster_ip("s0", "10.96.0.1", 81));
    for i in 2..5 {
        objects.insert(
            format!("ns/s{i}"),
            cluster_ip(&format!("s{i}"), &format!("10.96.0.{}", i + 1), 80),
        );
    }
    let plan = v.plan(
        &state,
        vec![Event::Relisted {
            kind: KubeKind::Service,
            objects,
            resource_version: "99".into(),
        }],
    );
    let commands = service_commands(&plan);
    // s0: delete port 80, create port 81; s1: delete. Nothing for s2..s4.
    assert_eq!(commands.len(), 3, "{commands:?}");
    commit(&mut state, &plan);
    assert_eq!(state.len(), 4);
    assert_eq!(state.kube().services_cursor, "99");
    assert_eq!(state.kube().services.len(), 4);
}

#[test]
fn load_balancer_addresses_are_allocated_requested_refused_and_released() {
    let mut state = State::default();
    let mut v = view(&state);
    let plan = v.plan(
        &state,
        vec![
            upsert(KubeKind::Service, "a", load_balancer("a", json!({})), 1),
            upsert(
                KubeKind::Service,
                "b",
                load_balancer(
                    "b",
                    json!({"metadata": {"annotations": {ANNOTATION_ADDRESSES: "192.0.2.2"}}}),
                ),
                2,
            ),
            upsert(
                KubeKind::Service,
                "c",
                load_balancer(
                    "c",
                    json!({"metadata": {"annotations": {ANNOTATION_ADDRESSES: "192.0.2.2"}}}),
                ),
                3,
            ),
            upsert(
                KubeKind::Service,
                "d",
                load_balancer("d", json!({"spec": {"ipFamilies": ["IPv4", "IPv6"]}})),
                4,
            ),
        ],
    );
    commit(&mut state, &plan);
    let held = state.lb_addresses();
    assert_eq!(
        held["ns/a"],
        vec!["192.0.2.1".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(
        held["ns/b"],
        vec!["192.0.2.2".parse::<IpAddr>().expect("ip")]
    );
    assert!(!held.contains_key("ns/c"), "c asked for b's address");
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("ns/c") && w.contains("refused")),
        "{:?}",
        plan.warnings
    );
    // /30: .1 and .2 only; d gets no IPv4 but its IPv6.
    assert_eq!(
        held["ns/d"],
        vec!["2001:db8::1".parse::<IpAddr>().expect("ip")]
    );
    let writes: BTreeMap<_, _> = plan.status_writes.iter().cloned().collect();
    assert_eq!(writes["ns/a"], held["ns/a"]);
    assert!(
        !writes.contains_key("ns/c"),
        "nothing to write for a pending service"
    );

    // Served on the LoadBalancer address too.
    let a_vips: BTreeSet<IpAddr> = state
        .services()
        .filter(|s| s.name == "ns/a:http")
        .map(|s| s.key.vip)
        .collect();
    assert!(
        a_vips.contains(&"192.0.2.1".parse().expect("ip")),
        "{a_vips:?}"
    );

    // Deleting a releases its address; c (changed) now gets nothing still,
    // but a new service takes the freed one.
    let plan = v.plan(
        &state,
        vec![
            Event::Delete {
                kind: KubeKind::Service,
                name: "ns/a".into(),
                resource_version: "5".into(),
            },
            upsert(KubeKind::Service, "e", load_balancer("e", json!({})), 6),
        ],
    );
    commit(&mut state, &plan);
    assert!(!state.lb_addresses().contains_key("ns/a"));
    assert_eq!(
        state.lb_addresses()["ns/e"],
        vec!["192.0.2.1".parse::<IpAddr>().expect("ip")]
    );
    assert!(!state.services().any(|s| s.name.starts_with("ns/a:")));
}

#[test]
fn a_worse_update_is_rejected_and_the_previous_version_serves() {
    let mut state = State::default();
    let mut v = view(&state);
    let plan = v.plan(
        &state,
        vec![
            upsert(
                KubeKind::Service,
                "web",
                cluster_ip("web", "10.96.0.1", 80),
                1,
            ),
            upsert(
                KubeKind::EndpointSlice,
                "web-1",
                slice_json("web-1", "web", &["10.1.0.1"]),
                2,
            ),
        ],
    );
    commit(&mut state, &plan);
    let plan = v.plan(
        &state,
        vec![
            upsert(
                KubeKind::Service,
                "web",
                cluster_ip("web", "10.96.0.1", 70_000),
                3,
            ),
            upsert(
                KubeKind::EndpointSlice,
                "web-1",
                slice_json("web-1", "web", &["10.1.0.7"]),
                4,
            ),
        ],
    );
    assert!(
        plan.warnings.iter().any(|w| w.contains("update rejected")),
        "{:?}",
        plan.warnings
    );
    commit(&mut state, &plan);
    let web = state.services().next().expect("web stays");
    assert_eq!(web.key.port, 80);
    assert_eq!(
        web.backends[0].address,
        "10.1.0.7".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(
        state.kube().services_cursor,
        "3",
        "the cursor moves past it"
    );
}

#[test]
fn two_services_on_one_address_and_port_keep_the_first() {
    let mut state = State::default();
    let mut v = view(&state);
    let plan = v.plan(
        &state,
        vec![upsert(
            KubeKind::Service,
            "a",
            cluster_ip("a", "10.96.0.1", 80),
            1,
        )],
    );
    commit(&mut state, &plan);
    let plan = v.plan(
        &state,
        vec![upsert(
            KubeKind::Service,
            "b",
            cluster_ip("b", "10.96.0.1", 80),
            2,
        )],
    );
    assert!(service_commands(&plan).is_empty(), "{plan:?}");
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("already served for ns/a:http")),
        "{:?}",
        plan.warnings
    );
    commit(&mut state, &plan);
    assert_eq!(
        state.services().next().map(|s| s.name.as_str()),
        Some("ns/a:http")
    );
}

#[test]
fn a_big_batch_is_split_and_only_its_last_entry_moves_the_cursor() {
    let mut state = State::default();
    let mut v = view(&state);
    let n = MAX_COMMANDS_PER_ENTRY + 10;
    let objects: BTreeMap<String, Arc<[u8]>> = (0..n)
        .map(|i| {
            let name = format!("s{i}");
            let ip = format!("10.{}.{}.{}", 100 + i / 65_536, i / 256 % 256, i % 256);
            (format!("ns/{name}"), cluster_ip(&name, &ip, 80))
        })
        .collect();
    let plan = v.plan(
        &state,
        vec![Event::Relisted {
            kind: KubeKind::Service,
            objects,
            resource_version: "7".into(),
        }],
    );
    assert!(
        plan.entries.len() >= 4,
        "objects, commands, cursor: {}",
        plan.entries.len()
    );
    for entry in &plan.entries {
        assert!(entry.len() <= MAX_COMMANDS_PER_ENTRY);
    }
    for entry in &plan.entries[..plan.entries.len() - 1] {
        assert!(
            !entry
                .iter()
                .any(|c| matches!(c, Command::KubeObjects(d) if !d.resource_version.is_empty()))
        );
    }
    // Cut short before the last entry: a new leader's reconcile finishes
    // the table, and the cursor still points before the batch.
    let mut cut = state.clone();
    for entry in &plan.entries[..plan.entries.len() - 1] {
        for c in entry {
            let _ = cut.apply(c);
        }
    }
    assert_eq!(cut.kube().services_cursor, "");
    commit(&mut state, &plan);
    assert_eq!(state.len(), n);
    assert_eq!(state.kube().services_cursor, "7");
    // Half the service commands lost: the next leader's reconcile repairs.
    let mut half = State::default();
    let mut seen = 0;
    for c in plan.entries.iter().flatten() {
        if !matches!(c, Command::KubeObjects(_)) {
            seen += 1;
            if seen > n / 2 {
                continue;
            }
        }
        let _ = half.apply(c);
    }
    assert_eq!(half.len(), n / 2);
    let repair = view(&half).reconcile_all(&half);
    commit(&mut half, &repair);
    assert_eq!(half.len(), n);
}

/// The parts of two views that must agree.
fn assert_same(a: &View, b: &View) {
    assert_eq!(a.services, b.services, "services");
    assert_eq!(a.slices, b.slices, "slices");
    assert_eq!(a.slices_of, b.slices_of, "slices of each service");
    assert_eq!(a.owned, b.owned, "table keys of each service");
    assert_eq!(a.used, b.used, "addresses used");
    assert_eq!(a.claims, b.claims, "addresses claimed");
}

/// A follower's warm view steps with the state at the cost of what
/// changed (stored objects and table services), and hands over exactly
/// the view a new leader would build whole.
#[test]
fn the_warm_view_steps_with_what_changed_and_equals_one_built_whole() {
    let mut state = State::default();
    let mut leader = view(&state);
    let mut events = Vec::new();
    for i in 0..5 {
        let name = format!("web-{i}");
        events.push(upsert(
            KubeKind::Service,
            &name,
            cluster_ip(&name, &format!("10.96.0.{}", i + 1), 80),
            2 * i + 1,
        ));
        events.push(upsert(
            KubeKind::EndpointSlice,
            &format!("{name}-a"),
            slice_json(&format!("{name}-a"), &name, &["10.1.0.1"]),
            2 * i + 2,
        ));
    }
    // A LoadBalancer: a pool address claimed and used.
    events.push(upsert(
        KubeKind::Service,
        "lb",
        load_balancer("lb", json!({})),
        11,
    ));
    events.push(upsert(
        KubeKind::EndpointSlice,
        "lb-a",
        slice_json("lb-a", "lb", &["10.1.0.2"]),
        12,
    ));
    let plan = leader.plan(&state, events);
    commit(&mut state, &plan);
    let first = Arc::new(state.clone());

    let mut warm = Warm::new(first.clone(), TranslateConfig::default(), pools());
    assert_eq!(warm.len(), 12);
    assert_eq!(warm.catch_up(&first), 0, "nothing changed");
    assert_eq!(warm.catch_up(&Arc::new(state.clone())), 0, "the same maps");

    // One slice changes, one Service and its slice go, the LoadBalancer
    // goes, one Service comes.
    let plan = leader.plan(
        &state,
        vec![
            upsert(
                KubeKind::EndpointSlice,
                "web-0-a",
                slice_json("web-0-a", "web-0", &["10.1.0.7", "10.1.0.8"]),
                20,
            ),
            Event::Delete {
                kind: KubeKind::Service,
                name: "ns/web-4".into(),
                resource_version: "21".into(),
            },
            Event::Delete {
                kind: KubeKind::EndpointSlice,
                name: "ns/web-4-a".into(),
                resource_version: "22".into(),
            },
            Event::Delete {
                kind: KubeKind::Service,
                name: "ns/lb".into(),
                resource_version: "23".into(),
            },
            upsert(
                KubeKind::Service,
                "api",
                cluster_ip("api", "10.96.0.40", 443),
                24,
            ),
        ],
    );
    commit(&mut state, &plan);
    let second = Arc::new(state.clone());
    // Five stored objects, and the table services that changed with them.
    let table_changes = second.service_changes_since(&first).len();
    assert!(table_changes >= 3, "{table_changes}");
    assert_eq!(warm.catch_up(&second), 5 + table_changes);
    assert_eq!(warm.len(), 10);

    let mut warnings = Vec::new();
    let mut handed = warm.into_view(&mut warnings);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_same(&handed, &view(&second));
    assert!(handed.reconcile_all(&second).entries.is_empty());
    let next = vec![upsert(
        KubeKind::EndpointSlice,
        "web-1-a",
        slice_json("web-1-a", "web-1", &["10.1.0.9"]),
        30,
    )];
    assert_eq!(
        service_commands(&handed.plan(&second, next.clone())),
        service_commands(&view(&second).plan(&second, next))
    );
}

/// A leader's view is kept when its source stops, whatever became of its
/// last plan: not committed (leadership lost first), committed after all,
/// and with a later leader's changes on top. Kept, it equals the view
/// built whole from the state it is brought to.
#[test]
fn a_leaders_view_is_kept_when_its_source_stops_and_equals_one_built_whole() {
    let mut state = State::default();
    let mut leader = view(&state);
    let mut events = Vec::new();
    for (i, name) in ["web", "api", "db"].iter().enumerate() {
        let i = i as u64;
        events.push(upsert(
            KubeKind::Service,
            name,
            cluster_ip(name, &format!("10.96.0.{}", i + 1), 80),
            2 * i + 1,
        ));
        events.push(upsert(
            KubeKind::EndpointSlice,
            &format!("{name}-a"),
            slice_json(&format!("{name}-a"), name, &["10.1.0.1"]),
            2 * i + 2,
        ));
    }
    let plan = leader.plan(&state, events);
    commit(&mut state, &plan);
    let base = Arc::new(state.clone());
    // The last plan: a slice changes, a Service goes, a LoadBalancer comes.
    let last = leader.plan(&base, last_events());
    assert_eq!(last.touched.objects.len(), 3);
    assert!(last.touched.services.contains("ns/lb"));
    // A later leader, from the same base, changes another slice and one
    // the last plan changed, differently.
    let mut later = view(&base);
    let slice = |service: &str, host: &str, rv| {
        let name = format!("{service}-a");
        upsert(
            KubeKind::EndpointSlice,
            &name,
            slice_json(&name, service, &[host]),
            rv,
        )
    };
    let theirs = later.plan(
        &base,
        vec![slice("api", "10.1.0.5", 20), slice("web", "10.1.0.9", 21)],
    );
    let mut lost = (*base).clone();
    commit(&mut lost, &theirs);
    let mut won = (*base).clone();
    commit(&mut won, &last);
    let won_then_theirs = {
        let mut s = won.clone();
        commit(&mut s, &theirs);
        s
    };
    for (case, now) in [
        ("not committed", (*base).clone()),
        ("not committed, a later leader's changes", lost),
        ("committed after all", won),
        ("committed, a later leader's changes", won_then_theirs),
    ] {
        let kept = {
            let mut copy = view(&base);
            // The leader's view: the base and the last plan.
            let _ = copy.plan(&base, last_events());
            copy
        };
        let now = Arc::new(now);
        let mut warm = Warm::resumed(kept, base.clone(), &last.touched, &now);
        assert_eq!(warm.catch_up(&now), 0, "{case}");
        assert_same(&warm.into_view(&mut Vec::new()), &view(&now));
    }
}

/// The events of the last plan above.
fn last_events() -> Vec<Event> {
    vec![
        upsert(
            KubeKind::EndpointSlice,
            "web-a",
            slice_json("web-a", "web", &["10.1.0.7", "10.1.0.8"]),
            10,
        ),
        Event::Delete {
            kind: KubeKind::Service,
            name: "ns/db".into(),
            resource_version: "11".into(),
        },
        upsert(KubeKind::Service, "lb", load_balancer("lb", json!({})), 12),
    ]
}

/// A stored object that does not decode is left out of the warm view as
/// of the whole one, with the same warning, and comes back when fixed.
#[test]
fn the_warm_view_leaves_out_what_does_not_decode_and_takes_it_back() {
    let mut state = State::default();
    let bad = |state: &mut State, json: Arc<[u8]>, rv: &str| {
        let _ = state.apply(&Command::KubeObjects(crate::model::KubeDelta {
            kind: KubeKind::Service,
            upserts: vec![("ns/odd".into(), json)],
            deletes: vec![],
            resource_version: rv.into(),
        }));
    };
    let mut warm = Warm::new(Arc::new(state.clone()), TranslateConfig::default(), pools());
    bad(&mut state, Arc::from(&b"{not json"[..]), "1");
    let odd = Arc::new(state.clone());
    assert_eq!(warm.catch_up(&odd), 1);
    assert_eq!(warm.len(), 0);
    let (mut whole_warnings, mut warm_warnings) = (Vec::new(), Vec::new());
    let whole = View::new(
        &odd,
        TranslateConfig::default(),
        pools(),
        &mut whole_warnings,
    );
    let mut again = Warm::new(odd.clone(), TranslateConfig::default(), pools());
    assert_eq!(again.catch_up(&odd), 0);
    assert_same(&again.into_view(&mut Vec::new()), &whole);
    let stepped = {
        let mut w = Warm::new(
            Arc::new(State::default()),
            TranslateConfig::default(),
            pools(),
        );
        w.catch_up(&odd);
        w
    };
    assert_same(&stepped.into_view(&mut warm_warnings), &whole);
    assert_eq!(warm_warnings, whole_warnings);
    assert_eq!(
        whole_warnings,
        vec!["stored Service ns/odd does not decode; left out".to_owned()]
    );
    // Fixed: decoded and in the view, no warning left.
    bad(&mut state, cluster_ip("odd", "10.96.0.7", 80), "2");
    let fixed = Arc::new(state.clone());
    assert_eq!(warm.catch_up(&fixed), 1);
    let mut none = Vec::new();
    assert_same(&warm.into_view(&mut none), &view(&fixed));
    assert!(none.is_empty(), "{none:?}");
}

mod addresses;
