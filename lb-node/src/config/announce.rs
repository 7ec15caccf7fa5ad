//! `[announce]`: how VIPs reach the network (L2 or BGP).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, parse_duration};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    address: String,
    #[serde(rename = "as")]
    asn: u32,
    source: Option<String>,
    ttl: Option<u32>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    communities: Vec<String>,
    #[serde(default)]
    large_communities: Vec<String>,
    med: Option<u32>,
    bfd: Option<bool>,
    passive: Option<bool>,
    password: Option<String>,
    password_file: Option<std::path::PathBuf>,
}

/// A peer's TCP MD5 password: `password` inline or `password_file` (its
/// content without the final line end; relative to the config file), not
/// both; 1 to 80 bytes.
fn password(
    p: &RawPeer,
    file: &Path,
    at: &str,
) -> Result<Option<crate::announce::bgp::md5::Key>, ConfigError> {
    let (bytes, field) = match (&p.password, &p.password_file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                file,
                format!("{at}.password_file"),
                "give password or password_file, not both",
            ));
        }
        (Some(text), None) => (text.as_bytes().to_vec(), format!("{at}.password")),
        (None, Some(path)) => {
            let field = format!("{at}.password_file");
            let path = super::relative_to(file, path.clone());
            let mut bytes = std::fs::read(&path).map_err(|e| {
                ConfigError::new(file, &field, format!("cannot read {}: {e}", path.display()))
            })?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            (bytes, field)
        }
    };
    crate::announce::bgp::md5::Key::new(bytes)
        .map(Some)
        .map_err(|e| ConfigError::new(file, field, format!("the password {e}")))
}

/// `[announce.bfd]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBfd {
    #[serde(default = "default_bfd_interval")]
    interval: String,
    /// Defaults to `interval`.
    min_rx: Option<String>,
    #[serde(default = "default_bfd_multiplier")]
    multiplier: u8,
}

/// `Timers::default()`'s 50 ms.
fn default_bfd_interval() -> String {
    "50ms".into()
}

fn default_bfd_multiplier() -> u8 {
    3
}

/// BFD timers: 10 ms to 60 s, a multiplier of at least 1.
fn bfd_timers(raw: &RawBfd, file: &Path) -> Result<crate::announce::bfd::Timers, ConfigError> {
    let interval = |text: &str, field: &str| {
        let d = super::parse_duration(text, file, field)?;
        if d < Duration::from_millis(10) || d > Duration::from_secs(60) {
            return Err(ConfigError::new(file, field, "must be 10ms to 60s"));
        }
        Ok(d)
    };
    let desired_min_tx = interval(&raw.interval, "announce.bfd.interval")?;
    let required_min_rx = match &raw.min_rx {
        Some(t) => interval(t, "announce.bfd.min_rx")?,
        None => desired_min_tx,
    };
    if raw.multiplier == 0 {
        return Err(ConfigError::new(
            file,
            "announce.bfd.multiplier",
            "must be 1 to 255 (3 is usual)",
        ));
    }
    Ok(crate::announce::bfd::Timers {
        desired_min_tx,
        required_min_rx,
        multiplier: raw.multiplier,
    })
}

/// Communities ("65001:100") at `at[i]`.
fn communities(texts: &[String], file: &Path, at: &str) -> Result<Vec<u32>, ConfigError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            crate::announce::bgp::codec::parse_community(c).ok_or_else(|| {
                ConfigError::new(
                    file,
                    format!("{at}[{i}]"),
                    format!("{c:?} is not a community like \"65001:100\""),
                )
            })
        })
        .collect()
}

