//! The member's rtnetlink connections: links, addresses, routes and rules.
//!
//! One connection task, opened once in `app.rs` and handed to whoever
//! changes the kernel's network state (the L2 announcer's VIPs, the pod
//! routes), as holo-interface is the one netlink owner of its daemon; the
//! IPVS dataplane's VIP routes take a second one (`another`), so that a
//! VIP made local never waits behind another task's dump of every routing
//! table. The handle is cheap to clone; each call is one request on the
//! connection's socket (`add_local_routes` keeps many in flight).
//!
//! Must not: decide anything. Callers say which address or route; this
//! module only speaks the protocol, and treats "already there" on an add
//! and "already gone" on a delete as done (CONVENTIONS.md, idempotent
//! kernel calls).

use std::net::IpAddr;

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute};

/// A route of the kernel's main table, as much of it as lb-node reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub destination: IpNet,
    /// The next hop, when the route has one (not a connected route).
    pub gateway: Option<IpAddr>,
    /// The next hops of a multipath (ECMP) route; empty otherwise.
    pub nexthops: Vec<IpAddr>,
    pub protocol: u8,
    /// Unicast (not local, broadcast, blackhole or unreachable).
    pub unicast: bool,
}

/// A cloneable handle to the member's rtnetlink connection.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// The kernel runs one dump at a time per netlink socket and answers
    /// a second with EBUSY: dumps (addresses, routes) take turns.
    dumping: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// errno values the kernel returns for "already there" and "not there".
