//! Where a thread's time went, from the kernel's scheduler accounting
//! (`/proc/thread-self/schedstat`: time run on a CPU, time spent runnable
//! but waiting for one). The raft node thread reads it every 100 ms or so,
//! so that a late tick says why it was late: its own work (ran), CPU
//! starvation (waited for a CPU) or blocked (neither: a lock, a disk, a
//! page fault); the IPVS dataplane reads it around a change's request
//! (debug log) for the same question.

use std::time::Duration;

/// One reading of the calling thread's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// On a CPU.
    pub ran: Duration,
    /// Runnable, waiting for a CPU.
    pub waited: Duration,
}

impl Reading {
    /// The calling thread's accounting now; `None` where the kernel does
    /// not keep it (no `CONFIG_SCHED_INFO`, or zeros) or `/proc` is not
    /// mounted.
    pub fn now() -> Option<Self> {
        parse(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
            // A running thread has run: zeros mean the kernel keeps none.
            .filter(|r| r.ran > Duration::ZERO)
    }

    /// The time between `earlier` and this reading, split.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            ran: self.ran.saturating_sub(earlier.ran),
            waited: self.waited.saturating_sub(earlier.waited),
        }
    }
}

/// `schedstat`'s three numbers: nanoseconds run, nanoseconds waited on a
/// run queue, time slices.
fn parse(text: &str) -> Option<Reading> {
    let mut fields = text.split_ascii_whitespace();
    let ran = fields.next()?.parse().ok()?;
    let waited = fields.next()?.parse().ok()?;
    Some(Reading {
        ran: Duration::from_nanos(ran),
        waited: Duration::from_nanos(waited),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_format_is_read_and_garbage_is_not() {
        assert_eq!(
            parse("1500000 2500000 7\n"),
            Some(Reading {
                ran: Duration::from_micros(1500),
                waited: Duration::from_micros(2500),
            })
        );
        assert_eq!(parse(""), None);
        assert_eq!(parse("12 x 3"), None);
    }

    #[test]
    fn this_thread_is_accounted_and_its_work_shows() {
        // Where the kernel keeps no accounting there is nothing to check.
        let Some(before) = Reading::now() else { return };
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = Reading::now().expect("read once, readable again");
        let spent = after.since(before);
        // 30 ms of wall time spent on a CPU or waiting for one.
        assert!(
            spent.ran + spent.waited >= Duration::from_millis(25),
            "{spent:?}"
        );
        assert!(spent.ran > Duration::ZERO, "{spent:?}");
    }
}
