//! The member's configuration file: parsing, defaults and validation.
//!
//! Every field is checked here, before anything starts; an error names the
//! file and the field's path (`dataplane.repair_interval`), so a typo stops
//! the member at once with a message that says where to look.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod announce;
mod cluster;
mod dataplane;
pub mod error;
mod kubernetes;

pub use cluster::{ClusterConfig, TlsConfig};
pub use dataplane::RateEstimation;
use dataplane::{RawConnectionSync, RawDataplane};
pub use error::ConfigError;
pub use kubernetes::KubernetesSourceConfig;

/// Reads a TOML file into `T`, naming the field's path on a type error or
/// an unknown field.
pub fn read_toml<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::new(file, "", format!("cannot read: {e}")))?;
    parse_toml(&text, file)
}

/// Parses TOML text into `T`; see [`read_toml`].
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        ConfigError::new(
            file,
            "",
            format!("not valid TOML: {}", one_line(&e.to_string())),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut field = e.path().to_string();
        if field == "." {
            field.clear();
        }
        let message = one_line(&e.into_inner().to_string());
        // serde reports a missing field at its parent; name the field itself.
        if let Some(missing) = message
            .split("missing field `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
        {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(missing);
        }
        ConfigError::new(file, field, message)
    })
}

/// toml's messages span several lines (with a source excerpt); a log line
/// and an exit message want one.
fn one_line(message: &str) -> String {
    let is_excerpt = |line: &str| {
        let rest = line
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        rest.starts_with('|')
    };
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_excerpt(l))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses a duration written as `500ms`, `1s`, `2m`.
pub fn parse_duration(text: &str, file: &Path, field: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| {
        ConfigError::new(
            file,
            field,
            format!("{text:?} is not a duration like \"500ms\" or \"30s\": {e}"),
        )
    })
}

/// A relative path is relative to the configuration file, so an example
/// works from any working directory.
pub(super) fn relative_to(file: &Path, path: PathBuf) -> PathBuf {
    match file.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

fn validate_connection_sync(
    c: RawConnectionSync,
    kind: DataplaneKind,
    file: &Path,
) -> Result<ConnectionSync, ConfigError> {
    let field = |f: &str| format!("dataplane.connection_sync.{f}");
    if kind == DataplaneKind::Memory {
        return Err(ConfigError::new(
            file,
            "dataplane.connection_sync",
            "needs kernel IPVS (dataplane.kind = \"ipvs\" or \"auto\"): the memory dataplane has no connections to sync",
        ));
    }
    if c.interface.is_empty() || c.interface.len() > 15 || c.interface.contains(['/', ' ']) {
        return Err(ConfigError::new(
            file,
            field("interface"),
            format!(
                "{:?} is not a valid interface name (1-15 characters, no '/' or space): the interface on which members reach each other",
                c.interface
            ),
        ));
    }
    let sync_id = u8::try_from(c.sync_id).map_err(|_| {
        ConfigError::new(
            file,
            field("sync_id"),
            format!(
                "{} is out of range: the kernel's sync id is 0-255",
                c.sync_id
            ),
        )
    })?;
    let group: std::net::Ipv4Addr = c.group.parse().map_err(|_| {
        ConfigError::new(
            file,
            field("group"),
            format!("{:?} is not an IPv4 multicast address", c.group),
        )
    })?;
    if !group.is_multicast() {
        return Err(ConfigError::new(
            file,
            field("group"),
            format!("{group} is not a multicast address (224.0.0.0/4)"),
        ));
    }
    if c.port == 0 {
        return Err(ConfigError::new(file, field("port"), "must not be 0"));
    }
    let refresh = parse_duration(&c.refresh, file, &field("refresh"))?;
    if refresh < Duration::from_secs(1) || refresh.subsec_nanos() != 0 {
        return Err(ConfigError::new(
            file,
            field("refresh"),
            format!(
                "{:?} must be whole seconds, at least 1s (the kernel counts it in seconds)",
                c.refresh
            ),
        ));
    }
    Ok(ConnectionSync {
        interface: c.interface,
        sync_id,
        group,
        port: c.port,
        refresh,
    })
}

/// Where the member keeps IPVS state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataplaneKind {
    /// In memory only: nothing reaches the kernel. For machines without
    /// IPVS and for tests.
    Memory,
    /// Kernel IPVS; a kernel without it stops the member with a message.
    Ipvs,
    /// IPVS when the kernel has it, memory (with a warning) otherwise.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub kind: DataplaneKind,
    /// How long after a repair round ended the next one starts: the
    /// dataplane read back (a slice at a time) and compared with the state,
    /// which repairs changes made by hand.
    pub repair_interval: Duration,
    /// Where VIPs are made local, as written (None: the default of the
    /// dataplane that runs; see `vip_interface`).
    pub vip_interface_setting: Option<String>,
    /// IPVS: install the nftables masquerade table for NAT destinations.
    pub masquerade: bool,
    /// IPVS: how long a removed backend keeps its open connections.
    pub drain_timeout: Duration,
    /// IPVS: the same for UDP services (none by default: a UDP flow is an
    /// "inactive connection" that never ends while packets come, so a
    /// drain only blackholes it; kube-proxy deletes UDP backends at once).
    pub udp_drain_timeout: Duration,
    /// IPVS: the services lb-node manages are those with a VIP in these
    /// networks; empty: those with a VIP on `vip_interface`.
    pub managed_networks: Vec<ipnet::IpNet>,
    /// IPVS: lb-node owns the whole kernel table and deletes what it did
    /// not program.
    pub own_whole_table: bool,
    /// IPVS: the kernel's connection synchronisation between members
    /// (`[dataplane.connection_sync]`), so a member that takes a VIP over
    /// has the connections its previous owner carried; `None`: off.
    pub connection_sync: Option<ConnectionSync>,
    /// IPVS: the kernel's rate estimators (`dataplane.rate_estimation`).
    pub rate_estimation: RateEstimation,
}

