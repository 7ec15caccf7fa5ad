//! `Table`: what a dataplane holds (or should hold), in kernel terms, and
//! `Op`: one change to it. `Table::from_state` says what the replicated
//! state means for the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::model::{
    Backend, BackendOverride, BackendState, Forwarding, Scheduler, ServiceKey, SocketText, State,
    VirtualService,
};

/// A real server's identity inside one virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestKey {
    pub address: IpAddr,
    pub port: u16,
}

impl DestKey {
    /// The smallest key, for range queries.
    pub const MIN: DestKey = DestKey {
        address: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        port: 0,
    };
}

impl fmt::Display for DestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketText(self.address, self.port).fmt(f)
    }
}

/// A service's settings as the kernel holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    pub scheduler: Scheduler,
    /// Seconds; `None` for no persistence.
    pub persistence_timeout: Option<u32>,
    /// An IPVS firewall-mark service rather than an address one.
    pub fwmark: Option<u32>,
}

/// A destination's settings as the kernel holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub weight: u32,
    pub forwarding: Forwarding,
}

/// One programmed virtual service with its destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedService {
    pub settings: ServiceSettings,
    pub destinations: BTreeMap<DestKey, Destination>,
}

/// A whole IPVS table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub services: BTreeMap<ServiceKey, ProgrammedService>,
}

/// One kernel operation. `plan` emits these; a dataplane applies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddService {
        service: ServiceKey,
        settings: ServiceSettings,
    },
    UpdateService {
        service: ServiceKey,
        settings: ServiceSettings,
    },
    /// Removes the service and with it all its destinations.
    DeleteService {
        service: ServiceKey,
    },
    AddDestination {
        service: ServiceKey,
        dest: DestKey,
        settings: Destination,
    },
    UpdateDestination {
        service: ServiceKey,
        dest: DestKey,
        settings: Destination,
    },
    DeleteDestination {
        service: ServiceKey,
        dest: DestKey,
    },
}

impl Op {
    pub fn service(&self) -> ServiceKey {
        match self {
            Op::AddService { service, .. }
            | Op::UpdateService { service, .. }
            | Op::DeleteService { service }
            | Op::AddDestination { service, .. }
            | Op::UpdateDestination { service, .. }
            | Op::DeleteDestination { service, .. } => *service,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddService { service, .. } => write!(f, "add service {service}"),
            Op::UpdateService { service, .. } => write!(f, "update service {service}"),
            Op::DeleteService { service } => write!(f, "delete service {service}"),
            Op::AddDestination { service, dest, .. } => {
                write!(f, "add destination {dest} to {service}")
            }
            Op::UpdateDestination { service, dest, .. } => {
                write!(f, "update destination {dest} of {service}")
            }
            Op::DeleteDestination { service, dest } => {
                write!(f, "delete destination {dest} of {service}")
            }
        }
    }
}

/// What one virtual service means for the kernel; see `Table::from_state`.
fn programmed(state: &State, s: &VirtualService) -> ProgrammedService {
    let weight_of = |b: &Backend| match state.override_of(&s.key, b.address, b.port) {
        Some(BackendOverride::Drain) => 0,
        Some(BackendOverride::Weight(w)) => w,
        None => b.weight,
    };
    let down = health_down(state, s);
    let remove_down = s
        .health
        .as_ref()
        .is_some_and(|h| h.on_down == crate::model::OnDown::Remove);
    let any_ready = s
        .backends
        .iter()
        .zip(&down)
        .any(|(b, down)| b.state == BackendState::Ready && weight_of(b) > 0 && !down);
    let destinations = s
        .backends
        .iter()
        .zip(&down)
        .filter_map(|(b, down)| {
            if *down && remove_down {
                return None;
            }
            let weight = match b.state {
                _ if *down => 0,
                BackendState::Ready => weight_of(b),
                BackendState::Serving if !any_ready => weight_of(b),
                BackendState::Serving | BackendState::Terminating => 0,
                BackendState::NotReady => return None,
            };
            Some((
                DestKey {
                    address: b.address,
                    port: b.port,
                },
                Destination {
                    weight,
                    forwarding: s.forwarding,
                },
            ))
        })
        .collect();
    ProgrammedService {
        settings: ServiceSettings {
            scheduler: s.scheduler,
            persistence_timeout: s.persistence_timeout,
            fwmark: s.fwmark,
        },
        destinations,
    }
}

