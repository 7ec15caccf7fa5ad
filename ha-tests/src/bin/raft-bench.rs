//! Replication benchmark: a 3-member cluster on loopback, in one process,
//! with the real node threads, the real tonic peer transport and real
//! raft-engine logs synced to disk (fsync on).
//!
//! The table holds 10,000 services of 10 backends each; every command is
//! an endpoint change (one service's backend set replaced, one weight
//! changed), as the Kubernetes source will send them.
//!
//! 1. Throughput: concurrent proposers keep the leader busy for a while;
//!    commands per second committed (applied on the leader, so durable on a
//!    majority), with batches of commands per entry and with one command per
//!    entry.
//! 2. Latency: one command per entry, proposed open-loop at a fixed rate;
//!    commit latency percentiles.
//! 3. Reference, measured in the same run on the same disk: a bare loop of
//!    4 KiB write + fdatasync, the floor under any synced commit.
//!
//! The peer transport runs without TLS here.
//!
//!   cargo run --release -p ha-tests --bin raft-bench -- [--seconds 10] [--dir PATH]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lb_node::model::{Command, State, VirtualService};
use lb_node::replication::Proposer;
use lb_node::replication::node::{self, RaftStatus};
use lb_node::replication::replica::{Replica, ReplicaConfig};
use lb_node::replication::storage::LogStore;
use lb_node::replication::transport::{self, PeerOutbox, PeerService};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Args {
    seconds: u64,
    dir: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 10,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => args.seconds = it.next().context("--seconds N")?.parse()?,
            "--dir" => args.dir = Some(it.next().context("--dir PATH")?.into()),
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: raft-bench [--seconds N] [--dir PATH]"
            ),
        }
    }
    Ok(args)
}

const SERVICES: u32 = 10_000;

/// An endpoint change: service `n % SERVICES` gets backend weights from `n`.
fn change(n: u64) -> Command {
    let s = service((n % u64::from(SERVICES)) as u32);
    Command::ReplaceBackends {
        key: s.key,
        backends: s
            .backends
            .into_iter()
            .enumerate()
            .map(|(i, mut b)| {
                b.weight = 1 + ((n / u64::from(SERVICES) + i as u64) % 100) as u32;
                b
            })
            .collect(),
    }
}

fn service(n: u32) -> VirtualService {
    lb_node::model::fixtures::numbered_service(n, 10)
}

struct Cluster {
    proposers: Vec<Proposer>,
    statuses: Vec<watch::Receiver<RaftStatus>>,
    _states: Vec<watch::Receiver<Arc<State>>>,
    shutdown: CancellationToken,
}

async fn start_cluster(dir: &Path) -> anyhow::Result<Cluster> {
    let shutdown = CancellationToken::new();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let members: Vec<(u64, String)> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| Ok((i as u64 + 1, l.local_addr()?.to_string())))
        .collect::<anyhow::Result<_>>()?;
    let mut cluster = Cluster {
        proposers: vec![],
        statuses: vec![],
        _states: vec![],
        shutdown: shutdown.clone(),
    };
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let (inputs, inputs_rx) = std::sync::mpsc::channel();
        let (state_tx, states) = watch::channel(Arc::new(State::default()));
        let (status_tx, status) = watch::channel(RaftStatus::default());
        // Until the node publishes its state, the transport needs the
        // member list to route and admit messages.
        let mut seed = State::default();
        for (m, a) in &members {
            seed.set_member(*m, a.clone());
        }
        state_tx.send_replace(Arc::new(seed));
        let outbox = PeerOutbox::new(
            "bench".into(),
            id,
            states.clone(),
            inputs.clone(),
            tokio::runtime::Handle::current(),
            shutdown.clone(),
            None,
        );
        let service = PeerService::new("bench".into(), id, states.clone(), inputs.clone());
        let listener =
            lb_node::listener::GuardedListener::new(listener, "peer", Default::default());
        tokio::spawn(transport::serve(listener, service, None, shutdown.clone()));
        let member_dir = dir.join(format!("member-{id}"));
        let initial = members.clone();
        std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                // The log is opened on the thread that will own it.
                let store = LogStore::open(&member_dir).expect("log opens");
                let config = ReplicaConfig {
                    id,
                    election_ticks: 10,
                    heartbeat_ticks: 1,
                    snapshot_after_entries: 10_000,
                    fixed_election_timeout: None,
                    initial_admin: Default::default(),
                    wait_for_dataplane: false,
                    scope: Default::default(),
                    serve_while_leaving: false,
                    wait_for_announcer: false,
                };
                let replica = Replica::open(config, store, &initial).expect("replica opens");
                if let Err(e) = node::run(
                    replica,
                    inputs_rx,
                    Duration::from_millis(50),
                    outbox,
                    state_tx,
                    status_tx,
                ) {
                    eprintln!("member {id}: {e}");
                }
            })?;
        cluster.proposers.push(Proposer::raft(inputs));
        cluster.statuses.push(status);
        cluster._states.push(states);
    }
    Ok(cluster)
}

