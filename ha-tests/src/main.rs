//! `ha-tests drill NAME|all [--outage SECONDS]`: runs failover drills
//! against real lb-node processes on this machine and prints one JSON line
//! per drill (docs/drills.md).
//!
//! `ha-tests drill NAME|all --lab`: the drills with client traffic through
//! real IPVS, in the kernel lab (a guest booted under qemu); `--tier ipvs`
//! runs them with IPVS on this machine's kernel (the guest does that).
//!
//! `ha-tests drill cluster-NAME|cluster --lab [--mode l2|bgp]`: the
//! cluster lab's drills (pods reaching Services through the appliance
//! with no kube-proxy, `clusterdrills`) in the kernel lab, in one mode or
//! both; `--tier ipvs --mode MODE` runs one on this machine's kernel.
//!
//! `ha-tests drill transfer-and-drain --target --endpoint URL... --probe
//! VIP:PORT... [--ca F --cert F --key F]`: the non-destructive drill
//! against a running appliance (`target.rs`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ha_tests::drills::{Size, all_drills, run_any};
use ha_tests::prereq;
use ha_tests::target::Target;

fn usage() -> ExitCode {
    eprintln!(
        "usage: ha-tests drill NAME|all [--outage SECONDS]\n       ha-tests drill NAME|all --lab | --tier ipvs   (drills with traffic, through real IPVS)\n       ha-tests drill CLUSTER-DRILL|cluster --lab [--mode l2|bgp]   (pods reaching Services with no kube-proxy)\n       ha-tests drill BGP-DRILL|bgp [--mode owner|ecmp]   (through a real router, FRR)\n       ha-tests drill transfer-and-drain --target --endpoint URL... --probe VIP:PORT... [--ca F --cert F --key F]\ndrills: {}\ncluster drills: {}\nbgp drills: {}",
        all_drills().join(", "),
        ha_tests::clusterdrills::CLUSTER_DRILLS.join(", "),
        ha_tests::routerdrills::ROUTER_DRILLS.join(", ")
    );
    ExitCode::from(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut size = Size::default();
    let mut words = Vec::new();
    let mut target: Option<Target> = None;
    let mut lab = false;
    let mut ipvs = false;
    let mut modes: Vec<ha_tests::clusterlab::Mode> = Vec::new();
    let mut router_modes: Vec<ha_tests::routerdrills::Mode> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |flag: &str| {
            let v = rest.next().cloned();
            if v.is_none() {
                eprintln!("ha-tests: {flag} needs a value");
            }
            v
        };
        match arg.as_str() {
            "--outage" => match value("--outage").and_then(|s| s.parse::<u64>().ok()) {
                Some(s) if s >= 2 => size.outage = Duration::from_secs(s),
                _ => {
                    eprintln!("ha-tests: --outage takes a number of seconds, 2 or more");
                    return usage();
                }
            },
            "--lab" => lab = true,
            "--mode" => {
                let v = value("--mode").unwrap_or_default();
                if let Some(m) = ha_tests::clusterlab::Mode::parse(&v) {
                    modes.push(m);
                } else if let Some(m) = ha_tests::routerdrills::Mode::parse(&v) {
                    router_modes.push(m);
                } else {
                    eprintln!(
                        "ha-tests: --mode takes l2 or bgp (cluster drills), owner or ecmp (bgp drills)"
                    );
                    return usage();
                }
            }
            "--tier" => match value("--tier").as_deref() {
                Some("ipvs") => ipvs = true,
                Some("netns") => ipvs = false,
                _ => {
                    eprintln!("ha-tests: --tier takes ipvs or netns");
                    return usage();
                }
            },
            "--target" => {
                target.get_or_insert_with(|| Target {
                    rate: 50,
                    ..Target::default()
                });
            }
            "--endpoint" => match value("--endpoint") {
                Some(e) => target.get_or_insert_with(Target::default).endpoints.push(e),
                None => return usage(),
            },
            "--probe" => match value("--probe").map(|p| (p.parse::<SocketAddr>(), p)) {
                Some((Ok(p), _)) => target.get_or_insert_with(Target::default).probes.push(p),
                Some((Err(_), p)) => {
                    eprintln!("ha-tests: --probe {p:?}: expected VIP:PORT, like 192.0.2.10:80");
                    return usage();
                }
                None => return usage(),
            },
            flag @ ("--ca" | "--cert" | "--key") => match value(flag) {
                Some(v) => target
                    .get_or_insert_with(Target::default)
                    .tls
                    .extend([flag.to_owned(), v]),
                None => return usage(),
            },
            other => words.push(other),
        }
    }
    if let Some(target) = &mut target {
        target.rate = 50;
        let name = match words[..] {
            ["drill", name] => name,
            _ => return usage(),
        };
        return match ha_tests::target::run(name, target).await {
            Ok(report) => {
                println!("{}", report.json());
                if report.passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                println!("{}", failed(name, &e));
                ExitCode::FAILURE
            }
        };
    }
    // Through a real router (BGP).
    if let ["drill", name] = words[..]
        && (name == "bgp" || ha_tests::routerdrills::ROUTER_DRILLS.contains(&name))
    {
        if let Err(e) = prereq::check(&format!("drill {name}"), &[prereq::ROUTER]) {
            return cannot_start(&e);
        }
        return router(name, router_modes).await;
    }
    // The cluster lab's drills.
    if let ["drill", name] = words[..]
        && (name == "cluster" || ha_tests::clusterdrills::CLUSTER_DRILLS.contains(&name))
    {
        return cluster(name, lab, ipvs, modes).await;
    }
    // Which drills, and where they run.
    let (all, named): (Vec<&'static str>, &str) = if lab || ipvs {
        (ha_tests::netdrills::ipvs_tier(), "has no IPVS tier")
    } else {
        (all_drills(), "is not a drill")
    };
    let names: Vec<&'static str> = match words[..] {
        ["drill", "all"] => all,
        // Not part of `all` (several minutes and a few GiB): by name.
        ["drill", "scale-100k"] if !(lab || ipvs) => vec!["scale-100k"],
        ["drill", name] => match all.iter().find(|d| **d == name) {
            Some(d) => vec![*d],
            None => {
                eprintln!("ha-tests: {name:?} {named}; drills: {}", all.join(", "));
                return usage();
            }
        },
        _ => return usage(),
    };
    // The kernel lab checks its own (the guest gets them from this machine).
    if !lab {
        // The IPVS tier runs every drill in namespaces (the guest's own
        // copy of flapping-backend, not the Kubernetes one of that name).
        let needs: Vec<&[prereq::Tool]> = names
            .iter()
            .filter(|n| ipvs || ha_tests::netdrills::NET_DRILLS.contains(n))
            .map(|_| prereq::NETNS)
            .collect();
        let what = match &names[..] {
            [one] => format!("drill {one}"),
            _ => "drill all".to_owned(),
        };
        if let Err(e) = prereq::check(&what, &needs) {
            return cannot_start(&e);
        }
    }
    let reports: Vec<serde_json::Value> = if lab {
        let all = names.clone();
        match tokio::task::spawn_blocking(move || ha_tests::netdrills::run_in_kernel_lab(&all))
            .await
            .map_err(anyhow::Error::from)
        {
            Ok(Ok(reports)) => reports,
            Ok(Err(e)) | Err(e) => vec![failed("kernel-lab", &e)],
        }
    } else {
        let mut out = Vec::new();
        for name in names {
            let report = if ipvs {
                use ha_tests::netdrills::{Dataplane, run};
                tokio::task::spawn_blocking(move || run(name, Dataplane::Ipvs))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r)
            } else {
                run_any(name, size).await
            };
            out.push(match report {
                Ok(r) => r.value(),
                Err(e) => failed(name, &e),
            });
        }
        out
    };
    let mut ok = true;
    for r in &reports {
        ok &= r["passed"] == true;
        println!("{r}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs cluster drills: `--lab` boots the kernel lab and runs them there
/// (every mode unless `--mode` says); `--tier ipvs` runs one here.
async fn cluster(
    name: &str,
    lab: bool,
    ipvs: bool,
    mut modes: Vec<ha_tests::clusterlab::Mode>,
) -> ExitCode {
    use ha_tests::clusterdrills::{CLUSTER_DRILLS, run, run_in_kernel_lab};
    use ha_tests::clusterlab::Mode;
    let names: Vec<&'static str> = if name == "cluster" {
        // The bench is asked for by name (cluster-hop): it is not a drill.
        CLUSTER_DRILLS
            .iter()
            .copied()
            .filter(|d| *d != "cluster-hop")
            .collect()
    } else {
        CLUSTER_DRILLS
            .iter()
            .copied()
            .filter(|d| *d == name)
            .collect()
    };
    let reports: Vec<serde_json::Value> = if lab {
        if modes.is_empty() {
            modes = vec![Mode::L2, Mode::Bgp];
        }
        let runs: Vec<(&'static str, Mode)> = modes
            .iter()
            .flat_map(|m| names.iter().map(move |n| (*n, *m)))
            .collect();
        match tokio::task::spawn_blocking(move || run_in_kernel_lab(&runs))
            .await
            .map_err(anyhow::Error::from)
        {
            Ok(Ok(reports)) => reports,
            Ok(Err(e)) | Err(e) => vec![failed("kernel-lab", &e)],
        }
    } else if ipvs {
        if let Err(e) = prereq::check(&format!("drill {name}"), &[prereq::CLUSTER_LAB]) {
            return cannot_start(&e);
        }
        let mode = modes.first().copied().unwrap_or(Mode::L2);
        let mut out = Vec::new();
        for name in names {
            let report = tokio::task::spawn_blocking(move || run(name, mode))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
            out.push(match report {
                Ok(r) => r.value(),
                Err(e) => {
                    let mut v = failed(name, &e);
                    v["mode"] = mode.name().into();
                    v
                }
            });
        }
        out
    } else {
        eprintln!(
            "ha-tests: the cluster drills need real IPVS: add --lab (the kernel lab), or --tier ipvs on a kernel with IPVS"
        );
        return usage();
    };
    let mut ok = true;
    for r in &reports {
        ok &= r["passed"] == true;
        println!("{r}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A drill this machine cannot run (a program missing): said on standard
/// error, exit status 2 as for a usage error (nothing was run).
fn cannot_start(e: &anyhow::Error) -> ExitCode {
    eprintln!("ha-tests: {e:#}");
    ExitCode::from(2)
}

/// The JSON line of a drill that could not run.
fn failed(drill: &str, e: &anyhow::Error) -> serde_json::Value {
    serde_json::json!({"drill": drill, "passed": false, "error": format!("{e:#}")})
}

/// Runs drills through the router: `bgp` is all of them; every mode
/// unless `--mode` says. One JSON report per drill and mode.
async fn router(name: &str, modes: Vec<ha_tests::routerdrills::Mode>) -> ExitCode {
    use ha_tests::routerdrills::{Mode, ROUTER_DRILLS, run};
    let names: Vec<&'static str> = if name == "bgp" {
        ROUTER_DRILLS.to_vec()
    } else {
        ROUTER_DRILLS
            .iter()
            .copied()
            .filter(|d| *d == name)
            .collect()
    };
    let every_mode = modes.is_empty();
    let modes = if every_mode {
        vec![Mode::Owner, Mode::Ecmp]
    } else {
        modes
    };
    let mut ok = true;
    for name in names {
        for mode in &modes {
            let mode = *mode;
            // Learners scale ECMP out; asked for owner mode, the drill
            // says so.
            if every_mode && name == "learner-scale-out" && mode == Mode::Owner {
                continue;
            }
            let report = tokio::task::spawn_blocking(move || run(name, mode))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
            let line = match report {
                Ok(r) => r.value(),
                Err(e) => {
                    let mut v = failed(name, &e);
                    v["mode"] = serde_json::json!(mode.name());
                    v
                }
            };
            ok &= line["passed"] == true;
            println!("{line}");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
