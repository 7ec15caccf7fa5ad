//! Tests of the dataplane boundary: the plan's diff, the ipvsadm text, and
//! the reconciler against the memory dataplane.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::model::{
    Backend, BackendState, Command, Forwarding, Protocol, Scheduler, ServiceKey, State,
    VirtualService,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn service(
    vip: &str,
    port: u16,
    protocol: Protocol,
    backends: &[(&str, u16, u32)],
) -> VirtualService {
    VirtualService {
        key: ServiceKey {
            vip: ip(vip),
            port,
            protocol,
        },
        name: format!("{vip}:{port}"),
        scheduler: Scheduler::Wrr,
        persistence_timeout: None,
        fwmark: None,
        forwarding: Forwarding::Masquerade,
        allowed_sources: vec![],
        bgp_communities: vec![],
        bgp_large_communities: vec![],
        health: None,
        backends: backends
            .iter()
            .map(|&(a, port, weight)| Backend {
                address: ip(a),
                port,
                weight,
                state: BackendState::Ready,
            })
            .collect(),
    }
}

fn state_of(services: &[VirtualService]) -> State {
    let mut state = State::default();
    for s in services {
        state
            .apply(&Command::UpsertService(s.clone()))
            .expect("valid test service");
    }
    state
}

fn table_of(services: &[VirtualService]) -> Table {
    Table::from_state(&state_of(services))
}

fn example() -> Vec<VirtualService> {
    vec![
        service(
            "192.0.2.10",
            80,
            Protocol::Tcp,
            &[("10.0.0.1", 8080, 1), ("10.0.0.2", 8080, 2)],
        ),
        service(
            "2001:db8::10",
            53,
            Protocol::Udp,
            &[("2001:db8:1::1", 53, 1)],
        ),
    ]
}

#[test]
fn empty_to_full_adds_every_service_then_its_destinations() {
    let ops = plan(&table_of(&example()), &Table::default());
    let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "add service tcp/192.0.2.10:80",
            "add destination 10.0.0.1:8080 to tcp/192.0.2.10:80",
            "add destination 10.0.0.2:8080 to tcp/192.0.2.10:80",
            "add service udp/[2001:db8::10]:53",
            "add destination [2001:db8:1::1]:53 to udp/[2001:db8::10]:53",
        ]
    );
}

#[test]
fn full_to_empty_deletes_services_only() {
    let ops = plan(&Table::default(), &table_of(&example()));
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(ops.iter().all(|op| matches!(op, Op::DeleteService { .. })));
}

#[test]
fn one_weight_change_is_one_update() {
    let before = example();
    let mut after = example();
    after[0].backends[1].weight = 5;
    let ops = plan(&table_of(&after), &table_of(&before));
    assert_eq!(
        ops,
        [Op::UpdateDestination {
            service: before[0].key,
            dest: DestKey {
                address: ip("10.0.0.2"),
                port: 8080
            },
            settings: Destination {
                weight: 5,
                forwarding: Forwarding::Masquerade
            },
        }]
    );
}

#[test]
fn backend_removal_is_one_destination_delete() {
    let before = example();
    let mut after = example();
    after[0].backends.remove(0);
    let ops = plan(&table_of(&after), &table_of(&before));
    assert_eq!(
        ops,
        [Op::DeleteDestination {
            service: before[0].key,
            dest: DestKey {
                address: ip("10.0.0.1"),
                port: 8080
            }
        }]
    );
}

#[test]
fn protocol_change_replaces_the_service() {
    let before = example();
    let mut after = example();
    after[0].key.protocol = Protocol::Sctp;
    let ops = plan(&table_of(&after), &table_of(&before));
    let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "delete service tcp/192.0.2.10:80",
            "add service sctp/192.0.2.10:80",
            "add destination 10.0.0.1:8080 to sctp/192.0.2.10:80",
            "add destination 10.0.0.2:8080 to sctp/192.0.2.10:80",
        ]
    );
}

