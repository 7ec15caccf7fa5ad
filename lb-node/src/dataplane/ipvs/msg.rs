//! The IPVS generic netlink family's messages (`include/uapi/linux/ip_vs.h`),
//! on the rust-netlink crates: `netlink-packet-core` attributes inside a
//! `netlink-packet-generic` message. Pure: bytes in, values out.
//!
//! The kernel's rules this follows (net/netfilter/ipvs/ip_vs_ctl.c):
//! - a service is named either by family, protocol, address and port, or by
//!   family and firewall mark;
//! - adding a service needs the scheduler name, flags, timeout and netmask
//!   all present; adding a destination needs the address, port, forwarding
//!   method, weight and both thresholds;
//! - addresses travel as 16 bytes (`union nf_inet_addr`) whatever the family,
//!   ports in network byte order;
//! - the answer to `GET_INFO` carries its attributes at the top level with
//!   numbers of their own, so top-level parsing depends on the command.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_u16, emit_u32, emit_u64, parse_string, parse_u8, parse_u16,
    parse_u16_be, parse_u32, parse_u64,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

pub const FAMILY_NAME: &str = "IPVS";
pub const FAMILY_VERSION: u8 = 1;

/// `enum { IPVS_CMD_* }`.
pub mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const NEW_DAEMON: u8 = 9;
    pub const DEL_DAEMON: u8 = 10;
    pub const GET_DAEMON: u8 = 11;
    pub const SET_INFO: u8 = 14;
    pub const GET_INFO: u8 = 15;
    pub const FLUSH: u8 = 17;
}

pub(super) const CMD_ATTR_SERVICE: u16 = 1;
pub(super) const CMD_ATTR_DEST: u16 = 2;
pub(super) const CMD_ATTR_DAEMON: u16 = 3;
pub(super) const INFO_ATTR_VERSION: u16 = 1;
pub(super) const INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

pub(super) const SVC_AF: u16 = 1;
pub(super) const SVC_PROTOCOL: u16 = 2;
pub(super) const SVC_ADDR: u16 = 3;
pub(super) const SVC_PORT: u16 = 4;
pub(super) const SVC_FWMARK: u16 = 5;
pub(super) const SVC_SCHED_NAME: u16 = 6;
pub(super) const SVC_FLAGS: u16 = 7;
pub(super) const SVC_TIMEOUT: u16 = 8;
pub(super) const SVC_NETMASK: u16 = 9;
pub(super) const SVC_STATS: u16 = 10;
pub(super) const SVC_PE_NAME: u16 = 11;
pub(super) const SVC_STATS64: u16 = 12;

pub(super) const DEST_ADDR: u16 = 1;
pub(super) const DEST_PORT: u16 = 2;
pub(super) const DEST_FWD_METHOD: u16 = 3;
pub(super) const DEST_WEIGHT: u16 = 4;
pub(super) const DEST_U_THRESH: u16 = 5;
pub(super) const DEST_L_THRESH: u16 = 6;
pub(super) const DEST_ACTIVE_CONNS: u16 = 7;
pub(super) const DEST_INACT_CONNS: u16 = 8;
pub(super) const DEST_PERSIST_CONNS: u16 = 9;
pub(super) const DEST_STATS: u16 = 10;
pub(super) const DEST_ADDR_FAMILY: u16 = 11;
pub(super) const DEST_STATS64: u16 = 12;
pub(super) const DEST_TUN_TYPE: u16 = 13;
pub(super) const DEST_TUN_PORT: u16 = 14;
pub(super) const DEST_TUN_FLAGS: u16 = 15;

const DAEMON_STATE: u16 = 1;
const DAEMON_MCAST_IFN: u16 = 2;
const DAEMON_SYNC_ID: u16 = 3;
const DAEMON_SYNC_MAXLEN: u16 = 4;
const DAEMON_MCAST_GROUP: u16 = 5;
const DAEMON_MCAST_PORT: u16 = 7;
const DAEMON_MCAST_TTL: u16 = 8;

/// `IP_VS_STATE_*`: the connection-sync daemon's role.
pub mod daemon_state {
    pub const MASTER: u32 = 1;
    pub const BACKUP: u32 = 2;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `IP_VS_SVC_F_*`.
pub mod flags {
    pub const PERSISTENT: u32 = 0x0001;
    pub const HASHED: u32 = 0x0002;
    pub const ONEPACKET: u32 = 0x0004;
    /// sh-fallback / mh-fallback.
    pub const SCHED1: u32 = 0x0008;
    /// sh-port / mh-port.
    pub const SCHED2: u32 = 0x0010;
    pub const SCHED3: u32 = 0x0020;
}

/// `IP_VS_CONN_F_*` forwarding methods.
pub mod fwd {
    pub const MASQ: u32 = 0;
    pub const LOCALNODE: u32 = 1;
    pub const TUNNEL: u32 = 2;
    pub const DROUTE: u32 = 3;
    pub const BYPASS: u32 = 4;
    pub const MASK: u32 = 0x0007;
}

/// `IP_VS_CONN_F_TUNNEL_TYPE_*`.
pub mod tun {
    pub const IPIP: u8 = 0;
    pub const GUE: u8 = 1;
    pub const GRE: u8 = 2;
}

/// How a virtual service is named to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelKey {
    /// Address, port and IP protocol number (6, 17, 132).
    Addr {
        vip: IpAddr,
        port: u16,
        protocol: u16,
    },
    /// A firewall mark, for one address family.
    Fwmark { ipv6: bool, mark: u32 },
}

