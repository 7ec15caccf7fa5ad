//! L2 announcement in network namespaces: three members on a bridge, a
//! client asking for the VIP by ARP every 50 ms and capturing every ARP
//! frame. The owner is killed: another member's gratuitous ARP follows and
//! it answers; the new owner is stopped cleanly: it withdraws and the third
//! takes over. Across the whole run no two members answer for the VIP.

use std::time::Duration;

use ha_tests::l2lab::{Lab, VIP, VIPS, split_brain, unix_now};

#[test]
fn owner_crash_and_clean_stop_move_the_vip_without_split_brain() -> anyhow::Result<()> {
    let mut lab = Lab::new("a")?;
    lab.start_arp_watch()?;
    lab.start_members()?;
    let (owner, _) = lab.wait_garp(VIP, 0.0, None, Duration::from_secs(30))?;
    // The owner answers the client's questions (from user space: the
    // kernel does not answer for the VIP).
    let asked = unix_now();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        lab.replies(VIP)
            .iter()
            .any(|(at, m)| *at >= asked && *m == owner),
        "the owner does not answer: {:?}",
        lab.seen()
    );

    // SIGKILL: a new owner announces (the benchmark measures how fast).
    let (new_owner, took) = lab.owner_crash(owner, VIP)?;
    assert_ne!(new_owner, owner);
    eprintln!(
        "owner {owner} killed: member {new_owner}'s gratuitous ARP after {:.0} ms",
        took * 1e3
    );
    assert!(took < 5.0, "failover took {took:.2} s");
    std::thread::sleep(Duration::from_millis(500));
    let after = unix_now() - 0.3;
    assert!(
        lab.replies(VIP)
            .iter()
            .any(|(at, m)| *at >= after && *m == new_owner),
        "the new owner does not answer"
    );

    // A clean stop withdraws at once: its answers end before it exits,
    // and one of the others takes over.
    let t0 = unix_now();
    let mut m = lab.members.remove(&new_owner).expect("member");
    m.signal("TERM")?;
    m.wait_exit(Duration::from_secs(10))?;
    let exited = unix_now();
    assert!(m.log().contains("VIPs withdrawn"), "{}", m.log());
    let (third, _) = lab.wait_garp(VIP, t0, Some(new_owner), Duration::from_secs(10))?;
    assert_ne!(third, new_owner);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !lab.replies(VIP)
            .iter()
            .any(|(at, m)| *at > exited && *m == new_owner),
        "a stopped member still answers"
    );

    for vip in VIPS {
        let replies = lab.replies(vip);
        assert!(
            replies.len() > 20,
            "{vip}: too few replies to judge: {replies:?}"
        );
        if let Some(problem) = split_brain(&replies, 0.04) {
            panic!("split brain on {vip}: {problem}; replies {replies:?}");
        }
    }
    Ok(())
}

