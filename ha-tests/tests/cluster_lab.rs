//! A cluster with no kube-proxy, through real IPVS: the cluster lab
//! (`ha_tests::clusterlab`: three nodes with pods, the test API server,
//! three members) in a guest of the kernel lab, once per way of attracting
//! Service traffic: L2 service gateways with pod routes from the Nodes,
//! and BGP to a BIRD router with pod CIDRs routed by the fabric. In each,
//! pods resolve names through the kube-dns ClusterIP and reach every
//! Service (`cluster-connectivity`), the loss of a member's machine and of
//! the leader's fails nothing after the failover (`cluster-owner-crash`,
//! `cluster-leader-crash`), and a pod moving to another node fails nothing
//! (`cluster-pod-moves`). Every promise must hold; nothing is retried.

use ha_tests::clusterdrills::run_in_kernel_lab;
use ha_tests::clusterlab::Mode;

fn check(mode: Mode) -> anyhow::Result<()> {
    let runs: Vec<(&str, Mode)> = [
        "cluster-connectivity",
        "cluster-owner-crash",
        "cluster-leader-crash",
        "cluster-pod-moves",
    ]
    .into_iter()
    .map(|d| (d, mode))
    .collect();
    let reports = run_in_kernel_lab(&runs)?;
    assert_eq!(reports.len(), runs.len());
    let mut failed = Vec::new();
    for mut r in reports {
        // The routing tables are in the report for people; CI's log keeps
        // the figures.
        if let Some(o) = r.as_object_mut() {
            o.remove("tables");
        }
        println!("{r}");
        if r["passed"] != true {
            failed.push(format!(
                "{} ({}): {}",
                r["drill"],
                r["mode"],
                r.get("failures")
                    .or_else(|| r.get("error"))
                    .map_or_else(|| "no reason given".to_owned(), ToString::to_string)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "cluster drills failed in the kernel lab:\n{}",
        failed.join("\n")
    );
    Ok(())
}

#[test]
fn pods_reach_services_through_service_gateways_and_pod_routes() -> anyhow::Result<()> {
    check(Mode::L2)
}

#[test]
fn pods_reach_services_through_the_bgp_service_cidr_and_the_fabric() -> anyhow::Result<()> {
    check(Mode::Bgp)
}
