//! VIPs made local, and the masquerade return path.
//!
//! IPVS sees a packet only once the kernel has routed it to this machine,
//! so every VIP in the table is an address of a dummy interface of lb-node's
//! own (`lbvip0` by default; kube-proxy's IPVS mode does the same with
//! `kube-ipvs0`). The dummy interface never answers ARP for them: with the
//! `arp_ignore=1` the L2 announcer sets, only the owner's user-space
//! responder does. Every member can therefore accept traffic for every VIP
//! (what BGP ECMP needs) while only the owner attracts it in L2 mode.
//!
//! The addresses on that interface are also how lb-node recognises its own
//! services after a restart, when no `managed_networks` are configured.
//!
//! Masquerade (NAT) destinations send their replies to whoever sent the
//! request; for those to come back through the member, the member rewrites
//! the source of what it forwards to its own address. That is one nftables
//! table, `inet lb_node`, replaced atomically by `nft -f -` when the set of
//! masquerade VIPs changes:
//! `ct original ip daddr @masq4 masquerade` in a postrouting nat chain. It
//! needs `net.ipv4.vs.conntrack = 1` (set with the other sysctls).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use std::fmt::Write as _;

use anyhow::Context as _;
use tracing::{info, warn};

use crate::dataplane::{Op, Table};
use crate::model::{Forwarding, Protocol, ServiceKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSettings {
    /// The dummy interface that holds the VIPs; created if missing.
    pub interface: String,
    /// Install the masquerade table.
    pub masquerade: bool,
}

/// The VIPs on the interface now, shared with the ownership check.
pub type LocalVips = Arc<RwLock<BTreeSet<IpAddr>>>;

#[derive(Debug)]
pub struct Local {
    settings: LocalSettings,
    netlink: crate::netlink::Netlink,
    index: u32,
    vips: LocalVips,
    /// Each programmed service and whether it masquerades.
    services: BTreeMap<ServiceKey, bool>,
    /// The VIPs with a masquerading service.
    masq: BTreeSet<IpAddr>,
    /// Firewall-mark services: their traffic is marked in prerouting.
    marks: BTreeMap<ServiceKey, u32>,
    /// The nftables table must be (re)installed from `masq` and `marks`.
    table_dirty: bool,
}

impl Local {
    pub async fn new(
        settings: LocalSettings,
        netlink: crate::netlink::Netlink,
    ) -> anyhow::Result<Self> {
        let index = match netlink.link_index(&settings.interface).await {
            Ok(i) => i,
            Err(_) => {
                let index = netlink.add_dummy(&settings.interface).await?;
                info!(interface = %settings.interface, "created the VIP interface");
                index
            }
        };
        netlink.set_up(index, &settings.interface).await?;
        let present = netlink.addresses_on(index).await?.into_iter().collect();
        Ok(Local {
            settings,
            netlink,
            index,
            vips: Arc::new(RwLock::new(present)),
            services: BTreeMap::new(),
            masq: BTreeSet::new(),
            marks: BTreeMap::new(),
            table_dirty: true,
        })
    }

    pub fn vips(&self) -> LocalVips {
        self.vips.clone()
    }

    /// After a dump: the services are exactly those of `table`.
    pub async fn sync_with(&mut self, table: &Table) {
        self.services = table
            .services
            .iter()
            .map(|(k, s)| {
                (
                    *k,
                    s.destinations
                        .values()
                        .any(|d| d.forwarding == Forwarding::Masquerade),
                )
            })
            .collect();
        let marks: BTreeMap<ServiceKey, u32> = table
            .services
            .iter()
            .filter_map(|(k, s)| s.settings.fwmark.map(|m| (*k, m)))
            .collect();
        let masq: BTreeSet<IpAddr> = self
            .services
            .iter()
            .filter(|(_, m)| **m)
            .map(|(k, _)| k.vip)
            .collect();
        if marks != self.marks || masq != self.masq {
            self.table_dirty = true;
        }
        (self.marks, self.masq) = (marks, masq);
        let wanted: BTreeSet<IpAddr> = self.services.keys().map(|k| k.vip).collect();
        let (add, remove) = {
            let have = self.vips.read().unwrap_or_else(PoisonError::into_inner);
            (
                wanted.difference(&have).copied().collect(),
                have.difference(&wanted).copied().collect(),
            )
        };
        self.converge(add, remove).await;
    }

    /// After operations: what they changed. The cost follows the change
    /// (the VIPs it touched), not the table.
    pub async fn note_ops(&mut self, ops: &[Op]) {
        let mut touched = BTreeSet::new();
        for op in ops {
            match op {
                Op::AddService { service, settings } | Op::UpdateService { service, settings } => {
                    self.services.entry(*service).or_insert(false);
                    let old = match settings.fwmark {
                        Some(m) => self.marks.insert(*service, m),
                        None => self.marks.remove(service),
                    };
                    self.table_dirty |= old != settings.fwmark;
                }
                Op::DeleteService { service } => {
                    self.services.remove(service);
                    self.table_dirty |= self.marks.remove(service).is_some();
                }
                Op::AddDestination {
                    service, settings, ..
                }
                | Op::UpdateDestination {
                    service, settings, ..
                } if settings.forwarding == Forwarding::Masquerade => {
                    self.services.insert(*service, true);
                }
                _ => {}
            }
            touched.insert(op.service().vip);
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for vip in touched {
            let mut used = false;
            let mut masquerades = false;
            for (_, m) in self.services_of(vip) {
                used = true;
                masquerades |= m;
            }
            let local = self
                .vips
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&vip);
            if used && !local {
                add.push(vip);
            } else if !used && local {
                remove.push(vip);
            }
            let changed = if masquerades {
                self.masq.insert(vip)
            } else {
                self.masq.remove(&vip)
            };
            self.table_dirty |= changed;
        }
        self.converge(add, remove).await;
    }

    fn services_of(&self, vip: IpAddr) -> impl Iterator<Item = (&ServiceKey, bool)> {
        let from = ServiceKey {
            vip,
            port: 0,
            protocol: Protocol::Tcp,
        };
        self.services
            .range(from..)
            .take_while(move |(k, _)| k.vip == vip)
            .map(|(k, m)| (k, *m))
    }

    /// Adds and removes VIPs, and reinstalls the table if it changed (or
    /// failed before). Failures are logged and retried at the next change
    /// or repair.
    async fn converge(&mut self, add: Vec<IpAddr>, remove: Vec<IpAddr>) {
        let mut errors = Vec::new();
        for vip in add {
            match self.netlink.add_host_address(self.index, vip).await {
                Ok(()) => {
                    self.vips
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(vip);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !remove.is_empty()
            && let Err(e) = self.remove(&remove).await
        {
            errors.push(format!("{e:#}"));
        }
        let want_table = self.settings.masquerade || !self.marks.is_empty();
        if want_table && self.table_dirty {
            let none = BTreeSet::new();
            let masq = if self.settings.masquerade {
                &self.masq
            } else {
                &none
            };
            match install_table(masq, &self.marks).await {
                Ok(()) => self.table_dirty = false,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        for e in &errors {
            warn!(error = %e, "VIP interface or masquerade table not as wanted; retried at the next change or repair");
        }
    }

    async fn remove(&mut self, vips: &[IpAddr]) -> anyhow::Result<()> {
        let removed = self
            .netlink
            .remove_addresses(self.index, vips)
            .await
            .context("the VIP interface")?;
        let mut local = self.vips.write().unwrap_or_else(PoisonError::into_inner);
        for ip in removed {
            local.remove(&ip);
        }
        Ok(())
    }
}

/// The nftables script that (re)defines lb-node's table: masquerade for
/// NAT VIPs, and the marks of firewall-mark services.
pub fn table_script(masq: &BTreeSet<IpAddr>, marks: &BTreeMap<ServiceKey, u32>) -> String {
    let list = |v6: bool| {
        masq.iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let set = |name: &str, kind: &str, elements: String| {
        if elements.is_empty() {
            format!("  set {name} {{ type {kind}; }}\n")
        } else {
            format!("  set {name} {{ type {kind}; elements = {{ {elements} }} }}\n")
        }
    };
    let mut s =
        String::from("table inet lb_node {}\ndelete table inet lb_node\ntable inet lb_node {\n");
    s += &set("masq4", "ipv4_addr", list(false));
    s += &set("masq6", "ipv6_addr", list(true));
    s += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
    s += "    ct original ip daddr @masq4 masquerade\n";
    s += "    ct original ip6 daddr @masq6 masquerade\n  }\n";
    if !marks.is_empty() {
        s += "  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n";
        for (k, mark) in marks {
            let family = if k.vip.is_ipv6() { "ip6" } else { "ip" };
            let _ = writeln!(
                s,
                "    {family} daddr {} {} dport {} meta mark set {mark:#x}",
                k.vip,
                k.protocol.name(),
                k.port
            );
        }
        s += "  }\n";
    }
    s += "}\n";
    s
}

async fn install_table(
    masq: &BTreeSet<IpAddr>,
    marks: &BTreeMap<ServiceKey, u32>,
) -> anyhow::Result<()> {
    crate::nft::apply(&table_script(masq, marks))
        .await
        .context("the masquerade table")?;
    info!(
        masquerade_vips = masq.len(),
        fwmarks = marks.len(),
        "nftables table inet lb_node installed"
    );
    Ok(())
}