/// Large communities ("65001:1:2", RFC 8092) at `at[i]`.
fn large_communities(
    texts: &[String],
    file: &Path,
    at: &str,
) -> Result<Vec<(u32, u32, u32)>, ConfigError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            crate::announce::bgp::codec::parse_large_community(c).ok_or_else(|| {
                ConfigError::new(
                    file,
                    format!("{at}[{i}]"),
                    format!("{c:?} is not a large community like \"65001:1:2\" (three numbers up to 4294967295)"),
                )
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    mode: String,
    local_as: Option<u32>,
    router_id: Option<String>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    #[serde(default = "default_hold_time")]
    hold_time: u16,
    #[serde(default)]
    communities: Vec<String>,
    #[serde(default = "default_local_pref")]
    local_pref: u32,
    next_hop_v4: Option<String>,
    next_hop_v6: Option<String>,
    #[serde(default)]
    ecmp: bool,
    interface: Option<String>,
    /// No longer a setting (`dataplane.vip_interface` is the one): read
    /// only to refuse it with the way out.
    vip_interface: Option<String>,
    #[serde(default)]
    vip_ranges: Vec<String>,
    #[serde(default = "default_garp_count")]
    garp_count: u32,
    #[serde(default = "default_garp_interval")]
    garp_interval: String,
    #[serde(default = "default_linger")]
    linger: String,
    #[serde(default = "default_flow_handover")]
    flow_handover: bool,
    #[serde(default = "default_handover_probe_wait")]
    handover_probe_wait: String,
    #[serde(default)]
    large_communities: Vec<String>,
    med: Option<u32>,
    #[serde(default)]
    service_cidrs: Vec<String>,
    #[serde(default)]
    service_gateways: Vec<String>,
    bfd: Option<RawBfd>,
    graceful_restart: Option<String>,
    /// Where passive peers connect to (BGP mode).
    listen: Option<String>,
}

/// `announce.service_cidrs`: networks (no host bits).
fn service_cidrs(texts: &[String], file: &Path) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let mut out = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let at = format!("announce.service_cidrs[{i}]");
        let net: ipnet::IpNet = t.parse().map_err(|_| {
            ConfigError::new(
                file,
                &at,
                format!(
                    "{t:?} is not a network like \"10.96.0.0/12\" (the cluster's service CIDR)"
                ),
            )
        })?;
        if net.trunc() != net {
            return Err(ConfigError::new(
                file,
                at,
                format!("{t:?} has host bits set; write {}", net.trunc()),
            ));
        }
        out.push(net);
    }
    Ok(out)
}

fn default_hold_time() -> u16 {
    90
}
fn default_local_pref() -> u32 {
    100
}

