//! Support for end-to-end tests and failover drills: real `lb-node`
//! processes started from the workspace's built binaries, their logs
//! captured, their admin API at hand.
//!
//! The binaries are taken from `LB_NODE_BIN` / `LBCTL_BIN` when set, or
//! else from the target directory this test binary was built into; build
//! them first with `cargo build --workspace --bins` (the test command in the
//! README does).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use proto::admin::v1::admin_client::AdminClient;
use tonic::transport::Channel;

/// Path of a workspace binary (`lb-node`, `lbctl`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Ok(path) = std::env::var(&var) {
        return Ok(PathBuf::from(path));
    }
    // Test binaries live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe()?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join(name))
        .collect::<Vec<_>>();
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!("{name} is not built (looked in {candidates:?}); run `cargo build --workspace --bins` or set {var}")
    })
}

/// A running `lb-node` process. Killed when dropped.
#[derive(Debug)]
pub struct Member {
    child: Child,
    log: Arc<Mutex<String>>,
    /// The admin API's address, as the member reported it.
    pub admin: SocketAddr,
    /// The metrics endpoint's address, as the member reported it.
    pub metrics: SocketAddr,
}

impl Member {
    /// Starts `lb-node --config <config>` and waits until its admin API
    /// listens. The config may use port 0 for the admin API: the real
    /// address is read from the member's start-up log line.
    pub fn start(config: &Path) -> anyhow::Result<Member> {
        Self::start_in(None, config)
    }