/// IPv6: the client reaches the IPv6 VIP (its neighbour solicitation is
/// answered by the owner's lb-node, the VIP is local on the owner), and
/// after the owner is killed it reaches it through another member, whose
/// unsolicited advertisement (Override) has replaced the old MAC.
#[test]
fn ipv6_vip_is_reached_and_moves() -> anyhow::Result<()> {
    use ha_tests::l2lab::VIP6;
    let mut lab = Lab::new("6")?;
    lab.start_members()?;
    let owner_by_neighbour = |lab: &Lab| -> Option<u64> {
        let out = lab
            .exec("c", &["ip", "-6", "neigh", "show", VIP6, "dev", "eth0"])
            .ok()?;
        let mac = out.split("lladdr ").nth(1)?.split_whitespace().next()?;
        lab.macs.get(mac).copied()
    };
    let ping = |lab: &Lab| {
        lab.exec("c", &["ping", "-6", "-c", "1", "-W", "1", VIP6])
            .is_ok()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ping(&lab) {
        assert!(
            std::time::Instant::now() < deadline,
            "the IPv6 VIP never answered"
        );
    }
    let owner = owner_by_neighbour(&lab).expect("the client knows the VIP's MAC");

    let mut m = lab.members.remove(&owner).expect("member");
    m.signal("KILL")?;
    m.wait_exit(Duration::from_secs(5))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = owner_by_neighbour(&lab);
        if now.is_some_and(|n| n != owner) && ping(&lab) {
            eprintln!("IPv6 VIP moved from member {owner} to member {now:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the IPv6 VIP did not move: neighbour {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A member whose lease lapses (its two peers stopped) stops answering ARP
/// for its VIP at once, but keeps the address local past `linger` (2 s)
/// while nobody else announces it: clients whose ARP caches still point to
/// it are served until the next owner's gratuitous ARP. Once another
/// member announces it (the member is drained), the address goes `linger`
/// later, not at the 30 s bound.
#[test]
fn a_lapsed_lease_keeps_the_vip_local_until_another_member_announces_it() -> anyhow::Result<()> {
    let mut lab = Lab::new("k")?;
    lab.admin_on_lan = true;
    lab.start_arp_watch()?;
    lab.start_members()?;
    lab.wait_garp(VIP, 0.0, None, Duration::from_secs(30))?;
    // The owners settle as the members join (a VIP may move once): the
    // owner is whoever answers after that.
    std::thread::sleep(Duration::from_secs(3));
    let (_, owner) = lab.answering(VIP).expect("somebody answers for the VIP");
    let local = |lab: &Lab| -> anyhow::Result<bool> {
        let out = lab.exec(&format!("m{owner}"), &["ip", "-o", "addr", "show"])?;
        Ok(out.contains(&format!(" {VIP}/")))
    };
    assert!(local(&lab)?, "the owner's VIP is not local");
    // Only what the owner logs from here on counts.
    let before = lab.members[&owner].log().len();
    let withdrawn = |lab: &Lab| {
        lab.members[&owner].log()[before..]
            .lines()
            .any(|l| l.contains("VIP withdrawn") && l.contains(&format!("vip={VIP} ")))
    };

    let others: Vec<u64> = lab
        .members
        .keys()
        .copied()
        .filter(|id| *id != owner)
        .collect();
    for id in &others {
        lab.members[id].signal("STOP")?;
    }
    wait_for(
        Duration::from_secs(10),
        || withdrawn(&lab),
        || {
            format!(
                "the owner kept its VIP with its peers stopped: {}",
                lab.members[&owner].log()
            )
        },
    );
    let lapsed = unix_now();
    // A follower stops announcing once it is no longer current (its leader
    // silent for a lease), its lease ends a little later: logged.
    wait_for(
        Duration::from_secs(5),
        || lab.members[&owner].log()[before..].contains("announcement lease lapsed"),
        || format!("the lapse is not logged: {}", lab.members[&owner].log()),
    );
    // Twice `linger` later: still local, and not answered since.
    std::thread::sleep(Duration::from_millis(4500));
    let still = local(&lab)?;
    let answered: Vec<f64> = lab
        .replies(VIP)
        .iter()
        .filter(|(at, m)| *at > lapsed + 0.1 && *m == owner)
        .map(|(at, _)| at - lapsed)
        .collect();
    for id in &others {
        lab.members[id].signal("CONT")?;
    }
    assert!(
        still,
        "the VIP went after linger though nobody announced it"
    );
    assert!(
        answered.is_empty(),
        "ARP answered with a lapsed lease, s after: {answered:?}"
    );

    // Back in touch, either the owner answers again (its lease holds
    // again) and is drained, or the new leader already gave the VIP to
    // another member: either way another member announces it, and the
    // owner's address goes `linger` after that.
    let resumed = unix_now();
    wait_for(
        Duration::from_secs(15),
        || {
            lab.answering(VIP)
                .is_some_and(|(at, _)| at >= unix_now() - 1.0)
        },
        || format!("nobody answers for the VIP: {}", lab.members[&owner].log()),
    );
    let t0 = match lab.answering(VIP) {
        Some((_, m)) if m == owner => {
            let t0 = unix_now();
            let (code, out) = lab.lbctl(owner, &["member", "drain", &owner.to_string()])?;
            assert_eq!(code, 0, "lbctl member drain: {out}");
            t0
        }
        _ => resumed,
    };
    let (next, at) = lab.wait_garp(VIP, t0, Some(owner), Duration::from_secs(10))?;
    assert_ne!(next, owner);
    wait_for(
        Duration::from_secs(6),
        || !local(&lab).unwrap_or(true),
        || {
            format!(
                "the VIP stayed local {:.1} s after member {next} announced it",
                unix_now() - at
            )
        },
    );
    let gone = unix_now() - at;
    eprintln!("address gone {gone:.2} s after the next owner's gratuitous ARP");
    assert!(
        gone > 1.5,
        "gone {gone:.2} s after the next owner's announcement: linger is 2 s"
    );
    Ok(())
}

/// Waits up to `limit` for `done`, looking every 50 ms; fails with
/// `what()` if it never holds.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}
