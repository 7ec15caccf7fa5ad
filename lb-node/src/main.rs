//! The `lb-node` binary: parse arguments, set up logging, load the
//! configuration, then run the member (`app::run`) or print its plan.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use lb_node::config::{Config, SourceConfig};
use lb_node::dataplane::{Table, ipvsadm_rules};
use lb_node::model::{State, commands_towards};
use lb_node::source::file::load_services;

/// One member of the load-balancer appliance.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The member's configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/lb-node/lb-node.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the member (the default).
    Run,
    /// Print the table this member would program, in `ipvsadm -Sn` form,
    /// without touching the kernel.
    Plan,
}

/// Exit code for a configuration error, distinct from a runtime failure.
const EXIT_CONFIG: u8 = 2;
/// Exit code of a member removed from the cluster: it must not be started
/// again as it is (deploy/systemd/lb-node.service does not restart it).
const EXIT_REMOVED: u8 = 10;

fn main() -> ExitCode {
    let args = Args::parse();
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // raft-engine's warnings while it opens the log are said again,
        // in the member's words, by `LogStore::open` (a torn tail after an
        // unclean stop is expected, not corruption).
        .with_filter(lb_node::replication::storage::NotOpenWarnings);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(fmt)
        .with(lb_node::replication::storage::OpenWarnings)
        .init();
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lb-node: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match args.command.unwrap_or(Command::Run) {
        Command::Plan => plan(&config),
        Command::Run => run(config),
    }
}

fn plan(config: &Config) -> ExitCode {
    let SourceConfig::File(file) = &config.source else {
        eprintln!(
            "lb-node: plan reads a services file; with [source.kubernetes] the table comes from the API server (see `lbctl services`)"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let services = match load_services(&file.path, file.max_bytes, &config.health) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lb-node: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut state = State::default();
    for c in commands_towards(&State::default(), services) {
        if let Err(e) = state.apply(&c) {
            eprintln!("lb-node: configuration error: {}: {e}", file.path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    print!("{}", ipvsadm_rules(&Table::from_state(&state)));
    ExitCode::SUCCESS
}

/// Raises the soft limit on open descriptors to the hard one (systemd's
/// default soft limit is 1,024): a member holds a descriptor per peer,
/// client and BGP/BFD session, and a flood of connections must meet the
/// listeners' caps, not this limit. Returns (before, after).
fn raise_descriptor_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    }
    Some((soft, hard.max(soft)))
}

fn run(config: Config) -> ExitCode {
    match raise_descriptor_limit() {
        Some((before, after)) if before != after => {
            tracing::info!(
                before,
                after,
                "open descriptor limit raised to the hard limit"
            )
        }
        Some(_) => {}
        None => tracing::warn!("cannot read or raise the open descriptor limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lb-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        // A port that cannot be had is the configuration's to change: the
        // error names the field and the member exits as for any other
        // configuration error.
        let file = config.file.clone();
        let bind = |field: &'static str, address: std::net::SocketAddr| {
            let file = file.clone();
            async move {
                lb_node::listener::bind(address).await.map_err(|e| {
                    let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                        "another process (another lb-node?) listens there already".to_owned()
                    } else {
                        e.to_string()
                    };
                    anyhow::Error::new(lb_node::config::ConfigError::new(
                        &file,
                        field,
                        format!("cannot listen on {address}: {why}"),
                    ))
                })
            }
        };
        if let Some(cluster) = &config.cluster
            && cluster.data_dir.exists()
            && !cluster.data_dir.is_dir()
        {
            return Err(anyhow::Error::new(lb_node::config::ConfigError::new(
                &config.file,
                "cluster.data_dir",
                format!(
                    "{} is not a directory (a file is in the way)",
                    cluster.data_dir.display()
                ),
            )));
        }
        let admin = bind("admin.listen", config.admin.listen).await?;
        let peer = match &config.cluster {
            Some(cluster) => Some(bind("cluster.listen", cluster.listen).await?),
            None => None,
        };
        let metrics = bind("admin.metrics_listen", config.admin.metrics_listen).await?;
        let (stop, shutdown) = (CancellationToken::new(), CancellationToken::new());
        tokio::spawn(stop_on_signal(stop.clone(), shutdown.clone()));
        lb_node::app::run(
            config,
            lb_node::app::Listeners {
                admin,
                metrics,
                peer,
            },
            stop,
            shutdown,
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<lb_node::replication::start::RemovedFromCluster>()
                .is_some() =>
        {
            info!("{e}");
            ExitCode::from(EXIT_REMOVED)
        }
        Err(e) => {
            error!("{e:#}");
            if e.downcast_ref::<lb_node::config::ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// SIGTERM or SIGINT: stop cleanly (a cluster member hands its VIPs and
/// leadership over first, at most `replication::leave::HAND_OVER_TIMEOUT`); a second one
/// stops at once.
async fn stop_on_signal(stop: CancellationToken, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
    stop.cancel();
    tokio::select! {
        _ = term.recv() => info!("SIGTERM again: stopping now"),
        _ = int.recv() => info!("SIGINT again: stopping now"),
    }
    shutdown.cancel();
}
