//! Property tests of the model: determinism of `apply`, snapshot round
//! trips, log entry round trips and `commands_towards`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

/// Small value ranges on purpose: commands must collide on keys and
/// backends often, or the interesting paths (update, replace, delete of
/// something present) are never taken.
fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..4).prop_map(|d| IpAddr::V4(Ipv4Addr::new(192, 0, 2, d))),
        (1u16..3).prop_map(|d| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, d))),
    ]
}

fn key() -> impl Strategy<Value = ServiceKey> {
    (
        ip(),
        prop_oneof![Just(80u16), Just(443)],
        prop::sample::select(Protocol::ALL.to_vec()),
    )
        .prop_map(|(vip, port, protocol)| ServiceKey {
            vip,
            port,
            protocol,
        })
}

fn backends(family_v4: bool) -> impl Strategy<Value = Vec<Backend>> {
    prop::collection::btree_map(
        (1u8..6, prop_oneof![Just(8080u16), Just(8443)]),
        (0u32..4, prop::sample::select(BackendState::ALL.to_vec())),
        0..5,
    )
    .prop_map(move |m| {
        m.into_iter()
            .map(|((host, port), (weight, state))| Backend {
                address: if family_v4 {
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, host))
                } else {
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(host)))
                },
                port,
                weight,
                state,
            })
            .collect()
    })
}

fn service() -> impl Strategy<Value = VirtualService> {
    key().prop_flat_map(|key| {
        (
            Just(key),
            prop::sample::select(Scheduler::ALL.to_vec()),
            prop_oneof![Just(None), (1u32..4000).prop_map(Some)],
            prop::sample::select(Forwarding::ALL.to_vec()),
            prop::collection::vec(prop_oneof![Just("10.0.0.0/8"), Just("2001:db8::/32")], 0..2),
            backends(key.vip.is_ipv4()),
            prop::collection::btree_set(any::<u32>(), 0..3),
            prop::collection::btree_set(any::<(u32, u32, u32)>(), 0..2),
            health_check(),
        )
            .prop_map(
                |(
                    key,
                    scheduler,
                    persistence_timeout,
                    forwarding,
                    nets,
                    backends,
                    communities,
                    large,
                    health,
                )| {
                    VirtualService {
                        key,
                        name: format!("svc-{}", key.port),
                        scheduler,
                        persistence_timeout,
                        fwmark: None,
                        forwarding,
                        allowed_sources: nets.iter().filter_map(|n| n.parse().ok()).collect(),
                        bgp_communities: communities.into_iter().collect(),
                        bgp_large_communities: large.into_iter().collect(),
                        health,
                        backends,
                    }
                },
            )
    })
}

/// No check, or a valid one of several kinds (issue 22).
fn health_check() -> impl Strategy<Value = Option<Box<HealthCheck>>> {
    let kind = prop_oneof![
        Just(ProbeKind::Tcp),
        (
            any::<bool>(),
            prop_oneof![Just(vec![]), Just(vec![200u16, 204])],
            prop_oneof![Just(None), Just(Some("ok".to_owned()))]
        )
            .prop_map(|(tls, expect_status, expect_body)| ProbeKind::Http {
                tls,
                method: "GET".into(),
                path: "/healthz".into(),
                host: String::new(),
                expect_status,
                expect_body,
            }),
        Just(ProbeKind::Udp {
            send: b"q".to_vec(),
            expect: vec![]
        }),
        Just(ProbeKind::Grpc {
            service: "s".into()
        }),
    ];
    prop_oneof![
        1 => Just(None),
        1 => (kind, prop_oneof![Just(None), Just(Some(8081u16))], 1u32..4, 1u32..4, any::<bool>()).prop_map(
            |(kind, port, rise, fall, remove)| {
                Some(Box::new(HealthCheck {
                    kind,
                    port,
                    interval: std::time::Duration::from_secs(1),
                    timeout: std::time::Duration::from_millis(500),
                    rise,
                    fall,
                    on_down: if remove { OnDown::Remove } else { OnDown::Drain },
                }))
            }
        ),
    ]
}