impl DataplaneConfig {
    /// The one interface through which VIPs are made local
    /// (`dataplane.vip_interface`): with IPVS, lb-node's dummy interface
    /// ("lbvip0" by default), through which the dataplane gives every VIP
    /// of the table a local route; with the memory dataplane, the
    /// interface the L2 announcer adds the VIPs it announces to ("lo" by
    /// default). "" leaves it to the operator.
    pub fn vip_interface(&self, ipvs: bool) -> &str {
        self.vip_interface_setting
            .as_deref()
            .unwrap_or(if ipvs { "lbvip0" } else { "lo" })
    }
}

/// `[dataplane.connection_sync]`: every member runs the kernel's IPVS sync
/// daemon as master (sends the connections its IPVS creates and changes)
/// and backup (creates those the others send) on `interface`, by
/// multicast. The masquerade then uses the VIP as the source address
/// instead of the member's own, so a connection has the same addresses
/// whichever member carries it (docs/connections.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSync {
    pub interface: String,
    /// The cluster's sync id (0-255): a backup takes only messages with
    /// its own.
    pub sync_id: u8,
    pub group: std::net::Ipv4Addr,
    pub port: u16,
    /// `net.ipv4.vs.sync_refresh_period`: a connection is sent again at
    /// each state change and at least this often while it has traffic.
    pub refresh: Duration,
}

/// Where the desired service table comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// A services file, reloaded on SIGHUP and when it changes.
    File(FileSourceConfig),
    /// The Kubernetes API server: Services and EndpointSlices, watched by
    /// the leader only.
    Kubernetes(KubernetesSourceConfig),
}

/// `[source.file]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSourceConfig {
    pub path: PathBuf,
    pub check_interval: Duration,
    /// A change seen by a check is applied once the file has kept that
    /// content this long (a file being written is not applied mid-write);
    /// SIGHUP applies at once.
    pub settle: Duration,
    /// The largest services file read, in bytes (`max_size_mib`): parsing
    /// costs about 35 bytes of memory per byte of file.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Prometheus `/metrics`, `/healthz` and `/readyz` (plain HTTP).
    pub metrics_listen: SocketAddr,
}

