//! `Command`: one entry of the replicated log, the only way the service
//! table changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::service::{Backend, BackendOverride, ServiceKey, VirtualService};

/// A change to the service table. Every member applies the same commands in
/// the same order and so holds the same [`super::State`].
///
/// Later issues add kinds here (the Kubernetes watch cursor, VIP ownership,
/// member drain); the wire format reserves their numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create the service, or replace it whole (backends included).
    UpsertService(VirtualService),
    /// Remove the service; removing an absent service changes nothing.
    DeleteService(ServiceKey),
    /// Replace the backend set of an existing service, leaving its settings.
    ReplaceBackends {
        key: ServiceKey,
        backends: Vec<Backend>,
    },
    /// Sets (or, with `None`, clears) an operator's override of one backend
    /// of an existing service. Deleting the service clears its overrides.
    SetBackendOverride {
        key: ServiceKey,
        address: IpAddr,
        port: u16,
        value: Option<BackendOverride>,
    },
    /// Replaces which member announces each VIP (the leader computes it
    /// with `assign_owners`).
    SetVipOwners(BTreeMap<IpAddr, u64>),
    /// Drains (or undrains) a member: a drained member owns no VIP.
    SetMemberDrained { member: u64, drained: bool },
    /// Gives LoadBalancer addresses to a Kubernetes service
    /// ("namespace/name"), replacing what it had; none releases them. An
    /// address another service holds is refused.
    AssignAddresses {
        service: String,
        addresses: Vec<IpAddr>,
    },
    /// Records what the leader saw of one Kubernetes kind and where its
    /// watch stands, in the same entry as the service changes it caused.
    KubeObjects(KubeDelta),
    /// A member's verdicts on backends it probes (issue 22): down
    /// (`Some(true)`), up (`Some(false)`), or withdrawn (`None`: it no
    /// longer probes that backend). `at_unix_ms` is the member's clock
    /// when it decided, for display only.
    ReportHealth {
        member: u64,
        at_unix_ms: u64,
        reports: Vec<HealthReport>,
    },
    /// The members that probe backends (the leader sets the healthy,
    /// undrained ones; empty: every undrained member).
    SetProbers(BTreeSet<u64>),
}

/// One backend's verdict in a `ReportHealth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    pub key: ServiceKey,
    pub address: IpAddr,
    pub port: u16,
    pub down: Option<bool>,
}

/// The Kubernetes object kinds the leader watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KubeKind {
    Service,
    EndpointSlice,
    /// Watched only with `source.kubernetes.pod_routes`: each Node's pod
    /// CIDRs and InternalIP, from which every member routes pod traffic.
    Node,
}

impl KubeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KubeKind::Service => "services",
            KubeKind::EndpointSlice => "endpointslices",
            KubeKind::Node => "nodes",
        }
    }
}

/// Objects created or changed ("namespace/name" and trimmed JSON), objects
/// deleted, and the watch cursor after them (empty: unchanged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeDelta {
    pub kind: KubeKind,
    pub upserts: Vec<(String, std::sync::Arc<[u8]>)>,
    pub deletes: Vec<String>,
    pub resource_version: String,
}

impl Command {
    /// The service this command is about, if it is about one.
    pub fn service_key(&self) -> Option<ServiceKey> {
        match self {
            Command::UpsertService(s) => Some(s.key),
            Command::DeleteService(k) => Some(*k),
            Command::ReplaceBackends { key, .. } => Some(*key),
            Command::SetBackendOverride { key, .. } => Some(*key),
            Command::SetVipOwners(_)
            | Command::SetMemberDrained { .. }
            | Command::AssignAddresses { .. }
            | Command::KubeObjects(_)
            | Command::ReportHealth { .. }
            | Command::SetProbers(_) => None,
        }
    }
}
