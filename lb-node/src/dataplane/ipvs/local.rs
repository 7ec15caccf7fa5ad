//! VIPs made local, and the masquerade return path.
//!
//! IPVS sees a packet only once the kernel has routed it to this machine,
//! so every VIP in the table is made local by a host route of lb-node's own
//! routing table, through a dummy interface of its own (`lbvip0` by
//! default): `local VIP dev lbvip0 table 27746`, looked up by the rule
//! `priority 5 lookup 27746` (both families), after the kernel's local
//! table and before main. kube-proxy's IPVS mode makes each VIP an
//! address of `kube-ipvs0` instead, as earlier versions did of `lbvip0`;
//! the kernel walks an interface's whole address list at each address
//! added or removed, so in the kernel lab 50,000 VIPs took 323 s to add as
//! addresses and 3.9 s as routes, and one more took 12 ms against 0.8 ms
//! (docs/ipvs.md). A table of its own, rather than routes in the kernel's
//! `local` table: the L2 announcer and the kernel's own address routes
//! live there, and nothing of theirs can then remove or replace one of
//! ours, nor ours theirs. Nothing answers ARP or NDP for a VIP made local
//! this way (it is no interface's address): in L2 mode only the owner's
//! user-space responder does. Every member can therefore accept traffic for
//! every VIP (what BGP ECMP needs) while only the owner attracts it in L2
//! mode.
//!
//! The routes of that table are also how lb-node recognises its own
//! services after a restart, when no `managed_networks` are configured.
//! Addresses left on the interface by an earlier version are moved to
//! routes at start. The rule and the routes stay when lb-node stops (the
//! data plane outlives the control plane); a repair puts back a rule or a
//! route that someone removed (systemd-networkd removes rules it did not
//! make unless `ManageForeignRoutingPolicyRules=no`; a link set down
//! takes its routes with it).
//!
//! Masquerade (NAT) destinations send their replies to whoever sent the
//! request; for those to come back through the member, the member rewrites
//! the source of what it forwards to its own address. That is one nftables
//! table, `inet lb_node`:
//! `ct original ip daddr @masq4 masquerade` in a postrouting nat chain. It
//! needs `net.ipv4.vs.conntrack = 1` (set with the other sysctls). With
//! connection sync the source is the VIP instead (`snat ip to ct original
//! ip daddr`), and an input chain drops what reaches a VIP without a
//! connection but a SYN (docs/connections.md). A change
//! of masquerading VIPs adds and deletes elements of the sets over netlink
//! (`nft_sets`), at the cost of the change; the whole table is replaced
//! atomically (`nft -f -`) at start, when the firewall-mark rules change,
//! when an element change fails, and at a repair round's end unless
//! nftables is exactly as this run left it: the kernel numbers every
//! committed nftables transaction (the ruleset generation), and a repair
//! that finds the number it saw right after its own last change (and that
//! change was the only one in between) knows nobody touched any table
//! since, so it reads nothing back (at 50,000 VIPs the replacement took
//! about 2 s of `nft` in the kernel lab, and changes waited behind it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use tracing::{debug, info, warn};