fn validate_bgp(
    a: RawAnnounce,
    file: &Path,
) -> Result<crate::announce::bgp::BgpConfig, ConfigError> {
    let local_as = a.local_as.filter(|a| *a != 0).ok_or_else(|| {
        ConfigError::new(
            file,
            "announce.local_as",
            "required with mode = \"bgp\" (1 to 4294967295)",
        )
    })?;
    let router_id: std::net::Ipv4Addr = a
        .router_id
        .as_deref()
        .ok_or_else(|| {
            ConfigError::new(
                file,
                "announce.router_id",
                "required with mode = \"bgp\": an IPv4 address unique to this member",
            )
        })?
        .parse()
        .map_err(|_| ConfigError::new(file, "announce.router_id", "not an IPv4 address"))?;
    if a.peer.is_empty() {
        return Err(ConfigError::new(
            file,
            "announce.peer",
            "at least one [[announce.peer]] with address and as",
        ));
    }
    let mut peers = Vec::new();
    for (i, p) in a.peer.iter().enumerate() {
        let address = p
            .address
            .parse::<SocketAddr>()
            .or_else(|_| {
                p.address
                    .parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 179))
            })
            .map_err(|_| {
                ConfigError::new(
                    file,
                    format!("announce.peer[{i}].address"),
                    format!("{:?} is not an address (or address:port)", p.address),
                )
            })?;
        if p.asn == 0 {
            return Err(ConfigError::new(
                file,
                format!("announce.peer[{i}].as"),
                "0 is not an AS number",
            ));
        }
        let at = format!("announce.peer[{i}]");
        let source = p
            .source
            .as_deref()
            .map(|t| {
                t.parse::<std::net::IpAddr>().map_err(|_| {
                    ConfigError::new(
                        file,
                        format!("{at}.source"),
                        format!("{t:?} is not an IP address"),
                    )
                })
            })
            .transpose()?;
        if source.is_some_and(|s| s.is_ipv4() != address.is_ipv4()) {
            return Err(ConfigError::new(
                file,
                format!("{at}.source"),
                "must be of the peer address's family",
            ));
        }
        if p.ttl.is_some_and(|t| !(1..=255).contains(&t)) {
            return Err(ConfigError::new(
                file,
                format!("{at}.ttl"),
                "must be 1 to 255",
            ));
        }
        let mut prefixes = Vec::new();
        for (j, t) in p.prefixes.iter().enumerate() {
            prefixes.push(t.parse::<ipnet::IpNet>().map_err(|_| {
                ConfigError::new(
                    file,
                    format!("{at}.prefixes[{j}]"),
                    format!("{t:?} is not a network like \"192.0.2.0/24\""),
                )
            })?);
        }
        peers.push(crate::announce::bgp::PeerConfig {
            address,
            asn: p.asn,
            source,
            ttl: p.ttl,
            prefixes,
            communities: communities(&p.communities, file, &format!("{at}.communities"))?,
            large_communities: large_communities(
                &p.large_communities,
                file,
                &format!("{at}.large_communities"),
            )?,
            med: p.med,
            bfd: p.bfd.unwrap_or(true),
            passive: p.passive.unwrap_or(false),
            password: password(p, file, &at)?,
        });
    }
    if a.hold_time != 0 && a.hold_time < 3 {
        return Err(ConfigError::new(
            file,
            "announce.hold_time",
            "0 or at least 3 seconds (RFC 4271)",
        ));
    }
    let communities = communities(&a.communities, file, "announce.communities")?;
    let large_communities =
        large_communities(&a.large_communities, file, "announce.large_communities")?;
    let next_hop_v4 = a
        .next_hop_v4
        .map(|t| {
            t.parse().map_err(|_| {
                ConfigError::new(
                    file,
                    "announce.next_hop_v4",
                    format!("{t:?} is not an IPv4 address"),
                )
            })
        })
        .transpose()?;
    let next_hop_v6 = a
        .next_hop_v6
        .map(|t| {
            t.parse().map_err(|_| {
                ConfigError::new(
                    file,
                    "announce.next_hop_v6",
                    format!("{t:?} is not an IPv6 address"),
                )
            })
        })
        .transpose()?;
    if !a.service_gateways.is_empty() {
        return Err(ConfigError::new(
            file,
            "announce.service_gateways",
            "only with mode = \"l2\": in BGP mode every member announces the service CIDRs itself",
        ));
    }
    let service_cidrs = service_cidrs(&a.service_cidrs, file)?;
    let bfd = a.bfd.as_ref().map(|b| bfd_timers(b, file)).transpose()?;
    let graceful_restart = a
        .graceful_restart
        .as_deref()
        .map(|t| {
            let d = parse_duration(t, file, "announce.graceful_restart")?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(4095) {
                return Err(ConfigError::new(
                    file,
                    "announce.graceful_restart",
                    "the restart time must be 1s to 4095s (RFC 4724's 12 bits)",
                ));
            }
            Ok(d.as_secs() as u16)
        })
        .transpose()?;
    if bfd.is_none() && a.peer.iter().any(|p| p.bfd == Some(true)) {
        return Err(ConfigError::new(
            file,
            "announce.bfd",
            "a peer asks for BFD (bfd = true): add an [announce.bfd] section",
        ));
    }
    let linger = parse_duration(&a.linger, file, "announce.linger")?;
    if linger > Duration::from_secs(600) {
        return Err(ConfigError::new(
            file,
            "announce.linger",
            "must be at most 10m (a VIP that moved away stays announced that long)",
        ));
    }
    let listen = a
        .listen
        .as_deref()
        .map(|t| {
            t.parse::<SocketAddr>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 179)))
                .map_err(|_| {
                    ConfigError::new(
                        file,
                        "announce.listen",
                        format!("{t:?} is not an address (or address:port) to listen on for passive peers"),
                    )
                })
        })
        .transpose()?;
    if listen.is_some() && !peers.iter().any(|p| p.passive) {
        return Err(ConfigError::new(
            file,
            "announce.listen",
            "no peer is passive (passive = true): nothing would connect",
        ));
    }
    Ok(crate::announce::bgp::BgpConfig {
        linger,
        listen,
        service_cidrs,
        bfd,
        graceful_restart,
        local_as,
        router_id,
        peers,
        hold_time: a.hold_time,
        communities,
        large_communities,
        med: a.med,
        local_pref: a.local_pref,
        next_hop_v4,
        next_hop_v6,
        ecmp: a.ecmp,
    })
}

fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval() -> String {
    "50ms".into()
}
fn default_linger() -> String {
    "2s".into()
}
fn default_flow_handover() -> bool {
    true
}
fn default_handover_probe_wait() -> String {
    "30ms".into()
}