const EEXIST: i32 = 17;
const ESRCH: i32 = 3;
const ENOENT: i32 = 2;
/// The kernel's main routing table.
const RT_TABLE_MAIN: u32 = 254;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Netlink {
    /// Opens the connection; its task runs on the current tokio runtime
    /// until every handle is dropped.
    pub fn open() -> anyhow::Result<Netlink> {
        use rtnetlink::sys::AsyncSocket as _;
        let (mut connection, handle, _) =
            rtnetlink::new_connection().context("cannot open rtnetlink")?;
        // Strict checking (Linux 4.20 and later): the kernel filters a
        // dump by the table asked for, instead of sending every table for
        // this side to sort (with 50,000 VIP routes, a read of the main
        // table would parse them all, and every request behind it wait).
        // An older kernel refuses the option; dumps are filtered here too.
        if let Err(e) = connection
            .socket_mut()
            .socket_mut()
            .set_netlink_get_strict_chk(true)
        {
            tracing::debug!(error = %e, "rtnetlink without strict checking");
        }
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            dumping: std::sync::Arc::default(),
        })
    }

    /// A second connection, for a user whose requests must not queue
    /// behind another's dumps (the IPVS dataplane's VIP routes).
    pub fn another(&self) -> anyhow::Result<Netlink> {
        Netlink::open()
    }

    /// The index of interface `name`.
    pub async fn link_index(&self, name: &str) -> anyhow::Result<u32> {
        let _turn = self.dumping.lock().await;
        let link = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
            .with_context(|| format!("interface {name:?}"))?
            .with_context(|| format!("interface {name:?} does not exist"))?;
        Ok(link.header.index)
    }

    /// Creates dummy interface `name`; its index.
    pub async fn add_dummy(&self, name: &str) -> anyhow::Result<u32> {
        self.handle
            .link()
            .add(rtnetlink::LinkDummy::new(name).up().build())
            .execute()
            .await
            .with_context(|| {
                format!(
                    "cannot create the dummy interface {name:?} (is the dummy module available?)"
                )
            })?;
        self.link_index(name).await
    }

    /// Brings interface `index` up.
    pub async fn set_up(&self, index: u32, name: &str) -> anyhow::Result<()> {
        self.handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("cannot bring {name} up"))
    }

    /// Every address on interface `index`.
    pub async fn addresses_on(&self, index: u32) -> anyhow::Result<Vec<IpAddr>> {
        Ok(self
            .address_messages(index)
            .await?
            .iter()
            .filter_map(ip_of)
            .collect())
    }

    async fn address_messages(&self, index: u32) -> anyhow::Result<Vec<AddressMessage>> {
        let _turn = self.dumping.lock().await;
        Ok(self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?)
    }

    /// Makes `ip` local on interface `index` as a host address (/32,
    /// /128; IPv6 without duplicate address detection: a VIP moves between
    /// members by design, and DAD would hold it back for a second).
    pub async fn add_host_address(&self, index: u32, ip: IpAddr) -> anyhow::Result<()> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let mut request = self.handle.address().add(index, ip, prefix).replace();
        if ip.is_ipv6() {
            let m = request.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request
            .execute()
            .await
            .with_context(|| format!("cannot add {ip}/{prefix}"))
    }

    /// Removes each of `ips` that is on interface `index`; returns the ones
    /// removed.
    pub async fn remove_addresses(
        &self,
        index: u32,
        ips: &[IpAddr],
    ) -> anyhow::Result<Vec<IpAddr>> {
        let mut removed = Vec::new();
        for m in self.address_messages(index).await? {
            let Some(ip) = ip_of(&m).filter(|ip| ips.contains(ip)) else {
                continue;
            };
            match self.handle.address().del(m).execute().await {
                Ok(()) => removed.push(ip),
                Err(e) if matches!(errno(&e), Some(ENOENT | ESRCH)) => removed.push(ip),
                Err(e) => return Err(e).with_context(|| format!("cannot remove {ip}")),
            }
        }
        Ok(removed)
    }

    /// Makes each of `ips` local with a host route of routing table
    /// `table` through interface `index` (`ip route add local IP/32 dev
    /// IFACE table TABLE`), up to 256 requests per system call
    /// (`route_batch`); returns the ones that failed, with why (one there
    /// already counts as added). A route is a trie insertion, where an
    /// address costs a walk of the interface's whole address list (in the
    /// kernel lab, 50,000 VIPs: 3.9 s as routes, 323 s as addresses).
    pub async fn add_local_routes(
        &self,
        table: u32,
        index: u32,
        ips: &[IpAddr],
    ) -> Vec<(IpAddr, anyhow::Error)> {
        each_route(
            crate::route_batch::Change::Add,
            table,
            index,
            ips,
            |ip, errno| (errno != EEXIST).then(|| format!("cannot make {ip} local")),
        )
        .await
    }

    /// Removes the local routes of `ips` from `table` (those already gone
    /// count as removed); returns the ones that failed, with why.
    pub async fn remove_local_routes(
        &self,
        table: u32,
        index: u32,
        ips: &[IpAddr],
    ) -> Vec<(IpAddr, anyhow::Error)> {
        each_route(
            crate::route_batch::Change::Delete,
            table,
            index,
            ips,
            |ip, errno| {
                (!matches!(errno, ESRCH | ENOENT))
                    .then(|| format!("cannot remove the local route of {ip}"))
            },
        )
        .await
    }

    /// The addresses made local by host routes of `table` through
    /// interface `index` (`add_local_routes`), both families.
    pub async fn local_routes(&self, table: u32, index: u32) -> anyhow::Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        let _turn = self.dumping.lock().await;
        for request in [route_dump(false, table), route_dump(true, table)] {
            let messages: Vec<RouteMessage> = self
                .handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await
                .with_context(|| format!("cannot read routing table {table}"))?;
            out.extend(
                messages
                    .iter()
                    .filter_map(|m| local_route_of(m, table, index)),
            );
        }
        Ok(out)
    }

    /// Adds the rule `ip rule add priority PRIORITY lookup TABLE` for both
    /// families unless it is there.
    pub async fn ensure_lookup_rule(&self, table: u32, priority: u32) -> anyhow::Result<()> {
        for v6 in [false, true] {
            let request = self
                .handle
                .rule()
                .add()
                .table_id(table)
                .priority(priority)
                .action(RuleAction::ToTable);
            let result = if v6 {
                request.v6().execute().await
            } else {
                request.v4().execute().await
            };
            match result {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot add the {} rule `priority {priority} lookup {table}`",
                            if v6 { "IPv6" } else { "IPv4" }
                        )
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether both families have the rule `priority PRIORITY lookup
    /// TABLE` (with no selector).
    pub async fn has_lookup_rule(&self, table: u32, priority: u32) -> anyhow::Result<bool> {
        let _turn = self.dumping.lock().await;
        for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            let rules: Vec<netlink_packet_route::rule::RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .context("cannot read the routing rules")?;
            let found = rules.iter().any(|r| {
                let table_of = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RuleAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(r.header.table));
                let priority_of = r.attributes.iter().find_map(|a| match a {
                    RuleAttribute::Priority(p) => Some(*p),
                    _ => None,
                });
                table_of == table
                    && priority_of == Some(priority)
                    && r.header.action == RuleAction::ToTable
            });
            if !found {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The routes of the main table, both families.
    pub async fn main_routes(&self) -> anyhow::Result<Vec<KernelRoute>> {
        let mut out = Vec::new();
        let _turn = self.dumping.lock().await;
        for request in [
            route_dump(false, RT_TABLE_MAIN),
            route_dump(true, RT_TABLE_MAIN),
        ] {
            let messages: Vec<RouteMessage> = self
                .handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await
                .context("cannot read the routing table")?;
            out.extend(messages.iter().filter_map(kernel_route));
        }
        Ok(out)
    }

    /// Adds the route `destination via gateway`, or replaces what the
    /// table had for `destination`, marked with `protocol`.
    pub async fn replace_route(
        &self,
        destination: IpNet,
        gateway: IpAddr,
        protocol: u8,
    ) -> anyhow::Result<()> {
        let message = route_message(destination, Some(gateway), protocol)?;
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot route {destination} via {gateway}"))
    }

    /// Deletes the route to `destination` marked with `protocol`; one
    /// already gone is not an error.
    pub async fn delete_route(&self, destination: IpNet, protocol: u8) -> anyhow::Result<()> {
        let message = route_message(destination, None, protocol)?;
        match self.handle.route().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT)) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete the route to {destination}")),
        }
    }
}

