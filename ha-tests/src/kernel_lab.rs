//! The kernel lab: Debian's own kernel (package linux-image-amd64, which
//! ships IPVS as modules) booted under qemu with software emulation (TCG),
//! for everything that needs real IPVS, which the machine's kernel lacks.
//!
//! A run builds an initramfs (newc cpio, written here) holding busybox,
//! the host's `ip`, `nft` and `ipvsadm` with the shared libraries they load,
//! the workspace's binaries (debug information stripped), the kernel
//! modules the scenario needs with their dependencies, the files the test
//! hands over, and an `/init` that mounts the usual filesystems, loads the
//! modules and runs the scenario script. The guest has no network card:
//! every address lives in network namespaces inside it. The scenario
//! reports by printing lines that start with `LAB ` on the serial console;
//! the host collects them (and keeps the whole console for diagnosis).
//!
//! Nothing is skipped: a missing kernel, qemu or tool is an error naming
//! the package that provides it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Modules every scenario gets (with their dependencies).
pub const MODULES: &[&str] = &[
    // libcrc32c (conntrack, SCTP) asks the crypto API for crc32c, which
    // would load this through a modprobe the guest does not have.
    "crc32c_generic",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_lblc",
    "ip_vs_lblcr",
    "ip_vs_dh",
    "ip_vs_sh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_mh",
    "ip_vs_fo",
    "ip_vs_ovf",
    "dummy",
    "veth",
    "bridge",
    "sctp",
    "nft_chain_nat",
    // `dnat to`: the cluster lab's stand-in for kube-proxy's nftables mode.
    "nft_nat",
    // iptables-nft asks the kernel which revisions of its matches and
    // targets it knows (through nft_compat) before it translates them.
    "nft_compat",
    "xt_tcpudp",
    "xt_nat",
    "nft_masq",
    "nft_ct",
    // lb-node's flow hand-over (netdev ingress, `fwd`).
    "nft_fwd_netdev",
    // ctnetlink: the conntrack entries a member makes for the synced
    // connections of a VIP it takes over (a real kernel loads it on
    // demand; the guest has no modprobe helper).
    "nf_conntrack_netlink",
    // `ss -ti` (a drill's account of connections that hang) asks the
    // kernel over sock_diag.
    "tcp_diag",
];

/// Host programs copied into the guest, with the package that provides
/// each.
const TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/ip", "iproute2"),
    ("/usr/bin/ss", "iproute2"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/sbin/ipvsadm", "ipvsadm"),
    // iptables-nft (one program that acts by its name), for the cluster
    // lab's stand-in for kube-proxy's iptables mode.
    ("/usr/sbin/iptables", "iptables"),
    ("/usr/sbin/iptables-save", "iptables"),
    ("/usr/sbin/iptables-restore", "iptables"),
];

/// iptables' extensions (matches and targets), which it opens by name when
/// a rule uses them: no `ldd` finds them.
const XTABLES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// A kernel and its modules.
#[derive(Debug, Clone)]
pub struct KernelLab {
    pub kernel: PathBuf,
    pub modules: PathBuf,
    pub release: String,
}

/// What a guest run printed.
#[derive(Debug, Default)]
pub struct GuestRun {
    /// The whole serial console.
    pub console: String,
    /// The `LAB ` lines, without the prefix, in order.
    pub results: Vec<String>,
    pub elapsed: Duration,
}

impl GuestRun {
    /// The value of the first `LAB key value...` line.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.results.iter().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' ').or((rest.is_empty()).then_some("")))
        })
    }

    /// The lines of a block printed as `LAB key+ line` (one per line).
    pub fn block(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}+ ");
        self.results
            .iter()
            .filter_map(|l| {
                l.strip_prefix(prefix.as_str())
                    .or((l == &format!("{key}+")).then_some(""))
            })
            .collect()
    }
}

impl KernelLab {
    /// Finds Debian's kernel and qemu; an error says what to install.
    pub fn find() -> anyhow::Result<KernelLab> {
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        if !qemu.exists() {
            bail!(
                "kernel lab: {} is missing (apt-get install qemu-system-x86)",
                qemu.display()
            );
        }
        let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
            .context("kernel lab: /boot")?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .collect();
        kernels.sort();
        // The newest kernel that ships IPVS as a module (a machine may have
        // other kernels in /boot, with or without modules).
        let has_ipvs = |k: &PathBuf| {
            k.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .is_some_and(|release| {
                    Path::new("/lib/modules")
                        .join(release)
                        .join("kernel/net/netfilter/ipvs/ip_vs.ko")
                        .exists()
                })
        };
        let kernel = kernels.into_iter().rev().find(has_ipvs).context(
            "kernel lab: no /boot/vmlinuz-* with IPVS modules (apt-get install linux-image-amd64)",
        )?;
        let release = kernel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .context("kernel name")?
            .to_owned();
        let modules = PathBuf::from("/lib/modules").join(&release);
        if !modules.join("modules.dep").exists() {
            bail!(
                "kernel lab: {} has no modules.dep (reinstall linux-image-{release})",
                modules.display()
            );
        }
        for (tool, package) in TOOLS {
            if !Path::new(tool).exists() {
                bail!("kernel lab: {tool} is missing (apt-get install {package})");
            }
        }
        if !Path::new("/bin/busybox").exists() {
            bail!("kernel lab: /bin/busybox is missing (apt-get install busybox-static)");
        }
        Ok(KernelLab {
            kernel,
            modules,
            release,
        })
    }