#[test]
fn a_firewall_mark_change_replaces_the_service() {
    let before = example();
    let mut after = example();
    after[0].fwmark = Some(7);
    let ops = plan(&table_of(&after), &table_of(&before));
    let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "delete service tcp/192.0.2.10:80",
            "add service tcp/192.0.2.10:80",
            "add destination 10.0.0.1:8080 to tcp/192.0.2.10:80",
            "add destination 10.0.0.2:8080 to tcp/192.0.2.10:80",
        ]
    );
    // And back.
    let ops = plan(&table_of(&before), &table_of(&after));
    assert_eq!(ops.len(), 4);
    assert!(matches!(ops[0], Op::DeleteService { .. }));
}

#[test]
fn scheduler_change_updates_in_place() {
    let before = example();
    let mut after = example();
    after[0].scheduler = Scheduler::Mh;
    let ops = plan(&table_of(&after), &table_of(&before));
    assert_eq!(ops.len(), 1);
    assert!(matches!(ops[0], Op::UpdateService { .. }));
}

#[test]
fn backend_states_map_like_kube_proxy() {
    let mut s = service(
        "192.0.2.1",
        80,
        Protocol::Tcp,
        &[
            ("10.0.0.1", 80, 3),
            ("10.0.0.2", 80, 3),
            ("10.0.0.3", 80, 3),
            ("10.0.0.4", 80, 3),
        ],
    );
    s.backends[1].state = BackendState::Serving;
    s.backends[2].state = BackendState::Terminating;
    s.backends[3].state = BackendState::NotReady;
    let table = table_of(std::slice::from_ref(&s));
    let weights: Vec<(String, u32)> = table.services[&s.key]
        .destinations
        .iter()
        .map(|(d, x)| (d.to_string(), x.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("10.0.0.1:80".into(), 3),
            ("10.0.0.2:80".into(), 0),
            ("10.0.0.3:80".into(), 0)
        ]
    );
    // With no ready backend left, serving ones take new connections.
    s.backends[0].state = BackendState::NotReady;
    let table = table_of(&[s.clone()]);
    assert_eq!(
        table.services[&s.key].destinations[&DestKey {
            address: ip("10.0.0.2"),
            port: 80
        }]
            .weight,
        3
    );
}

#[test]
fn ipvsadm_rules_match_the_tools_format() {
    let mut services = example();
    services[0].persistence_timeout = Some(300);
    services.push(service(
        "192.0.2.9",
        443,
        Protocol::Sctp,
        &[("10.0.0.9", 443, 0)],
    ));
    services[2].forwarding = Forwarding::Direct;
    // Firewall-mark services come after the others, by mark.
    services[1].fwmark = Some(5);
    services.push(service(
        "192.0.2.8",
        80,
        Protocol::Tcp,
        &[("10.0.0.8", 80, 1)],
    ));
    services[3].fwmark = Some(4);
    let text = ipvsadm_rules(&table_of(&services));
    assert_eq!(
        text,
        "-A -t 192.0.2.10:80 -s wrr -p 300\n\
         -a -t 192.0.2.10:80 -r 10.0.0.1:8080 -m -w 1\n\
         -a -t 192.0.2.10:80 -r 10.0.0.2:8080 -m -w 2\n\
         -A --sctp-service 192.0.2.9:443 -s wrr\n\
         -a --sctp-service 192.0.2.9:443 -r 10.0.0.9:443 -g -w 0\n\
         -A -f 4 -s wrr\n\
         -a -f 4 -r 10.0.0.8:80 -m -w 1\n\
         -A -f 5 -6 -s wrr\n\
         -a -f 5 -6 -r [2001:db8:1::1]:53 -m -w 1\n"
    );
}