impl KernelKey {
    fn af(&self) -> u16 {
        let v6 = match self {
            KernelKey::Addr { vip, .. } => vip.is_ipv6(),
            KernelKey::Fwmark { ipv6, .. } => *ipv6,
        };
        if v6 { AF_INET6 } else { AF_INET }
    }

    /// The attributes that name the service (all a delete or a destination
    /// request needs).
    pub fn attrs(&self) -> Vec<SvcAttr> {
        let mut attrs = vec![SvcAttr::Af(self.af())];
        match *self {
            KernelKey::Addr {
                vip,
                port,
                protocol,
            } => {
                attrs.push(SvcAttr::Protocol(protocol));
                attrs.push(SvcAttr::Addr(addr16(vip)));
                attrs.push(SvcAttr::Port(port));
            }
            KernelKey::Fwmark { mark, .. } => attrs.push(SvcAttr::Fwmark(mark)),
        }
        attrs
    }
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelKey::Addr {
                vip,
                port,
                protocol,
            } => {
                let p = match protocol {
                    6 => "tcp".to_string(),
                    17 => "udp".to_string(),
                    132 => "sctp".to_string(),
                    n => format!("proto{n}"),
                };
                write!(f, "{p}/{}", crate::model::SocketText(*vip, *port))
            }
            KernelKey::Fwmark { ipv6, mark } => {
                write!(f, "fwmark {mark}{}", if *ipv6 { " (IPv6)" } else { "" })
            }
        }
    }
}

/// Counters of a service or destination (`struct ip_vs_kstats`), read from
/// the 64-bit attribute set when the kernel sends it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
    pub cps: u64,
    pub inpps: u64,
    pub outpps: u64,
    pub inbps: u64,
    pub outbps: u64,
}

/// A virtual service as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelService {
    pub key: KernelKey,
    pub scheduler: String,
    /// `IP_VS_SVC_F_*`; the kernel adds HASHED on dumps.
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with PERSISTENT).
    pub timeout: u32,
    /// Persistence netmask: an IPv4 mask, or an IPv6 prefix length.
    pub netmask: u32,
    pub pe_name: Option<String>,
    pub stats: Option<Stats>,
}

impl KernelService {
    pub fn attrs(&self) -> Vec<SvcAttr> {
        let mut attrs = self.key.attrs();
        attrs.push(SvcAttr::SchedName(self.scheduler.clone()));
        attrs.push(SvcAttr::Flags {
            flags: self.flags & !flags::HASHED,
            mask: !flags::HASHED,
        });
        attrs.push(SvcAttr::Timeout(self.timeout));
        attrs.push(SvcAttr::Netmask(self.netmask));
        if let Some(pe) = &self.pe_name {
            attrs.push(SvcAttr::PeName(pe.clone()));
        }
        attrs
    }

    fn from_attrs(attrs: Vec<SvcAttr>) -> Result<Self, DecodeError> {
        let (mut af, mut protocol, mut addr, mut port, mut mark) = (None, None, None, None, None);
        let mut s = KernelService {
            key: KernelKey::Fwmark {
                ipv6: false,
                mark: 0,
            },
            scheduler: String::new(),
            flags: 0,
            timeout: 0,
            netmask: 0,
            pe_name: None,
            stats: None,
        };
        for a in attrs {
            match a {
                SvcAttr::Af(v) => af = Some(v),
                SvcAttr::Protocol(v) => protocol = Some(v),
                SvcAttr::Addr(v) => addr = Some(v),
                SvcAttr::Port(v) => port = Some(v),
                SvcAttr::Fwmark(v) => mark = Some(v),
                SvcAttr::SchedName(v) => s.scheduler = v,
                SvcAttr::Flags { flags, .. } => s.flags = flags,
                SvcAttr::Timeout(v) => s.timeout = v,
                SvcAttr::Netmask(v) => s.netmask = v,
                SvcAttr::PeName(v) => s.pe_name = Some(v),
                SvcAttr::Stats(v) => {
                    if s.stats.is_none() {
                        s.stats = Some(v)
                    }
                }
                SvcAttr::Stats64(v) => s.stats = Some(v),
                SvcAttr::Other(_) => {}
            }
        }
        let af = af.ok_or("service without an address family")?;
        let ipv6 = match af {
            AF_INET => false,
            AF_INET6 => true,
            other => return Err(format!("service with address family {other}").into()),
        };
        s.key = match (mark, protocol, addr, port) {
            (Some(mark), _, _, _) if mark != 0 => KernelKey::Fwmark { ipv6, mark },
            (_, Some(protocol), Some(addr), Some(port)) => KernelKey::Addr {
                vip: ip_of(ipv6, &addr),
                port,
                protocol,
            },
            _ => return Err("service with neither a firewall mark nor an address".into()),
        };
        Ok(s)
    }
}

/// A destination (real server) as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDest {
    pub address: IpAddr,
    pub port: u16,
    /// `fwd::*`.
    pub forwarding: u32,
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persistent_conns: u32,
    pub stats: Option<Stats>,
    pub tun_type: Option<u8>,
    pub tun_port: Option<u16>,
    pub tun_flags: Option<u16>,
}