/// Backend `host` of a service, in its address family.
fn backend_address(key: &ServiceKey, host: u8) -> IpAddr {
    if key.vip.is_ipv4() {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, host))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(host)))
    }
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => service().prop_map(Command::UpsertService),
        1 => key().prop_map(Command::DeleteService),
        1 => (key(), 1u8..6, prop_oneof![Just(8080u16), Just(8443)], prop_oneof![
            Just(None),
            Just(Some(BackendOverride::Drain)),
            (0u32..70_000).prop_map(|w| Some(BackendOverride::Weight(w))),
        ])
            .prop_map(|(key, host, port, value)| Command::SetBackendOverride {
                key,
                address: backend_address(&key, host),
                port,
                value,
            }),
        1 => prop::collection::btree_map(ip(), 1u64..4, 0..4).prop_map(Command::SetVipOwners),
        1 => (prop_oneof![Just("a/x"), Just("b/y")], prop::collection::vec(ip(), 0..3))
            .prop_map(|(service, addresses)| Command::AssignAddresses { service: service.into(), addresses }),
        1 => (1u64..4, any::<bool>()).prop_map(|(member, drained)| Command::SetMemberDrained { member, drained }),
        1 => (prop_oneof![Just(KubeKind::Service), Just(KubeKind::EndpointSlice), Just(KubeKind::Node)],
              prop::collection::vec((prop_oneof![Just("a/x"), Just("b/y")], prop::collection::vec(any::<u8>(), 0..8)), 0..3),
              prop::collection::vec(prop_oneof![Just("a/x"), Just("c/z")], 0..2), prop_oneof![Just(""), Just("17"), Just("42")])
            .prop_map(|(kind, upserts, deletes, rv)| Command::KubeObjects(KubeDelta {
                kind,
                upserts: upserts.into_iter().map(|(n, j)| (n.to_owned(), j.into())).collect(),
                deletes: deletes.into_iter().map(str::to_owned).collect(),
                resource_version: rv.into(),
            })),
        4 => (1u64..4, 0u64..5, prop::collection::vec((key(), 1u8..6, prop_oneof![Just(8080u16), Just(8443)], prop_oneof![Just(None), Just(Some(true)), Just(Some(false))]), 0..10))
            .prop_map(|(member, at_unix_ms, reports)| Command::ReportHealth {
                member,
                at_unix_ms,
                reports: reports
                    .into_iter()
                    .map(|(key, host, port, down)| HealthReport {
                        key,
                        address: backend_address(&key, host),
                        port,
                        down,
                    })
                    .collect(),
            }),
        1 => prop::collection::btree_set(1u64..4, 0..3).prop_map(Command::SetProbers),
        2 => (key(), any::<bool>()).prop_flat_map(|(key, _)| {
            backends(key.vip.is_ipv4()).prop_map(move |backends| Command::ReplaceBackends { key, backends })
        }),
    ]
}

