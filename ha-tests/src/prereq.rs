//! What a drill needs on the machine, checked before it starts: a missing
//! program is named with the Debian package that has it. Without the check
//! a drill failed late and obscurely (`owner-crash` without tcpdump ended
//! with "no gratuitous ARP for 10.77.0.50 within 30s; seen: []").
//!
//! The test command (`ha-tests/run-all`) installs all of them; an operator
//! running one drill on a game day may not have.

use std::path::{Path, PathBuf};

/// A program a drill runs: a bare name is looked up on `PATH`, a path is
/// taken as it is (FRR's daemons live outside `PATH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

const fn tool(program: &'static str, package: &'static str) -> Tool {
    Tool { program, package }
}

/// The drills in network namespaces on this machine (real ARP, tcpdump
/// watching it).
pub const NETNS: &[Tool] = &[
    tool("ip", "iproute2"),
    tool("tcpdump", "tcpdump"),
    tool("chrt", "util-linux"),
];

/// The drills through a real router (FRR, in a namespace).
pub const ROUTER: &[Tool] = &[
    tool("ip", "iproute2"),
    tool("vtysh", "frr"),
    tool("/usr/lib/frr/zebra", "frr"),
    tool("/usr/lib/frr/bgpd", "frr"),
    tool("/usr/lib/frr/bfdd", "frr"),
];

/// The cluster lab's drills on a kernel with IPVS (`--tier ipvs`; the
/// kernel lab's guest has these copied in from this machine).
pub const CLUSTER_LAB: &[Tool] = &[
    tool("ip", "iproute2"),
    tool("nft", "nftables"),
    tool("tcpdump", "tcpdump"),
    tool("bird", "bird2"),
    tool("birdc", "bird2"),
    tool("iperf3", "iperf3"),
    tool("ipvsadm", "ipvsadm"),
];

/// Where `program` is, searching `path` (a `PATH` value) for a bare name.
fn find(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| program.into());
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The tools of `needs` that `path` lacks, each once.
pub fn missing(needs: &[&[Tool]], path: &str) -> Vec<Tool> {
    let mut out: Vec<Tool> = Vec::new();
    for t in needs.iter().flat_map(|n| n.iter()) {
        if !out.contains(t) && find(t.program, path).is_none() {
            out.push(*t);
        }
    }
    out
}

/// Ok if this machine has everything in `needs`; otherwise an error naming
/// each missing program and the one `apt-get install` that brings them.
pub fn check(what: &str, needs: &[&[Tool]]) -> anyhow::Result<()> {
    let path = std::env::var("PATH").unwrap_or_default();
    let lacking = missing(needs, &path);
    if lacking.is_empty() {
        return Ok(());
    }
    let programs: Vec<String> = lacking
        .iter()
        .map(|t| format!("{} ({})", t.program, t.package))
        .collect();
    let mut packages: Vec<&str> = lacking.iter().map(|t| t.package).collect();
    packages.sort_unstable();
    packages.dedup();
    anyhow::bail!(
        "{what} needs what this machine lacks: {}; install with `apt-get install {}` (ha-tests/run-all installs everything the drills need)",
        programs.join(", "),
        packages.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_missing_program_once_with_its_package() {
        let dir = tempfile::tempdir().expect("test");
        std::fs::write(dir.path().join("ip"), "").expect("test");
        let path = dir.path().display().to_string();
        let lacking = missing(&[NETNS, CLUSTER_LAB], &path);
        let names: Vec<&str> = lacking.iter().map(|t| t.program).collect();
        assert_eq!(
            names,
            [
                "tcpdump", "chrt", "nft", "bird", "birdc", "iperf3", "ipvsadm"
            ]
        );
        assert!(missing(&[&[tool("ip", "iproute2")]], &path).is_empty());
        // A path is taken as it is, not searched.
        let at = dir.path().join("ip").display().to_string();
        assert!(find(&at, "").is_some());
        assert!(find(&format!("{at}-not"), &path).is_none());
    }
}
