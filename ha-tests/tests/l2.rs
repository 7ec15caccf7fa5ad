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
    let (owner, _) = lab.wait_garp(VIP, 0.0, None, Duration::from_secs(30))?;
    let local = |lab: &Lab| -> anyhow::Result<bool> {
        let out = lab.exec(&format!("m{owner}"), &["ip", "-o", "addr", "show"])?;
        Ok(out.contains(&format!(" {VIP}/")))
    };
    assert!(local(&lab)?, "the owner's VIP is not local");
    let withdrawn = |lab: &Lab| {
        lab.members[&owner]
            .log()
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
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !withdrawn(&lab) {
        assert!(
            std::time::Instant::now() < deadline,
            "the owner kept its VIP with its peers stopped: {}",
            lab.members[&owner].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lapsed = unix_now();
    assert!(
        lab.members[&owner]
            .log()
            .contains("announcement lease lapsed"),
        "the lapse is not logged: {}",
        lab.members[&owner].log()
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

    // Back in touch, the owner answers again; drained, another member
    // announces the VIP and the owner's address goes `linger` later.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while lab
        .answering(VIP)
        .is_none_or(|(at, m)| m != owner || at < unix_now() - 1.0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the owner did not answer again: {}",
            lab.members[&owner].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let t0 = unix_now();
    let (code, out) = lab.lbctl(owner, &["member", "drain", &owner.to_string()])?;
    assert_eq!(code, 0, "lbctl member drain: {out}");
    let (next, at) = lab.wait_garp(VIP, t0, Some(owner), Duration::from_secs(10))?;
    assert_ne!(next, owner);
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while local(&lab)? {
        assert!(
            std::time::Instant::now() < deadline,
            "the VIP stayed local {:.1} s after member {next} announced it",
            unix_now() - at
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = unix_now() - at;
    eprintln!("address gone {gone:.2} s after the next owner's gratuitous ARP");
    assert!(
        gone > 1.5,
        "gone {gone:.2} s after the next owner's announcement: linger is 2 s"
    );
    Ok(())
}
