//! `State`: the service table that committed commands build, and the pure,
//! deterministic `apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::command::{Command, HealthReport, KubeDelta, KubeKind};
use super::health::{BackendSlot, HealthSeen};
use std::net::IpAddr;

use super::service::{BackendOverride, InvalidService, MAX_WEIGHT, ServiceKey, VirtualService};

/// The replicated service table.
///
/// Services live in a persistent ordered map of shared values, so a copy of
/// the state (every member publishes one per applied batch) costs O(1), not
/// O(table), and a change copies only the path to it.
///
/// `apply` is a pure function of the state and the command: no clock, no
/// randomness, no iteration over hash maps, so every member that applies the
/// same commands holds an equal `State`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    revision: u64,
    services: imbl::OrdMap<ServiceKey, Arc<VirtualService>>,
    /// Cluster members by id, with their peer addresses. Changed only by
    /// Raft configuration changes, never by a `Command`.
    members: BTreeMap<u64, String>,
    /// Members' admin API addresses, where known.
    admin_addresses: BTreeMap<u64, String>,
    /// Operators' overrides by service and backend endpoint.
    overrides: BTreeMap<(ServiceKey, IpAddr, u16), BackendOverride>,
    /// Which member announces each VIP.
    /// Shared, so that publishing a state (once per applied batch) does not
    /// copy thousands of owners; replaced whole by `SetVipOwners`.
    vip_owners: Arc<BTreeMap<IpAddr, u64>>,
    /// Members an operator drained: they own no VIP.
    drained: BTreeSet<u64>,
    /// LoadBalancer addresses by Kubernetes service ("namespace/name").
    lb_addresses: Arc<BTreeMap<String, Vec<IpAddr>>>,
    /// What the leader saw of Kubernetes, to resume from.
    kube: KubeObjects,
    /// When the entry that last changed the service table was proposed
    /// (Unix µs, from the log, so equal on every member).
    changed_at_unix_us: u64,
    /// The members that probe backends (`SetProbers`); empty: every
    /// undrained member.
    probers: BTreeSet<u64>,
    /// What probers reported of each backend that has a health check.
    health: imbl::OrdMap<BackendSlot, BTreeMap<u64, HealthSeen>>,
    /// Changes whenever the set of service keys (so of VIPs) may have:
    /// what is computed from the VIPs alone (O(VIPs): their owners, what a
    /// member announces) is computed again only then, not at every
    /// endpoint change (`keys_tag`). Not part of the state's identity.
    keys: KeysTag,
}

/// A process-wide unique tag for one set of service keys: equal tags,
/// equal sets (a state and its copies share it; any state that adds or
/// removes a key, or is built anew, gets a fresh one). Equal for
/// `PartialEq` whatever it holds: it is not replicated and says nothing
/// about the state's content.
#[derive(Clone, Debug)]
struct KeysTag(u64);

