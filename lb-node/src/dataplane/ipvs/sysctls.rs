//! The kernel settings IPVS load balancing needs, set at start, read back,
//! logged and exported (`lb_ipvs_sysctl`).

use tracing::{info, warn};

use crate::config::RateEstimation;

/// The IPVS sysctls load balancing needs, and the values lb-node sets.
pub const SYSCTLS: &[(&str, &str)] = &[
    // Connections tracked, so the masquerade return path can SNAT them.
    ("net/ipv4/vs/conntrack", "1"),
    // A connection to a deleted destination is dropped at its next packet
    // rather than blackholed until it times out.
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    // A persistence template to a weight-0 destination expires, so a
    // drained backend stops receiving the clients it had.
    ("net/ipv4/vs/expire_quiescent_template", "1"),
    // Reuse of a port by a new connection reschedules it (kernels since
    // 5.9 do this without the one-second stall of older ones).
    ("net/ipv4/vs/conn_reuse_mode", "1"),
    // Replies from backends (after SNAT) are forwarded back to clients.
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
];

/// Sets `SYSCTLS` and, unless left to the kernel, the rate estimators'
/// switch, and logs and exports (`lb_ipvs_sysctl`) what each reads back.
pub fn set_sysctls(rates: RateEstimation) {
    set_sysctl_list(SYSCTLS);
    let value = match rates {
        RateEstimation::Kernel => return,
        RateEstimation::On => "1",
        RateEstimation::Off => "0",
    };
    set_sysctl_list(&[("net/ipv4/vs/run_estimation", value)]);
}

pub(crate) fn set_sysctl_list(list: &[(&str, &str)]) {
    for (name, value) in list {
        let path = format!("/proc/sys/{name}");
        if let Err(e) = std::fs::write(&path, value) {
            warn!(sysctl = name, value, error = %e, "cannot set an IPVS sysctl");
        }
        let now = std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        let dotted = name.replace('/', ".");
        info!(sysctl = %dotted, value = %now, "IPVS sysctl");
        crate::metrics::METRICS
            .ipvs_sysctls
            .with_label_values(&[&dotted])
            .set(now.parse().unwrap_or(-1));
        if now != *value {
            warn!(sysctl = %dotted, wanted = value, now = %now, "an IPVS sysctl is not as lb-node needs it");
        }
    }
}
