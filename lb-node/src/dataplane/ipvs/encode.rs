//! IPVS requests framed straight into the send buffer (issue 20).
//!
//! A request built as an `IpvsMessage` first (a vector of top attributes,
//! each a vector of service or destination attributes) and then framed by
//! the generic netlink types cost about 27 µs of user time each in the
//! kernel lab's emulated guest: 14.9 s for a full sync's 550,000 requests
//! on the encoding thread, as much CPU as the kernel's own work on them,
//! on a machine with two CPUs. The requests lb-node sends by the thousand
//! (services and destinations added, changed, deleted) are written here
//! without building anything: the netlink and generic netlink headers,
//! then each attribute in place, nests patched with their length once
//! written. The bytes are exactly those of the generic path
//! (`framed_the_same_as_the_generic_path` checks every kind of request);
//! anything else still goes that way. Pure.

use std::net::IpAddr;

use netlink_packet_core::{NLA_F_NESTED, NetlinkMessage};
use netlink_packet_generic::GenlMessage;

use super::convert::{Request, kernel_dest, kernel_service};
use super::msg::{self, IpvsMessage, KernelKey};
use super::socket::Framed;
use crate::dataplane::{DestKey, Destination, ServiceSettings};
use crate::model::ServiceKey;

impl Framed for IpvsMessage {
    fn frame(self, family: u16, flags: u16, seq: u32, out: &mut Vec<u8>) {
        let mut genl = GenlMessage::from_payload(self);
        genl.set_resolved_family_id(family);
        let mut nl = NetlinkMessage::from(genl);
        nl.header.flags = flags;
        nl.header.sequence_number = seq;
        nl.finalize();
        let start = out.len();
        out.resize(start + nl.buffer_len(), 0);
        nl.serialize(&mut out[start..]);
    }
}

impl Framed for Request<'_> {
    fn frame(self, family: u16, flags: u16, seq: u32, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Request::Service(c, k, s) => {
                header(out, family, flags, seq, c);
                service(out, &k, s);
            }
            Request::Dest(c, k, d, s) => {
                header(out, family, flags, seq, c);
                service(out, &k, None);
                dest(out, d, s);
            }
            Request::Ready(m) => return m.frame(family, flags, seq, out),
        }
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// The netlink header (its length patched at the end) and the generic
/// netlink one.
fn header(out: &mut Vec<u8>, family: u16, flags: u16, seq: u32, cmd: u8) {
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&family.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[cmd, msg::FAMILY_VERSION, 0, 0]);
}

/// One attribute, padded to four bytes.
fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    pad(out, value.len());
}

/// Zeros after a value of `len` bytes, to the next multiple of four.
fn pad(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&[0u8; 3][..(4 - len % 4) % 4]);
}