impl KeysTag {
    fn fresh() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        KeysTag(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for KeysTag {
    fn default() -> Self {
        KeysTag::fresh()
    }
}

impl PartialEq for KeysTag {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KeysTag {}

/// The Kubernetes objects the table was built from ("namespace/name" to
/// trimmed JSON) and the watch cursor of each kind. A new leader rebuilds
/// its view from here and resumes its watches from the cursors, without a
/// relist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeObjects {
    pub services: imbl::OrdMap<String, Arc<[u8]>>,
    pub endpoint_slices: imbl::OrdMap<String, Arc<[u8]>>,
    /// Nodes by name (cluster-scoped), only with pod routes on.
    pub nodes: imbl::OrdMap<String, Arc<[u8]>>,
    pub services_cursor: String,
    pub endpoint_slices_cursor: String,
    pub nodes_cursor: String,
}

impl KubeObjects {
    pub fn objects(&self, kind: KubeKind) -> &imbl::OrdMap<String, Arc<[u8]>> {
        match kind {
            KubeKind::Service => &self.services,
            KubeKind::EndpointSlice => &self.endpoint_slices,
            KubeKind::Node => &self.nodes,
        }
    }

    pub fn cursor(&self, kind: KubeKind) -> &str {
        match kind {
            KubeKind::Service => &self.services_cursor,
            KubeKind::EndpointSlice => &self.endpoint_slices_cursor,
            KubeKind::Node => &self.nodes_cursor,
        }
    }

    fn apply(&mut self, delta: &KubeDelta) -> bool {
        let (objects, cursor) = match delta.kind {
            KubeKind::Service => (&mut self.services, &mut self.services_cursor),
            KubeKind::EndpointSlice => {
                (&mut self.endpoint_slices, &mut self.endpoint_slices_cursor)
            }
            KubeKind::Node => (&mut self.nodes, &mut self.nodes_cursor),
        };
        let mut changed = false;
        for (name, json) in &delta.upserts {
            changed |= objects.insert(name.clone(), json.clone()).as_ref() != Some(json);
        }
        for name in &delta.deletes {
            changed |= objects.remove(name).is_some();
        }
        if !delta.resource_version.is_empty() && *cursor != delta.resource_version {
            cursor.clone_from(&delta.resource_version);
            changed = true;
        }
        changed
    }
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The cluster-wide settings (VIP owners, drained members) changed, or
    /// were already so (`changed` false).
    Cluster { changed: bool },
    /// The service was created.
    Created(ServiceKey),
    /// The service (or its backend set) changed.
    Updated(ServiceKey),
    /// The service was removed.
    Deleted(ServiceKey),
    /// The command asked for what the table already held.
    Unchanged(ServiceKey),
}

/// Why a command was refused. A refused command leaves the table as it was
/// (but still counts in the revision, so that members stay in step).
/// Never retryable: the same command is refused again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The command carries a service that breaks the model's rules.
    #[error(transparent)]
    Invalid(#[from] InvalidService),
    /// `ReplaceBackends` or an override names a service the table does not
    /// hold.
    #[error("service {0} does not exist")]
    UnknownService(ServiceKey),
    /// An override weight over the highest weight.
    #[error("override weight {0} is over {MAX_WEIGHT}")]
    OverrideWeight(u32),
    /// An address assigned to one service while another holds it.
    #[error("address {address} is held by {holder}")]
    AddressInUse { address: IpAddr, holder: String },
    /// A firewall mark another service of the same family uses.
    #[error("fwmark {mark} is used by service {holder}")]
    FwmarkInUse { mark: u32, holder: ServiceKey },
}

/// Everything a snapshot holds, to rebuild a `State` from.
#[derive(Debug, Default)]
pub(crate) struct StateParts {
    pub revision: u64,
    pub services: BTreeMap<ServiceKey, VirtualService>,
    pub members: BTreeMap<u64, String>,
    pub admin_addresses: BTreeMap<u64, String>,
    pub overrides: BTreeMap<(ServiceKey, IpAddr, u16), BackendOverride>,
    pub vip_owners: BTreeMap<IpAddr, u64>,
    pub drained: BTreeSet<u64>,
    pub lb_addresses: BTreeMap<String, Vec<IpAddr>>,
    pub kube: KubeObjects,
    pub changed_at_unix_us: u64,
    pub probers: BTreeSet<u64>,
    pub health: BTreeMap<BackendSlot, BTreeMap<u64, HealthSeen>>,
}

impl State {
    /// Rebuilds a state from its parts (a snapshot). The services must
    /// already be valid; `wire` checks them.
    pub(crate) fn from_parts(parts: StateParts) -> Self {
        Self {
            revision: parts.revision,
            services: parts
                .services
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            members: parts.members,
            admin_addresses: parts.admin_addresses,
            overrides: parts.overrides,
            vip_owners: Arc::new(parts.vip_owners),
            drained: parts.drained,
            lb_addresses: Arc::new(parts.lb_addresses),
            kube: parts.kube,
            changed_at_unix_us: parts.changed_at_unix_us,
            probers: parts.probers,
            health: parts.health.into_iter().collect(),
            keys: KeysTag::fresh(),
        }
    }

    /// Equal for two states (of this process) only if their sets of
    /// service keys, so of VIPs, are equal; unequal tags say nothing.
    /// For caches of what the VIPs alone decide.
    pub fn keys_tag(&self) -> u64 {
        self.keys.0
    }

    /// The members that probe backends: those `SetProbers` named (the
    /// healthy ones, by the leader), or every member, less the drained.
    pub fn probing_members(&self) -> BTreeSet<u64> {
        let from = if self.probers.is_empty() {
            self.members.keys().copied().collect()
        } else {
            self.probers.clone()
        };
        from.into_iter()
            .filter(|m| !self.drained.contains(m))
            .collect()
    }

    /// The members `SetProbers` named last (empty: not set).
    pub fn probers(&self) -> &BTreeSet<u64> {
        &self.probers
    }

    /// Which members probe one backend (`probers_of` over
    /// `probing_members`).
    #[cfg(test)]
    pub fn probers_for(&self, address: IpAddr, port: u16) -> Vec<u64> {
        super::health::probers_of(&self.probing_members(), address, port)
    }

    /// What each prober reported of one backend.
    pub fn health_of(&self, slot: &BackendSlot) -> Option<&BTreeMap<u64, HealthSeen>> {
        self.health.get(slot)
    }

    /// Every backend some prober reported on, with the reports.
    pub fn health(&self) -> &imbl::OrdMap<BackendSlot, BTreeMap<u64, HealthSeen>> {
        &self.health
    }

    /// The members whose reports decide a backend's health: its probers,
    /// or, with no members known (a standalone member), whoever reported.
    pub fn deciding_probers(&self, key: &ServiceKey, address: IpAddr, port: u16) -> Vec<u64> {
        let members = self.probing_members();
        if members.is_empty() {
            self.health
                .get(&(*key, address, port))
                .map(|seen| seen.keys().copied().collect())
                .unwrap_or_default()
        } else {
            super::health::probers_of(&members, address, port)
        }
    }

    /// Whether the probers agree that a backend is down (`verdict`).
    pub fn backend_down(&self, key: &ServiceKey, address: IpAddr, port: u16) -> bool {
        let Some(seen) = self.health.get(&(*key, address, port)) else {
            return false;
        };
        let probers = self.deciding_probers(key, address, port);
        super::health::verdict(&probers, Some(seen))
    }

    /// How many backends the probers agree are down (fail open aside).
    pub fn backends_down(&self) -> usize {
        let members = self.probing_members();
        self.health
            .iter()
            .filter(|((_, address, port), seen)| {
                let probers = if members.is_empty() {
                    seen.keys().copied().collect()
                } else {
                    super::health::probers_of(&members, *address, *port)
                };
                super::health::verdict(&probers, Some(seen))
            })
            .count()
    }

    /// The health reports of one service, in backend order.
    fn health_range(
        &self,
        key: ServiceKey,
    ) -> impl Iterator<Item = (&BackendSlot, &BTreeMap<u64, HealthSeen>)> {
        let first: BackendSlot = (key, IpAddr::from([0u8; 4]), 0);
        self.health
            .range(first..)
            .take_while(move |(slot, _)| slot.0 == key)
    }

    /// Forgets the reports of backends the service no longer has (or all
    /// of them, when it has no health check or is gone).
    fn prune_health(&mut self, key: ServiceKey) {
        let keep: BTreeSet<(IpAddr, u16)> = match self.services.get(&key) {
            Some(s) if s.health.is_some() => s.backends.iter().map(|b| b.endpoint()).collect(),
            _ => BTreeSet::new(),
        };
        let gone: Vec<BackendSlot> = self
            .health_range(key)
            .filter(|(slot, _)| !keep.contains(&(slot.1, slot.2)))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in gone {
            self.health.remove(&slot);
        }
    }

    /// Applies one member's reports; reports of backends or services that
    /// are gone, or that have no health check, are stale and skipped.
    fn report_health(&mut self, member: u64, at_unix_ms: u64, reports: &[HealthReport]) -> bool {
        let mut changed = false;
        for r in reports {
            let slot = (r.key, r.address, r.port);
            match r.down {
                Some(down) => {
                    let known = self.services.get(&r.key).is_some_and(|s| {
                        s.health.is_some()
                            && s.backends
                                .binary_search_by_key(&(r.address, r.port), |b| b.endpoint())
                                .is_ok()
                    });
                    if !known {
                        continue;
                    }
                    let entry = self.health.entry(slot).or_default();
                    if entry.get(&member).map(|s| s.down) != Some(down) {
                        entry.insert(
                            member,
                            HealthSeen {
                                down,
                                since_unix_ms: at_unix_ms,
                            },
                        );
                        changed = true;
                    }
                }
                None => {
                    if let Some(entry) = self.health.get_mut(&slot)
                        && entry.remove(&member).is_some()
                    {
                        changed = true;
                        if entry.is_empty() {
                            self.health.remove(&slot);
                        }
                    }
                }
            }
        }
        changed
    }

    /// When the entry that last changed the service table was proposed
    /// (Unix µs; 0 if unknown).
    pub fn changed_at_unix_us(&self) -> u64 {
        self.changed_at_unix_us
    }

    /// Records the proposal time of the entry just applied, when it changed
    /// the service table (the replica calls this after each batch).
    pub fn note_change_proposed_at(&mut self, unix_us: u64) {
        self.changed_at_unix_us = unix_us;
    }

    /// The Kubernetes objects and watch cursors.
    pub fn kube(&self) -> &KubeObjects {
        &self.kube
    }

    /// LoadBalancer addresses by Kubernetes service ("namespace/name").
    pub fn lb_addresses(&self) -> &BTreeMap<String, Vec<IpAddr>> {
        &self.lb_addresses
    }

    /// Every LoadBalancer address held by some service.
    pub fn lb_addresses_in_use(&self) -> BTreeSet<IpAddr> {
        self.lb_addresses.values().flatten().copied().collect()
    }

    /// A member's admin API address, where known.
    pub fn admin_address(&self, id: u64) -> Option<&str> {
        self.admin_addresses.get(&id).map(String::as_str)
    }

    /// Members' admin API addresses, where known.
    pub fn admin_addresses(&self) -> &BTreeMap<u64, String> {
        &self.admin_addresses
    }

    /// Records a member's admin API address.
    pub fn set_admin_address(&mut self, id: u64, address: String) {
        self.admin_addresses.insert(id, address);
    }

    /// Which member announces each VIP.
    /// Whether `other` has the same VIP owners; O(1) when neither changed
    /// them since they parted.
    pub fn same_vip_owners(&self, other: &State) -> bool {
        Arc::ptr_eq(&self.vip_owners, &other.vip_owners) || self.vip_owners == other.vip_owners
    }

    pub fn vip_owners(&self) -> &BTreeMap<IpAddr, u64> {
        &self.vip_owners
    }

    /// The VIP owners as shared between states (equal pointers: equal
    /// owners).
    pub fn vip_owners_shared(&self) -> &Arc<BTreeMap<IpAddr, u64>> {
        &self.vip_owners
    }

    /// Members an operator drained.
    pub fn drained_members(&self) -> &BTreeSet<u64> {
        &self.drained
    }

    /// Every VIP some service uses.
    pub fn vips(&self) -> BTreeSet<IpAddr> {
        self.services.keys().map(|k| k.vip).collect()
    }

    /// Operators' overrides, by (service, backend address, backend port).
    pub fn overrides(&self) -> &BTreeMap<(ServiceKey, IpAddr, u16), BackendOverride> {
        &self.overrides
    }

    /// The override of one backend, if any.
    pub fn override_of(
        &self,
        key: &ServiceKey,
        address: IpAddr,
        port: u16,
    ) -> Option<BackendOverride> {
        self.overrides.get(&(*key, address, port)).copied()
    }

    /// Cluster members and their peer addresses, by id.
    pub fn members(&self) -> &BTreeMap<u64, String> {
        &self.members
    }

    /// Records a member's peer address (a Raft configuration change that
    /// adds it, or the initial member list).
    pub fn set_member(&mut self, id: u64, peer_address: String) {
        self.members.insert(id, peer_address);
    }

    /// Forgets a member (a Raft configuration change that removes it),
    /// and what it reported of backends.
    pub fn remove_member(&mut self, id: u64) {
        self.members.remove(&id);
        self.admin_addresses.remove(&id);
        self.probers.remove(&id);
        let reported: Vec<BackendSlot> = self
            .health
            .iter()
            .filter(|(_, seen)| seen.contains_key(&id))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in reported {
            if let Some(seen) = self.health.get_mut(&slot) {
                seen.remove(&id);
                if seen.is_empty() {
                    self.health.remove(&slot);
                }
            }
        }
    }

    /// The service table's version: the number of service-table commands
    /// applied to build this state, refused ones included. Cluster settings
    /// (VIP owners, drained members) do not count: they change the table
    /// that is announced, not the one that is programmed.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Services in key order.
    pub fn services(&self) -> impl Iterator<Item = &VirtualService> {
        self.services.values().map(Arc::as_ref)
    }

    /// The services on `vip` (keys order by VIP first: a range, not a
    /// scan).
    pub fn services_on(&self, vip: IpAddr) -> impl Iterator<Item = &VirtualService> {
        let first = ServiceKey {
            vip,
            port: 0,
            protocol: crate::model::Protocol::Tcp,
        };
        self.services
            .range(first..)
            .take_while(move |(k, _)| k.vip == vip)
            .map(|(_, s)| s.as_ref())
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&VirtualService> {
        self.services.get(key).map(Arc::as_ref)
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The services that differ from `older`, each with its name and
    /// "created", "updated" or "deleted". Cheap when the two states share
    /// most of their map (a state and its successor do).
    pub fn service_changes_since(&self, older: &State) -> Vec<(ServiceKey, String, &'static str)> {
        use imbl::ordmap::DiffItem;
        older
            .services
            .diff(&self.services)
            .map(|item| match item {
                DiffItem::Add(k, v) => (*k, v.name.clone(), "created"),
                DiffItem::Update { new: (k, v), .. } => (*k, v.name.clone(), "updated"),
                DiffItem::Remove(k, v) => (*k, v.name.clone(), "deleted"),
            })
            .collect()
    }

    /// Every service whose programming may differ from `older`: services
    /// created, changed or deleted, and services whose overrides changed.
    /// Cheap when the two states share most of their map.
    pub fn changed_keys_since(&self, older: &State) -> BTreeSet<ServiceKey> {
        let mut keys: BTreeSet<ServiceKey> = self
            .service_changes_since(older)
            .into_iter()
            .map(|(key, _, _)| key)
            .collect();
        if self.overrides != older.overrides {
            for (slot, v) in &self.overrides {
                if older.overrides.get(slot) != Some(v) {
                    keys.insert(slot.0);
                }
            }
            for slot in older.overrides.keys() {
                if !self.overrides.contains_key(slot) {
                    keys.insert(slot.0);
                }
            }
        }
        // Health: the services whose reports changed, and every checked
        // service when the probers did (each backend's may have).
        if !self.health.ptr_eq(&older.health) {
            use imbl::ordmap::DiffItem;
            for item in older.health.diff(&self.health) {
                let slot = match item {
                    DiffItem::Add(k, _) | DiffItem::Remove(k, _) => k,
                    DiffItem::Update { new: (k, _), .. } => k,
                };
                keys.insert(slot.0);
            }
        }
        if (self.probers != older.probers || self.drained != older.drained)
            && self.probing_members() != older.probing_members()
        {
            keys.extend(
                self.services
                    .values()
                    .filter(|s| s.health.is_some())
                    .map(|s| s.key),
            );
        }
        keys
    }

    /// Applies one command. Deterministic: see the type's docs.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, ApplyError> {
        if command.service_key().is_some() {
            self.revision += 1;
        }
        match command {
            Command::SetVipOwners(owners) => {
                let changed = *self.vip_owners != *owners;
                if changed {
                    self.vip_owners = Arc::new(owners.clone());
                }
                Ok(Applied::Cluster { changed })
            }
            Command::AssignAddresses { service, addresses } => {
                for address in addresses {
                    if let Some((holder, _)) = self
                        .lb_addresses
                        .iter()
                        .find(|(other, held)| *other != service && held.contains(address))
                    {
                        return Err(ApplyError::AddressInUse {
                            address: *address,
                            holder: holder.clone(),
                        });
                    }
                }
                let held = self.lb_addresses.get(service);
                let changed = if addresses.is_empty() {
                    held.is_some()
                } else {
                    held != Some(addresses)
                };
                if changed {
                    // Copied only when shared with a published state, so
                    // once per batch at most.
                    let map = Arc::make_mut(&mut self.lb_addresses);
                    if addresses.is_empty() {
                        map.remove(service);
                    } else {
                        map.insert(service.clone(), addresses.clone());
                    }
                }
                Ok(Applied::Cluster { changed })
            }
            Command::KubeObjects(delta) => Ok(Applied::Cluster {
                changed: self.kube.apply(delta),
            }),
            Command::ReportHealth {
                member,
                at_unix_ms,
                reports,
            } => Ok(Applied::Cluster {
                changed: self.report_health(*member, *at_unix_ms, reports),
            }),
            Command::SetProbers(probers) => {
                let changed = self.probers != *probers;
                self.probers.clone_from(probers);
                Ok(Applied::Cluster { changed })
            }
            Command::SetMemberDrained { member, drained } => {
                let changed = if *drained {
                    self.drained.insert(*member)
                } else {
                    self.drained.remove(member)
                };
                Ok(Applied::Cluster { changed })
            }
            Command::UpsertService(service) => {
                let service = service.clone().normalize()?;
                let key = service.key;
                if let Some(mark) = service.fwmark
                    && let Some(other) = self.services.values().find(|o| {
                        o.key != key
                            && o.fwmark == Some(mark)
                            && o.key.vip.is_ipv6() == key.vip.is_ipv6()
                    })
                {
                    return Err(ApplyError::FwmarkInUse {
                        mark,
                        holder: other.key,
                    });
                }
                let outcome = match self.services.get(&key) {
                    Some(old) if **old == service => return Ok(Applied::Unchanged(key)),
                    Some(_) => Applied::Updated(key),
                    None => Applied::Created(key),
                };
                self.services.insert(key, Arc::new(service));
                if matches!(outcome, Applied::Created(_)) {
                    self.keys = KeysTag::fresh();
                }
                self.prune_health(key);
                Ok(outcome)
            }
            Command::DeleteService(key) => match self.services.remove(key) {
                Some(_) => {
                    self.keys = KeysTag::fresh();
                    self.overrides.retain(|(k, _, _), _| k != key);
                    self.prune_health(*key);
                    Ok(Applied::Deleted(*key))
                }
                None => Ok(Applied::Unchanged(*key)),
            },
            Command::SetBackendOverride {
                key,
                address,
                port,
                value,
            } => {
                if !self.services.contains_key(key) {
                    return Err(ApplyError::UnknownService(*key));
                }
                if let Some(BackendOverride::Weight(w)) = value
                    && *w > MAX_WEIGHT
                {
                    return Err(ApplyError::OverrideWeight(*w));
                }
                let slot = (*key, *address, *port);
                let old = match value {
                    Some(v) => self.overrides.insert(slot, *v),
                    None => self.overrides.remove(&slot),
                };
                Ok(if old == *value {
                    Applied::Unchanged(*key)
                } else {
                    Applied::Updated(*key)
                })
            }
            Command::ReplaceBackends { key, backends } => {
                let Some(current) = self.services.get(key) else {
                    return Err(ApplyError::UnknownService(*key));
                };
                let updated = VirtualService {
                    backends: backends.clone(),
                    ..VirtualService::clone(current)
                }
                .normalize()?;
                if updated == **current {
                    return Ok(Applied::Unchanged(*key));
                }
                self.services.insert(*key, Arc::new(updated));
                self.prune_health(*key);
                Ok(Applied::Updated(*key))
            }
        }
    }
}
