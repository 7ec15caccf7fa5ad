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

/// Sets `SYSCTLS` and the rate estimators' switch, and logs and exports
/// (`lb_ipvs_sysctl`) what each reads back.
pub fn set_sysctls(rates: RateEstimation) {
    set_sysctl_list(SYSCTLS);
    let release = nix::sys::utsname::uname()
        .ok()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(value) = run_estimation(rates, &release) {
        info!(
            setting = ?rates,
            kernel = %release,
            "IPVS rate estimators {}",
            if value == "0" { "off" } else { "on" }
        );
        set_sysctl_list(&[("net/ipv4/vs/run_estimation", value)]);
    }
}

/// What `net.ipv4.vs.run_estimation` is set to (`None`: left as it is).
/// `auto` turns the estimators off on kernels before 6.2, whose estimator
/// runs in a timer softirq over every service and destination holding the
/// lock adds take (`RateEstimation`), and leaves later kernels alone.
fn run_estimation(rates: RateEstimation, kernel_release: &str) -> Option<&'static str> {
    match rates {
        RateEstimation::On => Some("1"),
        RateEstimation::Off => Some("0"),
        RateEstimation::Auto => {
            let mut numbers = kernel_release
                .split(|c: char| !c.is_ascii_digit())
                .map(|n| n.parse::<u32>().ok());
            let version = (numbers.next()??, numbers.next()??);
            (version < (6, 2)).then_some("0")
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_turns_the_estimators_off_before_linux_6_2_only() {
        let auto = |release| run_estimation(RateEstimation::Auto, release);
        assert_eq!(auto("6.1.0-57-amd64"), Some("0"));
        assert_eq!(auto("5.10.0-30-amd64"), Some("0"));
        assert_eq!(auto("6.2.0"), None);
        assert_eq!(auto("6.18.44-fc-v1300"), None);
        assert_eq!(auto("7.0"), None);
        assert_eq!(auto("garbage"), None);
        assert_eq!(run_estimation(RateEstimation::On, "6.1.0"), Some("1"));
        assert_eq!(run_estimation(RateEstimation::Off, "6.8.0"), Some("0"));
    }
}
