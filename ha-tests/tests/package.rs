//! The Debian package (issue 24): built by deploy/debian/build-deb.sh from
//! the binaries under test, installed on this machine with dpkg (CI runs
//! as root on a throwaway machine), checked as an operator would find it
//! (files and modes, the system user, a certificate directory the service
//! can read, a unit `systemd-analyze verify` accepts and that is as
//! hardened as before), then purged.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("{program}: {e}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn mode(path: &str) -> anyhow::Result<(u32, u32, u32)> {
    let m = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    Ok((m.permissions().mode() & 0o7777, m.uid(), m.gid()))
}

fn id_of(database: &str, name: &str) -> anyhow::Result<u32> {
    let (code, out, err) = run("getent", &[database, name])?;
    anyhow::ensure!(code == 0, "getent {database} {name}: {code} {err}");
    Ok(out.split(':').nth(2).unwrap_or("").parse()?)
}

#[test]
fn the_package_installs_a_user_a_unit_and_readable_certificates() -> anyhow::Result<()> {
    let (_, uid, _) = run("id", &["-u"])?;
    anyhow::ensure!(
        uid.trim() == "0",
        "installing a package needs root (CI runs as root)"
    );
    let bins = ha_tests::binary("lb-node")?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("no binary directory"))?;
    let out_dir = tempfile::tempdir()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/debian/build-deb.sh");
    let (code, deb, err) = run(
        &script.to_string_lossy(),
        &[&bins.to_string_lossy(), &out_dir.path().to_string_lossy()],
    )?;
    anyhow::ensure!(code == 0, "build-deb.sh: {code} {err}");
    let deb = deb.trim().to_owned();

    // What the package holds, with owners and modes.
    let (code, listing, err) = run("dpkg-deb", &["--contents", &deb])?;
    anyhow::ensure!(code == 0, "dpkg-deb --contents: {err}");
    for (perms, path) in [
        ("-rwxr-xr-x root/root", "./usr/bin/lb-node"),
        ("-rwxr-xr-x root/root", "./usr/bin/lbctl"),
        (
            "-rw-r--r-- root/root",
            "./lib/systemd/system/lb-node.service",
        ),
        ("-rw-r--r-- root/root", "./etc/lb-node/lb-node.toml"),
        ("-rw-r--r-- root/root", "./etc/lb-node/services.toml"),
        ("-rwxr-xr-x root/root", "./usr/share/lb-node/make-certs.sh"),
        ("-rw-r--r-- root/root", "./usr/share/doc/lb-node/README.md"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(perms) && l.ends_with(path)),
            "{perms} {path} in\n{listing}"
        );
    }
    let (_, conffiles, _) = run("dpkg-deb", &["--info", &deb, "conffiles"])?;
    assert!(
        conffiles.contains("/etc/lb-node/lb-node.toml"),
        "{conffiles}"
    );

    // Installed.
    let (code, _, err) = run("dpkg", &["-i", &deb])?;
    anyhow::ensure!(code == 0, "dpkg -i: {err}");
    let checked = (|| -> anyhow::Result<()> {
        let uid = id_of("passwd", "lb-node")?;
        let gid = id_of("group", "lb-node")?;
        let (_, passwd, _) = run("getent", &["passwd", "lb-node"])?;
        assert!(passwd.trim_end().ends_with("/usr/sbin/nologin"), "{passwd}");
        assert_eq!(
            mode("/etc/lb-node/tls")?,
            (0o750, 0, gid),
            "/etc/lb-node/tls"
        );
        assert_eq!(
            mode("/var/lib/lb-node")?,
            (0o750, uid, gid),
            "/var/lib/lb-node"
        );
        assert_eq!(mode("/usr/bin/lb-node")?.0, 0o755);
        let (code, out, err) = run("/usr/bin/lbctl", &["--version"])?;
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("lbctl "), "{out}");
        // The configuration as installed is valid.
        let (code, out, err) = run(
            "/usr/bin/lb-node",
            &["plan", "--config", "/etc/lb-node/lb-node.toml"],
        )?;
        assert_eq!(code, 0, "lb-node plan: {err}");
        assert!(out.contains("-A -t"), "{out}");

        // Certificates made as root are readable by the service's user,
        // the CA key is not.
        let (code, _, err) = run(
            "/usr/share/lb-node/make-certs.sh",
            &["/etc/lb-node/tls", "1"],
        )?;
        anyhow::ensure!(code == 0, "make-certs.sh: {err}");
        assert_eq!(mode("/etc/lb-node/tls/member-1-key.pem")?, (0o640, 0, gid));
        assert_eq!(mode("/etc/lb-node/tls/ca.pem")?, (0o640, 0, gid));
        assert_eq!(mode("/etc/lb-node/tls/ca-key.pem")?, (0o600, 0, 0));
        for (file, readable) in [
            ("/etc/lb-node/tls/member-1-key.pem", true),
            ("/etc/lb-node/tls/member-1.pem", true),
            ("/etc/lb-node/tls/ca.pem", true),
            ("/etc/lb-node/tls/ca-key.pem", false),
        ] {
            let (code, _, err) = run("runuser", &["-u", "lb-node", "--", "cat", file])?;
            assert_eq!(code == 0, readable, "lb-node reads {file}: {err}");
        }

        // The unit: valid, and as hardened as the DynamicUser unit before
        // it (systemd's exposure score 2.2).
        let (code, out, err) = run(
            "systemd-analyze",
            &["verify", "/lib/systemd/system/lb-node.service"],
        )?;
        assert_eq!(code, 0, "systemd-analyze verify: {out}{err}");
        assert!(
            !format!("{out}{err}").contains("lb-node.service:"),
            "systemd-analyze verify complains: {out}{err}"
        );
        let unit = std::fs::read_to_string("/lib/systemd/system/lb-node.service")?;
        for line in [
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "RestartPreventExitStatus=10",
            "User=lb-node",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} in the unit");
        }
        let (_, out, err) = run(
            "systemd-analyze",
            &[
                "security",
                "--offline=true",
                "--no-pager",
                "/lib/systemd/system/lb-node.service",
            ],
        )?;
        let exposure: f64 = format!("{out}{err}")
            .split("Overall exposure level for lb-node.service: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no exposure level in {out}{err}"))?;
        assert!(exposure <= 2.2, "exposure {exposure} (was 2.2)");
        std::fs::remove_dir_all("/etc/lb-node/tls")?;
        std::fs::create_dir("/etc/lb-node/tls")?;
        anyhow::ensure!(run("chgrp", &["lb-node", "/etc/lb-node/tls"])?.0 == 0);
        std::fs::set_permissions("/etc/lb-node/tls", std::fs::Permissions::from_mode(0o750))?;
        walkthrough(&unit)
    })();

    // Purged: the files, the state and the certificates go.
    let (code, _, err) = run("dpkg", &["--purge", "lb-node"])?;
    anyhow::ensure!(code == 0, "dpkg --purge: {err}");
    checked?;
    for gone in [
        "/usr/bin/lb-node",
        "/usr/bin/lbctl",
        "/etc/lb-node",
        "/var/lib/lb-node",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} after purge");
    }
    Ok(())
}

