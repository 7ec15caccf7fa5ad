//! `lbctl events`: what changed, as the member sees it, streamed.
//!
//! What an event says is computed by pure functions of two successive
//! views (`state_events`, `raft_events`, `dataplane_event`); `stream`
//! watches the views and sends them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use proto::admin::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{AdminService, EventStream};
use crate::clock::unix_ms;
use crate::dataplane::reconcile::DataplaneStatus;
use crate::model::State;
use crate::replication::node::RaftStatus;

/// One event: its kind, what it says, and the state revision it belongs
/// to.
pub(super) type Event = (&'static str, String, u64);

/// What changed in the replicated state from `old` to `new`: services,
/// overrides, VIP owners, agreed health, probers, members.
pub(super) fn state_events(old: &State, new: &State) -> Vec<Event> {
    let revision = new.revision();
    let mut events = Vec::new();
    for (key, name, change) in new.service_changes_since(old) {
        events.push((
            "service",
            format!("service {name} ({key}) {change}"),
            revision,
        ));
    }
    if new.overrides() != old.overrides() {
        for (slot @ (key, address, port), value) in new.overrides().iter() {
            if old.overrides().get(slot) != Some(value) {
                events.push((
                    "override",
                    format!(
                        "backend {} of {key}: {value}",
                        SocketAddr::new(*address, *port)
                    ),
                    revision,
                ));
            }
        }
        for (key, address, port) in old.overrides().keys() {
            if !new.overrides().contains_key(&(*key, *address, *port)) {
                events.push((
                    "override",
                    format!(
                        "backend {} of {key}: override cleared",
                        SocketAddr::new(*address, *port)
                    ),
                    revision,
                ));
            }
        }
    }
    if !new.same_vip_owners(old) {
        for (vip, owner) in new.vip_owners().iter() {
            if old.vip_owners().get(vip) != Some(owner) {
                events.push((
                    "vip",
                    format!("VIP {vip} now owned by member {owner}"),
                    revision,
                ));
            }
        }
    }
    for text in health_events(old, new) {
        events.push(("health", text, revision));
    }
    if new.probers() != old.probers() {
        events.push((
            "health",
            format!("members probing backends now {:?}", new.probing_members()),
            revision,
        ));
    }
    if new.drained_members() != old.drained_members() {
        events.push((
            "members",
            format!("drained members now {:?}", new.drained_members()),
            revision,
        ));
    }
    if new.members() != old.members() {
        events.push((
            "members",
            format!("members now {:?}", new.members().keys().collect::<Vec<_>>()),
            revision,
        ));
    }
    events
}

/// A change of this member's role, or of the leader.
pub(super) fn raft_events(old: &RaftStatus, new: &RaftStatus, revision: u64) -> Vec<Event> {
    let mut events = Vec::new();
    if old.role != new.role {
        events.push((
            "role",
            format!("member {} is now {} in term {}", new.id, new.role, new.term),
            revision,
        ));
    }
    if old.leader != new.leader && new.leader != 0 {
        events.push((
            "leader",
            format!("member {} leads in term {}", new.leader, new.term),
            revision,
        ));
    }
    events
}

/// A sync that changed the kernel, or failed.
pub(super) fn dataplane_event(d: &DataplaneStatus) -> Option<Event> {
    if d.last_sync_ops == 0 && d.last_error.is_empty() {
        return None;
    }
    let text = if d.last_error.is_empty() {
        format!(
            "dataplane synced revision {}: {} kernel change{}",
            d.synced_revision,
            d.last_sync_ops,
            if d.last_sync_ops == 1 { "" } else { "s" }
        )
    } else {
        format!("dataplane sync failed: {}", d.last_error)
    };
    Some(("dataplane", text, d.synced_revision))
}

/// The backends whose agreed health changed from `old` to `new` (a
/// transition of the verdict, not each report), with who says so.
fn health_events(old: &State, new: &State) -> Vec<String> {
    use imbl::ordmap::DiffItem;
    if old.health().ptr_eq(new.health()) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let slots: std::collections::BTreeSet<crate::model::BackendSlot> = old
        .health()
        .diff(new.health())
        .map(|item| match item {
            DiffItem::Add(k, _) | DiffItem::Remove(k, _) => *k,
            DiffItem::Update { new: (k, _), .. } => *k,
        })
        .collect();
    for (key, address, port) in slots {
        let (was, is) = (
            old.backend_down(&key, address, port),
            new.backend_down(&key, address, port),
        );
        if was == is {
            continue;
        }
        let says: Vec<String> = new
            .health_of(&(key, address, port))
            .into_iter()
            .flatten()
            .map(|(m, s)| format!("member {m} {}", if s.down { "down" } else { "up" }))
            .collect();
        out.push(format!(
            "backend {} of {key} is {} ({})",
            crate::model::SocketText(address, port),
            if is { "down" } else { "up" },
            if says.is_empty() {
                "no reports".to_owned()
            } else {
                says.join(", ")
            }
        ));
    }
    out
}

/// The events from now on, until the client goes or the member stops.
pub(super) fn stream(service: &AdminService) -> EventStream {
    let (tx, rx) = mpsc::channel(256);
    let mut states = service.states.clone();
    let mut dataplane = service.dataplane.clone();
    let mut source = service.source.clone();
    let mut warnings_seen = source.borrow_and_update().warnings;
    let mut raft = service.cluster.as_ref().map(|c| c.node.status.clone());
    let shutdown = service.shutdown.clone();
    let mut last_state: Arc<State> = states.borrow_and_update().clone();
    let mut last_raft = raft.as_mut().map(|r| r.borrow_and_update().clone());
    dataplane.borrow_and_update();
    tokio::spawn(async move {
        loop {
            let mut events = Vec::new();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                Ok(()) = states.changed() => {
                    let state = states.borrow_and_update().clone();
                    events = state_events(&last_state, &state);
                    last_state = state;
                }
                Ok(()) = async { match raft.as_mut() { Some(r) => r.changed().await, None => std::future::pending().await } } => {
                    let now = raft.as_mut().map(|r| r.borrow_and_update().clone());
                    if let (Some(old), Some(new)) = (&last_raft, &now) {
                        events = raft_events(old, new, last_state.revision());
                    }
                    last_raft = now;
                }
                Ok(()) = source.changed() => {
                    let s = source.borrow_and_update().clone();
                    // The new ones among the recent (more may have come
                    // than are kept: those are counted in status only).
                    let new = s.warnings.saturating_sub(warnings_seen) as usize;
                    let skip = s.recent_warnings.len().saturating_sub(new);
                    for (_, message) in s.recent_warnings.iter().skip(skip) {
                        events.push(("source", message.clone(), last_state.revision()));
                    }
                    warnings_seen = s.warnings;
                }
                Ok(()) = dataplane.changed() => {
                    events.extend(dataplane_event(&dataplane.borrow_and_update()));
                }
            }
            for (kind, message, revision) in events {
                let event = pb::Event {
                    unix_ms: unix_ms(SystemTime::now()),
                    kind: kind.into(),
                    message,
                    revision,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::node::Role;

    #[test]
    fn role_and_leader_changes_are_events_and_the_rest_is_not() {
        let old = RaftStatus {
            id: 2,
            leader: 1,
            term: 4,
            ..RaftStatus::default()
        };
        assert!(raft_events(&old, &old.clone(), 9).is_empty());
        let new = RaftStatus {
            role: Role::Leader,
            leader: 2,
            term: 5,
            commit_index: 12,
            ..old.clone()
        };
        assert_eq!(
            raft_events(&old, &new, 9),
            vec![
                ("role", "member 2 is now leader in term 5".to_owned(), 9),
                ("leader", "member 2 leads in term 5".to_owned(), 9),
            ]
        );
        // No leader known is not an event of its own.
        let lost = RaftStatus {
            leader: 0,
            ..old.clone()
        };
        assert!(raft_events(&old, &lost, 9).is_empty());
    }

    #[test]
    fn a_sync_is_an_event_when_it_changed_the_kernel_or_failed() {
        let mut d = DataplaneStatus {
            synced_revision: 7,
            ..DataplaneStatus::default()
        };
        assert_eq!(dataplane_event(&d), None);
        d.last_sync_ops = 1;
        assert_eq!(
            dataplane_event(&d),
            Some((
                "dataplane",
                "dataplane synced revision 7: 1 kernel change".to_owned(),
                7
            ))
        );
        d.last_error = "netlink: EPERM".into();
        assert_eq!(
            dataplane_event(&d),
            Some((
                "dataplane",
                "dataplane sync failed: netlink: EPERM".to_owned(),
                7
            ))
        );
    }

    #[test]
    fn services_overrides_and_owners_are_events_and_an_unchanged_state_none() {
        use crate::model::{BackendOverride, Command, fixtures::numbered_service};
        let svc = numbered_service(1, 2);
        let backend = svc.backends[0].address;
        let mut a = State::default();
        a.apply(&Command::UpsertService(svc.clone()))
            .expect("upsert");
        assert!(state_events(&a, &a.clone()).is_empty());
        let added = state_events(&State::default(), &a);
        assert_eq!(added.len(), 1, "{added:?}");
        assert_eq!(added[0].0, "service");
        assert!(added[0].1.contains("svc-1"), "{added:?}");

        let mut b = a.clone();
        b.apply(&Command::SetBackendOverride {
            key: svc.key,
            address: backend,
            port: 8080,
            value: Some(BackendOverride::Drain),
        })
        .expect("override");
        b.apply(&Command::SetVipOwners([(svc.key.vip, 2)].into()))
            .expect("owners");
        let changed = state_events(&a, &b);
        let kinds: Vec<&str> = changed.iter().map(|e| e.0).collect();
        assert_eq!(kinds, vec!["override", "vip"], "{changed:?}");
        assert!(changed.iter().all(|e| e.2 == b.revision()));
        assert_eq!(changed[1].1, "VIP 10.0.0.1 now owned by member 2");

        let mut c = b.clone();
        c.apply(&Command::SetBackendOverride {
            key: svc.key,
            address: backend,
            port: 8080,
            value: None,
        })
        .expect("clear");
        let cleared = state_events(&b, &c);
        assert_eq!(cleared.len(), 1, "{cleared:?}");
        assert!(cleared[0].1.ends_with("override cleared"), "{cleared:?}");
    }
}