pub(super) fn validate_announce(
    a: RawAnnounce,
    file: &Path,
) -> Result<crate::announce::AnnounceConfig, ConfigError> {
    use crate::announce::{AnnounceConfig, l2::L2Config};
    if let Some(old) = &a.vip_interface {
        return Err(ConfigError::new(
            file,
            "announce.vip_interface",
            format!(
                "is no longer a setting ({old:?} here): VIPs are made local through one interface, \
                 dataplane.vip_interface. With the IPVS dataplane lb-node makes every VIP local \
                 through its own interface (\"lbvip0\" by default): delete this line. With the \
                 memory dataplane the L2 announcer adds the VIPs it announces to \
                 dataplane.vip_interface (\"lo\" by default): delete this line, or move it to \
                 [dataplane] if it was not \"lo\" (docs/announcement.md, *VIP interface*)"
            ),
        ));
    }
    match a.mode.as_str() {
        "none" => Ok(AnnounceConfig::None),
        "l2" => {
            if a.bfd.is_some() || a.graceful_restart.is_some() {
                return Err(ConfigError::new(
                    file,
                    if a.bfd.is_some() {
                        "announce.bfd"
                    } else {
                        "announce.graceful_restart"
                    },
                    "only with mode = \"bgp\": it belongs to the BGP sessions",
                ));
            }
            let interface = a.interface.filter(|i| !i.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    file,
                    "announce.interface",
                    "required with mode = \"l2\": the interface that answers ARP and NA",
                )
            })?;
            let mut vip_ranges = Vec::new();
            for (i, r) in a.vip_ranges.iter().enumerate() {
                let net: ipnet::IpNet = r.parse().map_err(|_| {
                    ConfigError::new(
                        file,
                        format!("announce.vip_ranges[{i}]"),
                        format!("{r:?} is not a network like \"192.0.2.0/24\""),
                    )
                })?;
                vip_ranges.push(net.trunc());
            }
            if vip_ranges.is_empty() {
                return Err(ConfigError::new(
                    file,
                    "announce.vip_ranges",
                    "required with mode = \"l2\": the networks VIPs come from (addresses in them on the VIP interface are managed by lb-node)",
                ));
            }
            if a.garp_count == 0 || a.garp_count > 100 {
                return Err(ConfigError::new(
                    file,
                    "announce.garp_count",
                    "must be 1 to 100",
                ));
            }
            let garp_interval = parse_duration(&a.garp_interval, file, "announce.garp_interval")?;
            let linger = parse_duration(&a.linger, file, "announce.linger")?;
            if linger > Duration::from_secs(600) {
                return Err(ConfigError::new(
                    file,
                    "announce.linger",
                    "must be at most 10m (a withdrawn VIP stays local that long)",
                ));
            }
            let handover_probe_wait =
                parse_duration(&a.handover_probe_wait, file, "announce.handover_probe_wait")?;
            if handover_probe_wait > Duration::from_secs(1) {
                return Err(ConfigError::new(
                    file,
                    "announce.handover_probe_wait",
                    "must be at most 1s (a takeover after a crash waits that long before its gratuitous ARP)",
                ));
            }
            let service_cidrs = service_cidrs(&a.service_cidrs, file)?;
            let mut service_gateways = Vec::new();
            for (i, t) in a.service_gateways.iter().enumerate() {
                let at = format!("announce.service_gateways[{i}]");
                let ip: std::net::IpAddr = t.parse().map_err(|_| {
                    ConfigError::new(file, &at, format!("{t:?} is not an IP address"))
                })?;
                if !vip_ranges.iter().any(|r| r.contains(&ip)) {
                    return Err(ConfigError::new(
                        file,
                        at,
                        format!(
                            "{ip} is outside every announce.vip_ranges network: a gateway is announced like a VIP"
                        ),
                    ));
                }
                if let Some(net) = service_cidrs.iter().find(|n| n.contains(&ip)) {
                    return Err(ConfigError::new(
                        file,
                        at,
                        format!(
                            "{ip} is inside service CIDR {net}: a gateway must be on the nodes' network"
                        ),
                    ));
                }
                if service_gateways.contains(&ip) {
                    return Err(ConfigError::new(file, at, format!("{ip} is listed twice")));
                }
                service_gateways.push(ip);
            }
            if !service_cidrs.is_empty() && service_gateways.is_empty() {
                return Err(ConfigError::new(
                    file,
                    "announce.service_gateways",
                    "required with service_cidrs in mode = \"l2\": the addresses on the nodes' network through which nodes route the service CIDRs (one per member is usual)",
                ));
            }
            Ok(AnnounceConfig::L2(L2Config {
                service_cidrs,
                service_gateways,
                interface,
                // Set when the dataplane is open (`L2Config::vip_interface`).
                vip_interface: None,
                vip_ranges,
                garp_count: a.garp_count,
                garp_interval,
                linger,
                flow_handover: a.flow_handover,
                handover_probe_wait,
                // Set when the dataplane is open (IPVS with connection sync).
                seed_conntrack: false,
            }))
        }
        "bgp" => Ok(AnnounceConfig::Bgp(validate_bgp(a, file)?)),
        other => Err(ConfigError::new(
            file,
            "announce.mode",
            format!("unknown mode {other:?}; expected \"none\", \"l2\" or \"bgp\""),
        )),
    }
}
