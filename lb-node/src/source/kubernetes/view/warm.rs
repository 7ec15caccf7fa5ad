//! A follower's view of the Kubernetes objects, kept in step with the
//! state it applies (`kubernetes::standby`), so that on becoming leader
//! its source starts from it: the take-over costs the changes of the last
//! moment, not a view built whole (at 100,000 Services 2.7 s of the
//! pause after a leader's crash, docs/drills.md).
//!
//! A pass costs what changed since the last one: the stored objects and
//! the table are persistent maps that share what did not change, and
//! their difference skips what they share.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{Slice, Touched, TranslateConfig, View, left_out_warning, owner_of};
use crate::model::{KubeKind, State};

/// The view, and the state it is in step with.
#[derive(Debug)]
pub struct Warm {
    view: View,
    at: Arc<State>,
    /// Stored objects that do not decode, left out of the view (reported
    /// when the view is taken; an object this build wrote always decodes).
    undecodable: BTreeSet<(KubeKind, String)>,
}

impl Warm {
    /// The view of `state`, built whole (once per follower term, on a
    /// blocking thread).
    pub fn new(state: Arc<State>, config: TranslateConfig, pools: Vec<IpNet>) -> Warm {
        let (view, undecodable) = View::built(&state, config, pools);
        Warm {
            view,
            at: state,
            undecodable,
        }
    }

    /// A leader's view when its source ends, kept for its next term or a
    /// later takeover instead of built whole again (at 100,000 Services
    /// 12 s on a blocking thread, during which a takeover would wait).
    /// `view` is the view of `base`, the state its last committed proposal
    /// was published with (`Committed`), except for `unsure`: what a plan
    /// whose entries did not all commit changed in it. Brought in step
    /// with `state`: what changed from `base`, then `unsure`, taken from
    /// `state` again. Objects that do not decode are reported by this
    /// view's later steps only (the source that held it warned of the
    /// others).
    pub fn resumed(view: View, base: Arc<State>, unsure: &Touched, state: &Arc<State>) -> Warm {
        let mut warm = Warm {
            view,
            at: base,
            undecodable: BTreeSet::new(),
        };
        warm.catch_up(state);
        warm.refresh(unsure);
        warm
    }

    /// Takes `touched` from the state the view is at, as a whole build
    /// would: its objects decoded again, its services' table keys read
    /// from the table.
    fn refresh(&mut self, touched: &Touched) {
        let at = self.at.clone();
        let kube = at.kube();
        for (kind, name) in &touched.objects {
            match kind {
                KubeKind::Service => {
                    let service = self.decode::<Service>(*kind, name, kube.services.get(name));
                    self.view.put_service(name.clone(), service);
                }
                KubeKind::EndpointSlice => {
                    let slice =
                        self.decode::<EndpointSlice>(*kind, name, kube.endpoint_slices.get(name));
                    self.view.put_slice(name.clone(), slice.map(Slice::from));
                }
                KubeKind::Node => {}
            }
        }
        if touched.services.is_empty() {
            return;
        }
        for name in &touched.services {
            self.view.owned.remove(name);
        }
        for service in at.services() {
            if let Some(owner) = owner_of(service)
                && touched.services.contains(owner)
            {
                self.view
                    .owned
                    .entry(owner.to_owned())
                    .or_default()
                    .insert(service.key);
            }
        }
    }

    /// Objects in the view.
    pub fn len(&self) -> usize {
        self.view.services.len() + self.view.slices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Brings the view in step with `state`; returns how many stored
    /// objects and table services changed since the last step.
    pub fn catch_up(&mut self, state: &Arc<State>) -> usize {
        if Arc::ptr_eq(&self.at, state) {
            return 0;
        }
        let older = std::mem::replace(&mut self.at, state.clone());
        let (before, after) = (older.kube(), state.kube());
        let mut changed = 0;
        for item in before.services.diff(&after.services) {
            changed += 1;
            let (name, service) = self.decoded::<Service>(KubeKind::Service, item);
            self.view.put_service(name, service);
        }
        for item in before.endpoint_slices.diff(&after.endpoint_slices) {
            changed += 1;
            let (name, slice) = self.decoded::<EndpointSlice>(KubeKind::EndpointSlice, item);
            self.view.put_slice(name, slice.map(Slice::from));
        }
        // Which table services each Kubernetes service produced.
        for (key, _, _) in state.service_changes_since(&older) {
            changed += 1;
            if let Some(owner) = older.service(&key).and_then(owner_of)
                && let Some(keys) = self.view.owned.get_mut(owner)
            {
                keys.remove(&key);
                if keys.is_empty() {
                    self.view.owned.remove(owner);
                }
            }
            if let Some(owner) = state.service(&key).and_then(owner_of) {
                self.view
                    .owned
                    .entry(owner.to_owned())
                    .or_default()
                    .insert(key);
            }
        }
        changed
    }

    /// One changed stored object: its name and, unless deleted or
    /// undecodable, the object.
    fn decoded<T: serde::de::DeserializeOwned>(
        &mut self,
        kind: KubeKind,
        item: DiffItem<'_, '_, String, Arc<[u8]>>,
    ) -> (String, Option<T>) {
        let (name, json) = match item {
            DiffItem::Add(name, json)
            | DiffItem::Update {
                new: (name, json), ..
            } => (name, Some(json)),
            DiffItem::Remove(name, _) => (name, None),
        };
        (name.clone(), self.decode(kind, name, json))
    }

    /// A stored object (`None`: deleted), decoded; one that does not
    /// decode is noted and left out.
    fn decode<T: serde::de::DeserializeOwned>(
        &mut self,
        kind: KubeKind,
        name: &str,
        json: Option<&Arc<[u8]>>,
    ) -> Option<T> {
        let object = json.and_then(|json| serde_json::from_slice::<T>(json).ok());
        let key = (kind, name.to_owned());
        if json.is_some() && object.is_none() {
            self.undecodable.insert(key);
        } else {
            self.undecodable.remove(&key);
        }
        object
    }

    /// The view, in step with the state of the last `catch_up`; a warning
    /// for each stored object left out.
    pub fn into_view(self, warnings: &mut Vec<String>) -> View {
        warnings.extend(
            self.undecodable
                .iter()
                .map(|(kind, name)| left_out_warning(*kind, name)),
        );
        self.view
    }
}
