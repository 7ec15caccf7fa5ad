//! `dataplane.kind` against the machine's kernel: "ipvs" on a kernel
//! without IPVS stops the member with a message saying so; "auto" falls
//! back to memory and serves. (On a kernel with IPVS, the kernel lab tests
//! in ha-tests cover "ipvs".)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(kind: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("lb-node.toml"),
        format!(
            "[node]\nid = 1\n[dataplane]\nkind = \"{kind}\"\n[source.file]\npath = \"services.toml\"\n[admin]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("write config");
    std::fs::write(
        dir.path().join("services.toml"),
        "[[service]]\nname = \"web\"\nvip = \"192.0.2.10\"\nport = 80\n  [[service.backend]]\n  address = \"198.51.100.1\"\n",
    )
    .expect("write services");
    let path = dir.path().join("lb-node.toml");
    (dir, path)
}

fn kernel_has_ipvs() -> bool {
    std::path::Path::new("/proc/net/ip_vs").exists()
}

#[test]
fn ipvs_on_a_kernel_without_ipvs_stops_with_a_message() {
    if kernel_has_ipvs() {
        eprintln!("this kernel has IPVS: nothing to check here");
        return;
    }
    let (_dir, path) = config("ipvs");
    let out = Command::new(env!("CARGO_BIN_EXE_lb-node"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("lb-node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("dataplane.kind = \"ipvs\"") && stderr.contains("this kernel has no IPVS"),
        "{stderr}"
    );
}

#[test]
fn auto_on_a_kernel_without_ipvs_serves_from_memory() {
    if kernel_has_ipvs() {
        eprintln!("this kernel has IPVS: nothing to check here");
        return;
    }
    let (_dir, path) = config("auto");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-node"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lb-node runs");
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("dataplane synced") {
                break;
            }
        }
        seen
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let seen = lines.join().expect("reader");
    assert!(seen.contains("using the memory dataplane"), "{seen}");
    assert!(seen.contains("dataplane synced"), "{seen}");
}