/// A block of the README's walkthrough, by its marker.
fn readme_block(readme: &str, marker: &str) -> anyhow::Result<String> {
    let after = readme
        .split(&format!("<!-- walkthrough: {marker} -->\n```sh\n"))
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("README.md has no walkthrough block {marker:?}"))?;
    let block = after.split("\n```\n").next().unwrap_or_default();
    Ok(format!("{block}\n"))
}

/// Three emulated machines: a network namespace each on one bridge (eth0,
/// 10.0.0.N/24), and a mount namespace each where /etc/lb-node and
/// /var/lib/lb-node are the machine's own copies of what the package
/// installed. Everything goes on drop.
struct Machines {
    tag: String,
    holders: Vec<std::process::Child>,
    dir: tempfile::TempDir,
}

impl Machines {
    fn new() -> anyhow::Result<Machines> {
        let tag = format!("wt{}", std::process::id());
        let dir = tempfile::tempdir()?;
        let mut machines = Machines {
            tag: tag.clone(),
            holders: Vec::new(),
            dir,
        };
        let d = machines.dir.path().display().to_string();
        let setup = format!(
            r#"set -e
ip netns add {tag}-sw
ip -n {tag}-sw link add br0 type bridge
ip -n {tag}-sw link set br0 up
for n in 1 2 3; do
  ip netns add {tag}-$n
  ip link add {tag}-$n type veth peer name eth0 netns {tag}-$n
  ip link set {tag}-$n netns {tag}-sw
  ip -n {tag}-sw link set {tag}-$n master br0 up
  ip -n {tag}-$n addr add 10.0.0.$n/24 dev eth0
  ip -n {tag}-$n link set eth0 up
  ip -n {tag}-$n link set lo up
  mkdir {d}/$n
  cp -a /etc/lb-node {d}/$n/etc
  cp -a /var/lib/lb-node {d}/$n/var
done
"#
        );
        let (code, out, err) = run("bash", &["-c", &setup])?;
        anyhow::ensure!(code == 0, "emulated machines: {out}{err}");
        for n in 1..=3 {
            use std::io::BufRead as _;
            let mut holder = Command::new("ip")
                .args(["netns", "exec", &format!("{tag}-{n}")])
                .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount --bind {d}/{n}/etc /etc/lb-node && mount --bind {d}/{n}/var /var/lib/lb-node && echo ready && exec sleep 100000"
                ))
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            if let Some(out) = holder.stdout.take() {
                std::io::BufReader::new(out).read_line(&mut line)?;
            }
            machines.holders.push(holder);
            anyhow::ensure!(line.trim() == "ready", "machine {n} did not start");
        }
        Ok(machines)
    }

    /// Runs `script` with bash on machine `n` (1-3): `ssh root@10.0.0.M
    /// CMD` runs CMD on machine M, and `systemctl enable --now lb-node`
    /// starts the unit's ExecStart as its User= with its capabilities.
    fn run(&self, n: usize, script: &str, unit: &str) -> anyhow::Result<(i32, String, String)> {
        let value = |key: &str| -> anyhow::Result<&str> {
            unit.lines()
                .find_map(|l| l.strip_prefix(key))
                .ok_or_else(|| anyhow::anyhow!("the unit has no {key}"))
        };
        let exec_start = value("ExecStart=")?;
        let user = value("User=")?;
        let caps: Vec<String> = value("AmbientCapabilities=")?
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let caps = caps.join(",");
        let pids: Vec<String> = self.holders.iter().map(|h| h.id().to_string()).collect();
        let d = self.dir.path().display();
        let prelude = format!(
            r#"set -e
declare -A MACHINE=([10.0.0.1]={p1} [10.0.0.2]={p2} [10.0.0.3]={p3})
ssh() {{ local host=${{1#root@}}; shift; nsenter -t "${{MACHINE[$host]}}" -m -n "$@"; }}
systemctl() {{
  [ "$*" = "enable --now lb-node" ] || {{ echo "systemctl $*: not emulated" >&2; return 1; }}
  setpriv --reuid={user} --regid={user} --init-groups --inh-caps={caps} --ambient-caps={caps} {exec_start} > {d}/{n}.log 2>&1 &
  echo $! > {d}/{n}.pid
}}
"#,
            p1 = pids[0],
            p2 = pids[1],
            p3 = pids[2],
        );
        let out = Command::new("nsenter")
            .args(["-t", &pids[n - 1], "-m", "-n", "bash", "-c"])
            .arg(format!("{prelude}{script}"))
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{n}.log"))).unwrap_or_default()
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for n in 1..=3 {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(format!("{n}.pid"))) {
                let _ = run("kill", &["-9", pid.trim()]);
            }
        }
        for h in &mut self.holders {
            let _ = h.kill();
            let _ = h.wait();
        }
        for ns in ["sw", "1", "2", "3"] {
            let _ = run("ip", &["netns", "del", &format!("{}-{ns}", self.tag)]);
        }
    }
}

/// The README's walkthrough from the package to a three-member cluster
/// with mutual TLS, its blocks run as written (`N=1` set per machine, as
/// it says) on three emulated machines.
fn walkthrough(unit: &str) -> anyhow::Result<()> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let certificates = readme_block(&readme, "lb1")?;
    let member = readme_block(&readme, "every machine")?;
    let lbctl = readme_block(&readme, "lbctl")?;
    anyhow::ensure!(member.starts_with("N=1\n"), "the member block sets N first");
    let machines = Machines::new()?;
    let (code, out, err) = machines.run(1, &certificates, unit)?;
    anyhow::ensure!(code == 0, "certificates on lb1: {out}{err}");
    for n in 1..=3 {
        let script = member.replacen("N=1\n", &format!("N={n}\n"), 1);
        let (code, out, err) = machines.run(n, &script, unit)?;
        anyhow::ensure!(code == 0, "member block on lb{n}: {out}{err}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (status, vips) = loop {
        let (code, out, err) = machines.run(1, &lbctl, unit)?;
        let vips: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("192.0.2.") || l.starts_with("2001:db8::"))
            .collect();
        let settled = code == 0
            && out.contains("leader ")
            && !vips.is_empty()
            && vips
                .iter()
                .all(|l| !l.contains(" none ") && !l.contains("nobody"))
            && !out.contains("not asked");
        if settled {
            break (out.clone(), vips.join("\n"));
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no settled cluster in 30 s: lbctl said {code}: {out}{err}\nlb1: {}\nlb2: {}\nlb3: {}",
            machines.log(1),
            machines.log(2),
            machines.log(3)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    println!("{status}\n{vips}");
    // Each member runs as the package's user.
    for n in 1..=3 {
        let pid = std::fs::read_to_string(machines.dir.path().join(format!("{n}.pid")))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
        let uid = id_of("passwd", "lb-node")?;
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:")
                    && l.split_whitespace().nth(1) == Some(&uid.to_string())),
            "lb{n} runs as lb-node: {status}"
        );
    }
    // A client without a certificate is refused, and the member says why.
    let (code, _, _) = machines.run(1, "lbctl -e 10.0.0.2:9443 status", unit)?;
    assert_ne!(code, 0, "lbctl without a certificate must be refused");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !machines
        .log(2)
        .contains("TLS handshake failed: the client did not speak TLS")
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "lb2 did not log the refusal: {}",
            machines.log(2)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
