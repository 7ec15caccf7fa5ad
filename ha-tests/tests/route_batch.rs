//! Local routes added and deleted many per system call
//! (`lb_node::route_batch`, how a member makes its VIPs local) against this
//! machine's kernel, in a network namespace of the test's own: every
//! route's outcome is its own, a failure in the middle of a buffer is told
//! for that route alone, and what `ip route` lists afterwards is what was
//! asked.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use ha_tests::netns::inside;
use lb_node::route_batch::{Change, apply, local_route};

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const TABLE: u32 = 0x6c62;
// The kernel's errno values (asm-generic/errno-base.h).
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

fn listed(ns: &str) -> anyhow::Result<usize> {
    let out = Command::new("ip")
        .args([
            "-n",
            ns,
            "route",
            "show",
            "table",
            &TABLE.to_string(),
            "type",
            "local",
        ])
        .output()?;
    anyhow::ensure!(out.status.success(), "ip route show failed");
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

fn nth(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i))
}

#[test]
fn each_route_has_its_own_outcome_and_a_failure_mid_buffer_is_its_own() -> anyhow::Result<()> {
    let ns = Namespace(format!("lbtrt{}", std::process::id()));
    ha_tests::netns::run(&["ip", "netns", "add", &ns.0])?;
    ha_tests::netns::run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"])?;
    const N: u32 = 1_000;
    let routes = |index: u32, ips: &[IpAddr]| -> Vec<_> {
        ips.iter()
            .map(|ip| local_route(TABLE, index, *ip).expect("route"))
            .collect()
    };
    let all: Vec<IpAddr> = (0..N).map(nth).collect();

    // 1,000 routes (four buffers): every one added.
    let added = inside(&ns.0, || apply(Change::Add, routes(1, &all)))??;
    assert_eq!(added.len(), N as usize);
    assert!(added.iter().all(Result::is_ok), "{added:?}");
    assert_eq!(listed(&ns.0)?, N as usize);

    // Again: each one is there already, each told so (EEXIST), none lost.
    let again = inside(&ns.0, || apply(Change::Add, routes(1, &all)))??;
    assert_eq!(again, vec![Err(EEXIST); N as usize]);

    // New routes with one through an interface that does not exist, in
    // the middle of the second buffer: that one fails, alone.
    let more: Vec<IpAddr> = (N..N + 600).map(nth).collect();
    let mut batch = routes(1, &more);
    batch[300] = local_route(TABLE, 9_999, more[300])?;
    let mixed = inside(&ns.0, || apply(Change::Add, batch))??;
    for (i, r) in mixed.iter().enumerate() {
        if i == 300 {
            assert_eq!(*r, Err(ENODEV), "route {i}");
        } else {
            assert_eq!(*r, Ok(()), "route {i}");
        }
    }
    assert_eq!(listed(&ns.0)?, N as usize + 599);

    // Deleted, all; deleting again: each one is gone already (ESRCH).
    let everything: Vec<IpAddr> = (0..N + 600).filter(|i| *i != N + 300).map(nth).collect();
    let deleted = inside(&ns.0, || apply(Change::Delete, routes(1, &everything)))??;
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    assert_eq!(listed(&ns.0)?, 0);
    let gone = inside(&ns.0, || {
        apply(Change::Delete, routes(1, &everything[..10]))
    })??;
    assert_eq!(gone, vec![Err(ESRCH); 10]);
    Ok(())
}
