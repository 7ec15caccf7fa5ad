//! The commands that bring the table's entries for a batch's affected
//! Kubernetes services in line with the view.

use std::collections::{BTreeMap, BTreeSet};

use super::addresses::{requested_texts, status_ips};
use super::{Plan, View, owner_of};
use crate::model::{Command, ServiceKey, State, VirtualService};
use crate::source::kubernetes::slice::Slice;
use crate::source::kubernetes::translate::translate;

impl View {
    /// The commands that bring the table's entries for `affected` in line
    /// with the view.
    pub(super) fn services_commands(
        &mut self,
        state: &State,
        affected: &BTreeSet<String>,
        plan: &mut Plan,
    ) -> Vec<Command> {
        let mut commands = Vec::new();
        let mut taken = state.lb_addresses_in_use();
        // Keys claimed in this batch, to catch two services wanting one key.
        let mut claimed: BTreeMap<ServiceKey, String> = BTreeMap::new();
        let mut table_changes = Vec::new();
        // Services whose objects had malformed parts: what they had and no
        // longer produce stays programmed (bad input never deletes).
        let mut partial = BTreeSet::new();
        // Addresses first: what is released in this batch can be given in
        // it, so releases go before assignments.
        let mut assigned = BTreeMap::new();
        let mut assignments = Vec::new();
        for name in affected {
            let service = self.services.get(name);
            let wants = service.is_some_and(|s| self.ours(s));
            let current = state.lb_addresses().get(name).cloned().unwrap_or_default();
            if !wants && !current.is_empty() {
                for ip in &current {
                    taken.remove(ip);
                }
                commands.push(Command::AssignAddresses {
                    service: name.clone(),
                    addresses: Vec::new(),
                });
                // No longer ours (a type or class change, the pools
                // gone): the status that shows our addresses is cleared,
                // or two Services would show one address.
                if let Some(s) = service {
                    let shown = status_ips(s);
                    if !shown.is_empty() && shown.iter().all(|ip| current.contains(ip)) {
                        plan.status_writes.push((name.clone(), Vec::new()));
                    }
                }
            }
        }
        // Services that ask for an address (a status, a request) pick
        // before those that take any: a pending request is granted when
        // its address frees, not lost to the next automatic pick.
        let (asking, any): (Vec<&String>, Vec<&String>) = affected.iter().partition(|name| {
            self.services
                .get(*name)
                .is_some_and(|s| !status_ips(s).is_empty() || !requested_texts(s).is_empty())
        });
        for name in asking.into_iter().chain(any) {
            let service = self.services.get(name);
            let current = state.lb_addresses().get(name).cloned().unwrap_or_default();
            let addresses = self.addresses_for(name, service, state, &mut taken, plan);
            // Pending now (its request cannot be met): what it held is
            // released, not kept out of everyone's reach.
            if addresses != current
                && (!addresses.is_empty() || service.is_some_and(|s| self.ours(s)))
            {
                assignments.push(Command::AssignAddresses {
                    service: name.clone(),
                    addresses: addresses.clone(),
                });
            }
            assigned.insert(name.clone(), addresses);
        }
        commands.extend(assignments);
        for name in affected {
            let service = self.services.get(name);
            let addresses = assigned.remove(name).unwrap_or_default();
            let desired = match service {
                None => Vec::new(),
                Some(s) => {
                    let slices: Vec<&Slice> = self
                        .slices_of
                        .get(name)
                        .into_iter()
                        .flatten()
                        .filter_map(|n| self.slices.get(n))
                        .collect();
                    let pooled = self.ours(s);
                    let translated = if pooled {
                        // Our addresses, not whatever the status says.
                        let mut bare = s.clone();
                        bare.status = None;
                        if addresses != status_ips(s) {
                            plan.status_writes.push((name.clone(), addresses.clone()));
                        }
                        translate(&bare, &slices, &addresses, &self.config)
                    } else {
                        translate(s, &slices, &[], &self.config)
                    };
                    let clean = translated.warnings.is_empty();
                    plan.warnings.extend(translated.warnings);
                    if !clean {
                        partial.insert(name.clone());
                    }
                    translated.services
                }
            };
            table_changes.push((name.clone(), desired));
        }
        for (name, desired) in table_changes {
            let keep_missing = partial.contains(&name);
            let owned = self.owned.remove(&name).unwrap_or_default();
            let mut now_owned = super::SmallSet::new();
            for service in desired {
                let key = service.key;
                if let Some(other) = claimed.get(&key) {
                    plan.warnings.push(format!(
                        "Service {name}: {key} is already served for {other}; left out"
                    ));
                    continue;
                }
                match state.service(&key) {
                    Some(existing)
                        if owner_of(existing).is_some_and(|o| o != name)
                            && !owned.contains(&key) =>
                    {
                        // Held by another Kubernetes service (or the file):
                        // first come keeps it.
                        plan.warnings.push(format!(
                            "Service {name}: {key} is already served for {}; left out",
                            existing.name
                        ));
                        continue;
                    }
                    Some(existing) if *existing == service => {}
                    Some(existing)
                        if VirtualService {
                            backends: service.backends.clone(),
                            ..VirtualService::clone(existing)
                        } == service =>
                    {
                        commands.push(Command::ReplaceBackends {
                            key,
                            backends: service.backends,
                        });
                    }
                    _ => commands.push(Command::UpsertService(service)),
                }
                claimed.insert(key, name.clone());
                now_owned.insert(key);
            }
            let missing: Vec<ServiceKey> = owned.difference(&now_owned).copied().collect();
            for key in &missing {
                if keep_missing {
                    now_owned.insert(*key);
                } else if !claimed.contains_key(key) {
                    commands.push(Command::DeleteService(*key));
                }
            }
            if !now_owned.is_empty() {
                self.owned.insert(name, now_owned);
            }
        }
        commands
    }
}