/// A member's validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub node_id: u64,
    pub dataplane: DataplaneConfig,
    pub source: SourceConfig,
    pub admin: AdminConfig,
    /// `None` for a standalone member.
    pub cluster: Option<ClusterConfig>,
    /// `None`: the admin and peer ports speak plain HTTP/2.
    pub tls: Option<TlsConfig>,
    /// `node.insecure`: the operator accepted admin or peer ports beyond
    /// loopback without TLS (refused otherwise).
    pub insecure: bool,
    /// Caps of every port the member listens on (`node.max_connections`,
    /// `node.max_connections_per_source`, `node.first_bytes_timeout`).
    pub limits: crate::listener::Limits,
    pub announce: crate::announce::AnnounceConfig,
    /// `[health]`: what a service's health check leaves out.
    pub health: crate::health::settings::Defaults,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    node: RawNode,
    #[serde(default)]
    dataplane: RawDataplane,
    source: RawSource,
    #[serde(default)]
    admin: RawAdmin,
    cluster: Option<cluster::RawCluster>,
    tls: Option<cluster::RawTls>,
    announce: Option<announce::RawAnnounce>,
    health: Option<crate::health::settings::RawDefaults>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: u64,
    /// Accept listening beyond loopback without TLS (a lab).
    #[serde(default)]
    insecure: bool,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    first_bytes_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    file: Option<RawFileSource>,
    kubernetes: Option<kubernetes::RawKubernetesSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSource {
    path: PathBuf,
    #[serde(default = "default_check_interval")]
    check_interval: String,
    #[serde(default = "default_settle")]
    settle: String,
    #[serde(default = "default_max_size_mib")]
    max_size_mib: u64,
}

/// The largest services file read unless `source.file.max_size_mib`
/// says otherwise: parsing TOML takes about 35 bytes of
/// memory per byte of file (a 16 MiB file of 109,569 services with one
/// backend each: `/usr/bin/time -v lb-node --config lb.toml plan` peaked
/// at 576 MB, one run, 2026-12-05; issue 19 reported 2.0 GB for a 50 MB
/// file). Larger tables belong in the Kubernetes source.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 20;

fn default_max_size_mib() -> u64 {
    DEFAULT_MAX_FILE_BYTES >> 20
}

/// The most `source.file.max_size_mib` may raise the limit to: a file of
/// 1 GiB would take some 35 GiB to parse.
const MAX_SIZE_MIB_LIMIT: u64 = 1024;

fn default_settle() -> String {
    "1s".into()
}

fn default_check_interval() -> String {
    "1s".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    metrics_listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9443".into(),
            metrics_listen: "127.0.0.1:9445".into(),
        }
    }
}

/// `node.max_connections` (default 1024), `node.max_connections_per_source`
/// (64, at most the former) and `node.first_bytes_timeout` (10s, 1s to
/// 5m): the caps of each port the member listens on.
fn listener_limits(node: &RawNode, file: &Path) -> Result<crate::listener::Limits, ConfigError> {
    let d = crate::listener::Limits::default();
    let max = node.max_connections.unwrap_or(d.max);
    if !(16..=1_000_000).contains(&max) {
        return Err(ConfigError::new(
            file,
            "node.max_connections",
            format!("{max} is out of range 16-1000000"),
        ));
    }
    let per_source = node
        .max_connections_per_source
        .unwrap_or(d.per_source.min(max));
    if per_source == 0 || per_source > max {
        return Err(ConfigError::new(
            file,
            "node.max_connections_per_source",
            format!("{per_source} must be 1 to max_connections ({max})"),
        ));
    }
    let first_bytes = match &node.first_bytes_timeout {
        None => d.first_bytes,
        Some(t) => {
            let v = parse_duration(t, file, "node.first_bytes_timeout")?;
            if v < Duration::from_secs(1) || v > Duration::from_secs(300) {
                return Err(ConfigError::new(
                    file,
                    "node.first_bytes_timeout",
                    "must be 1s to 5m",
                ));
            }
            v
        }
    };
    Ok(crate::listener::Limits {
        max,
        per_source,
        first_bytes,
    })
}

