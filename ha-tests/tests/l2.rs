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