proptest! {
    #[test]
    fn same_commands_give_equal_states(commands in prop::collection::vec(command(), 0..40)) {
        let mut a = State::default();
        let mut b = State::default();
        for c in &commands {
            let ra = a.apply(c);
            // The other member gets the command through its log bytes.
            let decoded = Command::decode(&c.encode()).expect("own encoding decodes");
            let rb = b.apply(&decoded);
            prop_assert_eq!(ra, rb);
        }
        prop_assert_eq!(&a, &b);
        let table_commands = commands.iter().filter(|c| c.service_key().is_some()).count();
        prop_assert_eq!(a.revision(), table_commands as u64);
    }

    /// States with equal `keys_tag` have equal VIPs, whatever the
    /// commands between them (what the ownership caches rely on); and an
    /// endpoint change keeps the tag.
    #[test]
    fn equal_keys_tags_mean_equal_vips(commands in prop::collection::vec(command(), 0..40)) {
        let mut state = State::default();
        let mut seen: Vec<(u64, std::collections::BTreeSet<IpAddr>)> =
            vec![(state.keys_tag(), state.vips())];
        for c in &commands {
            let keys_before: Vec<ServiceKey> = state.services().map(|s| s.key).collect();
            let _ = state.apply(c);
            let keys_after: Vec<ServiceKey> = state.services().map(|s| s.key).collect();
            if keys_before == keys_after {
                prop_assert_eq!(seen.last().map(|(t, _)| *t), Some(state.keys_tag()));
            }
            seen.push((state.keys_tag(), state.vips()));
        }
        for (tag, vips) in &seen {
            for (other_tag, other_vips) in &seen {
                if tag == other_tag {
                    prop_assert_eq!(vips, other_vips);
                }
            }
        }
        // A restored state is tagged anew.
        let restored = State::decode_snapshot(&state.encode_snapshot()).expect("own snapshot decodes");
        prop_assert_ne!(restored.keys_tag(), state.keys_tag());
    }

    #[test]
    fn snapshot_then_restore_gives_equal_state(commands in prop::collection::vec(command(), 0..40)) {
        let mut state = State::default();
        for c in &commands {
            let _ = state.apply(c);
        }
        let restored = State::decode_snapshot(&state.encode_snapshot()).expect("own snapshot decodes");
        prop_assert_eq!(&restored, &state);
        // And the restored state goes on exactly like the original.
        let mut original = state;
        let mut restored = restored;
        for c in &commands {
            prop_assert_eq!(original.apply(c), restored.apply(c));
        }
        prop_assert_eq!(original, restored);
    }

    #[test]
    fn commands_towards_reaches_the_desired_table(
        start in prop::collection::vec(service(), 0..8),
        desired in prop::collection::vec(service(), 0..8),
    ) {
        let mut state = State::default();
        for s in start {
            state.apply(&Command::UpsertService(s)).expect("generated services are valid");
        }
        let mut wanted = std::collections::BTreeMap::new();
        for s in desired {
            wanted.insert(s.key, s.normalize().expect("valid"));
        }
        let commands = commands_towards(&state, wanted.values().cloned());
        for c in &commands {
            prop_assert!(!matches!(state.apply(c), Ok(Applied::Unchanged(_))), "useless command {c:?}");
        }
        let held: Vec<_> = state.services().cloned().collect();
        let wanted: Vec<_> = wanted.into_values().collect();
        prop_assert_eq!(held, wanted);
        // Once there, nothing more to do.
        prop_assert!(commands_towards(&state, state.services().cloned()).is_empty());
    }

    #[test]
    fn garbage_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Command::decode(&bytes);
        let _ = State::decode_snapshot(&bytes);
    }
}

fn web() -> VirtualService {
    VirtualService {
        key: ServiceKey {
            vip: "192.0.2.10".parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
        },
        name: "web".into(),
        scheduler: Scheduler::Wrr,
        persistence_timeout: None,
        fwmark: None,
        forwarding: Forwarding::Masquerade,
        allowed_sources: vec![],
        bgp_communities: vec![],
        bgp_large_communities: vec![],
        health: None,
        backends: vec![Backend {
            address: "10.0.0.1".parse().expect("ip"),
            port: 8080,
            weight: 1,
            state: BackendState::Ready,
        }],
    }
}

#[test]
fn invalid_service_is_refused_and_changes_nothing() {
    let mut state = State::default();
    state.apply(&Command::UpsertService(web())).expect("valid");
    let before = state.clone();
    let mut bad = web();
    bad.backends[0].weight = MAX_WEIGHT + 1;
    let err = state
        .apply(&Command::UpsertService(bad))
        .expect_err("weight too high");
    assert!(err.to_string().contains("weight 65536"), "{err}");
    assert_eq!(state.service(&web().key), before.service(&web().key));
    assert_eq!(state.revision(), before.revision() + 1);
}

#[test]
fn replace_backends_of_unknown_service_is_refused() {
    let mut state = State::default();
    let err = state
        .apply(&Command::ReplaceBackends {
            key: web().key,
            backends: vec![],
        })
        .expect_err("unknown");
    assert_eq!(err, ApplyError::UnknownService(web().key));
    assert!(state.is_empty());
}

#[test]
fn mixed_families_need_a_tunnel() {
    let mut s = web();
    s.backends[0].address = "fd00::1".parse().expect("ip");
    assert!(matches!(
        s.clone().normalize(),
        Err(InvalidService::MixedFamily { .. })
    ));
    s.forwarding = Forwarding::Tunnel;
    assert!(s.normalize().is_ok());
}

