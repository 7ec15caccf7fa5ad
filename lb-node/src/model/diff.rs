//! `commands_towards`: the commands that turn the current table into a
//! desired one. A source that sees the whole desired table at once (the
//! services file, a Kubernetes relist) proposes only these, so a reload that
//! changes one backend costs one small log entry, not the whole table.

use std::collections::BTreeMap;

use super::command::Command;
use super::service::{ServiceKey, VirtualService};
use super::state::State;

/// The minimal commands, in a deterministic order (deletions first, then
/// creations and updates, each in key order), after which `current` holds
/// exactly `desired`. `desired` must hold each key once; the last one wins.
pub fn commands_towards(
    current: &State,
    desired: impl IntoIterator<Item = VirtualService>,
) -> Vec<Command> {
    let mut wanted: BTreeMap<ServiceKey, VirtualService> = BTreeMap::new();
    for mut service in desired {
        service.backends.sort_by_key(|b| b.endpoint());
        wanted.insert(service.key, service);
    }
    let mut commands: Vec<Command> = current
        .services()
        .filter(|s| !wanted.contains_key(&s.key))
        .map(|s| Command::DeleteService(s.key))
        .collect();
    for (key, service) in wanted {
        match current.service(&key) {
            Some(old) if *old == service => {}
            Some(old) if same_settings(old, &service) => commands.push(Command::ReplaceBackends {
                key,
                backends: service.backends,
            }),
            _ => commands.push(Command::UpsertService(service)),
        }
    }
    commands
}

fn same_settings(a: &VirtualService, b: &VirtualService) -> bool {
    a.name == b.name
        && a.scheduler == b.scheduler
        && a.persistence_timeout == b.persistence_timeout
        && a.fwmark == b.fwmark
        && a.forwarding == b.forwarding
        && a.allowed_sources == b.allowed_sources
        && a.bgp_communities == b.bgp_communities
        && a.bgp_large_communities == b.bgp_large_communities
}
