//! `plan`: the pure diff from what a dataplane holds to what it should hold.

use crate::dataplane::table::{Op, Table};

/// The minimal operations that turn `observed` into `desired`, in a
/// deterministic order:
///
/// 1. deletions of services that should not exist, in key order (this frees
///    their destinations with them, so no destination deletes are emitted);
/// 2. then, service by service in key order: the service add or update,
///    then its destination deletions in key order, then its destination
///    updates and additions together in key order.
///
/// A service whose key (VIP, port or protocol) or firewall mark changes is
/// a different service to the kernel: it is deleted and added. Settings and weights are
/// changed in place, so open connections survive them.
pub fn plan(desired: &Table, observed: &Table) -> Vec<Op> {
    let mut ops: Vec<Op> = observed
        .services
        .keys()
        .filter(|k| !desired.services.contains_key(k))
        .map(|&service| Op::DeleteService { service })
        .collect();
    for (&service, want) in &desired.services {
        // A firewall mark changes the service's identity in the kernel.
        let have = observed
            .services
            .get(&service)
            .filter(|have| have.settings.fwmark == want.settings.fwmark);
        if have.is_none() && observed.services.contains_key(&service) {
            ops.push(Op::DeleteService { service });
        }
        let Some(have) = have else {
            ops.push(Op::AddService {
                service,
                settings: want.settings,
            });
            ops.extend(
                want.destinations
                    .iter()
                    .map(|(&dest, &settings)| Op::AddDestination {
                        service,
                        dest,
                        settings,
                    }),
            );
            continue;
        };
        if have.settings != want.settings {
            ops.push(Op::UpdateService {
                service,
                settings: want.settings,
            });
        }
        ops.extend(
            have.destinations
                .keys()
                .filter(|d| !want.destinations.contains_key(d))
                .map(|&dest| Op::DeleteDestination { service, dest }),
        );
        for (&dest, &settings) in &want.destinations {
            match have.destinations.get(&dest) {
                Some(current) if *current == settings => {}
                Some(_) => ops.push(Op::UpdateDestination {
                    service,
                    dest,
                    settings,
                }),
                None => ops.push(Op::AddDestination {
                    service,
                    dest,
                    settings,
                }),
            }
        }
    }
    ops
}
