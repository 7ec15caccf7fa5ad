//! `learner-scale-out` (issue 23), through the router lab of
//! `routerdrills` in BGP ECMP mode: three voters serve the VIPs; under the
//! client's traffic two machines join as learners (`AddMember` with
//! `learner`), announce every VIP and take their share of the flows; the
//! leader's machine is lost (its link down) and a voter is elected, never
//! a learner; then a learner's machine is lost, which elects nobody and
//! takes only its own paths away. One JSON report, like the others: who
//! answered in each phase (the per-member share), each loss's failed
//! requests, when its paths left the router and when the last request
//! failed, and every moment a path that had to stay was missing.
//!
//! Every member's machine answers the VIPs itself (a small HTTP server,
//! its name as the answer), as in the other router drills: where a
//! connection lands is the router's choice alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::admin::v1 as pb;

use crate::l2lab::{Lab, VIPS, since_ms, unix_now};
use crate::netdrills::{cluster_of, leader_other_than, on_leader, settled};
use crate::report::Report;
use crate::routertable::{Mode, REQUESTS_PER_SECOND, Sampler, Table, complete, in_router};
use crate::traffic::{Sent, Traffic};

/// The founding voters and the learners that join.
const VOTERS: [u64; 3] = [1, 2, 3];
pub const LEARNERS: [u64; 2] = [4, 5];

/// How long the learners have to join and be in the router's table.
const JOIN_WITHIN: Duration = Duration::from_secs(40);

