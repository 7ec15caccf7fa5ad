//! L2 announcement: this member answers ARP and neighbour solicitations for
//! the VIPs it announces, from user space, and sends gratuitous ARP and
//! unsolicited neighbour advertisements when it takes a VIP over.
//!
//! The VIPs themselves are local, so that the kernel accepts their
//! traffic: with IPVS through the dataplane's interface (a local route for
//! every VIP of the table); with the memory dataplane this announcer adds
//! those it announces to `dataplane.vip_interface` (the loopback by
//! default) through rtnetlink. Meanwhile the announcing interface is set to answer ARP only for its own
//! addresses (`arp_ignore = 1`, `arp_announce = 2`; the kernel answers a
//! neighbour solicitation only for addresses of the interface it arrived
//! on). The kernel therefore never answers for a VIP: only this process
//! does, and a process that dies (SIGKILL included) stops answering at
//! once, which a VIP on the announcing interface would not give (the kernel
//! would go on answering for a dead announcer: a split brain at L2). See
//! docs/announcement.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use ipnet::IpNet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::frames::{self, Mac};

/// `[announce]` with `mode = "l2"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Config {
    /// Where ARP and NA are answered and sent.
    pub interface: String,
    /// Where this announcer makes the VIPs it announces local (addresses):
    /// `dataplane.vip_interface` with the memory dataplane ("lo" by
    /// default). None with IPVS, whose dataplane makes every VIP local
    /// through its own interface, and when that setting is "" (the
    /// operator's job).
    pub vip_interface: Option<String>,
    /// Only VIPs in these networks are announced; addresses in them found
    /// on `vip_interface` and not announced are removed (they are ours).
    pub vip_ranges: Vec<IpNet>,
    /// Gratuitous ARP / unsolicited NA sent on takeover.
    pub garp_count: u32,
    pub garp_interval: Duration,
    /// How long a VIP stays local after this member stops announcing it.
    /// ARP answers stop at once; the address stays so that clients whose
    /// ARP caches still point here (until the new owner's gratuitous ARP
    /// reaches them) are served rather than dropped.
    pub linger: Duration,
    /// For `linger` after taking a VIP over from a live member, send TCP
    /// segments of flows this member does not know to that member
    /// (`handover`; on by default).
    pub flow_handover: bool,
    /// With `flow_handover`: how long a takeover waits for the previous
    /// owner to answer the ARP probe that finds it (no answer: nothing is
    /// handed over; after a crash the whole wait is spent).
    pub handover_probe_wait: Duration,
    /// Before announcing a VIP it takes, make the conntrack entries of its
    /// synced connections (`dataplane::ipvs::conntrack`): with IPVS and
    /// connection sync, where the masquerade is to the VIP.
    pub seed_conntrack: bool,
    /// The Kubernetes service CIDRs: their addresses (ClusterIPs) are not
    /// announced one by one; nodes route them through the gateways.
    pub service_cidrs: Vec<IpNet>,
    /// Addresses on the nodes' network, owned and announced like VIPs,
    /// that nodes use as next hops for the service CIDRs.
    pub service_gateways: Vec<IpAddr>,
}

/// What the responder heard from the other members on the segment.
#[derive(Debug, Default)]
struct Heard {
    /// Who announced each VIP last, by the gratuitous ARP it sent.
    announcers: BTreeMap<std::net::Ipv4Addr, Mac>,
    /// Every MAC seen sending a gratuitous ARP or an ARP probe for a VIP
    /// range address: the members (a frame from one is never handed on).
    members: BTreeSet<Mac>,
    /// The VIPs this member is probing for, and who answered.
    probes: BTreeMap<std::net::Ipv4Addr, Vec<Mac>>,
}

type Sender = Arc<Mutex<Box<dyn pnet_datalink::DataLinkSender>>>;

