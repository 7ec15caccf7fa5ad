//! The member's configuration file: parsing, defaults and validation.
//!
//! Every field is checked here, before anything starts; an error names the
//! file and the field's path (`dataplane.repair_interval`), so a typo stops
//! the member at once with a message that says where to look.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// An error in a configuration or services file. Never retryable: the file
/// must be fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Path of the offending field, such as `service[1].backend[0].port`;
    /// empty when the file as a whole is the problem.
    pub field: String,
    /// The service's name, when the field belongs to one.
    pub service: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        if let Some(name) = &self.service {
            write!(f, " (service {name:?})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    pub fn new(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            field: field.into(),
            service: None,
            message: message.into(),
        }
    }
}

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
fn relative_to(file: &Path, path: PathBuf) -> PathBuf {
    match file.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
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
    /// How often the dataplane is dumped and compared with the state, which
    /// repairs changes made by hand.
    pub repair_interval: Duration,
    /// IPVS: the dummy interface that makes VIPs local ("" leaves that to
    /// the operator).
    pub vip_interface: String,
    /// IPVS: install the nftables masquerade table for NAT destinations.
    pub masquerade: bool,
    /// IPVS: how long a removed backend keeps its open connections.
    pub drain_timeout: Duration,
    /// IPVS: the services lb-node manages are those with a VIP in these
    /// networks; empty: those with a VIP on `vip_interface`.
    pub managed_networks: Vec<ipnet::IpNet>,
    /// IPVS: lb-node owns the whole kernel table and deletes what it did
    /// not program.
    pub own_whole_table: bool,
}

/// Where the desired service table comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// A services file, reloaded on SIGHUP and when it changes.
    File {
        path: PathBuf,
        check_interval: Duration,
    },
    /// The Kubernetes API server: Services and EndpointSlices, watched by
    /// the leader only.
    Kubernetes(KubernetesSourceConfig),
}

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Prometheus `/metrics`, `/healthz` and `/readyz` (plain HTTP).
    pub metrics_listen: SocketAddr,
}

/// The Raft cluster this member belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Carried in every peer message; a member refuses another cluster's.
    pub id: String,
    /// The Raft log and snapshots.
    pub data_dir: PathBuf,
    /// The peer (Raft) port.
    pub listen: SocketAddr,
    /// Raft's clock.
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub snapshot_after_entries: u64,
    /// The members a new cluster starts with: (id, peer address).
    pub initial_members: Vec<(u64, String)>,
    /// Their admin API addresses, where given: a follower sends clients
    /// there to reach the leader.
    pub initial_admin: BTreeMap<u64, String>,
}

/// Mutual TLS for the admin and peer ports: certificates in PEM, read at
/// start.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The cluster CA: peers and admin clients must present a certificate
    /// it signed.
    pub ca_pem: Vec<u8>,
    /// This member's certificate (server and client) and key.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig { .. }")
    }
}

/// A gRPC server builder, with mutual TLS when `tls` is given.
pub fn server_builder(
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let builder = tonic::transport::Server::builder();
    match tls {
        Some(tls) => builder.tls_config(tls),
        None => Ok(builder),
    }
}

/// The name every member certificate carries and every client checks.
pub const TLS_SERVER_NAME: &str = "lb-node";