impl KernelDest {
    pub fn new(address: IpAddr, port: u16, forwarding: u32, weight: u32) -> Self {
        KernelDest {
            address,
            port,
            forwarding,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
            persistent_conns: 0,
            stats: None,
            tun_type: None,
            tun_port: None,
            tun_flags: None,
        }
    }

    /// The attributes that name the destination.
    pub fn key_attrs(address: IpAddr, port: u16) -> Vec<DestAttr> {
        vec![
            DestAttr::AddrFamily(if address.is_ipv6() { AF_INET6 } else { AF_INET }),
            DestAttr::Addr(addr16(address)),
            DestAttr::Port(port),
        ]
    }

    pub fn attrs(&self) -> Vec<DestAttr> {
        let mut attrs = Self::key_attrs(self.address, self.port);
        attrs.push(DestAttr::FwdMethod(self.forwarding));
        attrs.push(DestAttr::Weight(self.weight));
        attrs.push(DestAttr::UpperThreshold(self.upper_threshold));
        attrs.push(DestAttr::LowerThreshold(self.lower_threshold));
        if let Some(t) = self.tun_type {
            attrs.push(DestAttr::TunType(t));
        }
        if let Some(p) = self.tun_port {
            attrs.push(DestAttr::TunPort(p));
        }
        if let Some(f) = self.tun_flags {
            attrs.push(DestAttr::TunFlags(f));
        }
        attrs
    }

    fn from_attrs(attrs: Vec<DestAttr>, service_v6: bool) -> Result<Self, DecodeError> {
        let mut d = KernelDest::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, 0, 0);
        let (mut af, mut addr, mut port) = (None, None, None);
        for a in attrs {
            match a {
                DestAttr::Addr(v) => addr = Some(v),
                DestAttr::Port(v) => port = Some(v),
                DestAttr::AddrFamily(v) => af = Some(v),
                DestAttr::FwdMethod(v) => d.forwarding = v & fwd::MASK,
                DestAttr::Weight(v) => d.weight = v,
                DestAttr::UpperThreshold(v) => d.upper_threshold = v,
                DestAttr::LowerThreshold(v) => d.lower_threshold = v,
                DestAttr::ActiveConns(v) => d.active_conns = v,
                DestAttr::InactiveConns(v) => d.inactive_conns = v,
                DestAttr::PersistentConns(v) => d.persistent_conns = v,
                DestAttr::Stats(v) => {
                    if d.stats.is_none() {
                        d.stats = Some(v)
                    }
                }
                DestAttr::Stats64(v) => d.stats = Some(v),
                DestAttr::TunType(v) => d.tun_type = Some(v),
                DestAttr::TunPort(v) => d.tun_port = Some(v),
                DestAttr::TunFlags(v) => d.tun_flags = Some(v),
                DestAttr::Other(_) => {}
            }
        }
        // Kernels before 3.18 send no destination family: the service's.
        let v6 = match af {
            None => service_v6,
            Some(AF_INET) => false,
            Some(AF_INET6) => true,
            Some(other) => return Err(format!("destination with address family {other}").into()),
        };
        d.address = ip_of(v6, &addr.ok_or("destination without an address")?);
        d.port = port.ok_or("destination without a port")?;
        Ok(d)
    }
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn ip_of(v6: bool, addr: &[u8; 16]) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

fn parse_addr(payload: &[u8]) -> Result<[u8; 16], DecodeError> {
    if payload.len() > 16 || payload.len() < 4 {
        return Err(format!("address of {} bytes", payload.len()).into());
    }
    let mut out = [0u8; 16];
    out[..payload.len()].copy_from_slice(payload);
    Ok(out)
}

/// One connection-sync daemon (`IPVS_DAEMON_ATTR_*`): a master sends the
/// connections this member's IPVS creates and changes, a backup creates
/// those it hears; both can run at once. The group and port travel as the
/// kernel reads them: the group in network order, the port in host order
/// (the kernel converts it when it binds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDaemon {
    pub state: u32,
    pub interface: String,
    pub sync_id: u32,
    pub max_len: Option<u16>,
    pub group: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub ttl: Option<u8>,
}

impl SyncDaemon {
    pub fn attrs(&self) -> Vec<DaemonAttr> {
        let mut a = vec![
            DaemonAttr::State(self.state),
            DaemonAttr::Interface(self.interface.clone()),
            DaemonAttr::SyncId(self.sync_id),
        ];
        a.extend(self.max_len.map(DaemonAttr::MaxLen));
        a.extend(self.group.map(DaemonAttr::Group));
        a.extend(self.port.map(DaemonAttr::Port));
        a.extend(self.ttl.map(DaemonAttr::Ttl));
        a
    }

    fn from_attrs(attrs: &[DaemonAttr]) -> Result<Self, DecodeError> {
        let mut d = SyncDaemon {
            state: 0,
            interface: String::new(),
            sync_id: 0,
            max_len: None,
            group: None,
            port: None,
            ttl: None,
        };
        let (mut state, mut interface) = (None, None);
        for a in attrs {
            match a {
                DaemonAttr::State(v) => state = Some(*v),
                DaemonAttr::Interface(v) => interface = Some(v.clone()),
                DaemonAttr::SyncId(v) => d.sync_id = *v,
                DaemonAttr::MaxLen(v) => d.max_len = Some(*v),
                DaemonAttr::Group(v) => d.group = Some(*v),
                DaemonAttr::Port(v) => d.port = Some(*v),
                DaemonAttr::Ttl(v) => d.ttl = Some(*v),
                DaemonAttr::Other(_) => {}
            }
        }
        d.state = state.ok_or("sync daemon without a state")?;
        d.interface = interface.ok_or("sync daemon without an interface")?;
        Ok(d)
    }
}