fn lock_heard(heard: &Mutex<Heard>) -> std::sync::MutexGuard<'_, Heard> {
    heard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set_of(set: &RwLock<BTreeSet<IpAddr>>) -> std::sync::RwLockWriteGuard<'_, BTreeSet<IpAddr>> {
    set.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn send(tx: &Sender, frame: &[u8]) {
    let mut tx = tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(Err(e)) = tx.send_to(frame, None) {
        warn!(error = %e, "cannot send an announcement frame");
    }
}

/// Sets a sysctl of the interface, and says what it was.
fn set_sysctl(path: &str, value: &str) {
    match std::fs::write(path, value) {
        Ok(()) => info!(sysctl = path, value, "set"),
        Err(e) => {
            warn!(sysctl = path, value, error = %e, "cannot set; the kernel may answer ARP for VIPs itself")
        }
    }
}

/// Checks the configuration against this machine: the interfaces exist.
pub fn check(config: &L2Config) -> anyhow::Result<()> {
    for name in std::iter::once(&config.interface).chain(&config.vip_interface) {
        anyhow::ensure!(
            std::path::Path::new("/sys/class/net").join(name).exists(),
            "announce: interface {name:?} does not exist on this machine"
        );
    }
    Ok(())
}

/// Checks the services against the L2 settings: each VIP in one of
/// `vip_ranges` (or routed through a service CIDR), since only those are
/// announced. The error names `announce.vip_ranges` in `file`.
pub fn check_services(
    config: &L2Config,
    services: &[crate::model::VirtualService],
    file: &std::path::Path,
) -> Result<(), crate::config::error::ConfigError> {
    for s in services {
        let vip = s.key.vip;
        let routed = config.service_cidrs.iter().any(|n| n.contains(&vip));
        if !routed && !config.vip_ranges.iter().any(|r| r.contains(&vip)) {
            return Err(crate::config::error::ConfigError::new(
                file,
                "announce.vip_ranges",
                format!(
                    "service {:?} has VIP {vip}, outside every announce.vip_ranges network",
                    s.name
                ),
            ));
        }
    }
    Ok(())
}

/// After the hand-over is in place (which takes a moment): the VIPs of
/// `taking` still wanted `now`, recorded as announced by this member; the
/// others' hand-overs end, and they wait for the next round. Only VIPs
/// really announced are recorded: one recorded and then lost before its
/// gratuitous ARP (a leadership change in between withdraws everything for
/// a moment) would look, at its next take, like a VIP coming back to this
/// member, and its flows would not be handed to the member still holding
/// it (the kernel lab caught exactly that: a reset in `rolling-restart`).
fn confirm_taking(
    taking: Vec<IpAddr>,
    now: &BTreeSet<IpAddr>,
    handover: &mut super::handover::Handover,
    heard: &mut Heard,
    mac: Mac,
) -> Vec<IpAddr> {
    let (taking, gone): (Vec<IpAddr>, Vec<IpAddr>) =
        taking.into_iter().partition(|v| now.contains(v));
    for vip in gone {
        if let IpAddr::V4(v4) = vip {
            handover.end(v4);
        }
    }
    for vip in &taking {
        if let IpAddr::V4(v4) = vip {
            heard.announcers.insert(*v4, mac);
        }
    }
    taking
}

