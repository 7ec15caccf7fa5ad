//! The health checks' replicated side: who probes what, which verdicts a
//! member sends, what the probers agree, and what the table makes of it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::dataplane::Table;
use crate::model::{Command, HealthReport, OnDown, ProbeKind, State, VirtualService, fixtures};

fn checked(n: u32, backends: u8, on_down: OnDown) -> VirtualService {
    VirtualService {
        health: Some(Box::new(HealthCheck {
            kind: ProbeKind::Tcp,
            port: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            on_down,
        })),
        ..fixtures::numbered_service(n, backends)
    }
}

fn cluster(services: &[VirtualService]) -> State {
    let mut state = State::default();
    for id in 1..=3 {
        state.set_member(id, format!("10.0.0.{id}:7000"));
    }
    for s in services {
        state
            .apply(&Command::UpsertService(s.clone()))
            .expect("test");
    }
    state
}

fn report(state: &mut State, member: u64, s: &VirtualService, backend: usize, down: Option<bool>) {
    let b = &s.backends[backend];
    state
        .apply(&Command::ReportHealth {
            member,
            at_unix_ms: 1,
            reports: vec![HealthReport {
                key: s.key,
                address: b.address,
                port: b.port,
                down,
            }],
        })
        .expect("test");
}

fn weights(state: &State, s: &VirtualService) -> Vec<Option<u32>> {
    let table = Table::from_state(state);
    let programmed = &table.services[&s.key];
    s.backends
        .iter()
        .map(|b| {
            programmed
                .destinations
                .iter()
                .find(|(d, _)| d.address == b.address && d.port == b.port)
                .map(|(_, d)| d.weight)
        })
        .collect()
}

#[test]
fn each_backend_is_probed_by_two_of_three_members() {
    let services: Vec<VirtualService> = (0..50).map(|n| checked(n, 10, OnDown::Drain)).collect();
    let state = cluster(&services);
    let shares: Vec<BTreeMap<_, _>> = (1..=3).map(|m| mine(&state, m)).collect();
    for s in &services {
        for b in &s.backends {
            let slot = (s.key, b.address, b.port);
            let probers = shares.iter().filter(|m| m.contains_key(&slot)).count();
            assert_eq!(probers, 2, "{slot:?}");
        }
    }
    // Balanced: each about two thirds of 500.
    for share in &shares {
        assert!((280..390).contains(&share.len()), "{}", share.len());
    }
    // Services without a check are not probed.
    let plain = cluster(&[fixtures::numbered_service(1, 4)]);
    assert!(mine(&plain, 1).is_empty());
}

#[test]
fn a_member_with_a_broken_path_does_not_take_a_backend_out() {
    let s = checked(1, 3, OnDown::Drain);
    let mut state = cluster(std::slice::from_ref(&s));
    let b = &s.backends[0];
    let probers = state.probers_for(b.address, b.port);
    assert_eq!(probers.len(), 2);
    // One prober cannot reach it, the other can: it stays.
    report(&mut state, probers[0], &s, 0, Some(true));
    report(&mut state, probers[1], &s, 0, Some(false));
    assert!(!state.backend_down(&s.key, b.address, b.port));
    assert_eq!(weights(&state, &s), [Some(1), Some(1), Some(1)]);
    // Both agree: drained (weight 0, connections go on).
    report(&mut state, probers[1], &s, 0, Some(true));
    assert!(state.backend_down(&s.key, b.address, b.port));
    assert_eq!(weights(&state, &s), [Some(0), Some(1), Some(1)]);
    // A member that does not probe it has no say.
    let outsider = (1..=3).find(|m| !probers.contains(m)).expect("test");
    report(&mut state, outsider, &s, 0, Some(false));
    assert!(state.backend_down(&s.key, b.address, b.port));
    // Back up when one prober sees it again.
    report(&mut state, probers[0], &s, 0, Some(false));
    assert_eq!(weights(&state, &s), [Some(1), Some(1), Some(1)]);
}

#[test]
fn removal_when_configured_and_fail_open_when_every_backend_is_down() {
    let s = checked(2, 2, OnDown::Remove);
    let mut state = cluster(std::slice::from_ref(&s));
    for m in 1..=3 {
        report(&mut state, m, &s, 0, Some(true));
    }
    assert_eq!(weights(&state, &s), [None, Some(1)]);
    for m in 1..=3 {
        report(&mut state, m, &s, 1, Some(true));
    }
    // Both down: both kept, as they were.
    assert_eq!(weights(&state, &s), [Some(1), Some(1)]);
    assert!(crate::dataplane::health_fails_open(&s, &[true, true]));
}