/// `IPVS_DAEMON_ATTR_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonAttr {
    State(u32),
    Interface(String),
    SyncId(u32),
    MaxLen(u16),
    Group(Ipv4Addr),
    Port(u16),
    Ttl(u8),
    Other(DefaultNla),
}

impl Nla for DaemonAttr {
    fn value_len(&self) -> usize {
        match self {
            DaemonAttr::State(_) | DaemonAttr::SyncId(_) | DaemonAttr::Group(_) => 4,
            DaemonAttr::Interface(s) => s.len() + 1,
            DaemonAttr::MaxLen(_) | DaemonAttr::Port(_) => 2,
            DaemonAttr::Ttl(_) => 1,
            DaemonAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DaemonAttr::State(_) => DAEMON_STATE,
            DaemonAttr::Interface(_) => DAEMON_MCAST_IFN,
            DaemonAttr::SyncId(_) => DAEMON_SYNC_ID,
            DaemonAttr::MaxLen(_) => DAEMON_SYNC_MAXLEN,
            DaemonAttr::Group(_) => DAEMON_MCAST_GROUP,
            DaemonAttr::Port(_) => DAEMON_MCAST_PORT,
            DaemonAttr::Ttl(_) => DAEMON_MCAST_TTL,
            DaemonAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            DaemonAttr::State(v) | DaemonAttr::SyncId(v) => emit_u32(buf, *v).unwrap_or(()),
            DaemonAttr::Interface(s) => emit_cstr(buf, s),
            DaemonAttr::MaxLen(v) | DaemonAttr::Port(v) => emit_u16(buf, *v).unwrap_or(()),
            DaemonAttr::Group(a) => buf[..4].copy_from_slice(&a.octets()),
            DaemonAttr::Ttl(v) => buf[0] = *v,
            DaemonAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DaemonAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            DAEMON_STATE => DaemonAttr::State(parse_u32(v)?),
            DAEMON_MCAST_IFN => DaemonAttr::Interface(parse_string(v)?),
            DAEMON_SYNC_ID => DaemonAttr::SyncId(parse_u32(v)?),
            DAEMON_SYNC_MAXLEN => DaemonAttr::MaxLen(parse_u16(v)?),
            DAEMON_MCAST_GROUP => {
                let o: [u8; 4] = v
                    .try_into()
                    .map_err(|_| format!("sync group of {} bytes", v.len()))?;
                DaemonAttr::Group(Ipv4Addr::from(o))
            }
            DAEMON_MCAST_PORT => DaemonAttr::Port(parse_u16(v)?),
            DAEMON_MCAST_TTL => DaemonAttr::Ttl(parse_u8(v)?),
            _ => DaemonAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `IPVS_SVC_ATTR_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvcAttr {
    Af(u16),
    Protocol(u16),
    Addr([u8; 16]),
    Port(u16),
    Fwmark(u32),
    SchedName(String),
    Flags { flags: u32, mask: u32 },
    Timeout(u32),
    Netmask(u32),
    Stats(Stats),
    PeName(String),
    Stats64(Stats),
    Other(DefaultNla),
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) => 16,
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => s.len() + 1,
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Stats(s) => stats_attrs(s, false).as_slice().buffer_len(),
            SvcAttr::Stats64(s) => stats_attrs(s, true).as_slice().buffer_len(),
            SvcAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => SVC_AF,
            SvcAttr::Protocol(_) => SVC_PROTOCOL,
            SvcAttr::Addr(_) => SVC_ADDR,
            SvcAttr::Port(_) => SVC_PORT,
            SvcAttr::Fwmark(_) => SVC_FWMARK,
            SvcAttr::SchedName(_) => SVC_SCHED_NAME,
            SvcAttr::Flags { .. } => SVC_FLAGS,
            SvcAttr::Timeout(_) => SVC_TIMEOUT,
            SvcAttr::Netmask(_) => SVC_NETMASK,
            SvcAttr::Stats(_) => SVC_STATS,
            SvcAttr::PeName(_) => SVC_PE_NAME,
            SvcAttr::Stats64(_) => SVC_STATS64,
            SvcAttr::Other(nla) => nla.kind(),
        }
    }

    fn is_nested(&self) -> bool {
        matches!(self, SvcAttr::Stats(_) | SvcAttr::Stats64(_))
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => emit_u16(buf, *v).unwrap_or(()),
            SvcAttr::Port(v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            SvcAttr::Addr(a) => buf[..16].copy_from_slice(a),
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) | SvcAttr::Netmask(v) => {
                emit_u32(buf, *v).unwrap_or(())
            }
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => emit_cstr(buf, s),
            SvcAttr::Flags { flags, mask } => {
                emit_u32(&mut buf[..4], *flags).unwrap_or(());
                emit_u32(&mut buf[4..8], *mask).unwrap_or(());
            }
            SvcAttr::Stats(s) => stats_attrs(s, false).as_slice().emit(buf),
            SvcAttr::Stats64(s) => stats_attrs(s, true).as_slice().emit(buf),
            SvcAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for SvcAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            SVC_AF => SvcAttr::Af(parse_u16(v)?),
            SVC_PROTOCOL => SvcAttr::Protocol(parse_u16(v)?),
            SVC_ADDR => SvcAttr::Addr(parse_addr(v)?),
            SVC_PORT => SvcAttr::Port(parse_u16_be(v)?),
            SVC_FWMARK => SvcAttr::Fwmark(parse_u32(v)?),
            SVC_SCHED_NAME => SvcAttr::SchedName(parse_string(v)?),
            SVC_FLAGS => {
                if v.len() != 8 {
                    return Err(format!("service flags of {} bytes", v.len()).into());
                }
                SvcAttr::Flags {
                    flags: parse_u32(&v[..4])?,
                    mask: parse_u32(&v[4..])?,
                }
            }
            SVC_TIMEOUT => SvcAttr::Timeout(parse_u32(v)?),
            SVC_NETMASK => SvcAttr::Netmask(parse_u32(v)?),
            SVC_STATS => SvcAttr::Stats(parse_stats(v)?),
            SVC_PE_NAME => SvcAttr::PeName(parse_string(v)?),
            SVC_STATS64 => SvcAttr::Stats64(parse_stats(v)?),
            _ => SvcAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `IPVS_DEST_ATTR_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAttr {
    Addr([u8; 16]),
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UpperThreshold(u32),
    LowerThreshold(u32),
    ActiveConns(u32),
    InactiveConns(u32),
    PersistentConns(u32),
    Stats(Stats),
    AddrFamily(u16),
    Stats64(Stats),
    TunType(u8),
    TunPort(u16),
    TunFlags(u16),
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_) | DestAttr::AddrFamily(_) | DestAttr::TunPort(_) => 2,
            DestAttr::TunFlags(_) => 2,
            DestAttr::TunType(_) => 1,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UpperThreshold(_)
            | DestAttr::LowerThreshold(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactiveConns(_)
            | DestAttr::PersistentConns(_) => 4,
            DestAttr::Stats(s) => stats_attrs(s, false).as_slice().buffer_len(),
            DestAttr::Stats64(s) => stats_attrs(s, true).as_slice().buffer_len(),
            DestAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => DEST_ADDR,
            DestAttr::Port(_) => DEST_PORT,
            DestAttr::FwdMethod(_) => DEST_FWD_METHOD,
            DestAttr::Weight(_) => DEST_WEIGHT,
            DestAttr::UpperThreshold(_) => DEST_U_THRESH,
            DestAttr::LowerThreshold(_) => DEST_L_THRESH,
            DestAttr::ActiveConns(_) => DEST_ACTIVE_CONNS,
            DestAttr::InactiveConns(_) => DEST_INACT_CONNS,
            DestAttr::PersistentConns(_) => DEST_PERSIST_CONNS,
            DestAttr::Stats(_) => DEST_STATS,
            DestAttr::AddrFamily(_) => DEST_ADDR_FAMILY,
            DestAttr::Stats64(_) => DEST_STATS64,
            DestAttr::TunType(_) => DEST_TUN_TYPE,
            DestAttr::TunPort(_) => DEST_TUN_PORT,
            DestAttr::TunFlags(_) => DEST_TUN_FLAGS,
            DestAttr::Other(nla) => nla.kind(),
        }
    }

    fn is_nested(&self) -> bool {
        matches!(self, DestAttr::Stats(_) | DestAttr::Stats64(_))
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => buf[..16].copy_from_slice(a),
            DestAttr::Port(v) | DestAttr::TunPort(v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            DestAttr::AddrFamily(v) | DestAttr::TunFlags(v) => emit_u16(buf, *v).unwrap_or(()),
            DestAttr::TunType(v) => buf[0] = *v,
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UpperThreshold(v)
            | DestAttr::LowerThreshold(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactiveConns(v)
            | DestAttr::PersistentConns(v) => emit_u32(buf, *v).unwrap_or(()),
            DestAttr::Stats(s) => stats_attrs(s, false).as_slice().emit(buf),
            DestAttr::Stats64(s) => stats_attrs(s, true).as_slice().emit(buf),
            DestAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            DEST_ADDR => DestAttr::Addr(parse_addr(v)?),
            DEST_PORT => DestAttr::Port(parse_u16_be(v)?),
            DEST_FWD_METHOD => DestAttr::FwdMethod(parse_u32(v)?),
            DEST_WEIGHT => DestAttr::Weight(parse_u32(v)?),
            DEST_U_THRESH => DestAttr::UpperThreshold(parse_u32(v)?),
            DEST_L_THRESH => DestAttr::LowerThreshold(parse_u32(v)?),
            DEST_ACTIVE_CONNS => DestAttr::ActiveConns(parse_u32(v)?),
            DEST_INACT_CONNS => DestAttr::InactiveConns(parse_u32(v)?),
            DEST_PERSIST_CONNS => DestAttr::PersistentConns(parse_u32(v)?),
            DEST_STATS => DestAttr::Stats(parse_stats(v)?),
            DEST_ADDR_FAMILY => DestAttr::AddrFamily(parse_u16(v)?),
            DEST_STATS64 => DestAttr::Stats64(parse_stats(v)?),
            DEST_TUN_TYPE => DestAttr::TunType(parse_u8(v)?),
            DEST_TUN_PORT => DestAttr::TunPort(parse_u16_be(v)?),
            DEST_TUN_FLAGS => DestAttr::TunFlags(parse_u16(v)?),
            _ => DestAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// One `IPVS_STATS_ATTR_*` counter: kinds 1..=10 in struct order. In the
/// 32-bit set, CONNS/INPKTS/OUTPKTS and the rates are u32 and the byte
/// counters u64; in the 64-bit set everything is u64.
#[derive(Debug, Clone, Copy)]
struct StatAttr {
    kind: u16,
    value: u64,
    wide: bool,
}

impl Nla for StatAttr {
    fn value_len(&self) -> usize {
        if self.wide { 8 } else { 4 }
    }
    fn kind(&self) -> u16 {
        self.kind
    }
    fn emit_value(&self, buf: &mut [u8]) {
        if self.wide {
            emit_u64(buf, self.value).unwrap_or(())
        } else {
            emit_u32(buf, u32::try_from(self.value).unwrap_or(u32::MAX)).unwrap_or(())
        }
    }
}

fn stats_attrs(s: &Stats, all_wide: bool) -> Vec<StatAttr> {
    let values = [
        s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes, s.cps, s.inpps, s.outpps, s.inbps,
        s.outbps,
    ];
    values
        .iter()
        .enumerate()
        .map(|(i, &value)| StatAttr {
            kind: i as u16 + 1,
            value,
            wide: all_wide || i == 3 || i == 4,
        })
        .collect()
}

fn parse_stats(buf: &[u8]) -> Result<Stats, DecodeError> {
    let mut s = Stats::default();
    for nla in NlasIterator::new(buf) {
        let nla = nla?;
        let v = nla.value();
        let value = match v.len() {
            8 => parse_u64(v)?,
            4 => u64::from(parse_u32(v)?),
            0 => continue, // IPVS_STATS_ATTR_PAD
            n => return Err(format!("counter of {n} bytes").into()),
        };
        match nla.kind() {
            1 => s.conns = value,
            2 => s.inpkts = value,
            3 => s.outpkts = value,
            4 => s.inbytes = value,
            5 => s.outbytes = value,
            6 => s.cps = value,
            7 => s.inpps = value,
            8 => s.outpps = value,
            9 => s.inbps = value,
            10 => s.outbps = value,
            _ => {}
        }
    }
    Ok(s)
}

fn emit_cstr(buf: &mut [u8], s: &str) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

/// A top-level attribute of an IPVS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    Daemon(Vec<DaemonAttr>),
    /// GET_INFO's answer: IPVS_INFO_ATTR_VERSION.
    InfoVersion(u32),
    /// GET_INFO's answer: IPVS_INFO_ATTR_CONN_TAB_SIZE.
    InfoConnTabSize(u32),
    Other(DefaultNla),
}

impl Nla for TopAttr {
    fn value_len(&self) -> usize {
        match self {
            TopAttr::Service(a) => a.as_slice().buffer_len(),
            TopAttr::Dest(a) => a.as_slice().buffer_len(),
            TopAttr::Daemon(a) => a.as_slice().buffer_len(),
            TopAttr::InfoVersion(_) | TopAttr::InfoConnTabSize(_) => 4,
            TopAttr::Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            TopAttr::Service(_) => CMD_ATTR_SERVICE,
            TopAttr::Dest(_) => CMD_ATTR_DEST,
            TopAttr::Daemon(_) => CMD_ATTR_DAEMON,
            TopAttr::InfoVersion(_) => INFO_ATTR_VERSION,
            TopAttr::InfoConnTabSize(_) => INFO_ATTR_CONN_TAB_SIZE,
            TopAttr::Other(nla) => nla.kind(),
        }
    }
    fn is_nested(&self) -> bool {
        matches!(
            self,
            TopAttr::Service(_) | TopAttr::Dest(_) | TopAttr::Daemon(_)
        )
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            TopAttr::Service(a) => a.as_slice().emit(buf),
            TopAttr::Dest(a) => a.as_slice().emit(buf),
            TopAttr::Daemon(a) => a.as_slice().emit(buf),
            TopAttr::InfoVersion(v) | TopAttr::InfoConnTabSize(v) => {
                emit_u32(buf, *v).unwrap_or(())
            }
            TopAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

fn parse_nested<A>(buf: &[u8]) -> Result<Vec<A>, DecodeError>
where
    A: for<'b> Parseable<NlaBuffer<&'b [u8]>>,
{
    NlasIterator::new(buf)
        .map(|nla| nla.and_then(|nla| A::parse(&nla)))
        .collect()
}

/// One IPVS message: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: u8,
    pub attrs: Vec<TopAttr>,
}

impl IpvsMessage {
    pub fn new(cmd: u8, attrs: Vec<TopAttr>) -> Self {
        IpvsMessage { cmd, attrs }
    }

    /// The service this message carries, if any.
    pub fn service(&self) -> Result<Option<KernelService>, DecodeError> {
        for a in &self.attrs {
            if let TopAttr::Service(attrs) = a {
                return KernelService::from_attrs(attrs.clone()).map(Some);
            }
        }
        Ok(None)
    }

    /// The sync daemon this message carries, if any.
    pub fn daemon(&self) -> Result<Option<SyncDaemon>, DecodeError> {
        for a in &self.attrs {
            if let TopAttr::Daemon(attrs) = a {
                return SyncDaemon::from_attrs(attrs).map(Some);
            }
        }
        Ok(None)
    }

    /// The destination this message carries, if any, read with the family
    /// of its service for kernels that do not send the destination's.
    pub fn dest(&self, service_v6: bool) -> Result<Option<KernelDest>, DecodeError> {
        for a in &self.attrs {
            if let TopAttr::Dest(attrs) = a {
                return KernelDest::from_attrs(attrs.clone(), service_v6).map(Some);
            }
        }
        Ok(None)
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            let v = nla.value();
            let info = header.cmd == cmd::SET_INFO;
            attrs.push(match nla.kind() {
                INFO_ATTR_VERSION if info => TopAttr::InfoVersion(parse_u32(v)?),
                INFO_ATTR_CONN_TAB_SIZE if info => TopAttr::InfoConnTabSize(parse_u32(v)?),
                CMD_ATTR_SERVICE => TopAttr::Service(parse_nested(v)?),
                CMD_ATTR_DEST => TopAttr::Dest(parse_nested(v)?),
                CMD_ATTR_DAEMON => TopAttr::Daemon(parse_nested(v)?),
                _ => TopAttr::Other(DefaultNla::parse(&nla)?),
            });
        }
        Ok(IpvsMessage {
            cmd: header.cmd,
            attrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use netlink_packet_generic::GenlMessage;

    fn roundtrip(msg: IpvsMessage) -> IpvsMessage {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(42);
        let mut nl = NetlinkMessage::from(genl);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        let back =
            NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&buf).expect("test value");
        assert_eq!(back.header.message_type, 42);
        match back.payload {
            NetlinkPayload::InnerMessage(m) => m.payload,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sync_daemon_request_has_the_kernels_layout() {
        let d = SyncDaemon {
            state: daemon_state::BACKUP,
            interface: "eth0".into(),
            sync_id: 7,
            max_len: None,
            group: Some(Ipv4Addr::new(224, 0, 0, 81)),
            port: Some(8848),
            ttl: Some(1),
        };
        let msg = IpvsMessage::new(cmd::NEW_DAEMON, vec![TopAttr::Daemon(d.attrs())]);
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        // The nest: IPVS_CMD_ATTR_DAEMON (3) with the flag NLA_F_NESTED.
        assert_eq!(u16::from_ne_bytes([buf[2], buf[3]]), 3 | 0x8000);
        // State (1): u32 2, native order.
        assert_eq!(&buf[4..12], &[8, 0, 1, 0, 2, 0, 0, 0]);
        // Interface (2): "eth0\0", padded to 4.
        assert_eq!(
            &buf[12..24],
            &[9, 0, 2, 0, b'e', b't', b'h', b'0', 0, 0, 0, 0]
        );
        // Sync id (3), group (5) in network order, port (7) in host order,
        // TTL (8).
        assert_eq!(&buf[24..32], &[8, 0, 3, 0, 7, 0, 0, 0]);
        assert_eq!(&buf[32..40], &[8, 0, 5, 0, 224, 0, 0, 81]);
        let port = 8848u16.to_ne_bytes();
        assert_eq!(&buf[40..46], &[6, 0, 7, 0, port[0], port[1]]);
        assert_eq!(&buf[48..53], &[5, 0, 8, 0, 1]);
        let back = roundtrip(msg);
        assert_eq!(back.daemon().expect("decodes"), Some(d));
    }

    #[test]
    fn a_sync_daemon_without_state_or_interface_is_an_error_not_a_default() {
        let msg = IpvsMessage::new(
            cmd::NEW_DAEMON,
            vec![TopAttr::Daemon(vec![DaemonAttr::SyncId(1)])],
        );
        let e = roundtrip(msg).daemon().expect_err("no state");
        assert!(e.to_string().contains("without a state"), "{e}");
    }

    #[test]
    fn a_service_request_has_the_kernels_layout() {
        let svc = KernelService {
            key: KernelKey::Addr {
                vip: "10.0.0.1".parse().expect("test value"),
                port: 80,
                protocol: 6,
            },
            scheduler: "wrr".into(),
            flags: flags::PERSISTENT,
            timeout: 300,
            netmask: 0xffff_ffff,
            pe_name: None,
            stats: None,
        };
        let msg = IpvsMessage::new(cmd::NEW_SERVICE, vec![TopAttr::Service(svc.attrs())]);
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        // Outer attribute: nested flag set, type IPVS_CMD_ATTR_SERVICE.
        assert_eq!(u16::from_ne_bytes([buf[2], buf[3]]), 0x8000 | 1);
        // First inner attribute: AF = AF_INET (len 6, type 1, value 2).
        assert_eq!(&buf[4..10], &[6, 0, 1, 0, 2, 0]);
        // The address travels as 16 bytes; the port in network order.
        let port_at = buf
            .windows(4)
            .position(|w| w == [6, 0, 4, 0])
            .expect("port attribute");
        assert_eq!(&buf[port_at + 4..port_at + 6], &[0, 80]);
        let addr_at = buf
            .windows(4)
            .position(|w| w == [20, 0, 3, 0])
            .expect("a 16-byte address attribute");
        assert_eq!(&buf[addr_at + 4..addr_at + 8], &[10, 0, 0, 1]);
        // The scheduler name is NUL-terminated.
        assert!(buf.windows(4).any(|w| w == b"wrr\0"));
        let back = roundtrip(msg)
            .service()
            .expect("test value")
            .expect("test value");
        assert_eq!(back, svc);
    }

    #[test]
    fn services_and_destinations_round_trip() {
        let services = [
            KernelService {
                key: KernelKey::Addr {
                    vip: "fd00::1".parse().expect("test value"),
                    port: 443,
                    protocol: 132,
                },
                scheduler: "mh".into(),
                flags: flags::SCHED1 | flags::SCHED2,
                timeout: 0,
                netmask: 128,
                pe_name: None,
                stats: None,
            },
            KernelService {
                key: KernelKey::Fwmark {
                    ipv6: false,
                    mark: 7,
                },
                scheduler: "sh".into(),
                flags: 0,
                timeout: 0,
                netmask: 0xffff_ff00,
                pe_name: Some("sip".into()),
                stats: None,
            },
        ];
        for svc in services {
            let msg = IpvsMessage::new(cmd::NEW_SERVICE, vec![TopAttr::Service(svc.attrs())]);
            assert_eq!(
                roundtrip(msg)
                    .service()
                    .expect("test value")
                    .expect("test value"),
                svc
            );
        }
        let mut dest =
            KernelDest::new("fd00::9".parse().expect("test value"), 8443, fwd::TUNNEL, 7);
        dest.tun_type = Some(tun::GUE);
        dest.tun_port = Some(6080);
        dest.upper_threshold = 100;
        let msg = IpvsMessage::new(
            cmd::NEW_DEST,
            vec![
                TopAttr::Service(services_key().attrs()),
                TopAttr::Dest(dest.attrs()),
            ],
        );
        assert_eq!(
            roundtrip(msg)
                .dest(true)
                .expect("test value")
                .expect("test value"),
            dest
        );
    }

    fn services_key() -> KernelKey {
        KernelKey::Addr {
            vip: "fd00::1".parse().expect("test value"),
            port: 443,
            protocol: 6,
        }
    }

    #[test]
    fn a_dump_entry_with_counters_and_no_destination_family_parses() {
        // As a pre-3.18 kernel dumps a destination: no ADDR_FAMILY; and
        // with both counter sets, the 64-bit one wins.
        let mut attrs = vec![
            DestAttr::Addr(addr16("10.1.0.2".parse().expect("test value"))),
            DestAttr::Port(8080),
            DestAttr::FwdMethod(fwd::DROUTE | 0x100),
            DestAttr::Weight(3),
            DestAttr::ActiveConns(5),
            DestAttr::InactiveConns(2),
        ];
        let small = Stats {
            conns: 9,
            inbytes: 1 << 40,
            ..Stats::default()
        };
        let wide = Stats {
            conns: 1 << 33,
            ..small
        };
        attrs.push(DestAttr::Stats(small));
        attrs.push(DestAttr::Stats64(wide));
        let msg = IpvsMessage::new(cmd::NEW_DEST, vec![TopAttr::Dest(attrs)]);
        let d = roundtrip(msg)
            .dest(false)
            .expect("test value")
            .expect("test value");
        assert_eq!(d.address, "10.1.0.2".parse::<IpAddr>().expect("test value"));
        assert_eq!(
            d.forwarding,
            fwd::DROUTE,
            "flag bits above the method are masked"
        );
        assert_eq!((d.active_conns, d.inactive_conns), (5, 2));
        assert_eq!(d.stats, Some(wide));
    }

    #[test]
    fn info_attributes_are_read_by_command() {
        let msg = IpvsMessage::new(
            cmd::SET_INFO,
            vec![
                TopAttr::InfoVersion(0x010201),
                TopAttr::InfoConnTabSize(4096),
            ],
        );
        assert_eq!(roundtrip(msg.clone()), msg);
    }

    #[test]
    fn malformed_attributes_are_errors_not_panics() {
        // A service without a family, an address of 3 bytes, truncated
        // buffers: every one an error.
        let no_af = IpvsMessage::new(
            cmd::NEW_SERVICE,
            vec![TopAttr::Service(vec![SvcAttr::Port(1)])],
        );
        assert!(roundtrip(no_af).service().is_err());
        let header = GenlHeader {
            cmd: cmd::NEW_SERVICE,
            version: 1,
        };
        let bad_addr = [8u8, 0, 1, 0x80, 7, 0, 3, 0];
        assert!(IpvsMessage::parse_with_param(&bad_addr, header).is_err());
        let mut rng_bytes = [0u8; 64];
        for seed in 0..2000u32 {
            for (i, b) in rng_bytes.iter_mut().enumerate() {
                *b = (seed.wrapping_mul(2654435761).rotate_left(i as u32) >> 7) as u8;
            }
            for len in [0, 3, 4, 9, 20, 64] {
                if let Ok(m) = IpvsMessage::parse_with_param(&rng_bytes[..len], header) {
                    let _ = m.service();
                    let _ = m.dest(false);
                }
            }
        }
    }
}
