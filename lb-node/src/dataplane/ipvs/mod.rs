//! The kernel IPVS dataplane, over generic netlink.
//!
//! - `msg`: the IPVS family's messages (pure);
//! - `socket`: a blocking socket that pipelines requests and runs dumps;
//! - `read`: the table read back (dumps, partial reads, a repair's listing);
//! - `local`: the VIPs made local (a dummy interface) and the masquerade
//!   return path (an nftables table of lb-node's own, `nft_table`);
//! - here: `IpvsDataplane`, the `Dataplane` the reconciler drives.
//!
//! Ownership: lb-node manages only the services whose VIP is inside the
//! configured `managed_networks` (by default the VIPs it has been told to
//! serve); a dump shows it nothing else and it never deletes anything else,
//! unless `own_whole_table` is set.
//!
//! Graceful termination: a removed destination first gets weight 0, and is
//! deleted when it has no connections left or `drain_timeout` has passed.
//! While it drains, dumps hide it, so the reconciler does not see it as
//! drift; adding it back ends the drain.
//!
//! A managed service or destination whose kernel settings lb-node would
//! never program (another scheduler flag, a persistence netmask, a tunnel
//! type, thresholds) is deleted when a dump finds it, so that the plan adds
//! it back as it should be.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tracing::{info, warn};

use crate::dataplane::{
    ApplyReport, Dataplane, DataplaneError, DestKey, Drains, Op, OpFailure, Table,
};
use crate::model::{Protocol, ServiceKey};

pub mod conntrack;
mod convert;
mod encode;
pub mod local;
pub mod msg;
pub mod nft_table;
mod read;
pub mod socket;
pub mod sync;
mod sysctls;

use msg::{IpvsMessage, KernelDest, KernelKey, TopAttr, cmd};
pub use socket::{Info, IpvsError, IpvsSocket};
pub use sysctls::{SYSCTLS, set_sysctls};

use convert::{Request, counters_of, dest_msg, explain, kernel_key};

/// Which services of the kernel table belong to lb-node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Every service: anything else is deleted.
    WholeTable,
    /// Services whose VIP is inside one of these networks.
    Networks(Vec<IpNet>),
    /// Services whose VIP is an address of the VIP interface (which
    /// lb-node keeps equal to its table): kube-proxy's rule.
    VipInterface,
}

fn owns(ownership: &Ownership, local: Option<&local::LocalVips>, key: &KernelKey) -> bool {
    let KernelKey::Addr { vip, .. } = key else {
        return *ownership == Ownership::WholeTable;
    };
    match ownership {
        Ownership::WholeTable => true,
        Ownership::Networks(nets) => nets.iter().any(|n| n.contains(vip)),
        Ownership::VipInterface => local.is_some_and(|l| {
            l.read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(vip)
        }),
    }
}

/// Settings of the IPVS dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsSettings {
    pub ownership: Ownership,
    /// How long a removed destination may keep its connections; zero
    /// deletes at once.
    pub drain_timeout: Duration,
    /// The same for UDP services.
    pub udp_drain_timeout: Duration,
    /// Make VIPs local on this dummy interface, and install the masquerade
    /// table; `None` leaves both to the operator.
    pub local: Option<local::LocalSettings>,
    /// The kernel's connection sync with the other members; `None`: off
    /// (daemons found running are left alone).
    pub sync: Option<crate::config::ConnectionSync>,
    /// The kernel's rate estimators (`dataplane.rate_estimation`).
    pub rate_estimation: crate::config::RateEstimation,
}

#[derive(Debug)]
struct Inner {
    socket: Option<IpvsSocket>,
    settings: IpvsSettings,
    local_vips: Option<local::LocalVips>,
    /// The firewall mark of each firewall-mark service lb-node programmed:
    /// the kernel names those by mark only.
    marks: BTreeMap<ServiceKey, u32>,
    /// Destinations draining after removal (`dataplane::drain`, pure).
    draining: Drains,
}

/// This thread's user and system CPU so far, in seconds.
pub(super) fn thread_cpu() -> Option<(f64, f64)> {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_THREAD).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some((secs(u.user_time()), secs(u.system_time())))
}

