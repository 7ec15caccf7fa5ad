//! Reading the kernel's table back: whole dumps (start, resync), partial
//! reads (a repair's slice, a refused service), the listing of the
//! managed services that starts a repair round (on a socket of its own),
//! and the replacement of settings lb-node never programs.

use std::collections::{BTreeMap, BTreeSet};

use tracing::warn;

use super::convert::{read_dest, read_service};
use super::msg::{IpvsMessage, KernelDest, KernelKey, TopAttr, cmd};
use super::{Inner, IpvsError, IpvsSocket, Ownership, local, owns};
use crate::dataplane::{DataplaneError, DestKey, ProgrammedService, Table};
use crate::model::{Protocol, ServiceKey};

/// Whether a kernel service is lb-node's: inside its ownership, or a
/// firewall mark it programmed.
fn manages(
    ownership: &Ownership,
    local: Option<&local::LocalVips>,
    by_mark: &BTreeMap<(bool, u32), ServiceKey>,
    key: &KernelKey,
) -> bool {
    let known_mark =
        matches!(key, KernelKey::Fwmark { ipv6, mark } if by_mark.contains_key(&(*ipv6, *mark)));
    known_mark || owns(ownership, local, key)
}

/// Managed services and destinations whose kernel settings lb-node would
/// never program, found by a read.
#[derive(Debug, Default)]
struct Unfit {
    services: Vec<KernelKey>,
    dests: Vec<(KernelKey, std::net::IpAddr, u16)>,
}

impl Unfit {
    /// Deletes them, so that the plan adds them back as lb-node programs
    /// them.
    fn replace(self, sock: &mut IpvsSocket) -> Result<(), IpvsError> {
        let mut fixes = Vec::new();
        for key in &self.services {
            warn!(service = %key, "a managed IPVS service has settings lb-node does not program; replacing it");
            fixes.push(IpvsMessage::new(
                cmd::DEL_SERVICE,
                vec![TopAttr::Service(key.attrs())],
            ));
        }
        for (key, addr, port) in &self.dests {
            warn!(service = %key, destination = %crate::model::SocketText(*addr, *port), "a managed IPVS destination has settings lb-node does not program; replacing it");
            fixes.push(IpvsMessage::new(
                cmd::DEL_DEST,
                vec![
                    TopAttr::Service(key.attrs()),
                    TopAttr::Dest(KernelDest::key_attrs(*addr, *port)),
                ],
            ));
        }
        if !fixes.is_empty() {
            sock.execute(fixes)?;
        }
        Ok(())
    }
}

impl Inner {
    pub(super) fn dump(&mut self) -> Result<Table, DataplaneError> {
        let result = self.dump_inner();
        result.map_err(|e| self.fail(e))
    }

    /// The firewall-mark services lb-node programmed, by kernel name.
    fn by_mark(&self) -> BTreeMap<(bool, u32), ServiceKey> {
        self.marks
            .iter()
            .map(|(k, m)| ((k.vip.is_ipv6(), *m), *k))
            .collect()
    }

    /// Whether a kernel service is lb-node's: inside its ownership, or a
    /// firewall mark it programmed.
    fn manages(&self, key: &KernelKey, by_mark: &BTreeMap<(bool, u32), ServiceKey>) -> bool {
        manages(
            &self.settings.ownership,
            self.local_vips.as_ref(),
            by_mark,
            key,
        )
    }

    fn dump_inner(&mut self) -> Result<Table, IpvsError> {
        let by_mark = self.by_mark();
        let listed = self.socket()?.services()?;
        let mut table = Table::default();
        let mut unfit = Unfit::default();
        for ks in listed {
            if !self.manages(&ks.key, &by_mark) {
                continue;
            }
            let Some((key, settings)) = read_service(&ks, &by_mark) else {
                unfit.services.push(ks.key);
                continue;
            };
            let destinations = self.read_dests(&ks.key, &mut unfit)?;
            table.services.insert(
                key,
                ProgrammedService {
                    settings,
                    destinations,
                },
            );
        }
        unfit.replace(self.socket()?)?;
        // Draining destinations are in transition, not drift.
        self.draining.retain(|svc, dest| {
            table
                .services
                .get(svc)
                .is_some_and(|s| s.destinations.contains_key(dest))
        });
        for (svc, dest) in self.draining.keys() {
            if let Some(s) = table.services.get_mut(svc) {
                s.destinations.remove(dest);
            }
        }
        Ok(table)
    }