fn arb_table() -> impl Strategy<Value = Table> {
    let svc = (
        1u8..5,
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        prop::collection::btree_map(1u8..6, (0u32..3, any::<bool>()), 0..5),
        any::<bool>(),
    );
    prop::collection::vec(svc, 0..6).prop_map(|services| {
        let services: Vec<VirtualService> = services
            .into_iter()
            .map(|(host, protocol, backends, rr)| {
                let mut s = service(&format!("192.0.2.{host}"), 80, protocol, &[]);
                s.scheduler = if rr { Scheduler::Rr } else { Scheduler::Wrr };
                s.backends = backends
                    .into_iter()
                    .map(|(b, (weight, direct))| Backend {
                        address: ip(&format!("10.0.0.{b}")),
                        port: 80,
                        weight,
                        state: if direct {
                            BackendState::Ready
                        } else {
                            BackendState::Terminating
                        },
                    })
                    .collect();
                s
            })
            .collect();
        table_of(&services)
    })
}

proptest! {
    #[test]
    fn applying_the_plan_gives_the_desired_table(desired in arb_table(), observed in arb_table()) {
        let ops = plan(&desired, &observed);
        let mut table = observed.clone();
        for op in &ops {
            prop_assert!(table.apply(op).is_ok(), "{op} does not fit the observed table");
        }
        prop_assert_eq!(&table, &desired);
        prop_assert!(plan(&desired, &table).is_empty());
        // Deterministic.
        prop_assert_eq!(plan(&desired, &observed), ops);
    }
}

fn watch_state(
    state: State,
) -> (
    tokio::sync::watch::Sender<Arc<State>>,
    tokio::sync::watch::Receiver<Arc<State>>,
) {
    tokio::sync::watch::channel(Arc::new(state))
}

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The reconciler over `dp` with a 30 s repair interval: its status, the
/// token that stops it, and its task.
fn start_reconciler(
    dp: &MemoryDataplane,
    states: tokio::sync::watch::Receiver<Arc<State>>,
) -> (
    tokio::sync::watch::Receiver<reconcile::DataplaneStatus>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    start_reconciler_every(dp, states, Duration::from_secs(30))
}