impl Config {
    /// Reads and validates a member's configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = read_toml(file)?;
        Self::validate(raw, file)
    }

    fn validate(raw: RawConfig, file: &Path) -> Result<Config, ConfigError> {
        if raw.node.id == 0 {
            return Err(ConfigError::new(
                file,
                "node.id",
                "must be 1 or more (0 is not a valid Raft id)",
            ));
        }
        let kind = match raw.dataplane.kind.as_str() {
            "memory" => DataplaneKind::Memory,
            "ipvs" => DataplaneKind::Ipvs,
            "auto" => DataplaneKind::Auto,
            other => {
                return Err(ConfigError::new(
                    file,
                    "dataplane.kind",
                    format!(
                        "unknown dataplane {other:?}; expected \"ipvs\", \"memory\" or \"auto\""
                    ),
                ));
            }
        };
        let repair_interval = parse_duration(
            &raw.dataplane.repair_interval,
            file,
            "dataplane.repair_interval",
        )?;
        if repair_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                file,
                "dataplane.repair_interval",
                "must be at least 1s: a full dump costs as much as the table is big",
            ));
        }
        let drain_timeout = parse_duration(
            &raw.dataplane.drain_timeout,
            file,
            "dataplane.drain_timeout",
        )?;
        let udp_drain_timeout = parse_duration(
            &raw.dataplane.udp_drain_timeout,
            file,
            "dataplane.udp_drain_timeout",
        )?;
        let mut managed_networks = Vec::new();
        for (i, n) in raw.dataplane.managed_networks.iter().enumerate() {
            managed_networks.push(n.parse::<ipnet::IpNet>().map_err(|e| {
                ConfigError::new(
                    file,
                    format!("dataplane.managed_networks[{i}]"),
                    format!("{n:?} is not a network: {e}"),
                )
            })?);
        }
        let vip_interface = raw.dataplane.vip_interface.as_deref();
        if let Some(name) = vip_interface
            && (name.len() > 15 || name.contains(['/', ' ']))
        {
            return Err(ConfigError::new(
                file,
                "dataplane.vip_interface",
                format!(
                    "{name:?} is not a valid interface name (at most 15 characters, no '/' or space)"
                ),
            ));
        }
        let may_run_ipvs = matches!(kind, DataplaneKind::Ipvs | DataplaneKind::Auto);
        if may_run_ipvs && vip_interface == Some("lo") {
            return Err(ConfigError::new(
                file,
                "dataplane.vip_interface",
                "is the loopback: with IPVS it must be an interface of lb-node's own (a dummy \
                 interface it creates, \"lbvip0\" by default), because lb-node takes the VIPs \
                 found through it for its own and moves addresses it finds there to its routes \
                 (leave it out: the memory dataplane uses the loopback by default)",
            ));
        }
        if kind == DataplaneKind::Ipvs
            && vip_interface == Some("")
            && managed_networks.is_empty()
            && !raw.dataplane.own_whole_table
        {
            return Err(ConfigError::new(
                file,
                "dataplane.vip_interface",
                "is empty and no dataplane.managed_networks are set: lb-node would have no way to \
                 tell its own IPVS services from others' (it recognises them by their VIPs on its \
                 interface), so it could never repair or remove them; set managed_networks to the \
                 networks of the VIPs (or own_whole_table = true on a machine whose IPVS table is \
                 lb-node's alone)",
            ));
        }
        let connection_sync = raw
            .dataplane
            .connection_sync
            .map(|c| validate_connection_sync(c, kind, file))
            .transpose()?;
        let mut source = match (raw.source.file, raw.source.kubernetes) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    file,
                    "source",
                    "both [source.file] and [source.kubernetes]; configure one",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    file,
                    "source",
                    "no source configured; add a [source.file] or [source.kubernetes] section",
                ));
            }
            (None, Some(k)) => SourceConfig::Kubernetes(kubernetes::validate_kubernetes(k, file)?),
            (Some(source), None) => {
                let check_interval =
                    parse_duration(&source.check_interval, file, "source.file.check_interval")?;
                if check_interval < Duration::from_millis(100) {
                    return Err(ConfigError::new(
                        file,
                        "source.file.check_interval",
                        "must be at least 100ms",
                    ));
                }
                if !(1..=MAX_SIZE_MIB_LIMIT).contains(&source.max_size_mib) {
                    return Err(ConfigError::new(
                        file,
                        "source.file.max_size_mib",
                        format!(
                            "is {}; it must be 1 to {MAX_SIZE_MIB_LIMIT} (MiB): parsing takes about 35 times the file's size in memory",
                            source.max_size_mib
                        ),
                    ));
                }
                SourceConfig::File(FileSourceConfig {
                    path: relative_to(file, source.path),
                    check_interval,
                    settle: parse_duration(&source.settle, file, "source.file.settle")?,
                    max_bytes: source.max_size_mib << 20,
                })
            }
        };
        let listen: SocketAddr = raw.admin.listen.parse().map_err(|_| {
            ConfigError::new(
                file,
                "admin.listen",
                format!(
                    "{:?} is not an address:port like \"127.0.0.1:9443\"",
                    raw.admin.listen
                ),
            )
        })?;
        let tls = raw.tls.map(|t| cluster::read_tls(t, file)).transpose()?;
        let cluster = raw
            .cluster
            .map(|c| cluster::validate_cluster(c, raw.node.id, file))
            .transpose()?;
        let announce = raw
            .announce
            .map(|a| announce::validate_announce(a, file))
            .transpose()?
            .unwrap_or_default();
        let health = raw
            .health
            .map(|h| {
                crate::health::settings::defaults(h, &|field: &str, message: String| {
                    ConfigError::new(file, field, message)
                })
            })
            .transpose()?
            .unwrap_or_default();
        if let SourceConfig::Kubernetes(k) = &mut source {
            k.translate.health = health;
        }
        // Without TLS anyone who reaches the admin port can change the
        // table and drain members, and anyone who reaches the peer port
        // can speak for a member (force an election, say): beyond
        // loopback only when the operator says so.
        if tls.is_none() && !raw.node.insecure {
            let consequence = |field: &str| {
                if field == "admin.listen" {
                    "anyone who reaches it can change the table and drain members"
                } else {
                    "anyone who reaches it can speak for a member and force elections"
                }
            };
            let exposed = std::iter::once(("admin.listen", listen))
                .chain(cluster.as_ref().map(|c| ("cluster.listen", c.listen)))
                .find(|(_, a)| !a.ip().is_loopback());
            if let Some((field, address)) = exposed {
                return Err(ConfigError::new(
                    file,
                    field,
                    format!(
                        "{address} is reachable beyond this machine without TLS: {}. Configure [tls], or set insecure = true under [node] to accept that (a lab)",
                        consequence(field)
                    ),
                ));
            }
        }
        let limits = listener_limits(&raw.node, file)?;
        Ok(Config {
            announce,
            health,
            cluster,
            tls,
            insecure: raw.node.insecure,
            limits,
            file: file.to_owned(),
            node_id: raw.node.id,
            dataplane: DataplaneConfig {
                kind,
                repair_interval,
                vip_interface_setting: raw.dataplane.vip_interface,
                masquerade: raw.dataplane.masquerade,
                drain_timeout,
                udp_drain_timeout,
                managed_networks,
                own_whole_table: raw.dataplane.own_whole_table,
                connection_sync,
                rate_estimation: RateEstimation::parse(&raw.dataplane.rate_estimation).ok_or_else(
                    || {
                        ConfigError::new(
                            file,
                            "dataplane.rate_estimation",
                            format!(
                                "{:?} is not \"kernel\", \"on\" or \"off\"",
                                raw.dataplane.rate_estimation
                            ),
                        )
                    },
                )?,
            },
            source,
            admin: AdminConfig {
                listen,
                metrics_listen: raw.admin.metrics_listen.parse().map_err(|_| {
                    ConfigError::new(
                        file,
                        "admin.metrics_listen",
                        format!(
                            "{:?} is not an address:port like \"127.0.0.1:9445\"",
                            raw.admin.metrics_listen
                        ),
                    )
                })?,
            },
        })
    }
}

#[cfg(test)]
mod tests;
