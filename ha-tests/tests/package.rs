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
        Ok(())
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