fn start_reconciler_every(
    dp: &MemoryDataplane,
    states: tokio::sync::watch::Receiver<Arc<State>>,
    repair_interval: Duration,
) -> (
    tokio::sync::watch::Receiver<reconcile::DataplaneStatus>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (status_tx, status_rx) = tokio::sync::watch::channel(reconcile::DataplaneStatus::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(reconcile::run(
        dp.clone(),
        states,
        repair_interval,
        status_tx,
        tokio::sync::mpsc::channel(1).1,
        shutdown.clone(),
    ));
    (status_rx, shutdown, task)
}

#[tokio::test(start_paused = true)]
async fn reconciler_programs_changes_and_repairs_drift() {
    let dp = MemoryDataplane::new();
    let (state_tx, state_rx) = watch_state(state_of(&example()));
    let (status_rx, shutdown, task) = start_reconciler(&dp, state_rx);

    wait_for("first sync", || dp.table() == table_of(&example())).await;

    // A change of state is applied without waiting for the repair interval.
    let mut changed = example();
    changed[0].backends[0].weight = 7;
    state_tx
        .send(Arc::new(state_of(&changed)))
        .expect("reconciler alive");
    wait_for("change applied", || dp.table() == table_of(&changed)).await;
    assert_eq!(status_rx.borrow().last_sync_ops, 1);

    // Someone runs `ipvsadm -C`: repaired at the next repair interval.
    dp.lock().services.clear();
    tokio::time::sleep(Duration::from_secs(31)).await;
    wait_for("drift repaired", || dp.table() == table_of(&changed)).await;
    assert_eq!(
        status_rx.borrow().drift_repairs,
        5,
        "2 services and 3 destinations re-added"
    );

    shutdown.cancel();
    task.await.expect("reconciler ends cleanly");
}

/// The periodic repair reads the table back a slice at a time, with the
/// changes that come meanwhile applied between two slices, and without a
/// whole-table dump (issue 20: a whole dump of 50,000 x 10 took 43 s in
/// the kernel lab, and every change waited behind it). Drift at both ends
/// of the table is found: a destination and a service removed by hand, a
/// stray service added. Real time: a paused clock runs the whole round
/// before the test can look.
#[tokio::test]
async fn a_repair_goes_a_slice_at_a_time_and_lets_changes_through() {
    use crate::model::fixtures::numbered_service;
    let mut services: Vec<VirtualService> = (0..1000).map(|n| numbered_service(n, 10)).collect();
    let dp = MemoryDataplane::new();
    let (state_tx, state_rx) = watch_state(state_of(&services));
    let (status_rx, shutdown, task) =
        start_reconciler_every(&dp, state_rx, Duration::from_millis(300));
    wait_for("first sync", || dp.table() == table_of(&services)).await;
    let before = dp.calls().len();
    {
        let mut kernel = dp.lock();
        let first = kernel.services.get_mut(&services[0].key).expect("first");
        first.destinations.pop_first();
        kernel.services.remove(&services[999].key);
        let stray = numbered_service(5000, 1);
        kernel.services.extend(table_of(&[stray]).services);
    }
    // The first slice of the round, then a change of two weights.
    let waiting = std::time::Instant::now();
    while !dp.calls()[before..]
        .iter()
        .any(|c| c.starts_with("dump_only"))
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "no repair round"
        );
        tokio::task::yield_now().await;
    }
    services[500].backends[0].weight = 9;
    services[500].backends[1].weight = 9;
    state_tx
        .send(Arc::new(state_of(&services)))
        .expect("reconciler alive");
    wait_for("repaired and changed", || dp.table() == table_of(&services)).await;

    let calls = dp.calls()[before..].to_vec();
    assert!(!calls.iter().any(|c| c == "dump"), "{calls:?}");
    let slices: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i].starts_with("dump_only"))
        .collect();
    // 2,048 destinations' worth first, then up to twice as many a slice.
    assert!(
        slices.len() >= 3,
        "10,010 destinations in slices: {calls:?}"
    );
    let change = calls
        .iter()
        .position(|c| c == "apply 2")
        .expect("the change applied");
    assert!(
        slices[0] < change && change < slices[1],
        "the change waited for more than one slice: {calls:?}"
    );
    assert_eq!(
        status_rx.borrow().drift_repairs,
        13,
        "one destination, one service with its 10, one stray service"
    );
    assert_eq!(status_rx.borrow().programmed_destinations, 10_000);

    shutdown.cancel();
    task.await.expect("reconciler ends cleanly");
}

/// A service the dataplane refuses (a scheduler the kernel lacks) is set
/// apart and retried with backoff; the rest of the table is neither dumped
/// again nor held up (issue 20: it was a whole-table dump every second).
#[tokio::test(start_paused = true)]
async fn a_refused_service_is_retried_on_its_own_with_backoff() {
    let dp = MemoryDataplane::new();
    dp.refuse_scheduler(Some(Scheduler::Sh));
    let mut services = example();
    let mut odd = service("192.0.2.20", 80, Protocol::Tcp, &[("10.0.0.9", 80, 1)]);
    odd.scheduler = Scheduler::Sh;
    services.push(odd);
    let (state_tx, state_rx) = watch_state(state_of(&services));
    let (status_rx, shutdown, task) = start_reconciler(&dp, state_rx);
    wait_for("the others programmed", || {
        dp.table() == table_of(&services[..2])
    })
    .await;
    assert!(
        status_rx.borrow().last_error.contains("no scheduler"),
        "{:?}",
        status_rx.borrow()
    );

    // 20 s later: no dump but the first, and a change to another service
    // goes through at once.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(dp.dumps(), 1, "a refused service made the member dump");
    services[0].backends[0].weight = 9;
    state_tx
        .send(Arc::new(state_of(&services)))
        .expect("reconciler alive");
    wait_for("the change applied", || {
        dp.table() == table_of(&services[..2])
    })
    .await;

    // The kernel gets the scheduler: the service is in within the backoff
    // (1, 2, 4, 8, 16 s so far: at most 32 s), still without a dump.
    dp.refuse_scheduler(None);
    tokio::time::sleep(Duration::from_secs(33)).await;
    wait_for("the refused service programmed", || {
        dp.table() == table_of(&services)
    })
    .await;
    assert!(status_rx.borrow().last_error.is_empty());
    assert!(dp.dumps() <= 2, "{} dumps (one repair at 30 s)", dp.dumps());

    shutdown.cancel();
    task.await.expect("reconciler ends cleanly");
}