#[test]
fn a_lost_prober_hands_its_backends_on_without_bringing_a_dead_one_back() {
    let s = checked(3, 6, OnDown::Drain);
    let mut state = cluster(std::slice::from_ref(&s));
    // Every backend down by both its probers' word.
    for (i, b) in s.backends.iter().enumerate() {
        for p in state.probers_for(b.address, b.port) {
            report(&mut state, p, &s, i, Some(true));
        }
    }
    // Every backend is down: fail open keeps them. Bring one up (all its
    // probers say so) so the rest are really drained.
    let up = &s.backends[5];
    for p in state.probers_for(up.address, up.port) {
        report(&mut state, p, &s, 5, Some(false));
    }
    let before = weights(&state, &s);
    assert_eq!(before.iter().filter(|w| **w == Some(0)).count(), 5);
    // Member 3 is lost: the leader names the others as probers. The
    // backends it probed get a new prober who has not reported yet; the
    // remaining prober's word holds meanwhile.
    state
        .apply(&Command::SetProbers(BTreeSet::from([1, 2])))
        .expect("test");
    for b in &s.backends {
        assert!(!state.probers_for(b.address, b.port).contains(&3));
    }
    assert_eq!(weights(&state, &s), before);
    // Member 3's reports are no longer its to withdraw here, but the
    // state keeps them until it returns or is removed; removing it drops
    // them.
    state.remove_member(3);
    assert!(state.health().values().all(|seen| !seen.contains_key(&3)));
}

#[test]
fn due_reports_send_what_the_state_lacks_and_withdraw_what_is_no_longer_probed() {
    let s = checked(4, 2, OnDown::Drain);
    let mut state = cluster(std::slice::from_ref(&s));
    let slot = |i: usize| (s.key, s.backends[i].address, s.backends[i].port);
    let decided: BTreeMap<_, _> = [(slot(0), true)].into();
    let probed: BTreeSet<_> = [slot(0), slot(1)].into();
    let due = due_reports(&state, 1, &decided, &probed);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].down, Some(true));
    state
        .apply(&Command::ReportHealth {
            member: 1,
            at_unix_ms: 5,
            reports: due,
        })
        .expect("test");
    assert!(due_reports(&state, 1, &decided, &probed).is_empty());
    // No longer probed by member 1: withdrawn.
    let due = due_reports(&state, 1, &BTreeMap::new(), &BTreeSet::new());
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].down, None);
}

#[test]
fn reports_of_backends_the_service_no_longer_has_are_dropped() {
    let s = checked(5, 3, OnDown::Drain);
    let mut state = cluster(std::slice::from_ref(&s));
    report(&mut state, 1, &s, 2, Some(true));
    assert_eq!(state.health().len(), 1);
    state
        .apply(&Command::ReplaceBackends {
            key: s.key,
            backends: s.backends[..2].to_vec(),
        })
        .expect("test");
    assert!(state.health().is_empty());
    // A stale report of it now is skipped.
    report(&mut state, 1, &s, 2, Some(true));
    assert!(state.health().is_empty());
    // Deleting the service drops the rest.
    report(&mut state, 1, &s, 0, Some(true));
    state.apply(&Command::DeleteService(s.key)).expect("test");
    assert!(state.health().is_empty());
}

#[test]
fn health_and_probers_survive_a_snapshot_and_a_log_entry() {
    let s = checked(6, 3, OnDown::Remove);
    let mut state = cluster(std::slice::from_ref(&s));
    report(&mut state, 2, &s, 1, Some(true));
    state
        .apply(&Command::SetProbers(BTreeSet::from([1, 2])))
        .expect("test");
    let back = State::decode_snapshot(&state.encode_snapshot()).expect("test");
    assert_eq!(back.health(), state.health());
    assert_eq!(back.probers(), state.probers());
    assert_eq!(back.service(&s.key), Some(&s));
    let c = Command::ReportHealth {
        member: 3,
        at_unix_ms: 9,
        reports: vec![HealthReport {
            key: s.key,
            address: s.backends[0].address,
            port: 8080,
            down: None,
        }],
    };
    assert_eq!(Command::decode(&c.encode()).expect("test"), c);
}

#[test]
fn a_health_change_marks_its_service_changed_for_the_reconciler() {
    let a = checked(7, 2, OnDown::Drain);
    let b = checked(8, 2, OnDown::Drain);
    let before = cluster(&[a.clone(), b]);
    let mut after = before.clone();
    report(&mut after, 1, &a, 0, Some(true));
    assert_eq!(after.changed_keys_since(&before), BTreeSet::from([a.key]));
    let mut lost = before.clone();
    lost.apply(&Command::SetProbers(BTreeSet::from([1, 2])))
        .expect("test");
    assert_eq!(lost.changed_keys_since(&before).len(), 2);
}