impl Cluster {
    async fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(i) = self.statuses.iter().position(|s| s.borrow().is_leader()) {
                return Ok(i);
            }
            anyhow::ensure!(Instant::now() < deadline, "no leader within 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Closed-loop throughput: `workers` proposers, each waiting for its entry
/// of `batch` commands before proposing the next.
async fn throughput(
    proposer: &Proposer,
    workers: usize,
    batch: usize,
    seconds: u64,
    base: u64,
) -> anyhow::Result<f64> {
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let proposer = proposer.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut n = base + (w as u64) * 1_000_000_000;
            while Instant::now() < end {
                let commands: Vec<Command> = (0..batch)
                    .map(|_| {
                        n += 7;
                        change(n)
                    })
                    .collect();
                proposer.propose(commands).await?;
                done += batch as u64;
            }
            anyhow::Ok(done)
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Open-loop latency at `rate` commands per second, one per entry.
async fn latency(proposer: &Proposer, rate: u64, seconds: u64) -> anyhow::Result<Vec<Duration>> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..rate * seconds {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let proposer = proposer.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            proposer.propose(vec![change(i * 13)]).await?;
            anyhow::Ok(t0.elapsed())
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        samples.push(t.await??);
    }
    samples.sort();
    Ok(samples)
}

/// The reference: 4 KiB writes, each followed by fdatasync, on the same disk.
fn fsync_reference(dir: &Path, seconds: u64) -> anyhow::Result<(f64, Vec<Duration>)> {
    use std::io::Write as _;
    let path = dir.join("fsync-reference");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0x5a_u8; 4096];
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut samples = Vec::new();
    let start = Instant::now();
    while Instant::now() < end {
        let t0 = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t0.elapsed());
    }
    let rate = samples.len() as f64 / start.elapsed().as_secs_f64();
    samples.sort();
    std::fs::remove_file(&path)?;
    Ok((rate, samples))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::tempdir_in(d)?
        }
        None => {
            tmp = tempfile::tempdir()?;
            tempfile::tempdir_in(tmp.path())?
        }
    };
    let cluster = start_cluster(dir.path()).await?;
    let leader = cluster.leader().await?;
    let proposer = &cluster.proposers[leader];
    let s = args.seconds;
    let t0 = Instant::now();
    for chunk in (0..SERVICES).collect::<Vec<_>>().chunks(500) {
        proposer
            .propose(
                chunk
                    .iter()
                    .map(|n| Command::UpsertService(service(*n)))
                    .collect(),
            )
            .await?;
    }
    let load_time = t0.elapsed();

    let (fsync_rate, fsync) = fsync_reference(dir.path(), s.min(5))?;
    let batched = throughput(proposer, 32, 64, s, 0).await?;
    let single = throughput(proposer, 64, 1, s, 1).await?;
    let lat = latency(proposer, 1_000, s).await?;
    let (p50, p99, max) = (
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );

    println!(
        "raft-bench: 3 members on loopback, fsync on, {} s per phase, data in {}",
        s,
        dir.path().display()
    );
    println!(
        "  table: {SERVICES} services x 10 backends, committed in {:.2} s (batches of 500)",
        load_time.as_secs_f64()
    );
    println!(
        "  reference: 4 KiB write + fdatasync      {fsync_rate:>10.0} /s   p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(&fsync, 0.5)),
        ms(percentile(&fsync, 0.99))
    );
    println!("  throughput, 64 commands per entry, 32 proposers   {batched:>10.0} commands/s");
    println!("  throughput, 1 command per entry, 64 proposers     {single:>10.0} commands/s");
    println!(
        "  commit latency at 1000 commands/s (one per entry): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples)",
        ms(p50),
        ms(p99),
        ms(max),
        lat.len()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "raft",
            "fsync_per_s": fsync_rate.round(),
            "fsync_p50_ms": ms(percentile(&fsync, 0.5)),
            "fsync_p99_ms": ms(percentile(&fsync, 0.99)),
            "batched_commands_per_s": batched.round(),
            "single_commands_per_s": single.round(),
            "latency_at_1000_p50_ms": ms(p50),
            "latency_at_1000_p99_ms": ms(p99),
            "latency_at_1000_max_ms": ms(max),
        })
    );
    cluster.shutdown.cancel();
    Ok(())
}