use crate::dataplane::{Op, Table};
use crate::model::{Forwarding, Protocol, ServiceKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSettings {
    /// The dummy interface that holds the VIPs; created if missing.
    pub interface: String,
    /// Install the masquerade table.
    pub masquerade: bool,
    /// Masquerade to the VIP rather than the member's own address, so a
    /// connection keeps its addresses when another member carries it
    /// (with `[dataplane.connection_sync]`; docs/connections.md).
    pub masquerade_to_vip: bool,
}

/// The VIPs made local now, shared with the ownership check.
pub type LocalVips = Arc<RwLock<BTreeSet<IpAddr>>>;

/// lb-node's routing table of local VIP routes ("lb" in ASCII).
pub const VIP_TABLE: u32 = 0x6c62;
/// The priority of the rule that looks `VIP_TABLE` up: after the kernel's
/// local table (0), before main (32766) and most rules operators add.
pub const VIP_RULE_PRIORITY: u32 = 5;

/// Masquerade VIPs changed by one change at most before the table is
/// replaced whole instead of changed element by element.
const ELEMENT_CHANGES_AT_MOST: usize = 4096;

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
    /// The table is there (installed by this run or an earlier one), so a
    /// change must reach it even when it no longer needs a table.
    table_present: bool,
    /// What this run installed last (the sets' elements, the mark rules),
    /// and whether the next install must replace the whole table.
    installed_masq: BTreeSet<IpAddr>,
    installed_marks: BTreeMap<ServiceKey, u32>,
    full_install: bool,
    /// The VIPs whose masquerade may have changed since the last install:
    /// what an element change looks at, so that it costs the change, not
    /// the table (a difference of two 50,000-element sets took most of a
    /// new VIP's 55 ms in the kernel lab).
    masq_touched: BTreeSet<IpAddr>,
    /// The nftables generation right after this run's last change of the
    /// table, when that change was the only transaction in between (the
    /// generation moved by exactly one). While the kernel still reports it,
    /// nothing has touched nftables since, and a repair need not read the
    /// table back nor replace it.
    clean_generation: Option<u32>,
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
        netlink
            .ensure_lookup_rule(VIP_TABLE, VIP_RULE_PRIORITY)
            .await?;
        let mut present: BTreeSet<IpAddr> = netlink
            .local_routes(VIP_TABLE, index)
            .await?
            .into_iter()
            .collect();
        // Earlier versions made the VIPs addresses of the interface: the
        // same VIPs as routes, once, at the upgrade (routes first, so that
        // no VIP stops being local in between).
        let addresses = netlink.addresses_on(index).await?;
        let addresses: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|ip| !is_link_local(ip) && !ip.is_loopback())
            .collect();
        if !addresses.is_empty() {
            info!(
                vips = addresses.len(),
                interface = %settings.interface,
                "moving the VIPs from addresses of the interface to local routes"
            );
            let failed = netlink.add_local_routes(VIP_TABLE, index, &addresses).await;
            if let Some((ip, e)) = failed.first() {
                anyhow::bail!("cannot move VIP {ip} to a local route: {e:#}");
            }
            present.extend(addresses.iter().copied());
            netlink.remove_addresses(index, &addresses).await?;
        }
        Ok(Local {
            settings,
            netlink,
            index,
            vips: Arc::new(RwLock::new(present)),
            services: BTreeMap::new(),
            masq: BTreeSet::new(),
            marks: BTreeMap::new(),
            table_dirty: true,
            table_present: false,
            installed_masq: BTreeSet::new(),
            installed_marks: BTreeMap::new(),
            full_install: true,
            masq_touched: BTreeSet::new(),
            clean_generation: None,
        })
    }

    /// The firewall-mark services an earlier run recorded (`recorded_marks`).
    pub fn with_marks(mut self, marks: BTreeMap<ServiceKey, u32>) -> Self {
        self.table_present |= !marks.is_empty();
        self.marks = marks;
        self
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
        // A repair checks the table too. Nothing has changed nftables since
        // this run's last change of it (the generation says so): only what
        // the dump's view changes. Otherwise it is replaced whole.
        let generation = self
            .clean_generation
            .and_then(|_| crate::nft_sets::generation().ok());
        if generation.is_some()
            && generation == self.clean_generation
            && marks == self.installed_marks
        {
            let wanted = if self.settings.masquerade {
                &masq
            } else {
                &BTreeSet::new()
            };
            let differ: Vec<IpAddr> = wanted
                .symmetric_difference(&self.installed_masq)
                .copied()
                .collect();
            debug!(
                generation,
                elements_to_change = differ.len(),
                "masquerade table untouched since this run changed it: not read back"
            );
            self.table_dirty |= !differ.is_empty();
            self.masq_touched.extend(differ);
        } else {
            self.table_dirty = true;
            self.full_install = true;
        }
        (self.marks, self.masq) = (marks, masq);
        let wanted: BTreeSet<IpAddr> = self.services.keys().map(|k| k.vip).collect();
        // What the kernel has, not what this run believes: a route or the
        // rule removed by hand (or by a network manager) comes back here.
        if let Err(e) = self.check_kernel().await {
            warn!(
                error = format!("{e:#}"),
                "cannot read the VIP routes; repaired from what this run believes"
            );
        }
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
            if changed {
                self.table_dirty = true;
                self.masq_touched.insert(vip);
            }
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
        let started = std::time::Instant::now();
        let (added, removed) = (add.len(), remove.len());
        let mut errors = Vec::new();
        if !add.is_empty() || !remove.is_empty() {
            let failed_adds = self
                .netlink
                .add_local_routes(VIP_TABLE, self.index, &add)
                .await;
            let failed_removes = self
                .netlink
                .remove_local_routes(VIP_TABLE, self.index, &remove)
                .await;
            let failed: BTreeSet<IpAddr> = failed_adds
                .iter()
                .chain(&failed_removes)
                .map(|(ip, _)| *ip)
                .collect();
            let mut local = self.vips.write().unwrap_or_else(PoisonError::into_inner);
            local.extend(add.iter().filter(|vip| !failed.contains(vip)));
            for vip in remove.iter().filter(|vip| !failed.contains(vip)) {
                local.remove(vip);
            }
            errors.extend(
                failed_adds
                    .iter()
                    .chain(&failed_removes)
                    .map(|(_, e)| format!("{e:#}")),
            );
        }
        let addresses_done = started.elapsed();
        let want_table = self.settings.masquerade || !self.marks.is_empty() || self.table_present;
        if want_table && self.table_dirty {
            // Thousands of elements (a full sync) go faster, and fit, as
            // one table replacement: nft_sets refuses batches over 150 KiB
            // (about 9,000 IPv4 elements), after building them.
            let by_elements = !self.full_install
                && self.marks == self.installed_marks
                && self.masq_touched.len() <= ELEMENT_CHANGES_AT_MOST;
            let mut done = false;
            // The generation just before a commit: was it the only
            // transaction? Read only when something is committed (a change
            // that adds and deletes nothing costs no netlink round trip).
            let mut before = None;
            let mut committed = true;
            let mut replaced = false;
            if by_elements {
                let (mut add, mut delete) = (BTreeSet::new(), BTreeSet::new());
                for vip in &self.masq_touched {
                    let wanted = self.settings.masquerade && self.masq.contains(vip);
                    match (wanted, self.installed_masq.contains(vip)) {
                        (true, false) => add.insert(*vip),
                        (false, true) => delete.insert(*vip),
                        _ => false,
                    };
                }
                committed = !add.is_empty() || !delete.is_empty();
                if committed {
                    before = crate::nft_sets::generation().ok();
                }
                match super::nft_table::change_elements(&add, &delete) {
                    Ok(()) => {
                        self.installed_masq.extend(add);
                        for vip in &delete {
                            self.installed_masq.remove(vip);
                        }
                        done = true;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot change the masquerade sets' elements; replacing the table");
                    }
                }
            }
            if !done {
                let masq = if self.settings.masquerade {
                    self.masq.clone()
                } else {
                    BTreeSet::new()
                };
                before = crate::nft_sets::generation().ok();
                match super::nft_table::install_table(
                    &masq,
                    &self.marks,
                    self.settings.masquerade_to_vip,
                )
                .await
                {
                    Ok(()) => {
                        self.installed_masq = masq;
                        done = true;
                        replaced = true;
                    }
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if done && committed {
                // Clean again only if nothing else committed: neither
                // during this change nor, for a change of elements (which
                // trusts the rest of the table), since the last clean one.
                let continuous = replaced || before == self.clean_generation;
                let after = crate::nft_sets::generation().ok();
                self.clean_generation = before
                    .zip(after)
                    .filter(|(b, a)| continuous && *a == b.wrapping_add(1))
                    .map(|(_, a)| a);
            } else if !done {
                self.clean_generation = None;
            }
            if done {
                self.table_dirty = false;
                self.table_present = true;
                self.full_install = false;
                self.installed_marks = self.marks.clone();
                self.masq_touched.clear();
            } else {
                self.full_install = true;
            }
        }
        for e in &errors {
            warn!(error = %e, "VIP interface or masquerade table not as wanted; retried at the next change or repair");
        }
        debug!(
            added,
            removed,
            addresses_ms = addresses_done.as_secs_f64() * 1000.0,
            table_ms = (started.elapsed() - addresses_done).as_secs_f64() * 1000.0,
            "VIP interface and masquerade table converged"
        );
    }

    /// Reads the VIP routes back from the kernel (and puts the lookup rule
    /// back if it is gone).
    async fn check_kernel(&mut self) -> anyhow::Result<()> {
        if !self
            .netlink
            .has_lookup_rule(VIP_TABLE, VIP_RULE_PRIORITY)
            .await?
        {
            warn!(
                table = VIP_TABLE,
                priority = VIP_RULE_PRIORITY,
                "the VIP table's rule was gone; adding it back"
            );
            self.netlink
                .ensure_lookup_rule(VIP_TABLE, VIP_RULE_PRIORITY)
                .await?;
        }
        let present: BTreeSet<IpAddr> = self
            .netlink
            .local_routes(VIP_TABLE, self.index)
            .await?
            .into_iter()
            .collect();
        *self.vips.write().unwrap_or_else(PoisonError::into_inner) = present;
        Ok(())
    }
}

/// IPv6 link-local addresses (the kernel gives every interface one): not
/// VIPs.
fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}
