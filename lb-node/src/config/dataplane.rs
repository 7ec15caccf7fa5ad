//! `[dataplane]` as written, and the kernel's IPVS rate estimators setting.

use serde::Deserialize;

/// The kernel's IPVS rate estimators (`net.ipv4.vs.run_estimation`). Before
/// Linux 6.2 they run in a timer softirq that walks every service and
/// destination every 2 s holding the lock each new service and destination
/// takes: at 50,000 services x 10 backends, 164-174 ms each time in the
/// kernel lab, during which a change waits (docs/ipvs.md, *Rate
/// estimators*). They also fold the per-CPU counters into the totals the
/// kernel reports, so with them off the counters (`lbctl services NAME`,
/// `ipvsadm -L --stats`) stay at zero as well as the rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateEstimation {
    /// As the kernel has it (on unless someone turned it off).
    Kernel,
    On,
    Off,
}

impl RateEstimation {
    pub(super) fn parse(text: &str) -> Option<RateEstimation> {
        match text {
            "kernel" => Some(RateEstimation::Kernel),
            "on" => Some(RateEstimation::On),
            "off" => Some(RateEstimation::Off),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDataplane {
    pub(super) kind: String,
    pub(super) repair_interval: String,
    pub(super) vip_interface: Option<String>,
    pub(super) masquerade: bool,
    pub(super) drain_timeout: String,
    pub(super) udp_drain_timeout: String,
    pub(super) managed_networks: Vec<String>,
    pub(super) own_whole_table: bool,
    pub(super) connection_sync: Option<RawConnectionSync>,
    pub(super) rate_estimation: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnectionSync {
    pub(super) interface: String,
    #[serde(default = "default_sync_id")]
    pub(super) sync_id: u32,
    #[serde(default = "default_sync_group")]
    pub(super) group: String,
    #[serde(default = "default_sync_port")]
    pub(super) port: u16,
    #[serde(default = "default_sync_refresh")]
    pub(super) refresh: String,
}

fn default_sync_id() -> u32 {
    1
}
fn default_sync_group() -> String {
    "224.0.0.81".into()
}
fn default_sync_port() -> u16 {
    8848
}
fn default_sync_refresh() -> String {
    "2s".into()
}

impl Default for RawDataplane {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            repair_interval: "30s".into(),
            vip_interface: None,
            masquerade: true,
            drain_timeout: "30s".into(),
            udp_drain_timeout: "0s".into(),
            managed_networks: Vec::new(),
            own_whole_table: false,
            connection_sync: None,
            rate_estimation: "kernel".into(),
        }
    }
}
