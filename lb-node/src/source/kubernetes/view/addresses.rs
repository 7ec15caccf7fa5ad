//! Which LoadBalancer addresses a Service gets: the one it holds, the
//! one its status shows, the one it asks for, or the pools' next free.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::{ANNOTATION_ADDRESSES, Plan, View};
use crate::model::{State, allocate, in_pools};

impl View {
    /// The LoadBalancer addresses `name` should hold. Precedence, per
    /// family: the address it holds already (committed); else the
    /// address its status shows (the first claim: kept when it is in a
    /// pool and nobody else holds, uses or claimed it first); else the
    /// address it asks for (refused when another Service holds, uses or
    /// claims it); else the first address of the pools that nobody
    /// holds, uses or claims. `taken` holds every LoadBalancer address
    /// held, this batch's grants included.
    pub(super) fn addresses_for(
        &self,
        name: &str,
        service: Option<&Service>,
        state: &State,
        taken: &mut BTreeSet<IpAddr>,
        plan: &mut Plan,
    ) -> Vec<IpAddr> {
        let current = state.lb_addresses().get(name).cloned().unwrap_or_default();
        let Some(service) = service.filter(|s| self.ours(s)) else {
            return Vec::new();
        };
        let spec = service.spec.as_ref();
        let families: Vec<bool> = match spec.and_then(|s| s.ip_families.as_ref()) {
            Some(f) if !f.is_empty() => f.iter().map(|f| f == "IPv6").collect(),
            _ => vec![false],
        };
        let mut requested: Vec<IpAddr> = Vec::new();
        for text in requested_texts(service) {
            match text.parse::<IpAddr>() {
                Ok(ip) => requested.push(ip),
                Err(_) => plan.warnings.push(format!(
                    "Service {name}: requested address {text:?} is not an IP address; ignored"
                )),
            }
        }
        let shown = status_ips(service);
        let mut out = Vec::new();
        for ipv6 in families {
            let want = requested.iter().find(|ip| ip.is_ipv6() == ipv6).copied();
            let fits = |ip: &IpAddr| {
                ip.is_ipv6() == ipv6 && want.is_none_or(|w| w == *ip) && in_pools(&self.pools, ip)
            };
            if let Some(ip) = current.iter().find(|ip| fits(ip)) {
                out.push(*ip);
                continue;
            }
            // Who else has `ip`, and how (None: free for this Service).
            // Its own claim yields only to a claim of a Service whose name
            // sorts first (two statuses showing one address).
            let holder = |ip: &IpAddr, taken: &BTreeSet<IpAddr>, own_claim: bool| {
                if taken.contains(ip) {
                    return Some("another Service's LoadBalancer address".to_owned());
                }
                if let Some(user) = self
                    .used
                    .get(ip)
                    .and_then(|u| u.iter().find(|u| *u != name))
                {
                    return Some(format!(
                        "used by Service {user} (a clusterIP, an externalIP or another controller's LoadBalancer address)"
                    ));
                }
                self.claims
                    .get(ip)
                    .and_then(|c| {
                        c.iter()
                            .find(|u| *u != name && (!own_claim || u.as_str() < name))
                    })
                    .map(|user| format!("shown in the status of Service {user}"))
            };
            if let Some(ip) = shown
                .iter()
                .find(|ip| fits(ip) && holder(ip, taken, true).is_none())
            {
                taken.insert(*ip);
                out.push(*ip);
                continue;
            }
            if let Some(w) = want
                && in_pools(&self.pools, &w)
                && let Some(why) = holder(&w, taken, false)
            {
                plan.warnings.push(format!(
                    "Service {name}: requested address {w} refused: {why}; it stays pending"
                ));
                continue;
            }
            match allocate(
                &self.pools,
                |ip| holder(ip, taken, false).is_some(),
                want,
                ipv6,
            ) {
                Ok(ip) => {
                    taken.insert(ip);
                    out.push(ip);
                }
                Err(e) => plan.warnings.push(format!(
                    "Service {name}: no LoadBalancer address: {e}; it stays pending"
                )),
            }
        }
        out
    }
}

/// The addresses a Service asks for, as written: the annotation's list,
/// or else `spec.loadBalancerIP`.
pub(super) fn requested_texts(s: &Service) -> Vec<String> {
    let annotation = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_ADDRESSES));
    let texts: Vec<String> = match (
        annotation,
        s.spec.as_ref().and_then(|s| s.load_balancer_ip.clone()),
    ) {
        (Some(list), _) => list.split(',').map(|t| t.trim().to_owned()).collect(),
        (None, Some(ip)) => vec![ip],
        _ => Vec::new(),
    };
    texts.into_iter().filter(|t| !t.is_empty()).collect()
}

/// The addresses a Service's status shows.
pub(super) fn status_ips(s: &Service) -> Vec<IpAddr> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| {
            list.iter()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