impl TlsConfig {
    pub fn server(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    pub fn client(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(TLS_SERVER_NAME)
    }
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
    pub announce: crate::announce::AnnounceConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    dataplane: RawDataplane,
    source: RawSource,
    #[serde(default)]
    admin: RawAdmin,
    cluster: Option<RawCluster>,
    tls: Option<RawTls>,
    announce: Option<RawAnnounce>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    address: String,
    #[serde(rename = "as")]
    asn: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnnounce {
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
    #[serde(default = "default_vip_interface")]
    vip_interface: String,
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
        peers.push(crate::announce::bgp::PeerConfig {
            address,
            asn: p.asn,
        });
    }
    if a.hold_time != 0 && a.hold_time < 3 {
        return Err(ConfigError::new(
            file,
            "announce.hold_time",
            "0 or at least 3 seconds (RFC 4271)",
        ));
    }
    let mut communities = Vec::new();
    for (i, c) in a.communities.iter().enumerate() {
        communities.push(
            crate::announce::bgp::codec::parse_community(c).ok_or_else(|| {
                ConfigError::new(
                    file,
                    format!("announce.communities[{i}]"),
                    format!("{c:?} is not a community like \"65001:100\""),
                )
            })?,
        );
    }
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
    Ok(crate::announce::bgp::BgpConfig {
        local_as,
        router_id,
        peers,
        hold_time: a.hold_time,
        communities,
        local_pref: a.local_pref,
        next_hop_v4,
        next_hop_v6,
        ecmp: a.ecmp,
    })
}

fn default_vip_interface() -> String {
    "lo".into()
}
fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval() -> String {
    "100ms".into()
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

fn validate_announce(
    a: RawAnnounce,
    file: &Path,
) -> Result<crate::announce::AnnounceConfig, ConfigError> {
    use crate::announce::{AnnounceConfig, l2::L2Config};
    match a.mode.as_str() {
        "none" => Ok(AnnounceConfig::None),
        "l2" => {
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
            Ok(AnnounceConfig::L2(L2Config {
                interface,
                vip_interface: a.vip_interface,
                vip_ranges,
                garp_count: a.garp_count,
                garp_interval,
                linger,
                flow_handover: a.flow_handover,
                handover_probe_wait,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    id: String,
    data_dir: PathBuf,
    listen: String,
    #[serde(default = "default_tick")]
    tick: String,
    #[serde(default = "default_election_ticks")]
    election_ticks: usize,
    #[serde(default = "default_heartbeat_ticks")]
    heartbeat_ticks: usize,
    #[serde(default = "default_snapshot_after_entries")]
    snapshot_after_entries: u64,
    member: Vec<RawMember>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: u64,
    address: String,
    admin: Option<String>,
}

// A heartbeat every 50 ms and an election timeout of 500 ms, on a 10 ms
// clock: the finer clock spreads the randomized election timeouts over 25
// values instead of 5, so two survivors of a leader's crash rarely stand
// for election in the same tick and split the vote (which costs another
// election timeout).
fn default_tick() -> String {
    "10ms".into()
}
fn default_election_ticks() -> usize {
    50
}
fn default_heartbeat_ticks() -> usize {
    5
}
fn default_snapshot_after_entries() -> u64 {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDataplane {
    kind: String,
    repair_interval: String,
    vip_interface: String,
    masquerade: bool,
    drain_timeout: String,
    managed_networks: Vec<String>,
    own_whole_table: bool,
}

impl Default for RawDataplane {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            repair_interval: "30s".into(),
            vip_interface: "lbvip0".into(),
            masquerade: true,
            drain_timeout: "30s".into(),
            managed_networks: Vec::new(),
            own_whole_table: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    file: Option<RawFileSource>,
    kubernetes: Option<RawKubernetesSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetesSource {
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

fn validate_kubernetes(
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
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSource {
    path: PathBuf,
    #[serde(default = "default_check_interval")]
    check_interval: String,
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
        if raw.dataplane.vip_interface.len() > 15
            || raw.dataplane.vip_interface.contains(['/', ' '])
        {
            return Err(ConfigError::new(
                file,
                "dataplane.vip_interface",
                format!(
                    "{:?} is not a valid interface name (at most 15 characters, no '/' or space)",
                    raw.dataplane.vip_interface
                ),
            ));
        }
        let source = match (raw.source.file, raw.source.kubernetes) {
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
            (None, Some(k)) => SourceConfig::Kubernetes(validate_kubernetes(k, file)?),
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
                SourceConfig::File {
                    path: relative_to(file, source.path),
                    check_interval,
                }
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
        let tls = raw
            .tls
            .map(|t| {
                let read = |field: &str, path: PathBuf| {
                    let path = relative_to(file, path);
                    let bytes = std::fs::read(&path).map_err(|e| {
                        ConfigError::new(
                            file,
                            field,
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                        return Err(ConfigError::new(
                            file,
                            field,
                            format!("{} is not a PEM file", path.display()),
                        ));
                    }
                    Ok(bytes)
                };
                Ok::<_, ConfigError>(TlsConfig {
                    ca_pem: read("tls.ca", t.ca)?,
                    cert_pem: read("tls.cert", t.cert)?,
                    key_pem: read("tls.key", t.key)?,
                })
            })
            .transpose()?;
        let cluster = raw
            .cluster
            .map(|c| Self::validate_cluster(c, raw.node.id, file))
            .transpose()?;
        let announce = raw
            .announce
            .map(|a| validate_announce(a, file))
            .transpose()?
            .unwrap_or_default();
        Ok(Config {
            announce,
            cluster,
            tls,
            file: file.to_owned(),
            node_id: raw.node.id,
            dataplane: DataplaneConfig {
                kind,
                repair_interval,
                vip_interface: raw.dataplane.vip_interface,
                masquerade: raw.dataplane.masquerade,
                drain_timeout,
                managed_networks,
                own_whole_table: raw.dataplane.own_whole_table,
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

    fn validate_cluster(
        c: RawCluster,
        node_id: u64,
        file: &Path,
    ) -> Result<ClusterConfig, ConfigError> {
        if c.id.trim().is_empty() {
            return Err(ConfigError::new(file, "cluster.id", "must not be empty"));
        }
        let listen: SocketAddr = c.listen.parse().map_err(|_| {
            ConfigError::new(
                file,
                "cluster.listen",
                format!(
                    "{:?} is not an address:port like \"10.0.0.1:9444\"",
                    c.listen
                ),
            )
        })?;
        let tick = parse_duration(&c.tick, file, "cluster.tick")?;
        if !(Duration::from_millis(10)..=Duration::from_secs(1)).contains(&tick) {
            return Err(ConfigError::new(
                file,
                "cluster.tick",
                "must be between 10ms and 1s",
            ));
        }
        if c.heartbeat_ticks == 0 {
            return Err(ConfigError::new(
                file,
                "cluster.heartbeat_ticks",
                "must be 1 or more",
            ));
        }
        if c.election_ticks <= c.heartbeat_ticks {
            return Err(ConfigError::new(
                file,
                "cluster.election_ticks",
                format!(
                    "must be more than heartbeat_ticks ({}); 10 times is usual",
                    c.heartbeat_ticks
                ),
            ));
        }
        if c.snapshot_after_entries == 0 {
            return Err(ConfigError::new(
                file,
                "cluster.snapshot_after_entries",
                "must be 1 or more",
            ));
        }
        if c.member.is_empty() {
            return Err(ConfigError::new(
                file,
                "cluster.member",
                "a cluster needs its initial members",
            ));
        }
        let mut initial_members = Vec::with_capacity(c.member.len());
        let mut initial_admin = BTreeMap::new();
        for (i, m) in c.member.into_iter().enumerate() {
            let at = format!("cluster.member[{i}]");
            if m.id == 0 {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.id"),
                    "must be 1 or more",
                ));
            }
            if initial_members.iter().any(|(id, _)| *id == m.id) {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.id"),
                    format!("member {} is listed twice", m.id),
                ));
            }
            let port_ok = m.address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
            if !port_ok {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.address"),
                    format!("{:?} is not a host:port", m.address),
                ));
            }
            if let Some(admin) = m.admin {
                let admin_ok = admin.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
                });
                if !admin_ok {
                    return Err(ConfigError::new(
                        file,
                        format!("{at}.admin"),
                        format!("{admin:?} is not a host:port"),
                    ));
                }
                initial_admin.insert(m.id, admin);
            }
            initial_members.push((m.id, m.address));
        }
        if !initial_members.iter().any(|(id, _)| *id == node_id) {
            tracing::info!(
                node = node_id,
                "this member is not among the initial members: it waits to be added"
            );
        }
        Ok(ClusterConfig {
            id: c.id,
            data_dir: relative_to(file, c.data_dir),
            listen,
            tick,
            election_ticks: c.election_ticks,
            heartbeat_ticks: c.heartbeat_ticks,
            snapshot_after_entries: c.snapshot_after_entries,
            initial_members,
            initial_admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let file = Path::new("/etc/lb-node/member.toml");
        Config::validate(parse_toml(text, file)?, file)
    }

    const NODE: &str = "[node]\nid = 1\n";

    #[test]
    fn the_kubernetes_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/kubernetes.toml");
        let config = Config::load(&path).expect("the example is valid");
        let SourceConfig::Kubernetes(k) = config.source else {
            panic!("a kubernetes source");
        };
        assert_eq!(
            k.kubeconfig.as_deref(),
            Some(Path::new("/etc/lb-node/kubeconfig"))
        );
        assert_eq!(k.address_pools.len(), 2);
        assert_eq!(k.batch_window, Duration::from_millis(5));
        assert!(k.translate.handle_classless);
    }

    #[test]
    fn kubernetes_defaults_and_relative_kubeconfig() {
        let config = load(&format!(
            "{NODE}[source.kubernetes]\nkubeconfig = \"kube.yaml\"\n"
        ))
        .expect("valid");
        let SourceConfig::Kubernetes(k) = config.source else {
            panic!("a kubernetes source");
        };
        assert_eq!(
            k.kubeconfig.as_deref(),
            Some(Path::new("/etc/lb-node/kube.yaml"))
        );
        assert_eq!(k.namespace, None);
        assert!(k.address_pools.is_empty());
        assert_eq!(
            k.translate,
            crate::source::kubernetes::translate::TranslateConfig::default()
        );
    }

    #[test]
    fn bad_kubernetes_settings_name_their_field() {
        let cases = [
            (
                "address_pools = [\"192.0.2.1/24\"]",
                "source.kubernetes.address_pools[0]",
                "host bits",
            ),
            (
                "address_pools = [\"nope\"]",
                "source.kubernetes.address_pools[0]",
                "not a network",
            ),
            (
                "default_scheduler = \"fastest\"",
                "source.kubernetes.default_scheduler",
                "fastest",
            ),
            (
                "default_forwarding = \"nat\"",
                "source.kubernetes.default_forwarding",
                "nat",
            ),
            (
                "batch_window = \"5s\"",
                "source.kubernetes.batch_window",
                "at most 1s",
            ),
            (
                "batch_window = \"soon\"",
                "source.kubernetes.batch_window",
                "soon",
            ),
            (
                "load_balancer_class = \"\"",
                "source.kubernetes.load_balancer_class",
                "empty",
            ),
            (
                "watch_everything = true",
                "source.kubernetes",
                "unknown field",
            ),
        ];
        for (line, field, words) in cases {
            let e = load(&format!("{NODE}[source.kubernetes]\n{line}\n")).expect_err(line);
            let text = e.to_string();
            assert!(
                text.contains(field) && text.contains(words),
                "{line}: {text}"
            );
        }
    }

    #[test]
    fn exactly_one_source() {
        let both = load(&format!(
            "{NODE}[source.file]\npath = \"s.toml\"\n[source.kubernetes]\n"
        ))
        .expect_err("two sources");
        assert!(both.to_string().contains("configure one"), "{both}");
        let none = load(&format!("{NODE}[source]\n")).expect_err("no source");
        assert!(none.to_string().contains("[source.kubernetes]"), "{none}");
    }
}