/// Runs the drill on a lab whose founders are up and whose machines m4 and
/// m5 exist (`announce(id)`: a member's `[announce]` section).
pub(crate) async fn drill(
    lab: &mut Lab,
    router_ns: &str,
    announce: &dyn Fn(u64) -> String,
    mut report: Report,
) -> anyhow::Result<Report> {
    let voters: BTreeSet<u64> = VOTERS.into_iter().collect();
    let everyone: BTreeSet<u64> = VOTERS.into_iter().chain(LEARNERS).collect();
    let leader = settled(lab, Duration::from_secs(30)).await?;
    crate::eventually(
        "the router's table complete",
        Duration::from_secs(30),
        || async { Ok(complete(&in_router(router_ns)?, Mode::Ecmp, &voters).then_some(())) },
    )
    .await?;

    let sampler = Sampler::start(router_ns.to_owned());
    let traffic: Vec<(&str, Traffic)> = VIPS
        .iter()
        .map(|v| {
            Ok((
                *v,
                Traffic::start(
                    (v.parse::<std::net::Ipv4Addr>()?, 80).into(),
                    REQUESTS_PER_SECOND,
                ),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The learners join under traffic.
    let t_join = unix_now();
    for id in LEARNERS {
        let (peer, admin_address) = lab.start_joiner(id, &announce(id))?;
        on_leader(lab, "add a learner", |mut c| {
            let (peer, admin_address) = (peer.clone(), admin_address.clone());
            async move {
                c.add_member(pb::AddMemberRequest {
                    id,
                    peer_address: peer,
                    admin_address,
                    learner: true,
                })
                .await
            }
        })
        .await?;
    }
    let joined = crate::eventually("the learners in every path", JOIN_WITHIN, || async {
        Ok(complete(&in_router(router_ns)?, Mode::Ecmp, &everyone).then_some(()))
    })
    .await;
    if let Err(e) = joined {
        report.failures.push(format!("{e:#}"));
        return finish(report, traffic, sampler).await;
    }
    report.extra.insert(
        "learners_announcing_ms".into(),
        serde_json::json!(since_ms(t_join)),
    );
    for id in lab.members.keys().copied().collect::<Vec<_>>() {
        let s = cluster_of(lab, id).await?;
        if s.voters != VOTERS || s.learners != LEARNERS {
            report.failures.push(format!(
                "member {id}: voters {:?}, learners {:?}",
                s.voters, s.learners
            ));
        }
        if LEARNERS.contains(&id) && s.role != "learner" {
            report
                .failures
                .push(format!("member {id} is a {}, not a learner", s.role));
        }
    }
    let t_five = unix_now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The leader's machine is lost: a voter is elected.
    let t_voter = unix_now();
    switch_port(lab, leader, false)?;
    match leader_other_than(lab, leader, Duration::from_secs(15)).await {
        Ok(new) if voters.contains(&new) => {
            report.time_to_new_leader_ms = Some(since_ms(t_voter));
            report
                .extra
                .insert("new_leader".into(), serde_json::json!(new));
        }
        Ok(new) => report
            .failures
            .push(format!("member {new}, a learner, leads")),
        Err(e) => report.failures.push(format!("no new leader: {e:#}")),
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t_voter_back = unix_now();
    switch_port(lab, leader, true)?;
    let back = crate::eventually(
        "the lost voter back in every path",
        Duration::from_secs(40),
        || async { Ok(complete(&in_router(router_ns)?, Mode::Ecmp, &everyone).then_some(())) },
    )
    .await;
    if let Err(e) = back {
        report.failures.push(format!("{e:#}"));
        return finish(report, traffic, sampler).await;
    }
    let leader_now = settled(lab, Duration::from_secs(30)).await?;
    let term_before = term(lab, leader_now).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A learner's machine is lost: nobody is elected, only its paths go.
    let learner = LEARNERS[0];
    let t_learner = unix_now();
    switch_port(lab, learner, false)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let leader_after = settled_without(lab, learner).await?;
    if leader_after != leader_now || term(lab, leader_after).await? != term_before {
        report.failures.push(format!(
            "a learner's loss changed the leadership: member {leader_now} in term {term_before} before, member {leader_after} after"
        ));
    }
    let t_learner_back = unix_now();
    switch_port(lab, learner, true)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let phases = Phases {
        join: t_join,
        five: t_five,
        voter: Loss {
            at: t_voter,
            member: leader,
            back: t_voter_back,
        },
        learner: Loss {
            at: t_learner,
            member: learner,
            back: t_learner_back,
        },
        end: unix_now(),
    };
    let samples = sampler.finish();
    let mut all = Vec::new();
    for (v, t) in traffic {
        let records = t.finish().await;
        all.extend(records.iter().cloned());
        report.add_traffic(v, &records, true);
    }
    phases.judge(&mut report, &samples, &all);
    report.passed = report.failures.is_empty();
    Ok(report)
}

/// The drill's moments: the learners' join, all five in the table, each
/// loss, and the end.
struct Phases {
    join: f64,
    five: f64,
    voter: Loss,
    learner: Loss,
    end: f64,
}

/// A machine lost: when, whose, and when its link came back.
#[derive(Clone, Copy)]
struct Loss {
    at: f64,
    member: u64,
    back: f64,
}

impl Phases {
    fn judge(&self, report: &mut Report, samples: &[(f64, Table)], sent: &[Sent]) {
        // Who answered, per phase: the learners must carry a share.
        let share = |from: f64, to: f64| -> BTreeMap<String, u64> {
            let mut by = BTreeMap::new();
            for r in sent.iter().filter(|r| r.at >= from && r.at < to) {
                let who = r.answer.clone().unwrap_or_else(|| "failed".into());
                *by.entry(who).or_default() += 1;
            }
            by
        };
        let served = serde_json::json!({
            "voters_only": share(0.0, self.join),
            "joining": share(self.join, self.five),
            "five": share(self.five, self.voter.at),
            "voter_lost": share(self.voter.at, self.voter.back),
            "learner_lost": share(self.learner.at, self.learner.back),
        });
        for id in LEARNERS {
            let n = served["five"][format!("m{id}")].as_u64().unwrap_or(0);
            if n == 0 {
                report
                    .failures
                    .push(format!("learner {id} answered nothing once in the paths"));
            }
        }
        report.extra.insert("served_by".into(), served);
        let failed_in_join = sent
            .iter()
            .filter(|r| r.answer.is_none() && r.at >= self.join && r.at < self.five)
            .count();
        report
            .extra
            .insert("failed_in_join".into(), serde_json::json!(failed_in_join));

        // Each loss, until the machine's link is back: its paths gone, the
        // last failure, the failed count, and any moment another member's
        // path was missing. (Failures once it is back, when the router
        // hashes again and moves connections in flight, are counted
        // apart.)
        let mut failed_in_failback = 0;
        for (what, loss, next) in [
            ("voter_lost", self.voter, self.learner.at),
            ("learner_lost", self.learner, self.end),
        ] {
            let Loss {
                at,
                member: victim,
                back: until,
            } = loss;
            failed_in_failback += sent
                .iter()
                .filter(|r| r.answer.is_none() && r.at >= until && r.at < next)
                .count();
            let window: Vec<&(f64, Table)> = samples
                .iter()
                .filter(|(t, _)| *t >= at && *t < until)
                .collect();
            let gone = window
                .iter()
                .find(|(_, t)| t.values().all(|s| !s.contains(&victim)))
                .map(|(t, _)| ((t - at) * 1000.0) as u64);
            // Once the victim's paths are gone, until it comes back, every
            // other member's path to every VIP must be there.
            let others: BTreeSet<u64> = VOTERS
                .into_iter()
                .chain(LEARNERS)
                .filter(|m| *m != victim)
                .collect();
            let missing = window
                .iter()
                .filter(|(_, t)| {
                    VIPS.iter().any(|v| {
                        let have = t.get(*v).cloned().unwrap_or_default();
                        others.iter().any(|m| !have.contains(m))
                    })
                })
                .count();
            let failures: Vec<&Sent> = sent
                .iter()
                .filter(|r| r.answer.is_none() && r.at >= at && r.at < until)
                .collect();
            let last = failures.iter().map(|r| ((r.at - at) * 1000.0) as u64).max();
            report.extra.insert(
                what.into(),
                serde_json::json!({
                    "member": victim,
                    "routes_gone_ms": gone,
                    "failed": failures.len(),
                    "last_failure_ms": last,
                    "samples_with_another_path_missing": missing,
                }),
            );
            if gone.is_none_or(|ms| ms >= 3_000) {
                report.failures.push(format!(
                    "{what}: member {victim}'s paths gone after {gone:?} ms, not by BFD"
                ));
            }
            if missing > 0 {
                report.failures.push(format!(
                    "{what}: {missing} samples of the router's table lacked another member's path"
                ));
            }
            // Requests may fail until the router has dropped the victim's
            // paths (and the in-flight ones it rehashed then), not later.
            if let (Some(last), Some(gone)) = (last, gone)
                && last > gone + 1_000
            {
                report.failures.push(format!(
                    "{what}: a request failed {last} ms after the loss, {gone} ms after the paths left"
                ));
            }
        }
        report.extra.insert(
            "failed_in_failback".into(),
            serde_json::json!(failed_in_failback),
        );
    }
}

/// Stops the traffic and the sampler of a drill that failed early.
async fn finish(
    mut report: Report,
    traffic: Vec<(&str, Traffic)>,
    sampler: Sampler,
) -> anyhow::Result<Report> {
    let _ = sampler.finish();
    for (v, t) in traffic {
        let records = t.finish().await;
        report.add_traffic(v, &records, true);
    }
    report.passed = false;
    Ok(report)
}

/// Member `id`'s machine on or off the LAN: its switch port (the founders'
/// `p0`-`p2`, the joiners' `h0`, `h1`, added in that order).
fn switch_port(lab: &Lab, id: u64, up: bool) -> anyhow::Result<()> {
    let port = if id <= 3 {
        format!("p{}", id - 1)
    } else {
        format!("h{}", id - 4)
    };
    let state = if up { "up" } else { "down" };
    lab.exec("sw", &["ip", "link", "set", &port, state])?;
    Ok(())
}

/// The term member `id` is in.
async fn term(lab: &Lab, id: u64) -> anyhow::Result<u64> {
    Ok(cluster_of(lab, id).await?.term)
}

/// The leader the members other than `lost` agree on.
async fn settled_without(lab: &Lab, lost: u64) -> anyhow::Result<u64> {
    crate::eventually("an agreed leader", Duration::from_secs(10), || async {
        let mut seen = BTreeSet::new();
        for id in lab.members.keys().filter(|id| **id != lost) {
            seen.insert(cluster_of(lab, *id).await?.leader);
        }
        Ok((seen.len() == 1)
            .then(|| seen.first().copied().unwrap_or(0))
            .filter(|l| *l != 0))
    })
    .await
}
