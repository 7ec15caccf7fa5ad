//! Opening the kernel's dataplane as the member config asks
//! (`[dataplane]`): IPVS, the memory dataplane, or IPVS where the kernel
//! has it (`auto`).
//!
//! Must not: program anything; `reconcile` does, from the state.

use anyhow::Context as _;

use crate::config::{DataplaneConfig, DataplaneKind};
use crate::dataplane::ipvs::local::LocalSettings;
use crate::dataplane::ipvs::{IpvsDataplane, IpvsError, IpvsSettings, Ownership};

/// The IPVS dataplane, or None for the memory one. Checked before the
/// member joins: `ipvs` on a kernel without IPVS stops here with a message
/// that says so (naming `file`'s field). `ecmp`: BGP's ECMP mode.
pub async fn open_kernel(
    config: &DataplaneConfig,
    file: &std::path::Path,
    ecmp: bool,
    netlink: &crate::netlink::Netlink,
) -> anyhow::Result<Option<IpvsDataplane>> {
    match config.kind {
        DataplaneKind::Memory => Ok(None),
        DataplaneKind::Ipvs => {
            Ok(Some(open_ipvs(config, ecmp, netlink).await.with_context(
                || format!("{}: dataplane.kind = \"ipvs\"", file.display()),
            )?))
        }
        DataplaneKind::Auto => match open_ipvs(config, ecmp, netlink).await {
            Ok(d) => Ok(Some(d)),
            Err(e @ IpvsError::NoIpvs) => {
                tracing::warn!(error = %e, "dataplane.kind = \"auto\": no IPVS here; using the memory dataplane");
                Ok(None)
            }
            Err(e) => Err(e).context("dataplane.kind = \"auto\""),
        },
    }
}

async fn open_ipvs(
    config: &DataplaneConfig,
    ecmp: bool,
    netlink: &crate::netlink::Netlink,
) -> Result<IpvsDataplane, IpvsError> {
    let ownership = if config.own_whole_table {
        Ownership::WholeTable
    } else if !config.managed_networks.is_empty() {
        Ownership::Networks(config.managed_networks.clone())
    } else {
        Ownership::VipInterface
    };
    let vip_interface = config.vip_interface(true);
    let local = (!vip_interface.is_empty()).then(|| LocalSettings {
        interface: vip_interface.to_owned(),
        masquerade: config.masquerade,
        // Owner mode only: under ECMP the answers to a VIP would reach
        // whichever member the router hashes them to, not the one that
        // forwarded the request (docs/connections.md).
        masquerade_to_vip: config.connection_sync.is_some() && !ecmp,
    });
    IpvsDataplane::open(
        IpvsSettings {
            ownership,
            drain_timeout: config.drain_timeout,
            udp_drain_timeout: config.udp_drain_timeout,
            local,
            sync: config.connection_sync.clone(),
            rate_estimation: config.rate_estimation,
        },
        netlink,
    )
    .await
}
