//! `ha-tests drill NAME|all`: runs failover drills against real lb-node
//! processes on this machine and prints one JSON line per drill.

use std::process::ExitCode;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["drill", "all"] => ha_tests::drills::all_drills(),
        ["drill", name] => vec![name],
        _ => {
            eprintln!(
                "usage: ha-tests drill NAME|all\ndrills: {}",
                ha_tests::drills::all_drills().join(", ")
            );
            return ExitCode::from(2);
        }
    };
    let mut ok = true;
    for name in names {
        match ha_tests::drills::run_any(name).await {
            Ok(report) => {
                ok &= report.passed;
                println!("{}", report.json());
            }
            Err(e) => {
                ok = false;
                println!(
                    "{}",
                    serde_json::json!({"drill": name, "passed": false, "error": format!("{e:#}")})
                );
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