/// A nest's attributes, written by `inside`.
fn nest(out: &mut Vec<u8>, kind: u16, inside: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    inside(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    a
}

fn af(ipv6: bool) -> u16 {
    if ipv6 { msg::AF_INET6 } else { msg::AF_INET }
}

/// The service nest: its key, and its settings when given.
fn service(out: &mut Vec<u8>, k: &KernelKey, s: Option<(&ServiceKey, &ServiceSettings)>) {
    nest(out, msg::CMD_ATTR_SERVICE, |out| {
        match *k {
            KernelKey::Addr {
                vip,
                port,
                protocol,
            } => {
                attr(out, msg::SVC_AF, &af(vip.is_ipv6()).to_ne_bytes());
                attr(out, msg::SVC_PROTOCOL, &protocol.to_ne_bytes());
                attr(out, msg::SVC_ADDR, &addr16(vip));
                attr(out, msg::SVC_PORT, &port.to_be_bytes());
            }
            KernelKey::Fwmark { ipv6, mark } => {
                attr(out, msg::SVC_AF, &af(ipv6).to_ne_bytes());
                attr(out, msg::SVC_FWMARK, &mark.to_ne_bytes());
            }
        }
        let Some((key, settings)) = s else {
            return;
        };
        // What `KernelService::attrs` adds to the key, without building it.
        let ks = kernel_service(key, settings);
        let name = ks.scheduler.as_bytes();
        out.extend_from_slice(&((4 + name.len() + 1) as u16).to_ne_bytes());
        out.extend_from_slice(&msg::SVC_SCHED_NAME.to_ne_bytes());
        out.extend_from_slice(name);
        out.push(0);
        pad(out, name.len() + 1);
        let mut flags = [0u8; 8];
        flags[..4].copy_from_slice(&(ks.flags & !msg::flags::HASHED).to_ne_bytes());
        flags[4..].copy_from_slice(&(!msg::flags::HASHED).to_ne_bytes());
        attr(out, msg::SVC_FLAGS, &flags);
        attr(out, msg::SVC_TIMEOUT, &ks.timeout.to_ne_bytes());
        attr(out, msg::SVC_NETMASK, &ks.netmask.to_ne_bytes());
        if let Some(pe) = &ks.pe_name {
            let mut v = pe.as_bytes().to_vec();
            v.push(0);
            attr(out, msg::SVC_PE_NAME, &v);
        }
    });
}

/// The destination nest: its key, and its settings when given.
fn dest(out: &mut Vec<u8>, d: &DestKey, s: Option<&Destination>) {
    nest(out, msg::CMD_ATTR_DEST, |out| {
        attr(
            out,
            msg::DEST_ADDR_FAMILY,
            &af(d.address.is_ipv6()).to_ne_bytes(),
        );
        attr(out, msg::DEST_ADDR, &addr16(d.address));
        attr(out, msg::DEST_PORT, &d.port.to_be_bytes());
        let Some(s) = s else {
            return;
        };
        let k = kernel_dest(d, s);
        attr(out, msg::DEST_FWD_METHOD, &k.forwarding.to_ne_bytes());
        attr(out, msg::DEST_WEIGHT, &k.weight.to_ne_bytes());
        attr(out, msg::DEST_U_THRESH, &k.upper_threshold.to_ne_bytes());
        attr(out, msg::DEST_L_THRESH, &k.lower_threshold.to_ne_bytes());
        if let Some(t) = k.tun_type {
            attr(out, msg::DEST_TUN_TYPE, &[t]);
        }
        if let Some(p) = k.tun_port {
            attr(out, msg::DEST_TUN_PORT, &p.to_be_bytes());
        }
        if let Some(f) = k.tun_flags {
            attr(out, msg::DEST_TUN_FLAGS, &f.to_ne_bytes());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Forwarding, Protocol, Scheduler};

    fn generic(r: Request<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        IpvsMessage::from(r).frame(0x1d, 0x5, 77, &mut out);
        out
    }

    fn direct(r: Request<'_>) -> Vec<u8> {
        let mut out = vec![0xaa; 3]; // framed after what is there
        r.frame(0x1d, 0x5, 77, &mut out);
        out.split_off(3)
    }

    #[test]
    fn framed_the_same_as_the_generic_path() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let vips = [
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x17)),
        ];
        let backends = [
            IpAddr::V4(Ipv4Addr::new(172, 16, 9, 8)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 2)),
        ];
        let mut checked = 0;
        for vip in vips {
            for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                let key = ServiceKey {
                    vip,
                    port: 8443,
                    protocol,
                };
                for scheduler in [Scheduler::Rr, Scheduler::Mh, Scheduler::Wlc] {
                    for persistence_timeout in [None, Some(300)] {
                        for fwmark in [None, Some(0x1234_5678)] {
                            let settings = ServiceSettings {
                                scheduler,
                                persistence_timeout,
                                fwmark,
                            };
                            let k = super::super::convert::kernel_key(&key, fwmark);
                            for c in [msg::cmd::NEW_SERVICE, msg::cmd::SET_SERVICE] {
                                let r = || Request::Service(c, k, Some((&key, &settings)));
                                assert_eq!(direct(r()), generic(r()), "{key} {settings:?}");
                                checked += 1;
                            }
                            let r = || Request::Service(msg::cmd::DEL_SERVICE, k, None);
                            assert_eq!(direct(r()), generic(r()));
                            for address in backends {
                                let d = DestKey {
                                    address,
                                    port: 65535,
                                };
                                for forwarding in [
                                    Forwarding::Masquerade,
                                    Forwarding::Direct,
                                    Forwarding::Tunnel,
                                ] {
                                    for weight in [0, 1, 65535] {
                                        let s = Destination { weight, forwarding };
                                        for c in [msg::cmd::NEW_DEST, msg::cmd::SET_DEST] {
                                            let r = || Request::Dest(c, k, &d, Some(&s));
                                            assert_eq!(direct(r()), generic(r()), "{d} {s:?}");
                                            checked += 1;
                                        }
                                    }
                                }
                                let r = || Request::Dest(msg::cmd::DEL_DEST, k, &d, None);
                                assert_eq!(direct(r()), generic(r()));
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }
}