    /// The destinations of one kernel service as lb-node programs them;
    /// the others are noted in `unfit`.
    fn read_dests(
        &mut self,
        key: &KernelKey,
        unfit: &mut Unfit,
    ) -> Result<BTreeMap<DestKey, crate::dataplane::Destination>, IpvsError> {
        let mut destinations = BTreeMap::new();
        for kd in self.socket()?.dests(key)? {
            match read_dest(&kd) {
                Some((dk, d)) => {
                    destinations.insert(dk, d);
                }
                None => unfit.dests.push((*key, kd.address, kd.port)),
            }
        }
        Ok(destinations)
    }

    /// A listing of the managed services' keys, to run on a socket and a
    /// thread of its own. A service with settings lb-node never programs
    /// is listed by its address, so that the slice that reads it replaces
    /// it.
    pub(super) fn lister(
        &self,
    ) -> impl FnOnce() -> Result<Vec<ServiceKey>, IpvsError> + Send + use<> {
        let ownership = self.settings.ownership.clone();
        let local_vips = self.local_vips.clone();
        let by_mark = self.by_mark();
        move || {
            let mut sock = IpvsSocket::open()?;
            let mut keys = Vec::new();
            for ks in sock.services()? {
                if !manages(&ownership, local_vips.as_ref(), &by_mark, &ks.key) {
                    continue;
                }
                if let Some((key, _)) = read_service(&ks, &by_mark) {
                    keys.push(key);
                } else if let KernelKey::Addr {
                    vip,
                    port,
                    protocol,
                } = ks.key
                {
                    let protocol = match protocol {
                        6 => Protocol::Tcp,
                        17 => Protocol::Udp,
                        132 => Protocol::Sctp,
                        _ => continue,
                    };
                    keys.push(ServiceKey {
                        vip,
                        port,
                        protocol,
                    });
                }
            }
            Ok(keys)
        }
    }

    /// The services `keys` as the kernel holds them (absent ones left out),
    /// draining destinations hidden as in a dump: one read per service.
    /// Settings lb-node never programs are deleted, as a dump does, so
    /// that the plan adds them back as they should be.
    pub(super) fn dump_only(
        &mut self,
        keys: &BTreeSet<ServiceKey>,
    ) -> Result<Table, DataplaneError> {
        let result = self.dump_only_inner(keys);
        result.map_err(|e| self.fail(e))
    }

    fn dump_only_inner(&mut self, keys: &BTreeSet<ServiceKey>) -> Result<Table, IpvsError> {
        let mut table = Table::default();
        let mut unfit = Unfit::default();
        for key in keys {
            let kk = self.key(key);
            let by_mark: BTreeMap<(bool, u32), ServiceKey> = match kk {
                KernelKey::Fwmark { ipv6, mark } => BTreeMap::from([((ipv6, mark), *key)]),
                KernelKey::Addr { .. } => BTreeMap::new(),
            };
            let Some(ks) = self.socket()?.service(&kk)? else {
                continue;
            };
            let Some((_, settings)) = read_service(&ks, &by_mark) else {
                unfit.services.push(kk);
                continue;
            };
            let mut destinations = self.read_dests(&kk, &mut unfit)?;
            destinations.retain(|d, _| !self.draining.is_draining(key, d));
            table.services.insert(
                *key,
                ProgrammedService {
                    settings,
                    destinations,
                },
            );
        }
        unfit.replace(self.socket()?)?;
        Ok(table)
    }
}