impl std::fmt::Debug for IpvsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpvsSocket")
    }
}

impl Inner {
    fn key(&self, k: &ServiceKey) -> KernelKey {
        kernel_key(k, self.marks.get(k).copied())
    }

    /// How long a removed destination of service `k` drains.
    fn drain_for(&self, k: &ServiceKey) -> Duration {
        match k.protocol {
            Protocol::Udp => self.settings.udp_drain_timeout,
            Protocol::Tcp | Protocol::Sctp => self.settings.drain_timeout,
        }
    }

    fn socket(&mut self) -> Result<&mut IpvsSocket, IpvsError> {
        if self.socket.is_none() {
            self.socket = Some(IpvsSocket::open()?);
        }
        self.socket
            .as_mut()
            .ok_or_else(|| IpvsError::Io("no socket".into()))
    }

    /// Forgets a socket whose state is unknown; the next call opens a new one.
    fn fail(&mut self, e: IpvsError) -> DataplaneError {
        if matches!(e, IpvsError::Io(_)) {
            self.socket = None;
        }
        DataplaneError::Unavailable(e.to_string())
    }

    /// Applies `ops` a slice at a time, so a full sync of a big table never
    /// holds every request in memory at once.
    fn apply(&mut self, ops: &[Op]) -> ApplyReport {
        const SLICE: usize = 8192;
        let cpu_before = (ops.len() > SLICE).then(thread_cpu).flatten();
        let started = Instant::now();
        let mut report = ApplyReport::default();
        for chunk in ops.chunks(SLICE) {
            let part = self.apply_slice(chunk);
            report.applied += part.applied;
            report.failed.extend(part.failed);
        }
        // A big batch runs on this one thread, the kernel's work on each
        // request inside its send call: this thread's system time is what
        // the kernel spent on the batch, a floor for any client sending
        // the same requests (docs/ipvs.md, *Figures*).
        if let (Some((u0, s0)), Some((u1, s1))) = (cpu_before, thread_cpu()) {
            info!(
                ops = ops.len(),
                wall_s = (started.elapsed().as_secs_f64() * 1e3).round() / 1e3,
                thread_user_s = ((u1 - u0) * 1e3).round() / 1e3,
                thread_system_s = ((s1 - s0) * 1e3).round() / 1e3,
                "IPVS batch applied: the CPU of the thread that sent it"
            );
        }
        report
    }