/// Which of the service's backends (in order) health checks take out: those
/// the probers agree are down, unless that is every backend that would
/// otherwise get traffic (then none: fail open, as a service with no
/// backend at all serves nobody; `health_fails_open` says so).
fn health_down(state: &State, s: &VirtualService) -> Vec<bool> {
    if s.health.is_none() {
        return vec![false; s.backends.len()];
    }
    let down: Vec<bool> = s
        .backends
        .iter()
        .map(|b| state.backend_down(&s.key, b.address, b.port))
        .collect();
    if health_fails_open(s, &down) {
        return vec![false; s.backends.len()];
    }
    down
}

/// Whether every backend that could take traffic (ready, or serving) is
/// down by the health checks, so they are all kept (fail open).
pub fn health_fails_open(s: &VirtualService, down: &[bool]) -> bool {
    let mut candidates = s
        .backends
        .iter()
        .zip(down)
        .filter(|(b, _)| matches!(b.state, BackendState::Ready | BackendState::Serving))
        .peekable();
    candidates.peek().is_some() && candidates.all(|(_, d)| *d)
}

/// Why an operation does not fit a table: the kernel's EEXIST and ENOENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpConflict {
    /// The object to add is there already (EEXIST).
    #[error("{0}: already exists")]
    Exists(String),
    /// The object to change or remove (or the service of a destination) is
    /// not there (ENOENT).
    #[error("{0}: does not exist")]
    Missing(String),
}

impl Table {
    /// What the kernel should hold for this state.
    ///
    /// Backend states map to IPVS as kube-proxy maps endpoint conditions:
    /// `ready` backends get their weight; `serving` (terminating but still
    /// serving) backends get theirs only when the service has no ready
    /// backend, and weight 0 otherwise; `terminating` backends stay with
    /// weight 0 so their open connections drain; `not-ready` backends are not
    /// programmed. An operator's override replaces the weight (a drain is
    /// weight 0) before these rules apply. A backend its health checks'
    /// probers agree is down gets weight 0 (or is left out, with
    /// `on_down = "remove"`), unless every backend is down (fail open).
    pub fn from_state(state: &State) -> Table {
        Table {
            services: state
                .services()
                .map(|s| (s.key, programmed(state, s)))
                .collect(),
        }
    }

    /// The part of `from_state` for the given services only (those the
    /// state holds): what a change to those services means for the kernel,
    /// computed without touching the rest of the table.
    pub fn from_state_for(state: &State, keys: &BTreeSet<ServiceKey>) -> Table {
        Table {
            services: keys
                .iter()
                .filter_map(|k| state.service(k).map(|s| (*k, programmed(state, s))))
                .collect(),
        }
    }

    /// This table restricted to the given services.
    pub fn only(&self, keys: &BTreeSet<ServiceKey>) -> Table {
        Table {
            services: keys
                .iter()
                .filter_map(|k| self.services.get(k).map(|s| (*k, s.clone())))
                .collect(),
        }
    }

    pub fn destination_count(&self) -> usize {
        self.services.values().map(|s| s.destinations.len()).sum()
    }

    /// Applies one operation with the kernel's rules: adding what exists or
    /// touching what is missing is a conflict and changes nothing.
    pub fn apply(&mut self, op: &Op) -> Result<(), OpConflict> {
        let what = || op.to_string();
        match op {
            Op::AddService { service, settings } => {
                if self.services.contains_key(service) {
                    return Err(OpConflict::Exists(what()));
                }
                self.services.insert(
                    *service,
                    ProgrammedService {
                        settings: *settings,
                        destinations: BTreeMap::new(),
                    },
                );
            }
            Op::UpdateService { service, settings } => {
                let s = self
                    .services
                    .get_mut(service)
                    .ok_or_else(|| OpConflict::Missing(what()))?;
                s.settings = *settings;
            }
            Op::DeleteService { service } => {
                self.services
                    .remove(service)
                    .ok_or_else(|| OpConflict::Missing(what()))?;
            }
            Op::AddDestination {
                service,
                dest,
                settings,
            } => {
                let s = self
                    .services
                    .get_mut(service)
                    .ok_or_else(|| OpConflict::Missing(what()))?;
                if s.destinations.contains_key(dest) {
                    return Err(OpConflict::Exists(what()));
                }
                s.destinations.insert(*dest, *settings);
            }
            Op::UpdateDestination {
                service,
                dest,
                settings,
            } => {
                let d = self
                    .services
                    .get_mut(service)
                    .and_then(|s| s.destinations.get_mut(dest))
                    .ok_or_else(|| OpConflict::Missing(what()))?;
                *d = *settings;
            }
            Op::DeleteDestination { service, dest } => {
                self.services
                    .get_mut(service)
                    .and_then(|s| s.destinations.remove(dest))
                    .ok_or_else(|| OpConflict::Missing(what()))?;
            }
        }
        Ok(())
    }
}
