//! Learner members (issue 23) as an operator meets them, through lbctl
//! against real processes on loopback: a fourth machine joins as a learner
//! (`member add --learner`), gets the table, takes a VIP and announces it,
//! never votes: the leader's crash elects among the voters, and the
//! learner goes on announcing; promoted it votes, demoted it learns again;
//! its crash gives its VIP to another member.

use std::collections::BTreeMap;
use std::time::Duration;

use ha_tests::{ClusterLayout, Member, agreed_leader, cluster_status, eventually, lbctl_on};
use proto::admin::v1 as pb;

const SERVICES: &str = include_str!("../../deploy/examples/services.toml");

/// The VIP owners and what `member` announces now, as it answers.
async fn vips(member: &Member) -> anyhow::Result<(BTreeMap<String, u64>, Vec<String>)> {
    let r = member
        .client()
        .await?
        .list_vips(pb::ListVipsRequest {})
        .await?
        .into_inner();
    let owners = r.vips.iter().map(|v| (v.vip.clone(), v.owner)).collect();
    let here = r
        .vips
        .into_iter()
        .filter(|v| v.announced_here)
        .map(|v| v.vip)
        .collect();
    Ok((owners, here))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_serves_and_never_votes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = ClusterLayout::write(dir.path(), 3, SERVICES, "learners")?;
    let mut members = layout.start_all()?;
    let leader = agreed_leader(&members).await?;

    // Member 4 joins as a learner.
    let joiner = layout.write_joiner(4)?;
    let learner = Member::start(&joiner.config)?;
    let all: Vec<&Member> = members.values().collect();
    let (code, out, err) = lbctl_on(
        &all,
        &[
            "member",
            "add",
            "4",
            &joiner.peer,
            "--admin",
            &joiner.admin,
            "--learner",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("member 4 added as a learner"), "{out}");
    members.insert(4, learner);
    for (id, m) in &members {
        eventually(
            "the learner in the configuration",
            Duration::from_secs(15),
            || async {
                let s = cluster_status(m).await?;
                Ok((s.voters == [1, 2, 3] && s.learners == [4]).then_some(()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("member {id}: {e}"))?;
    }
    let s = cluster_status(&members[&4]).await?;
    assert_eq!(s.role, "learner");
    let (_, out, _) = lbctl_on(&[&members[&leader]], &["status"])?;
    assert!(
        out.contains(&format!("at {} (learner", joiner.peer)),
        "{out}"
    );
    let (_, out, _) = lbctl_on(&[&members[&4]], &["services"])?;
    assert!(out.contains("web") && out.contains("dns"), "{out}");

    // Three VIPs, three voters: a drained voter's VIP goes to the learner,
    // the one member without a VIP, which announces it.
    let drained = (1..=3u64).find(|id| *id != leader).expect("a follower");
    let all: Vec<&Member> = members.values().collect();
    let (code, _, err) = lbctl_on(&all, &["member", "drain", &drained.to_string()])?;
    assert_eq!(code, 0, "{err}");
    let taken = eventually(
        "the learner announces a VIP",
        Duration::from_secs(15),
        || async {
            let (owners, here) = vips(&members[&4]).await?;
            let mine: Vec<String> = owners
                .iter()
                .filter(|(_, o)| **o == 4)
                .map(|(v, _)| v.clone())
                .collect();
            Ok((mine.len() == 1 && here == mine).then(|| mine[0].clone()))
        },
    )
    .await?;
    let (code, _, err) = lbctl_on(&all, &["member", "undrain", &drained.to_string()])?;
    assert_eq!(code, 0, "{err}");

    // The leader crashes: a voter leads next, the learner keeps its VIP
    // and its role.
    let mut dead = members.remove(&leader).expect("the leader");
    dead.signal("KILL")?;
    let _ = dead.wait_exit(Duration::from_secs(5));
    let new = agreed_leader(&members).await?;
    assert!(new != leader && new != 4, "member {new} leads");
    let s = cluster_status(&members[&4]).await?;
    assert_eq!(s.role, "learner");
    let (_, here) = vips(&members[&4]).await?;
    assert!(
        here.contains(&taken),
        "the learner dropped {taken}: {here:?}"
    );

    // Promoted, it votes; demoted, it learns again. The crashed leader is
    // still a voter: 4 of 4 voters known, 3 live.
    let all: Vec<&Member> = members.values().collect();
    let (code, out, err) = lbctl_on(&all, &["member", "promote", "4"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("member 4 is a voter"), "{out}");
    let s = cluster_status(&members[&new]).await?;
    assert!(s.voters.contains(&4) && s.learners.is_empty(), "{s:?}");
    let (code, _, err) = lbctl_on(&all, &["member", "promote", "4"])?;
    assert_eq!(code, 3, "promoting a voter: {err}");
    assert!(err.contains("member 4 is already a voter"), "{err}");
    let (code, out, err) = lbctl_on(&all, &["member", "demote", "4"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("member 4 is a learner"), "{out}");
    let s = cluster_status(&members[&new]).await?;
    assert!(!s.voters.contains(&4) && s.learners == [4], "{s:?}");
    let (code, _, err) = lbctl_on(&all, &["member", "demote", &new.to_string()])?;
    assert_ne!(code, 0, "the leader demoted itself");
    assert!(err.contains("transfer leadership"), "{err}");

    // The learner crashes: its VIP goes to another member.
    let mut gone = members.remove(&4).expect("the learner");
    gone.signal("KILL")?;
    let _ = gone.wait_exit(Duration::from_secs(5));
    eventually(
        "the learner's VIP elsewhere",
        Duration::from_secs(15),
        || async {
            let (owners, _) = vips(&members[&new]).await?;
            Ok(owners
                .get(&taken)
                .is_some_and(|o| *o != 4 && *o != 0)
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}
