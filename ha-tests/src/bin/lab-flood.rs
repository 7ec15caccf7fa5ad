//! One process of the `connection-flood` drill's attacker (`flood.rs`):
//!
//!   lab-flood ADDR:PORT COUNT HOLD_MS SOURCE...
//!
//! opens COUNT connections to ADDR:PORT from the SOURCE addresses in
//! turns, sends nothing, holds them HOLD_MS after the last one opened, and
//! prints "OPENED FAILED SECONDS".

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: lab-flood ADDR:PORT COUNT HOLD_MS SOURCE..."
    );
    let to = args[0].parse()?;
    let count = args[1].parse()?;
    let hold = Duration::from_millis(args[2].parse()?);
    let sources = args[3..]
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<_>, _>>()?;
    let o = ha_tests::flood::flood(to, count, hold, &sources);
    println!("{} {} {:.3}", o.opened, o.failed, o.seconds);
    Ok(())
}
