//! `lbctl`: the admin command line of the load-balancer appliance. One
//! subcommand per admin call; readable tables by default, `-o json` for
//! scripts; several `--endpoint`s are tried in turn.
//!
//! Here: the endpoint loop (which member answers, within `--timeout`,
//! following a follower to its leader) and the exit codes. `cli` is the
//! grammar, `client` connects and names why a connection or call failed,
//! `commands` makes the call a subcommand asks for, `render` prints the
//! answer.

/// `println!` that survives a closed pipe: `lbctl services | head` ends
/// quietly when the reader has what it wants, instead of panicking on
/// "failed printing to stdout". Any other write error ends lbctl with
/// status 1.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e)
        }
    }};
}

mod cli;
mod client;
mod commands;
mod render;

use std::process::ExitCode;

use clap::Parser;
use proto::admin::v1::admin_client::AdminClient;

use crate::cli::{Args, Command, MemberAction, endpoint_url, tls};
use crate::client::{connect, explain_status};
use crate::commands::{call, peer_answers};

/// Where `out!` ends when stdout cannot be written.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("lbctl: cannot write to stdout: {e}");
    std::process::exit(1)
}

/// Exit codes (documented in docs/operations.md and the README).
const EXIT_UNREACHABLE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_REFUSED: u8 = 3;
const EXIT_NOT_FOUND: u8 = 4;
const EXIT_TIMEOUT: u8 = 5;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::Completion { shell } = &args.command {
        let mut script = Vec::new();
        clap_complete::generate(
            *shell,
            &mut <Args as clap::CommandFactory>::command(),
            "lbctl",
            &mut script,
        );
        use std::io::Write as _;
        if let Err(e) = std::io::stdout().write_all(&script) {
            stdout_failed(e);
        }
        return ExitCode::SUCCESS;
    }
    let tls = match tls(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lbctl: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut queue = std::collections::VecDeque::new();
    for e in &args.endpoint {
        match endpoint_url(e) {
            Ok(url) => queue.push_back(url),
            Err(why) => {
                eprintln!("lbctl: {why}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if let Command::Member {
        action:
            MemberAction::Add {
                id,
                peer_address,
                force: false,
                ..
            },
    } = &args.command
        && let Err(why) = peer_answers(*id, peer_address).await
    {
        eprintln!("lbctl: {why}; start the member first, or add it anyway with --force");
        return ExitCode::from(EXIT_REFUSED);
    }
    let mut last_error = String::from("no endpoint given");
    let mut timed_out = false;
    // Endpoints to try, in order; a follower's hint puts the leader first.
    let mut tried = std::collections::BTreeSet::new();
    let streams = matches!(args.command, Command::Events);
    while let Some(endpoint) = queue.pop_front() {
        if !tried.insert(endpoint.clone()) || tried.len() > 16 {
            continue;
        }
        let endpoint = &endpoint;
        // One deadline for connecting and the call (a member whose disk
        // froze accepts the connection and never answers); a stream has it
        // for connecting and its first answer only.
        let attempt = async {
            let channel = connect(endpoint, tls.clone())
                .await
                .map_err(Failure::Connect)?;
            let mut client = AdminClient::new(channel);
            call(
                &mut client,
                &args,
                tls.clone(),
                streams.then_some(args.timeout),
            )
            .await
            .map_err(Failure::Status)
        };
        let result = if streams {
            attempt.await
        } else {
            tokio::time::timeout(args.timeout, attempt)
                .await
                .unwrap_or(Err(Failure::Timeout))
        };
        timed_out = matches!(result, Err(Failure::Timeout));
        let status = match result {
            Ok(()) => return ExitCode::SUCCESS,
            Err(Failure::Connect(e)) => {
                last_error = format!("{endpoint}: {e}");
                continue;
            }
            Err(Failure::Timeout) => {
                last_error = format!("{endpoint}: no answer within {:?}", args.timeout);
                continue;
            }
            // Failed in the connection, not in the member: the next one.
            Err(Failure::Status(status)) if is_transport(&status) => {
                last_error = format!("{endpoint}: {}", explain_status(&status, tls.is_some()));
                continue;
            }
            Err(Failure::Status(status)) => status,
        };
        let redirect = proto::errors::not_leader_of(&status);
        match status.code() {
            tonic::Code::Unavailable => last_error = format!("{endpoint}: {}", status.message()),
            // A follower names the leader (a typed detail); another
            // endpoint may be it.
            tonic::Code::FailedPrecondition if redirect.is_some() => {
                last_error = format!("{endpoint}: {}", status.message());
                if let Some(admin) = redirect.and_then(|n| n.leader_admin)
                    && let Ok(url) = endpoint_url(&admin)
                {
                    queue.push_front(url);
                }
            }
            code => {
                eprintln!("lbctl: {endpoint}: {}", status.message());
                return ExitCode::from(match code {
                    tonic::Code::NotFound => EXIT_NOT_FOUND,
                    tonic::Code::DeadlineExceeded => EXIT_TIMEOUT,
                    tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::AlreadyExists => EXIT_REFUSED,
                    _ => 1,
                });
            }
        }
    }
    eprintln!("lbctl: no member could answer: {last_error}");
    ExitCode::from(if timed_out {
        EXIT_TIMEOUT
    } else {
        EXIT_UNREACHABLE
    })
}

/// Whether a call failed in the connection rather than in the member.
fn is_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Why one endpoint did not do.
enum Failure {
    Connect(String),
    Timeout,
    Status(tonic::Status),
}
