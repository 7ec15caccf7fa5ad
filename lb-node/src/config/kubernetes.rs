//! `[source.kubernetes]`: where the leader watches, how Services translate,
//! the LoadBalancer address pools.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, parse_duration, relative_to};

/// `[source.kubernetes]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSourceConfig {
    /// A kubeconfig file; `None` uses the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Watch one namespace only; `None` watches all.
    pub namespace: Option<String>,
    /// Only Services with these labels (a Kubernetes label selector).
    pub label_selector: Option<String>,
    pub translate: crate::source::kubernetes::translate::TranslateConfig,
    /// Changes that arrive within this window of the last proposal are
    /// coalesced into one log entry; a change after a quiet spell is
    /// proposed at once.
    pub batch_window: Duration,
    /// Where LoadBalancer addresses come from. Empty: the addresses in the
    /// Services' status (another controller's) are served as they are.
    pub address_pools: Vec<ipnet::IpNet>,
    /// Watch Nodes too, and on every member route each node's pod CIDRs
    /// to its InternalIP (flat networks where only the nodes know where
    /// pods are; docs/kubernetes.md, *Reaching pods*).
    pub pod_routes: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetesSource {
    kubeconfig: Option<PathBuf>,
    namespace: Option<String>,
    label_selector: Option<String>,
    load_balancer_class: Option<String>,
    #[serde(default = "default_true")]
    handle_classless: bool,
    #[serde(default = "default_scheduler")]
    default_scheduler: String,
    #[serde(default = "default_forwarding")]
    default_forwarding: String,
    #[serde(default = "default_batch_window")]
    batch_window: String,
    #[serde(default)]
    address_pools: Vec<String>,
    #[serde(default)]
    pod_routes: bool,
}

fn default_true() -> bool {
    true
}
fn default_scheduler() -> String {
    "wlc".into()
}
fn default_forwarding() -> String {
    "masquerade".into()
}
fn default_batch_window() -> String {
    "5ms".into()
}

pub(super) fn validate_kubernetes(
    k: RawKubernetesSource,
    file: &Path,
) -> Result<KubernetesSourceConfig, ConfigError> {
    let at = |f: &str| format!("source.kubernetes.{f}");
    let mut translate = crate::source::kubernetes::translate::TranslateConfig {
        handle_classless: k.handle_classless,
        default_scheduler: k
            .default_scheduler
            .parse()
            .map_err(|e| ConfigError::new(file, at("default_scheduler"), format!("{e}")))?,
        default_forwarding: k
            .default_forwarding
            .parse()
            .map_err(|e| ConfigError::new(file, at("default_forwarding"), format!("{e}")))?,
        ..Default::default()
    };
    if let Some(class) = k.load_balancer_class {
        if class.is_empty() {
            return Err(ConfigError::new(
                file,
                at("load_balancer_class"),
                "must not be empty",
            ));
        }
        translate.load_balancer_class = class;
    }
    let batch_window = parse_duration(&k.batch_window, file, &at("batch_window"))?;
    if batch_window > Duration::from_secs(1) {
        return Err(ConfigError::new(
            file,
            at("batch_window"),
            "must be at most 1s: every change waits up to this long",
        ));
    }
    let mut address_pools = Vec::new();
    for (i, p) in k.address_pools.iter().enumerate() {
        let net: ipnet::IpNet = p.parse().map_err(|_| {
            ConfigError::new(
                file,
                format!("source.kubernetes.address_pools[{i}]"),
                format!("{p:?} is not a network like \"192.0.2.0/24\""),
            )
        })?;
        if net.trunc() != net {
            return Err(ConfigError::new(
                file,
                format!("source.kubernetes.address_pools[{i}]"),
                format!("{p:?} has host bits set; write {}", net.trunc()),
            ));
        }
        address_pools.push(net);
    }
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(KubernetesSourceConfig {
        kubeconfig: k.kubeconfig.map(|p| relative_to(file, p)),
        namespace: nonempty(k.namespace),
        label_selector: nonempty(k.label_selector),
        translate,
        batch_window,
        address_pools,
        pod_routes: k.pod_routes,
    })
}
