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