#[test]
fn snapshot_of_a_newer_format_is_refused() {
    use proto::Message;
    let bytes = proto::state::v1::Snapshot {
        format_version: 2,
        revision: 0,
        services: vec![],
        members: vec![],
        overrides: vec![],
        vip_owners: vec![],
        drained_members: vec![],
        lb_addresses: vec![],
        ..Default::default()
    }
    .encode_to_vec();
    let err = State::decode_snapshot(&bytes).expect_err("version 2");
    assert!(err.to_string().contains("format version 2"), "{err}");
}

#[test]
fn decoded_bad_address_names_the_field() {
    use proto::Message;
    let mut pb = service_to_pb(&web());
    pb.backends[0].address = vec![1, 2, 3];
    let bytes = proto::state::v1::Command {
        kind: Some(proto::state::v1::command::Kind::UpsertService(
            proto::state::v1::UpsertService { service: Some(pb) },
        )),
    }
    .encode_to_vec();
    let err = Command::decode(&bytes).expect_err("3-byte address");
    assert_eq!(
        err.to_string(),
        "upsert_service.service.backends[0].address: an address is 4 or 16 bytes, not 3"
    );
}

#[test]
fn overrides_survive_reloads_and_go_with_their_service() {
    let mut state = State::default();
    state.apply(&Command::UpsertService(web())).expect("valid");
    let backend = &web().backends[0];
    let drain = Command::SetBackendOverride {
        key: web().key,
        address: backend.address,
        port: backend.port,
        value: Some(BackendOverride::Drain),
    };
    assert_eq!(state.apply(&drain), Ok(Applied::Updated(web().key)));
    assert_eq!(state.apply(&drain), Ok(Applied::Unchanged(web().key)));
    // The source reloads the same service: the operator's drain stays.
    let mut reloaded = web();
    reloaded.backends[0].weight = 4;
    for c in commands_towards(&state, [reloaded]) {
        state.apply(&c).expect("valid");
    }
    assert_eq!(
        state.override_of(&web().key, backend.address, backend.port),
        Some(BackendOverride::Drain)
    );
    // Too heavy a weight is refused; an unknown service too.
    let heavy = Command::SetBackendOverride {
        key: web().key,
        address: backend.address,
        port: backend.port,
        value: Some(BackendOverride::Weight(MAX_WEIGHT + 1)),
    };
    assert_eq!(
        state.apply(&heavy),
        Err(ApplyError::OverrideWeight(MAX_WEIGHT + 1))
    );
    let mut other = web().key;
    other.port = 81;
    let stray = Command::SetBackendOverride {
        key: other,
        address: backend.address,
        port: backend.port,
        value: None,
    };
    assert_eq!(state.apply(&stray), Err(ApplyError::UnknownService(other)));
    // Deleting the service clears its overrides.
    state
        .apply(&Command::DeleteService(web().key))
        .expect("delete");
    assert!(state.overrides().is_empty());
}

#[test]
fn an_address_held_by_one_service_is_refused_to_another() {
    let mut state = State::default();
    let a: IpAddr = "192.0.2.1".parse().expect("ip");
    let assign = |service: &str, addresses: Vec<IpAddr>| Command::AssignAddresses {
        service: service.into(),
        addresses,
    };
    assert_eq!(
        state.apply(&assign("shop/web", vec![a])),
        Ok(Applied::Cluster { changed: true })
    );
    // A second leader handing out the same address: refused, deterministically.
    assert_eq!(
        state.apply(&assign("shop/api", vec![a])),
        Err(ApplyError::AddressInUse {
            address: a,
            holder: "shop/web".into()
        })
    );
    assert_eq!(state.lb_addresses_in_use(), [a].into());
    // Released, it can go to another.
    assert_eq!(
        state.apply(&assign("shop/web", vec![])),
        Ok(Applied::Cluster { changed: true })
    );
    assert_eq!(
        state.apply(&assign("shop/api", vec![a])),
        Ok(Applied::Cluster { changed: true })
    );
    // And it survives a snapshot.
    let restored = State::decode_snapshot(&state.encode_snapshot()).expect("decodes");
    assert_eq!(restored.lb_addresses(), state.lb_addresses());
}
