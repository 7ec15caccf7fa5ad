//! The follower's cache of decoded Kubernetes objects.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::State;

/// The stored Kubernetes objects, decoded ahead of need. A follower keeps
/// one in step with its applied state (`kubernetes::standby`), so that on
/// becoming leader its source starts from it instead of decoding every
/// stored object (50,000 Services and their slices: over a second, on the
/// failover path). Each entry keeps the stored bytes it came from: an
/// object is decoded again only when the state holds new bytes for it.
#[derive(Debug, Default)]
pub struct Decoded {
    pub(super) services: HashMap<String, (Arc<[u8]>, Service)>,
    pub(super) slices: HashMap<String, (Arc<[u8]>, EndpointSlice)>,
}

impl Decoded {
    /// Brings the cache in step with `state`; returns how many objects it
    /// decoded. An object that does not decode is left out.
    pub fn refresh(&mut self, state: &State) -> usize {
        refresh_kind(&mut self.services, &state.kube().services)
            + refresh_kind(&mut self.slices, &state.kube().endpoint_slices)
    }

    pub fn len(&self) -> usize {
        self.services.len() + self.slices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn refresh_kind<T: serde::de::DeserializeOwned>(
    cache: &mut HashMap<String, (Arc<[u8]>, T)>,
    stored: &imbl::OrdMap<String, Arc<[u8]>>,
) -> usize {
    let mut decoded = 0;
    for (name, json) in stored {
        if cache
            .get(name)
            .is_some_and(|(had, _)| Arc::ptr_eq(had, json))
        {
            continue;
        }
        match serde_json::from_slice::<T>(json) {
            Ok(object) => {
                cache.insert(name.clone(), (json.clone(), object));
                decoded += 1;
            }
            Err(_) => {
                cache.remove(name);
            }
        }
    }
    if cache.len() > stored.len() || cache.keys().any(|n| !stored.contains_key(n)) {
        cache.retain(|name, _| stored.contains_key(name));
    }
    decoded
}
