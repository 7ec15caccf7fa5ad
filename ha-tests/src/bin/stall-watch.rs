//! Debugging the kernel lab: prints, on standard error, every stretch
//! longer than THRESHOLD_MS during which this process, asking to wake every
//! 5 ms, did not run. Run once at normal priority and once under
//! `chrt -f`, it tells CPU contention among the lab's processes (only the
//! normal one stalls) from the whole guest stopping (both stall).
//!
//!   stall-watch THRESHOLD_MS LABEL

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let mut args = std::env::args().skip(1);
    let threshold = args
        .next()
        .and_then(|a| a.parse::<u64>().ok())
        .map_or(Duration::from_millis(100), Duration::from_millis);
    let label = args.next().unwrap_or_else(|| "stall-watch".into());
    loop {
        let before = Instant::now();
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        std::thread::sleep(Duration::from_millis(5));
        let gap = before.elapsed();
        if gap > threshold {
            eprintln!("{label}: {at:.3} stalled {} ms", gap.as_millis());
        }
    }
}