    /// Modules in load order (dependencies first).
    fn module_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
        let dep = std::fs::read_to_string(self.modules.join("modules.dep"))?;
        let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        for line in dep.lines() {
            let Some((m, rest)) = line.split_once(':') else {
                continue;
            };
            let name = Path::new(m)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .trim_end_matches(".ko")
                .replace('-', "_");
            by_name.insert(name, m.to_owned());
            deps.insert(
                m.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            );
        }
        fn visit(
            m: &str,
            deps: &BTreeMap<String, Vec<String>>,
            seen: &mut BTreeSet<String>,
            out: &mut Vec<String>,
        ) {
            if !seen.insert(m.to_owned()) {
                return;
            }
            for d in deps.get(m).into_iter().flatten().rev() {
                visit(d, deps, seen, out);
            }
            out.push(m.to_owned());
        }
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            let path = by_name.get(&w.replace('-', "_")).with_context(|| {
                format!(
                    "kernel lab: module {w} is not in {}",
                    self.modules.display()
                )
            })?;
            visit(path, &deps, &mut seen, &mut out);
        }
        Ok(out)
    }

    /// Boots the kernel, runs `script` (busybox sh) and returns what it
    /// reported. `files` are (guest path, host path) pairs; executables
    /// get their shared libraries too. `memory_mib` is the guest's memory.
    pub fn run(
        &self,
        script: &str,
        files: &[(&str, &Path)],
        memory_mib: u32,
        timeout: Duration,
    ) -> anyhow::Result<GuestRun> {
        let work = tempfile::tempdir()?;
        let mut cpio = Cpio::default();
        for dir in [
            "bin", "sbin", "usr", "usr/bin", "usr/sbin", "lib", "lib64", "etc", "proc", "sys",
            "dev", "run", "tmp", "var", "var/run", "lab", "modules", "root",
        ] {
            cpio.dir(dir);
        }
        cpio.file("bin/busybox", &std::fs::read("/bin/busybox")?, 0o755);
        // Programs that look their user up (tcpdump -Z root) find root.
        cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
        cpio.file("etc/group", b"root:x:0:\n", 0o644);
        let mut libs = BTreeSet::new();
        for (tool, _) in TOOLS {
            cpio.file(tool.trim_start_matches('/'), &std::fs::read(tool)?, 0o755);
            libs.extend(shared_libraries(Path::new(tool))?);
        }
        if let Ok(entries) = std::fs::read_dir(XTABLES) {
            cpio.parents(&format!("{}/x", XTABLES.trim_start_matches('/')));
            for entry in entries {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "so") {
                    let guest = path.to_string_lossy().trim_start_matches('/').to_owned();
                    cpio.file(&guest, &std::fs::read(&path)?, 0o755);
                    libs.extend(shared_libraries(&path)?);
                }
            }
        }
        for (guest, host) in files {
            let data = if is_elf(host)? {
                libs.extend(shared_libraries(host)?);
                stripped(host, work.path())?
            } else {
                std::fs::read(host).with_context(|| format!("{}", host.display()))?
            };
            let mode = if is_executable(host) { 0o755 } else { 0o644 };
            let guest = guest.trim_start_matches('/');
            cpio.parents(guest);
            cpio.file(guest, &data, mode);
        }
        for lib in &libs {
            let data = std::fs::read(lib).with_context(|| format!("{}", lib.display()))?;
            let guest = lib.to_string_lossy().trim_start_matches('/').to_owned();
            cpio.parents(&guest);
            cpio.file(&guest, &data, 0o755);
        }
        let order = self.module_order(MODULES)?;
        let mut loads = String::new();
        for (i, m) in order.iter().enumerate() {
            let data = std::fs::read(self.modules.join(m))?;
            cpio.file(&format!("modules/{i:03}.ko"), &data, 0o644);
            loads += &format!(
                "insmod /modules/{i:03}.ko 2>/tmp/insmod || echo \"LAB module-failed {m}: $(cat /tmp/insmod)\"\n"
            );
        }
        cpio.file("lab/scenario.sh", script.as_bytes(), 0o755);
        let backlog: u32 = std::env::var("KERNEL_LAB_BACKLOG")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(30_000);
        let init = format!(
            r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Debian's busybox sh runs its own applets before looking at PATH: the
# real iproute2 (netns, veth peers in namespaces) must be called by path.
ip() {{ /usr/bin/ip "$@"; }}
# `inns NS CMD...` runs CMD in network namespace NS (made by `ip netns
# add`); iproute2's own `netns exec` crashes on busybox here.
inns() {{ ns=$1; shift; nsenter --net=/run/netns/$ns "$@"; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /var/run
{loads}
ip link set lo up
# The guest's one emulated CPU carries the packets of every host of a lab
# (members, client, backends), hop by hop through veths and a bridge,
# each hop queued on that CPU's backlog: after the emulated machine
# stalls, the burst overflows the default 1,000 packets and is dropped
# there (about 450 a survival drill, /proc/net/softnet_stat), which
# separate machines would not do. TCP retransmits such a drop, a UDP
# query is lost. (`KERNEL_LAB_BACKLOG=1000` runs a lab with the default.)
echo {backlog} > /proc/sys/net/core/netdev_max_backlog
echo "LAB booted $(cat /proc/uptime | cut -d' ' -f1)"
cd /lab
. /lab/scenario.sh
echo "LAB exit $?"
sync
poweroff -f
"#
        );
        cpio.file("init", init.as_bytes(), 0o755);
        let image = work.path().join("initrd.cpio");
        std::fs::write(&image, cpio.finish())?;

        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-smp", "2", "-m"])
            .arg(memory_mib.to_string())
            .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&image)
            // A soft lockup panics (and with -no-reboot ends qemu) at once,
            // rather than leaving the run to its timeout.
            .args([
                "-append",
                "console=ttyS0 quiet loglevel=3 panic=-1 softlockup_panic=1 rdinit=/init",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("kernel lab: cannot start qemu-system-x86_64")?;
        let mut stdout = child.stdout.take().context("qemu stdout")?;
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            out
        });
        let deadline = started + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let results: Vec<String> = console
            .lines()
            .filter_map(|l| {
                // Console escape sequences may come first on a line.
                let l = l.trim_end_matches('\r');
                l.find("LAB ").map(|at| l[at + 4..].to_owned())
            })
            .collect();
        // Debugging: the whole console, kept where asked.
        if let Some(path) = std::env::var_os("KERNEL_LAB_CONSOLE") {
            let _ = std::fs::write(path, &console);
        }
        let run = GuestRun {
            console,
            results,
            elapsed: started.elapsed(),
        };
        match status {
            None => bail!(
                "kernel lab: the guest did not finish within {timeout:?}; console:\n{}",
                tail(&run.console, 60)
            ),
            Some(s) if !s.success() => bail!(
                "kernel lab: qemu failed ({s}): {stderr}\nconsole:\n{}",
                tail(&run.console, 60)
            ),
            Some(_) => {}
        }
        if run.get("booted").is_none() {
            bail!(
                "kernel lab: the guest never ran /init; console:\n{}",
                tail(&run.console, 60)
            );
        }
        if let Some(m) = run.get("module-failed") {
            bail!(
                "kernel lab: module {m} did not load; console:\n{}",
                tail(&run.console, 60)
            );
        }
        Ok(run)
    }
}

pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn is_elf(p: &Path) -> anyhow::Result<bool> {
    let mut f = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
    let mut magic = [0u8; 4];
    Ok(f.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// A copy of an ELF binary without debug information.
fn stripped(p: &Path, work: &Path) -> anyhow::Result<Vec<u8>> {
    let out = work.join(format!(
        "stripped-{}",
        p.file_name().and_then(|n| n.to_str()).unwrap_or("bin")
    ));
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(p)
        .arg(&out)
        .status()
        .context("objcopy (binutils)")?;
    if !status.success() {
        bail!("objcopy --strip-debug {} failed", p.display());
    }
    Ok(std::fs::read(&out)?)
}

/// The shared libraries (and loader) an executable needs, by `ldd`.
fn shared_libraries(p: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(p).output().context("ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// An initramfs in the "newc" cpio format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.inode += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_owned()) {
            self.entry(name, 0o040755, &[]);
        }
    }

    /// The directories above `path`, outermost first.
    fn parents(&mut self, path: &str) {
        let mut dirs: Vec<String> = Path::new(path)
            .ancestors()
            .skip(1)
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty())
            .collect();
        dirs.reverse();
        for d in dirs {
            self.dir(&d);
        }
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}