#[test]
fn overrides_change_the_programmed_weight() {
    let services = example();
    let mut state = state_of(&services);
    let key = services[0].key;
    let drained = DestKey {
        address: ip("10.0.0.1"),
        port: 8080,
    };
    let heavier = DestKey {
        address: ip("10.0.0.2"),
        port: 8080,
    };
    for (dest, value) in [
        (drained, crate::model::BackendOverride::Drain),
        (heavier, crate::model::BackendOverride::Weight(9)),
    ] {
        state
            .apply(&Command::SetBackendOverride {
                key,
                address: dest.address,
                port: dest.port,
                value: Some(value),
            })
            .expect("override");
    }
    let table = Table::from_state(&state);
    assert_eq!(
        table.services[&key].destinations[&drained].weight, 0,
        "drained: kept, no new connections"
    );
    assert_eq!(table.services[&key].destinations[&heavier].weight, 9);
    // Applying it is two weight updates, nothing else.
    let ops = plan(&table, &table_of(&services));
    assert_eq!(ops.len(), 2);
    assert!(
        ops.iter()
            .all(|op| matches!(op, Op::UpdateDestination { .. }))
    );
}

fn arb_command() -> impl Strategy<Value = Command> {
    let key = (
        1u8..6,
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
    )
        .prop_map(|(h, protocol)| ServiceKey {
            vip: ip(&format!("192.0.2.{h}")),
            port: 80,
            protocol,
        });
    let backends =
        prop::collection::btree_map(1u8..6, (0u32..3, any::<bool>()), 0..5).prop_map(|m| {
            m.into_iter()
                .map(|(b, (weight, ready))| Backend {
                    address: ip(&format!("10.0.0.{b}")),
                    port: 80,
                    weight,
                    state: if ready {
                        BackendState::Ready
                    } else {
                        BackendState::Serving
                    },
                })
                .collect::<Vec<_>>()
        });
    prop_oneof![
        (key.clone(), backends.clone(), any::<bool>()).prop_map(|(key, backends, rr)| {
            let mut s = service("192.0.2.1", 80, key.protocol, &[]);
            s.key = key;
            s.scheduler = if rr { Scheduler::Rr } else { Scheduler::Wrr };
            s.backends = backends;
            Command::UpsertService(s)
        }),
        (key.clone(), backends)
            .prop_map(|(key, backends)| Command::ReplaceBackends { key, backends }),
        key.clone().prop_map(Command::DeleteService),
        (
            key,
            1u8..6,
            prop_oneof![
                Just(None),
                Just(Some(crate::model::BackendOverride::Drain)),
                (0u32..5).prop_map(|w| Some(crate::model::BackendOverride::Weight(w)))
            ]
        )
            .prop_map(|(key, b, value)| Command::SetBackendOverride {
                key,
                address: ip(&format!("10.0.0.{b}")),
                port: 80,
                value
            }),
    ]
}

proptest! {
    #[test]
    fn incremental_sync_plans_exactly_what_a_full_one_does(
        before in prop::collection::vec(arb_command(), 0..20),
        after in prop::collection::vec(arb_command(), 0..10),
    ) {
        let mut a = State::default();
        for c in &before {
            let _ = a.apply(c);
        }
        let mut b = a.clone();
        for c in &after {
            let _ = b.apply(c);
        }
        let programmed = Table::from_state(&a);
        let full = reconcile::plan_sync(&b, &programmed, None);
        let incremental = reconcile::plan_sync(&b, &programmed, Some(&a));
        prop_assert_eq!(&incremental, &full);
        let mut table = programmed;
        for op in &incremental {
            prop_assert!(table.apply(op).is_ok());
        }
        prop_assert_eq!(table, Table::from_state(&b));
    }
}