    /// Starts a member inside network namespace `netns` (`ip netns exec`,
    /// which runs lb-node in the same process).
    pub fn start_in(netns: Option<&str>, config: &Path) -> anyhow::Result<Member> {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary("lb-node")?);
                c
            }
            None => Command::new(binary("lb-node")?),
        };
        let mut child = command
            .arg("--config")
            .arg(config)
            // `DRILL_MEMBER_LOG`: the members' log filter (debugging).
            .env(
                "RUST_LOG",
                std::env::var("DRILL_MEMBER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start lb-node")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("HA_TESTS_ECHO").is_some() {
                    eprintln!("[lb-node] {line}");
                }
                let mut log = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut member = Member {
            child,
            log,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = member.wait_for_log("lb-node starting", Duration::from_secs(20))?;
        let addr = line
            .split("admin=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("start-up line names no admin address")?;
        member.admin = addr
            .parse()
            .with_context(|| format!("bad admin address {addr:?}"))?;
        let metrics = line
            .split("metrics=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("start-up line names no metrics address")?;
        member.metrics = metrics
            .parse()
            .with_context(|| format!("bad metrics address {metrics:?}"))?;
        Ok(member)
    }

    /// GETs a path of the metrics endpoint; returns (status code, body).
    pub fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.http_get_within(path, Duration::from_secs(5))
    }

    /// `http_get`, waiting up to `timeout` for the answer (the error then
    /// names the path and the wait).
    pub fn http_get_within(&self, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(self.metrics)?;
        stream.set_read_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: lb-node\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response).with_context(|| {
            format!(
                "GET {path} from {}: no whole answer within {timeout:?}",
                self.metrics
            )
        })?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status line")?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the member logged so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until a log line contains `needle`, and returns that line. Fails
    /// early if the member exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "lb-node exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "lb-node did not log {needle:?} within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How the process ended, if it has (`None` while it runs, or when
    /// its state cannot be read).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`).
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("lb-node did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client of the member's admin API.
    pub async fn client(&self) -> anyhow::Result<AdminClient<Channel>> {
        let channel = Channel::from_shared(format!("http://{}", self.admin))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(AdminClient::new(channel))
    }

    /// Runs `lbctl` against this member and returns (exit code, stdout,
    /// stderr).
    pub fn lbctl(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        lbctl_on(&[self], args)
    }
}

/// Runs `lbctl` with every given member as an endpoint, in that order;
/// (exit code, stdout, stderr).
pub fn lbctl_on(members: &[&Member], args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = Command::new(binary("lbctl")?);
    for m in members {
        cmd.arg("--endpoint").arg(format!("http://{}", m.admin));
    }
    let out = cmd.args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The leader every member of `members` names, once they agree and it is
/// one of them (within 20 s).
pub async fn agreed_leader(
    members: &std::collections::BTreeMap<u64, Member>,
) -> anyhow::Result<u64> {
    eventually("an agreed leader", Duration::from_secs(20), || async {
        let mut seen = Vec::new();
        for m in members.values() {
            seen.push(cluster_status(m).await?.leader);
        }
        Ok(
            (members.contains_key(&seen[0]) && seen.iter().all(|l| *l == seen[0]))
                .then_some(seen[0]),
        )
    })
    .await
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with
/// `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `eventually` for tests that block (no runtime): polls `check` every
/// 50 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e.to_string()),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?} (last error: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a file the way editors do: a new file renamed over the old one.
pub fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A free TCP port for a member to listen on, below the kernel's
/// ephemeral range (32768 and up): a port the kernel hands out for
/// `bind(0)` may also become the local port of some outgoing connection
/// (the tests make many) before the member binds it, and the member then
/// fails to start. Test processes run in parallel and each member binds
/// its ports a while after they were chosen, so two processes must never
/// choose the same port: the ports are handed out in turn from a counter
/// in a file shared by every test process on the machine (locked while
/// read and written), and each is checked free by binding it. A CI run
/// once lost a test to two processes that chose the same port.
pub fn free_port() -> anyhow::Result<u16> {
    use std::io::{Read, Seek, Write};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    let path = std::env::temp_dir().join("ha-tests-next-port");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut next: u32 = text.trim().parse().unwrap_or(0) % SPAN;
    let mut found = None;
    for _ in 0..SPAN {
        let port = u16::try_from(LOW + next)?;
        next = (next + 1) % SPAN;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            found = Some(port);
            break;
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{next}")?;
    // The lock goes with the file.
    drop(file);
    found.with_context(|| format!("no free port between {LOW} and {}", LOW + SPAN))
}

/// Files for a loopback cluster of `n` members sharing one services file:
/// `member-<id>.toml` and `data-<id>/` in `dir`.
#[derive(Debug, Clone)]
pub struct ClusterLayout {
    pub dir: PathBuf,
    pub services: PathBuf,
    pub peer_ports: Vec<u16>,
    /// The members' admin ports, in id order.
    pub admin_ports: Vec<u16>,
}

/// A machine's config for joining a layout's cluster (`lbctl member add`).
#[derive(Debug, Clone)]
pub struct Joiner {
    pub id: u64,
    pub config: PathBuf,
    /// Its peer address, as `member add` takes it.
    pub peer: String,
    /// Its admin API address.
    pub admin: String,
}

impl ClusterLayout {
    /// Writes the configs; `services` is the services file's text.
    pub fn write(
        dir: &Path,
        n: u64,
        services: &str,
        cluster_id: &str,
    ) -> anyhow::Result<ClusterLayout> {
        let services_path = dir.join("services.toml");
        std::fs::write(&services_path, services)?;
        Self::write_with_source(
            dir,
            n,
            "[source.file]\npath = \"services.toml\"\ncheck_interval = \"200ms\"\n",
            cluster_id,
        )
    }

    /// Writes the configs with `source` as the source section (TOML, e.g.
    /// a `[source.kubernetes]` table).
    pub fn write_with_source(
        dir: &Path,
        n: u64,
        source: &str,
        cluster_id: &str,
    ) -> anyhow::Result<ClusterLayout> {
        let peer_ports = (0..n)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let admin_ports = (0..n)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let members: Vec<String> = peer_ports
            .iter()
            .zip(&admin_ports)
            .enumerate()
            .map(|(i, (port, admin))| {
                format!(
                    "{{ id = {}, address = \"127.0.0.1:{port}\", admin = \"127.0.0.1:{admin}\" }}",
                    i + 1
                )
            })
            .collect();
        for (i, port) in peer_ports.iter().enumerate() {
            let id = i + 1;
            let admin = admin_ports[i];
            let config = format!(
                "[node]\nid = {id}\n\n{source}\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\nmetrics_listen = \"127.0.0.1:0\"\n\n[cluster]\nid = \"{cluster_id}\"\ndata_dir = \"data-{id}\"\n\
                 listen = \"127.0.0.1:{port}\"\nmember = [{}]\n",
                members.join(", ")
            );
            std::fs::write(dir.join(format!("member-{id}.toml")), config)?;
        }
        Ok(ClusterLayout {
            dir: dir.to_owned(),
            services: dir.join("services.toml"),
            peer_ports,
            admin_ports,
        })
    }

    pub fn config(&self, id: u64) -> PathBuf {
        self.dir.join(format!("member-{id}.toml"))
    }

    /// Writes `member-<id>.toml` for a new machine that joins the cluster
    /// by `lbctl member add` (the founding members in its config, as an
    /// operator writes it): member 1's config with its own id, data
    /// directory and ports.
    pub fn write_joiner(&self, id: u64) -> anyhow::Result<Joiner> {
        let (peer, admin) = (free_port()?, free_port()?);
        let config = std::fs::read_to_string(self.config(1))?
            .replacen("id = 1\n", &format!("id = {id}\n"), 1)
            .replace(
                "data_dir = \"data-1\"",
                &format!("data_dir = \"data-{id}\""),
            )
            .replace(
                &format!("listen = \"127.0.0.1:{}\"\n", self.peer_ports[0]),
                &format!("listen = \"127.0.0.1:{peer}\"\n"),
            )
            .replace(
                &format!("listen = \"127.0.0.1:{}\"\n", self.admin_ports[0]),
                &format!("listen = \"127.0.0.1:{admin}\"\n"),
            );
        let path = self.config(id);
        std::fs::write(&path, config)?;
        Ok(Joiner {
            id,
            config: path,
            peer: format!("127.0.0.1:{peer}"),
            admin: format!("127.0.0.1:{admin}"),
        })
    }

    /// Starts every member of the layout (ids 1 to n).
    pub fn start_all(&self) -> anyhow::Result<std::collections::BTreeMap<u64, Member>> {
        (1..=self.peer_ports.len() as u64)
            .map(|id| Ok((id, Member::start(&self.config(id))?)))
            .collect()
    }
}

/// A member's cluster status through its admin API.
pub async fn cluster_status(member: &Member) -> anyhow::Result<proto::admin::v1::ClusterStatus> {
    member
        .client()
        .await?
        .get_status(proto::admin::v1::GetStatusRequest {})
        .await?
        .into_inner()
        .cluster
        .context("member reports no cluster")
}

pub mod captures;
pub mod clusterdrills;
pub mod clusterlab;
pub mod disk;
pub mod dns;
pub mod drills;
pub mod fake_api;
pub mod flood;
pub mod kernel_lab;
pub mod kube;
pub mod l2lab;
pub mod netdrills;
pub mod netns;
pub mod prereq;
pub mod report;
pub mod routerdrills;
pub mod routers;
pub mod routertable;
pub mod scale;
pub mod scaleout;
pub mod sessions;
pub mod target;
pub mod traffic;
pub mod writer;

/// The metric names deploy/prometheus/lb-node-alerts.yml and
/// deploy/grafana/lb-node-dashboard.json use (`lb_...` and `process_...`
/// sample names, as in `/metrics`: a histogram's `_bucket`).
pub fn deploy_metric_names() -> anyhow::Result<std::collections::BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut names = std::collections::BTreeSet::new();
    for file in [
        "prometheus/lb-node-alerts.yml",
        "grafana/lb-node-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file))
            .with_context(|| format!("reading deploy/{file}"))?;
        names.extend(lb_node::exporter::metric_names_in(&text));
    }
    Ok(names)
}

/// The names of `names` that no sample line of a `/metrics` text has.
pub fn missing_metrics<'a>(
    metrics: &str,
    names: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let exported: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    names
        .into_iter()
        .filter(|n| !exported.contains(n.as_str()))
        .cloned()
        .collect()
}