/// Whether an add failed only because it was there already.
pub fn already_exists(e: &anyhow::Error) -> bool {
    e.downcast_ref::<rtnetlink::Error>()
        .is_some_and(|e| errno(e) == Some(EEXIST))
}

fn route_message(
    destination: IpNet,
    gateway: Option<IpAddr>,
    protocol: u8,
) -> anyhow::Result<RouteMessage> {
    let mut builder = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(destination.network(), destination.prefix_len())
        .with_context(|| format!("route destination {destination}"))?
        .protocol(RouteProtocol::from(protocol));
    if let Some(gateway) = gateway {
        builder = builder
            .gateway(gateway)
            .with_context(|| format!("route gateway {gateway}"))?;
    }
    Ok(builder.build())
}

/// A dump request for the routes of `table`: with strict checking the
/// kernel filters on the table, and on the protocol and type when they are
/// set, so those are left unset (the builder's defaults would ask for
/// static unicast routes only).
fn route_dump(v6: bool, table: u32) -> RouteMessage {
    let mut m = if v6 {
        rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .table_id(table)
            .build()
    } else {
        rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .table_id(table)
            .build()
    };
    m.header.protocol = RouteProtocol::Unspec;
    m.header.kind = RouteType::Unspec;
    m.header.scope = RouteScope::Universe;
    m
}

/// `local IP/32 dev INDEX table TABLE` (/128 for IPv6), scope host.
/// Sends the local routes of `ips` (`route_batch`: off the runtime's
/// threads unless there are only a few); the failures, each with why:
/// `failed(ip, errno)` says what an error means (None: not a failure).
async fn each_route(
    change: crate::route_batch::Change,
    table: u32,
    index: u32,
    ips: &[IpAddr],
    failed: impl Fn(IpAddr, i32) -> Option<String>,
) -> Vec<(IpAddr, anyhow::Error)> {
    let mut out = Vec::new();
    let mut routes = Vec::with_capacity(ips.len());
    let mut sent = Vec::with_capacity(ips.len());
    for ip in ips {
        match crate::route_batch::local_route(table, index, *ip) {
            Ok(r) => {
                routes.push(r);
                sent.push(*ip);
            }
            Err(e) => out.push((*ip, e)),
        }
    }
    let send = move || crate::route_batch::apply(change, routes);
    let outcomes = if sent.len() <= 16 {
        send()
    } else {
        tokio::task::spawn_blocking(send)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("route thread: {e}"))))
    };
    match outcomes {
        Ok(outcomes) => {
            for (ip, r) in sent.into_iter().zip(outcomes) {
                if let Err(errno) = r
                    && let Some(what) = failed(ip, errno)
                {
                    out.push((
                        ip,
                        anyhow::Error::from(std::io::Error::from_raw_os_error(errno)).context(what),
                    ));
                }
            }
        }
        Err(e) => {
            let e = format!("{e}");
            out.extend(
                sent.into_iter()
                    .map(|ip| (ip, anyhow::anyhow!("route netlink: {e}"))),
            );
        }
    }
    out
}

/// The address of a host route of type local in `table` through `index`.
fn local_route_of(m: &RouteMessage, table: u32, index: u32) -> Option<IpAddr> {
    let table_of = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    let full = if m.header.address_family == netlink_packet_route::AddressFamily::Inet {
        32
    } else {
        128
    };
    let through = m
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
    if table_of != table
        || m.header.kind != RouteType::Local
        || m.header.destination_prefix_length != full
        || !through
    {
        return None;
    }
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_address(d),
        _ => None,
    })
}

fn ip_of(m: &AddressMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table route, or None for other tables and what lb-node cannot
/// read.
fn kernel_route(m: &RouteMessage) -> Option<KernelRoute> {
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table != RT_TABLE_MAIN {
        return None;
    }
    let family_v4 = m.header.address_family == netlink_packet_route::AddressFamily::Inet;
    let destination = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => route_address(d),
            _ => None,
        })
        .unwrap_or(if family_v4 {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        });
    let destination = IpNet::new(destination, m.header.destination_prefix_length).ok()?;
    let gateway = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_address(g),
        _ => None,
    });
    let nexthops = m
        .attributes
        .iter()
        .filter_map(|a| match a {
            RouteAttribute::MultiPath(hops) => Some(hops),
            _ => None,
        })
        .flatten()
        .filter_map(|hop| {
            hop.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => route_address(g),
                _ => None,
            })
        })
        .collect();
    Some(KernelRoute {
        destination,
        gateway,
        nexthops,
        protocol: u8::from(m.header.protocol),
        unicast: m.header.kind == RouteType::Unicast,
    })
}
