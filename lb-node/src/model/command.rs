//! `Command`: one entry of the replicated log, the only way the service
//! table changes.

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
}

impl Command {
    /// The service this command is about, for logs and errors.
    pub fn key(&self) -> ServiceKey {
        match self {
            Command::UpsertService(s) => s.key,
            Command::DeleteService(k) => *k,
            Command::ReplaceBackends { key, .. } => *key,
            Command::SetBackendOverride { key, .. } => *key,
        }
    }
}
