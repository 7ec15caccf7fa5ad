//! Between the dataplane's types (`Table`, `Op`) and the kernel's IPVS
//! messages: keys, services, destinations and their counters, both ways,
//! and what the kernel's refusals mean for an operator. Pure.

use std::collections::BTreeMap;

use super::msg::{self, IpvsMessage, KernelDest, KernelKey, KernelService, TopAttr, flags, fwd};
use super::socket;
use crate::dataplane::{DestKey, Destination, Op, ServiceSettings};
use crate::model::{Forwarding, Protocol, Scheduler, ServiceKey};

fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// How the kernel names a service: by its mark when it has one.
pub fn kernel_key(k: &ServiceKey, fwmark: Option<u32>) -> KernelKey {
    match fwmark {
        Some(mark) => KernelKey::Fwmark {
            ipv6: k.vip.is_ipv6(),
            mark,
        },
        None => KernelKey::Addr {
            vip: k.vip,
            port: k.port,
            protocol: protocol_number(k.protocol),
        },
    }
}

/// What lb-node programs for a service.
pub fn kernel_service(k: &ServiceKey, s: &ServiceSettings) -> KernelService {
    KernelService {
        key: kernel_key(k, s.fwmark),
        scheduler: s.scheduler.name().to_owned(),
        flags: if s.persistence_timeout.is_some() {
            flags::PERSISTENT
        } else {
            0
        },
        timeout: s.persistence_timeout.unwrap_or(0),
        netmask: if k.vip.is_ipv6() { 128 } else { u32::MAX },
        pe_name: None,
        stats: None,
    }
}

/// What lb-node programs for a destination.
pub fn kernel_dest(d: &DestKey, s: &Destination) -> KernelDest {
    let forwarding = match s.forwarding {
        Forwarding::Masquerade => fwd::MASQ,
        Forwarding::Direct => fwd::DROUTE,
        Forwarding::Tunnel => fwd::TUNNEL,
    };
    let mut k = KernelDest::new(d.address, d.port, forwarding, s.weight);
    if s.forwarding == Forwarding::Tunnel {
        k.tun_type = Some(msg::tun::IPIP);
    }
    k
}

/// A kernel service in lb-node's terms, if it is one lb-node could have
/// programmed; a firewall-mark service is found by its mark in `by_mark`.
pub(super) fn read_service(
    k: &KernelService,
    by_mark: &BTreeMap<(bool, u32), ServiceKey>,
) -> Option<(ServiceKey, ServiceSettings)> {
    let (key, fwmark) = match k.key {
        KernelKey::Addr {
            vip,
            port,
            protocol,
        } => {
            let protocol = match protocol {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                132 => Protocol::Sctp,
                _ => return None,
            };
            (
                ServiceKey {
                    vip,
                    port,
                    protocol,
                },
                None,
            )
        }
        KernelKey::Fwmark { ipv6, mark } => (*by_mark.get(&(ipv6, mark))?, Some(mark)),
    };
    let vip = key.vip;
    let scheduler: Scheduler = k.scheduler.parse().ok()?;
    let persistent = k.flags & flags::PERSISTENT != 0;
    let extra_flags = k.flags & !(flags::PERSISTENT | flags::HASHED);
    let full_mask = if vip.is_ipv6() { 128 } else { u32::MAX };
    if extra_flags != 0 || k.pe_name.is_some() || (persistent && k.netmask != full_mask) {
        return None;
    }
    Some((
        key,
        ServiceSettings {
            scheduler,
            persistence_timeout: persistent.then_some(k.timeout),
            fwmark,
        },
    ))
}

pub(super) fn read_dest(d: &KernelDest) -> Option<(DestKey, Destination)> {
    let forwarding = match d.forwarding {
        fwd::MASQ => Forwarding::Masquerade,
        fwd::DROUTE => Forwarding::Direct,
        fwd::TUNNEL if d.tun_type.unwrap_or(msg::tun::IPIP) == msg::tun::IPIP => Forwarding::Tunnel,
        _ => return None,
    };
    if d.upper_threshold != 0 || d.lower_threshold != 0 {
        return None;
    }
    Some((
        DestKey {
            address: d.address,
            port: d.port,
        },
        Destination {
            weight: d.weight,
            forwarding,
        },
    ))
}

/// One IPVS request of a batch, built into its message where it is
/// encoded (on `IpvsSocket::execute`'s encoding thread for a big batch).
pub(super) enum Request<'a> {
    Service(u8, KernelKey, Option<(&'a ServiceKey, &'a ServiceSettings)>),
    Dest(u8, KernelKey, &'a DestKey, Option<&'a Destination>),
    Ready(IpvsMessage),
}

impl From<Request<'_>> for IpvsMessage {
    fn from(r: Request<'_>) -> IpvsMessage {
        match r {
            Request::Service(c, k, s) => service_msg(c, &k, s),
            Request::Dest(c, k, d, s) => dest_msg(c, &k, d, s),
            Request::Ready(m) => m,
        }
    }
}

pub(super) fn service_msg(
    c: u8,
    k: &KernelKey,
    s: Option<(&ServiceKey, &ServiceSettings)>,
) -> IpvsMessage {
    let attrs = match s {
        Some((key, s)) => kernel_service(key, s).attrs(),
        None => k.attrs(),
    };
    IpvsMessage::new(c, vec![TopAttr::Service(attrs)])
}

pub(super) fn dest_msg(c: u8, k: &KernelKey, d: &DestKey, s: Option<&Destination>) -> IpvsMessage {
    let attrs = match s {
        Some(s) => kernel_dest(d, s).attrs(),
        None => KernelDest::key_attrs(d.address, d.port),
    };
    IpvsMessage::new(c, vec![TopAttr::Service(k.attrs()), TopAttr::Dest(attrs)])
}

pub(super) fn counters_of(s: Option<msg::Stats>) -> crate::dataplane::Counters {
    let s = s.unwrap_or_default();
    crate::dataplane::Counters {
        connections: s.conns,
        packets_in: s.inpkts,
        packets_out: s.outpkts,
        bytes_in: s.inbytes,
        bytes_out: s.outbytes,
        connections_per_second: s.cps,
        bytes_in_per_second: s.inbps,
        bytes_out_per_second: s.outbps,
    }
}

/// What a refusal means for this operation, for an operator.
pub(super) fn explain(op: &Op, errno: i32) -> String {
    let text = socket::errno_text(errno);
    match (op, errno) {
        (Op::AddService { settings, .. } | Op::UpdateService { settings, .. }, libc::ENOENT) => {
            format!(
                "{text}: the kernel has no scheduler {:?} (module ip_vs_{} not loaded, or not built into this kernel)",
                settings.scheduler.name(),
                settings.scheduler.name()
            )
        }
        (
            Op::AddDestination { .. } | Op::UpdateDestination { .. } | Op::DeleteDestination { .. },
            libc::ESRCH,
        ) => format!("{text}: the service is not in the kernel"),
        _ => text,
    }
}
