//! The masquerade sets' elements changed over netlink (`lb_node::nft_sets`)
//! against this machine's kernel, in a network namespace of the test's
//! own: elements added and deleted in one transaction, a batch the kernel
//! refuses changes nothing, and one VIP added to sets of 50,000 costs what
//! one costs (issue 20: the whole table was reinstalled for each change).

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Instant;

use ha_tests::netns::inside;
use lb_node::nft_sets::{SetChange, SetError, apply};

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn nft(ns: &str, script: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdin"))?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn elements(ns: &str, set: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "list", "set", "inet", "lb_node", set,
        ])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[test]
fn elements_are_added_and_deleted_and_a_refused_batch_changes_nothing() -> anyhow::Result<()> {
    let ns = Namespace(format!("lbtnft{}", std::process::id()));
    ha_tests::netns::run(&["ip", "netns", "add", &ns.0])?;
    // No table yet: refused, nothing made.
    let missing = inside(&ns.0, || {
        apply(
            "lb_node",
            &[SetChange {
                set: "masq4",
                add: vec![ip("10.0.0.1")],
                delete: vec![],
            }],
        )
    })?;
    assert_eq!(missing, Err(SetError::Refused(nix::libc::ENOENT)));

    let empty = std::collections::BTreeSet::new();
    nft(
        &ns.0,
        &lb_node::dataplane::ipvs::nft_table::table_script(&empty, &Default::default(), false),
    )?;
    inside(&ns.0, || {
        apply(
            "lb_node",
            &[
                SetChange {
                    set: "masq4",
                    add: vec![ip("10.0.0.1"), ip("10.0.0.2")],
                    delete: vec![],
                },
                SetChange {
                    set: "masq6",
                    add: vec![ip("fd00::1")],
                    delete: vec![],
                },
            ],
        )
    })??;
    let v4 = elements(&ns.0, "masq4")?;
    assert!(v4.contains("10.0.0.1, 10.0.0.2"), "{v4}");
    assert!(elements(&ns.0, "masq6")?.contains("fd00::1"));

    inside(&ns.0, || {
        apply(
            "lb_node",
            &[SetChange {
                set: "masq4",
                add: vec![],
                delete: vec![ip("10.0.0.1")],
            }],
        )
    })??;
    let v4 = elements(&ns.0, "masq4")?;
    assert!(!v4.contains("10.0.0.1,") && v4.contains("10.0.0.2"), "{v4}");

    // Deleting what is not there fails the whole batch: the add with it
    // is not applied either.
    let refused = inside(&ns.0, || {
        apply(
            "lb_node",
            &[SetChange {
                set: "masq4",
                add: vec![ip("10.0.0.3")],
                delete: vec![ip("10.0.0.9")],
            }],
        )
    })?;
    assert_eq!(refused, Err(SetError::Refused(nix::libc::ENOENT)));
    assert!(!elements(&ns.0, "masq4")?.contains("10.0.0.3"));

    // A change too big for one transaction is refused before sending.
    let many: Vec<IpAddr> = (0..50_000u32)
        .map(|i| IpAddr::from((0x0a40_0000u32 + i).to_be_bytes()))
        .collect();
    let big = inside(&ns.0, || {
        apply(
            "lb_node",
            &[SetChange {
                set: "masq4",
                add: many.clone(),
                delete: vec![],
            }],
        )
    })?;
    assert!(matches!(big, Err(SetError::Io(_))), "{big:?}");
    // One more VIP in sets of 50,000 (installed whole, as lb-node does at
    // start): the cost of one element. This time the table of connection
    // sync (masquerade to the VIP, the input chain): this kernel takes it.
    let masq: std::collections::BTreeSet<IpAddr> = many.into_iter().collect();
    nft(
        &ns.0,
        &lb_node::dataplane::ipvs::nft_table::table_script(&masq, &Default::default(), true),
    )?;
    let mut took = Vec::new();
    for i in 0..20u8 {
        let one = ip(&format!("10.99.0.{i}"));
        let elapsed = inside(&ns.0, || {
            let started = Instant::now();
            apply(
                "lb_node",
                &[SetChange {
                    set: "masq4",
                    add: vec![one],
                    delete: vec![],
                }],
            )
            .map(|()| started.elapsed())
        })??;
        took.push(elapsed.as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    eprintln!(
        "one element added to sets of 50,000: {:.3} / {:.3} / {:.3} ms (min / median / max of 20)",
        took[0], took[10], took[19]
    );
    assert!(elements(&ns.0, "masq4")?.contains("10.99.0.19"));
    Ok(())
}

/// What a repair relies on to skip reading the table back: the kernel's
/// ruleset generation moves by exactly one at each committed transaction
/// (lb-node's `nft -f` of its whole table included), and at any other
/// table's change too; a change that commits nothing leaves it.
#[test]
fn the_generation_moves_by_one_per_transaction_whoever_commits_it() -> anyhow::Result<()> {
    use lb_node::nft_sets::generation;
    let ns = Namespace(format!("lbtgen{}", std::process::id()));
    ha_tests::netns::run(&["ip", "netns", "add", &ns.0])?;
    let now = || inside(&ns.0, generation).and_then(|g| Ok(g?));
    let g0 = now()?;
    let masq: std::collections::BTreeSet<IpAddr> = [ip("10.0.0.1"), ip("fd00::1")].into();
    nft(
        &ns.0,
        &lb_node::dataplane::ipvs::nft_table::table_script(&masq, &Default::default(), false),
    )?;
    let g1 = now()?;
    assert_eq!(g1, g0.wrapping_add(1), "the whole table's install is one");
    // Reading changes nothing.
    elements(&ns.0, "masq4")?;
    assert_eq!(now()?, g1);
    inside(&ns.0, || {
        apply(
            "lb_node",
            &[SetChange {
                set: "masq4",
                add: vec![ip("10.0.0.2")],
                delete: vec![ip("10.0.0.1")],
            }],
        )
    })??;
    let g2 = now()?;
    assert_eq!(g2, g1.wrapping_add(1), "an element change is one");
    // Someone else's table: it moves too.
    nft(&ns.0, "table ip someone_else {}\n")?;
    assert_eq!(now()?, g2.wrapping_add(1));
    // A refused batch commits nothing.
    let refused = inside(&ns.0, || {
        apply(
            "lb_node",
            &[SetChange {
                set: "masq4",
                add: vec![],
                delete: vec![ip("10.9.9.9")],
            }],
        )
    })?;
    assert!(refused.is_err());
    assert_eq!(now()?, g2.wrapping_add(1));
    Ok(())
}