    fn apply_slice(&mut self, ops: &[Op]) -> ApplyReport {
        let now = Instant::now();
        // A drain sets weight 0 with the rest of the destination as the
        // kernel has it: read the destinations of the services concerned
        // (one dump per service, so the cost follows the change).
        let mut current: BTreeMap<(ServiceKey, DestKey), KernelDest> = BTreeMap::new();
        {
            let services: BTreeSet<ServiceKey> = ops
                .iter()
                .filter_map(|op| match op {
                    Op::DeleteDestination { service, dest }
                        if !self.drain_for(service).is_zero()
                            && !self.draining.is_draining(service, dest) =>
                    {
                        Some(*service)
                    }
                    _ => None,
                })
                .collect();
            for svc in services {
                let kk = self.key(&svc);
                match self.socket().and_then(|s| s.dests(&kk)) {
                    Ok(dests) => current.extend(dests.into_iter().map(|d| {
                        (
                            (
                                svc,
                                DestKey {
                                    address: d.address,
                                    port: d.port,
                                },
                            ),
                            d,
                        )
                    })),
                    Err(IpvsError::Kernel(_)) => {}
                    Err(e) => {
                        let error = self.fail(e);
                        return ApplyReport {
                            applied: 0,
                            failed: ops
                                .iter()
                                .map(|op| OpFailure {
                                    op: op.clone(),
                                    error: error.clone(),
                                })
                                .collect(),
                        };
                    }
                }
            }
        }
        let mut requests = Vec::with_capacity(ops.len());
        // Which op each request stands for; None: done without a request.
        let mut origin = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let m = match op {
                Op::AddService { service, settings } | Op::UpdateService { service, settings } => {
                    match settings.fwmark {
                        Some(m) => self.marks.insert(*service, m),
                        None => self.marks.remove(service),
                    };
                    let c = if matches!(op, Op::AddService { .. }) {
                        cmd::NEW_SERVICE
                    } else {
                        cmd::SET_SERVICE
                    };
                    Request::Service(c, self.key(service), Some((service, settings)))
                }
                Op::DeleteService { service } => {
                    self.draining.stop_service(service);
                    let m = Request::Service(cmd::DEL_SERVICE, self.key(service), None);
                    self.marks.remove(service);
                    m
                }
                Op::AddDestination {
                    service,
                    dest,
                    settings,
                } => {
                    if self.draining.stop(service, dest) {
                        // Back before its drain ended: it is still there.
                        Request::Dest(cmd::SET_DEST, self.key(service), dest, Some(settings))
                    } else {
                        Request::Dest(cmd::NEW_DEST, self.key(service), dest, Some(settings))
                    }
                }
                Op::UpdateDestination {
                    service,
                    dest,
                    settings,
                } => {
                    self.draining.stop(service, dest);
                    Request::Dest(cmd::SET_DEST, self.key(service), dest, Some(settings))
                }
                Op::DeleteDestination { service, dest } if !self.drain_for(service).is_zero() => {
                    let drain = self.drain_for(service);
                    let key = (*service, *dest);
                    let Some(kd) = current
                        .get(&key)
                        .filter(|_| !self.draining.is_draining(service, dest))
                    else {
                        // Draining already, or gone already.
                        origin.push(None);
                        continue;
                    };
                    self.draining.start(*service, *dest, now, drain);
                    // Weight 0 first: no new connections, the open ones go on.
                    let mut kd = kd.clone();
                    kd.weight = 0;
                    Request::Ready(IpvsMessage::new(
                        cmd::SET_DEST,
                        vec![
                            TopAttr::Service(self.key(service).attrs()),
                            TopAttr::Dest(kd.attrs()),
                        ],
                    ))
                }
                Op::DeleteDestination { service, dest } => {
                    Request::Dest(cmd::DEL_DEST, self.key(service), dest, None)
                }
            };
            requests.push(m);
            origin.push(Some(i));
        }
        let mut report = ApplyReport::default();
        report.applied += origin.iter().filter(|o| o.is_none()).count();
        let origin: Vec<usize> = origin.into_iter().flatten().collect();
        let outcomes = match self.socket().and_then(|s| s.execute(requests)) {
            Ok(o) => o,
            Err(e) => {
                let error = self.fail(e);
                report.failed = origin
                    .iter()
                    .map(|&i| OpFailure {
                        op: ops[i].clone(),
                        error: error.clone(),
                    })
                    .collect();
                return report;
            }
        };
        for (&i, outcome) in origin.iter().zip(outcomes) {
            let op = &ops[i];
            match outcome {
                Ok(()) => report.applied += 1,
                // Idempotent: adding what exists, removing what is gone.
                Err(libc::EEXIST)
                    if matches!(op, Op::AddService { .. } | Op::AddDestination { .. }) =>
                {
                    report.applied += 1
                }
                Err(libc::ENOENT | libc::ESRCH)
                    if matches!(op, Op::DeleteService { .. } | Op::DeleteDestination { .. }) =>
                {
                    if let Op::DeleteDestination { service, dest } = op {
                        self.draining.stop(service, dest);
                    }
                    report.applied += 1
                }
                Err(errno) => report.failed.push(OpFailure {
                    op: op.clone(),
                    error: DataplaneError::Rejected {
                        op: op.to_string(),
                        reason: explain(op, errno),
                        errno: Some(errno),
                    },
                }),
            }
        }
        report
    }

    fn counters(
        &mut self,
        keys: &[ServiceKey],
    ) -> Result<Vec<crate::dataplane::ServiceCounters>, DataplaneError> {
        let mut out = Vec::new();
        for key in keys {
            let kk = self.key(key);
            let result = self.socket().and_then(|s| {
                let Some(service) = s.service(&kk)? else {
                    return Ok(None);
                };
                let dests = s.dests(&kk)?;
                Ok(Some((service, dests)))
            });
            match result {
                Ok(Some((service, dests))) => out.push(crate::dataplane::ServiceCounters {
                    key: *key,
                    counters: counters_of(service.stats),
                    destinations: dests
                        .iter()
                        .map(|d| crate::dataplane::DestinationCounters {
                            dest: DestKey {
                                address: d.address,
                                port: d.port,
                            },
                            weight: d.weight,
                            active_connections: d.active_conns,
                            inactive_connections: d.inactive_conns,
                            counters: counters_of(d.stats),
                        })
                        .collect(),
                }),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(out)
    }

    /// Deletes drained destinations: no connection left, or out of time.
    fn finish_drains(&mut self) -> Result<usize, DataplaneError> {
        if self.draining.is_empty() {
            return Ok(0);
        }
        let now = Instant::now();
        let mut done = Vec::new();
        for svc in self.draining.services() {
            let kk = self.key(&svc);
            let dests = match self.socket().and_then(|s| s.dests(&kk)) {
                Ok(d) => d,
                Err(IpvsError::Kernel(_)) => Vec::new(), // the service is gone
                Err(e) => return Err(self.fail(e)),
            };
            let connections = |d: &DestKey| {
                dests
                    .iter()
                    .find(|k| k.address == d.address && k.port == d.port)
                    .map(|k| u64::from(k.active_conns) + u64::from(k.inactive_conns))
            };
            for (d, end) in self.draining.finish(&svc, connections, now) {
                done.push((svc, d, end));
            }
        }
        let mut requests = Vec::new();
        for (s, d, end) in &done {
            if end.deletes() {
                info!(service = %s, destination = %d, reason = end.reason(), "drained destination deleted");
                requests.push(dest_msg(cmd::DEL_DEST, &self.key(s), d, None));
            }
        }
        let n = requests.len();
        if n > 0 {
            let result = self.socket().and_then(|s| s.execute(requests));
            result.map_err(|e| self.fail(e))?;
        }
        Ok(n)
    }
}

/// The dataplane that programs kernel IPVS.
#[derive(Debug, Clone)]
pub struct IpvsDataplane {
    inner: Arc<Mutex<Inner>>,
    local: Option<Arc<tokio::sync::Mutex<local::Local>>>,
}

impl IpvsDataplane {
    /// Opens IPVS (an error if this kernel has none), sets the sysctls and
    /// prepares the local VIP interface (through `netlink`, the member's
    /// rtnetlink connection).
    pub async fn open(
        settings: IpvsSettings,
        netlink: &crate::netlink::Netlink,
    ) -> Result<Self, IpvsError> {
        let (socket, info) = tokio::task::spawn_blocking(|| {
            let mut s = IpvsSocket::open()?;
            let info = s.info()?;
            Ok::<_, IpvsError>((s, info))
        })
        .await
        .map_err(|e| IpvsError::Io(e.to_string()))??;
        info!(
            version = format!(
                "{}.{}.{}",
                info.version >> 16,
                (info.version >> 8) & 0xff,
                info.version & 0xff
            ),
            conn_tab_size = info.conn_tab_size,
            "IPVS found"
        );
        set_sysctls(settings.rate_estimation);
        let mut socket = socket;
        if let Some(sync) = settings.sync.clone() {
            socket = tokio::task::spawn_blocking(move || {
                let mut socket = socket;
                sync::start(&mut socket, &sync).map(|()| socket)
            })
            .await
            .map_err(|e| IpvsError::Io(e.to_string()))??;
        }
        // The firewall-mark services an earlier run programmed, from the
        // record it left in its nftables table (the kernel names them by
        // mark only): without it a restarted member would never recognise
        // them, nor remove one gone from its table (issue 20).
        let marks = match &settings.local {
            Some(_) => nft_table::recorded_marks().await,
            None => BTreeMap::new(),
        };
        let local = match &settings.local {
            Some(l) => Some(
                // A connection of its own: a VIP's route must not wait
                // behind another task's dump on the shared one (the pod
                // routes' check reads every table, 50,000 VIP routes
                // included: 277 ms for one new VIP in the kernel lab).
                local::Local::new(
                    l.clone(),
                    netlink
                        .another()
                        .map_err(|e| IpvsError::Io(format!("{e:#}")))?,
                )
                .await
                .map_err(|e| IpvsError::Io(format!("{e:#}")))?
                .with_marks(marks.clone()),
            ),
            None => None,
        };
        if settings.ownership == Ownership::VipInterface && local.is_none() {
            warn!(
                "IPVS ownership by VIP interface without a VIP interface: lb-node will not recognise (or clean up) services left by an earlier run"
            );
        }
        let local_vips = local.as_ref().map(local::Local::vips);
        let local = local.map(|l| Arc::new(tokio::sync::Mutex::new(l)));
        Ok(IpvsDataplane {
            inner: Arc::new(Mutex::new(Inner {
                socket: Some(socket),
                settings,
                local_vips,
                marks,
                draining: Drains::default(),
            })),
            local,
        })
    }

    /// Runs netlink work on the calling thread: a few operations inline
    /// (a change costs one round trip to the kernel, no thread hand-off),
    /// a big batch with `block_in_place` so the runtime's other tasks move
    /// to another worker meanwhile.
    fn netlink<T>(&self, small: bool, f: impl FnOnce(&mut Inner) -> T) -> T {
        let work = || {
            let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if small || !multi_thread {
            work()
        } else {
            tokio::task::block_in_place(work)
        }
    }
}

impl Dataplane for IpvsDataplane {
    fn kind(&self) -> &'static str {
        "ipvs"
    }

    async fn dump(&mut self) -> Result<Table, DataplaneError> {
        let table = self.netlink(false, Inner::dump)?;
        if let Some(local) = &self.local {
            local.lock().await.sync_with(&table).await;
        }
        Ok(table)
    }

    async fn dump_only(&mut self, keys: &BTreeSet<ServiceKey>) -> Result<Table, DataplaneError> {
        self.netlink(keys.len() <= 16, |inner| inner.dump_only(keys))
    }

    fn list_services(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<ServiceKey>, DataplaneError>> + Send + 'static
    {
        let list = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lister();
        async move {
            let unavailable = |e: String| DataplaneError::Unavailable(e);
            tokio::task::spawn_blocking(list)
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .map_err(|e| unavailable(e.to_string()))
        }
    }

    async fn repair_beside(&mut self, table: &Table) {
        if let Some(local) = &self.local {
            local.lock().await.sync_with(table).await;
        }
    }

    async fn apply(&mut self, ops: &[Op]) -> ApplyReport {
        let started = Instant::now();
        // Where a change's time goes (debug): waiting for the socket's
        // lock, then this thread's own CPU, a CPU it waited for, and the
        // rest (blocked in the kernel).
        let small = ops.len() <= 64;
        let account = small && tracing::enabled!(tracing::Level::DEBUG);
        let mut split = None;
        let report = self.netlink(small, |inner| {
            let locked = started.elapsed();
            let before = account.then(crate::thread_time::Reading::now).flatten();
            let report = inner.apply(ops);
            if let Some(before) = before
                && let Some(after) = crate::thread_time::Reading::now()
            {
                split = Some((locked, after.since(before)));
            }
            report
        });
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        match split {
            Some((locked, thread)) => tracing::debug!(
                ops = ops.len(),
                ipvs_ms = ms(started.elapsed()),
                lock_wait_ms = ms(locked),
                ran_ms = ms(thread.ran),
                waited_for_a_cpu_ms = ms(thread.waited),
                "IPVS operations applied"
            ),
            None => tracing::debug!(
                ops = ops.len(),
                ipvs_ms = ms(started.elapsed()),
                "IPVS operations applied"
            ),
        }
        if let Some(local) = &self.local {
            local.lock().await.note_ops(ops).await;
        }
        report
    }

    async fn counters(
        &mut self,
        keys: &[ServiceKey],
    ) -> Result<Vec<crate::dataplane::ServiceCounters>, DataplaneError> {
        self.netlink(keys.len() <= 16, |inner| inner.counters(keys))
    }

    async fn maintain(&mut self) -> Result<(), DataplaneError> {
        // Nothing to do but a look at a map, unless something drains.
        self.netlink(true, Inner::finish_drains).map(|_| ())
    }
}