/// Finds who holds each of `vips` now (announces it, or keeps it local
/// after a move) by an ARP probe (RFC 5227: sender address 0.0.0.0, so no
/// one's ARP cache changes), waiting up to `handover_probe_wait` for every
/// VIP to be answered. A member that restarted has seen none of the
/// gratuitous ARPs sent before; the probe finds the previous owner all the
/// same, and finds nobody after a crash (nothing is then handed to a dead
/// member). Where several answer (a VIP moved twice within `linger`), the
/// last announcer seen wins; where that is this member itself (a VIP back
/// here before anyone else announced it: its flows are still this
/// member's), nothing is handed over.
async fn find_holders(
    config: &L2Config,
    tx: &Sender,
    mac: Mac,
    heard: &Mutex<Heard>,
    vips: &[std::net::Ipv4Addr],
) -> Vec<(std::net::Ipv4Addr, Mac)> {
    let started = tokio::time::Instant::now();
    let vips: Vec<std::net::Ipv4Addr> = {
        let mut h = lock_heard(heard);
        let vips: Vec<_> = vips
            .iter()
            .copied()
            .filter(|v| h.announcers.get(v) != Some(&mac))
            .collect();
        h.probes = vips.iter().map(|v| (*v, Vec::new())).collect();
        vips
    };
    if vips.is_empty() {
        return Vec::new();
    }
    for vip in &vips {
        send(
            tx,
            &frames::arp_request(mac, std::net::Ipv4Addr::UNSPECIFIED, *vip),
        );
    }
    let deadline = started + config.handover_probe_wait;
    while tokio::time::Instant::now() < deadline
        && lock_heard(heard).probes.values().any(Vec::is_empty)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut h = lock_heard(heard);
    let probes = std::mem::take(&mut h.probes);
    let found: Vec<(std::net::Ipv4Addr, Mac)> = probes
        .into_iter()
        .filter_map(|(vip, answers)| {
            let last = h.announcers.get(&vip).filter(|m| answers.contains(m));
            last.or(answers.first()).map(|m| (vip, *m))
        })
        .collect();
    info!(
        probed = vips.len(),
        answered = found.len(),
        waited = ?started.elapsed(),
        "flow hand-over: previous owners found by ARP probe"
    );
    found
}

/// Whether the responder answers a request for a VIP: one this member
/// announces (`answering`, the loop's record) and still may (`allowed`,
/// what the ownership says at this moment). The second is read at every
/// request because the loop withdraws a released VIP only when it gets
/// to it, and a takeover before it (the ARP probe, the hand-over's nft
/// table) can hold it up for seconds on a loaded machine, while the new
/// owner starts after a few heartbeats: the kernel lab saw both answer
/// for 1.9 s. An ARP probe (a member taking the VIP over, looking for its
/// holder) is answered while the VIP is still local here, announced or
/// lingering, so that the flows are handed over.
fn answers(answering: bool, allowed: bool, probe: bool, holding: bool) -> bool {
    (answering && allowed) || (probe && (answering || holding))
}

/// Announces `announced` until `shutdown`, then withdraws everything.
pub async fn run(
    config: L2Config,
    netlink: crate::netlink::Netlink,
    mut announced: watch::Receiver<Arc<BTreeSet<IpAddr>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let interface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == config.interface)
        .with_context(|| format!("announce: interface {:?} does not exist", config.interface))?;
    let mac: Mac = interface.mac.map(|m| m.octets()).with_context(|| {
        format!(
            "announce: interface {:?} has no MAC address",
            config.interface
        )
    })?;
    set_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{}/arp_ignore", config.interface),
        "1",
    );
    set_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{}/arp_announce", config.interface),
        "2",
    );
    let channel_config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(200)),
        promiscuous: false,
        ..Default::default()
    };
    let (tx, mut rx) =
        match pnet_datalink::channel(&interface, channel_config).with_context(|| {
            format!(
                "announce: cannot open a packet socket on {:?}",
                config.interface
            )
        })? {
            pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
            _ => anyhow::bail!(
                "announce: {:?} is not an Ethernet interface",
                config.interface
            ),
        };
    let tx: Sender = Arc::new(Mutex::new(tx));
    let answering: Arc<RwLock<BTreeSet<IpAddr>>> = Arc::default();
    // Withdrawn VIPs still local: ARP probes for them are answered (not
    // requests), so that the member taking one over finds this member and
    // hands it the flows it still serves (`handover`).
    let holding: Arc<RwLock<BTreeSet<IpAddr>>> = Arc::default();
    let heard: Arc<Mutex<Heard>> = Arc::default();
    // A member not heard before: the hand-over's rules must know it (a
    // frame it forwards here is not forwarded again) at once.
    let new_member = Arc::new(tokio::sync::Notify::new());

    // Answers ARP requests and neighbour solicitations for what we announce.
    let stop = Arc::new(AtomicBool::new(false));
    let responder = {
        let (tx, answering, stop) = (tx.clone(), answering.clone(), stop.clone());
        let allowed = announced.clone();
        let (holding, heard, new_member) = (holding.clone(), heard.clone(), new_member.clone());
        let ranges = config.vip_ranges.clone();
        std::thread::Builder::new()
            .name("l2-responder".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(frame) = rx.next() else { continue };
                    // An answer to our probe: that member holds the VIP.
                    if let Some((sender_mac, sender_ip)) = frames::parse_arp_reply(frame) {
                        if sender_mac != mac {
                            let mut h = lock_heard(&heard);
                            if let Some(answers) = h.probes.get_mut(&sender_ip) {
                                if !answers.contains(&sender_mac) {
                                    answers.push(sender_mac);
                                }
                                if h.members.insert(sender_mac) {
                                    new_member.notify_one();
                                }
                            }
                        }
                        continue;
                    }
                    let Some(request) = frames::parse_request(frame) else {
                        continue;
                    };
                    let target = match &request {
                        frames::Request::Arp { target, .. } => IpAddr::V4(*target),
                        frames::Request::Solicitation { target, .. } => IpAddr::V6(*target),
                    };
                    // Our own gratuitous requests come back: not a question.
                    if matches!(&request, frames::Request::Arp { sender_mac, .. } if *sender_mac == mac) {
                        continue;
                    }
                    // Another member's gratuitous ARP (it announces the
                    // VIP) or ARP probe (it is taking the VIP over).
                    let mut probe = false;
                    if let frames::Request::Arp {
                        sender_mac,
                        sender_ip,
                        target,
                    } = &request
                        && ranges.iter().any(|r| r.contains(&IpAddr::V4(*target)))
                    {
                        probe = sender_ip.is_unspecified();
                        if sender_ip == target || probe {
                            let mut h = lock_heard(&heard);
                            if h.members.insert(*sender_mac) {
                                new_member.notify_one();
                            }
                            // A new announcer of a VIP: the loop ends the
                            // linger of a VIP this member withdrew.
                            if !probe && h.announcers.insert(*target, *sender_mac) != Some(*sender_mac) {
                                new_member.notify_one();
                            }
                        }
                    }
                    let read = |set: &RwLock<BTreeSet<IpAddr>>| {
                        set.read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .contains(&target)
                    };
                    let mine = answers(
                        read(&answering),
                        allowed.borrow().contains(&target),
                        probe,
                        read(&holding),
                    );
                    if mine {
                        send(&tx, &frames::answer(mac, &request));
                    }
                }
            })
            .context("cannot start the L2 responder")?
    };

    let vip_index = match &config.vip_interface {
        Some(name) => Some(netlink.link_index(name).await?),
        None => None,
    };
    if let Some(vip_index) = vip_index {
        // Addresses in our ranges left by an earlier run are ours: remove
        // them.
        let stale: Vec<IpAddr> = netlink
            .addresses_on(vip_index)
            .await?
            .into_iter()
            .filter(|ip| config.vip_ranges.iter().any(|r| r.contains(ip)))
            .collect();
        match netlink.remove_addresses(vip_index, &stale).await {
            Ok(removed) => {
                for ip in removed {
                    info!(address = %ip, "removed a VIP left by an earlier run");
                }
            }
            Err(e) => warn!(error = format!("{e:#}"), "cannot remove stale VIPs"),
        }
    }
    info!(
        interface = %config.interface,
        vip_interface = config.vip_interface.as_deref().unwrap_or("(the dataplane's)"),
        "L2 announcer started"
    );

    // Answered, lingering or gone (`l2_vips`, pure).
    let mut vips = super::l2_vips::L2Vips::new(config.linger);
    let mut warned: BTreeSet<IpAddr> = BTreeSet::new();
    let mut handover = super::handover::Handover::new(
        &config.interface,
        mac,
        config.flow_handover && !config.linger.is_zero(),
        config.linger,
    );
    loop {
        let wanted: BTreeSet<IpAddr> = announced
            .borrow_and_update()
            .iter()
            .copied()
            .filter(|vip| {
                let inside = config.vip_ranges.iter().any(|r| r.contains(vip));
                if !inside && warned.insert(*vip) {
                    warn!(%vip, "VIP outside announce.vip_ranges: not announced");
                }
                inside
            })
            .collect();
        // Withdraw first: stop answering at once; the address lingers
        // (clients whose ARP caches still point here are served until the
        // new owner's gratuitous ARP reaches them), then goes.
        for vip in vips.withdraw_unwanted(&wanted, tokio::time::Instant::now()) {
            set_of(&answering).remove(&vip);
            if let IpAddr::V4(v4) = vip {
                handover.end(v4);
            }
            set_of(&holding).insert(vip);
            info!(%vip, linger = ?config.linger, "VIP withdrawn: no longer answering ARP / NDP; local until another member announces it, then linger more");
        }
        // A withdrawn VIP another member announces now stays local for
        // `linger` more (clients move as its gratuitous ARP reaches them);
        // one nobody announces stays (a lapsed lease: the next owner comes
        // later), at most `l2_vips::UNREPLACED`. IPv6: the cap only.
        {
            let h = lock_heard(&heard);
            let now = tokio::time::Instant::now();
            for vip in vips.unreplaced() {
                if let IpAddr::V4(v4) = vip
                    && h.announcers.get(&v4).is_some_and(|m| *m != mac)
                {
                    vips.replaced(vip, now);
                    debug!(%vip, "another member announces a VIP withdrawn here: local for linger more");
                }
            }
        }
        for vip in vips.expire(tokio::time::Instant::now()) {
            set_of(&holding).remove(&vip);
            if let Some(vip_index) = vip_index
                && let Err(e) = netlink.remove_addresses(vip_index, &[vip]).await
            {
                warn!(%vip, error = format!("{e:#}"), "withdraw");
            }
            info!(%vip, "VIP no longer local");
        }
        let taking = vips.to_take(&wanted);
        // Taken over from another member: its flows go on there for as
        // long as it keeps the VIP local, in place before the gratuitous
        // ARP flips the clients over.
        let taking_v4: Vec<std::net::Ipv4Addr> = taking
            .iter()
            .filter_map(|vip| match vip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        if handover.enabled() && !taking_v4.is_empty() {
            let found = find_holders(&config, &tx, mac, &heard, &taking_v4).await;
            let until = tokio::time::Instant::now() + config.linger;
            for (vip, previous) in found {
                handover.begin(vip, previous, until);
            }
        }
        handover.know(lock_heard(&heard).members.iter().copied());
        handover.apply().await;
        if config.seed_conntrack && !taking_v4.is_empty() {
            crate::dataplane::ipvs::conntrack::seed_logged(taking_v4.clone()).await;
        }
        // That took a moment (nft): announce only what is still ours now;
        // anything else waits for the next round.
        let taking = confirm_taking(
            taking,
            &announced.borrow(),
            &mut handover,
            &mut lock_heard(&heard),
            mac,
        );
        for vip in taking {
            let take = vips.take(vip);
            set_of(&holding).remove(&vip);
            if take.add_address
                && let Some(vip_index) = vip_index
                && let Err(e) = netlink.add_host_address(vip_index, vip).await
            {
                warn!(%vip, error = format!("{e:#}"), "cannot make the VIP local; announcing anyway");
            }
            set_of(&answering).insert(vip);
            info!(%vip, "VIP announced");
            let (tx, count, interval) = (tx.clone(), config.garp_count, config.garp_interval);
            let (answering, allowed) = (answering.clone(), announced.clone());
            tokio::spawn(async move {
                for i in 0..count {
                    if i > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    // Stop the burst as soon as the VIP is withdrawn (or
                    // released, before the loop has withdrawn it).
                    if !answering
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .contains(&vip)
                        || !allowed.borrow().contains(&vip)
                    {
                        return;
                    }
                    match vip {
                        IpAddr::V4(v4) => {
                            for frame in frames::gratuitous_arp(mac, v4) {
                                send(&tx, &frame);
                            }
                        }
                        IpAddr::V6(v6) => send(&tx, &frames::unsolicited_na(mac, v6)),
                    }
                }
            });
        }
        handover.expire(tokio::time::Instant::now());
        handover.know(lock_heard(&heard).members.iter().copied());
        handover.apply().await;
        let next_expiry = vips
            .next_expiry()
            .into_iter()
            .chain(handover.next_expiry())
            .min();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = announced.changed() => if changed.is_err() { break },
            () = new_member.notified() => {}
            () = async {
                match next_expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    // Shutdown: withdraw everything.
    set_of(&answering).clear();
    set_of(&holding).clear();
    let announced = vips.answering().len();
    let all = vips.withdraw_all();
    if let Some(vip_index) = vip_index
        && let Err(e) = netlink.remove_addresses(vip_index, &all).await
    {
        warn!(error = format!("{e:#}"), "withdraw at shutdown");
    }
    handover.clear();
    handover.apply().await;
    info!(vips = announced, "L2 announcer stopped; VIPs withdrawn");
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || responder.join()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_vip_is_not_answered_before_the_loop_withdraws_it() {
        // Announced and still ours: answered.
        assert!(answers(true, true, false, false));
        // Released by the ownership while the loop is busy elsewhere: no
        // answer to a client, but the new owner's probe finds this member.
        assert!(!answers(true, false, false, false));
        assert!(answers(true, false, true, false));
        // Withdrawn and lingering: only probes are answered.
        assert!(!answers(false, false, false, true));
        assert!(answers(false, false, true, true));
        // Ours by the ownership, not announced yet (its takeover runs):
        // not answered.
        assert!(!answers(false, true, false, false));
        assert!(!answers(false, true, true, false));
    }

    #[test]
    fn a_vip_lost_before_its_announcement_is_not_recorded_as_announced_here() {
        let own: Mac = [2, 0, 0, 0, 0, 3];
        let previous: Mac = [2, 0, 0, 0, 0, 1];
        let window = Duration::from_secs(2);
        let mut handover = super::super::handover::Handover::new("eth0", own, true, window);
        let mut heard = Heard::default();
        let vip: std::net::Ipv4Addr = "10.77.0.52".parse().expect("ip");
        let until = tokio::time::Instant::now() + window;

        // Probed, handed over, then no longer wanted when the hand-over
        // was in place: not announced, not recorded, its window ended.
        handover.begin(vip, previous, until);
        let taken = confirm_taking(
            vec![IpAddr::V4(vip)],
            &BTreeSet::new(),
            &mut handover,
            &mut heard,
            own,
        );
        assert!(taken.is_empty());
        assert_eq!(heard.announcers.get(&vip), None, "not announced here");
        assert_eq!(handover.next_expiry(), None, "its hand-over ended");

        // Taken again and still wanted: announced, and this member is now
        // its last announcer; its window stays.
        handover.begin(vip, previous, until);
        let taken = confirm_taking(
            vec![IpAddr::V4(vip)],
            &BTreeSet::from([IpAddr::V4(vip)]),
            &mut handover,
            &mut heard,
            own,
        );
        assert_eq!(taken, vec![IpAddr::V4(vip)]);
        assert_eq!(heard.announcers.get(&vip), Some(&own));
        assert_eq!(handover.next_expiry(), Some(until));
    }
}
