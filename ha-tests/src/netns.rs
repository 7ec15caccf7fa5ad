//! Network namespaces for the labs: commands run in one, threads moved
//! into one, and a tokio runtime whose every thread lives in one (so the
//! sockets its tasks open start there).

use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs a command to completion; an error carries its standard error.
pub fn run(args: &[&str]) -> anyhow::Result<()> {
    output(args).map(drop)
}

/// Runs a command to completion and returns its standard output.
pub fn output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    ns_output(ns, args).map(drop)
}

/// Runs a command inside namespace `ns` and returns its standard output.
pub fn ns_output(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    output(&all)
}

/// Moves the calling thread into network namespace `ns` (by its name
/// under /run/netns).
pub fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns {path}"))?;
    Ok(())
}

/// A tokio runtime whose threads all live in namespace `ns`: built on a
/// thread that entered it, so its workers (and their blocking threads)
/// start there. Work must be `spawn`ed on it: `block_on` runs a future on
/// the calling thread, in the caller's namespace.
pub fn runtime_in(ns: &str, threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns)?;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .with_context(|| format!("a runtime in {ns}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread building a runtime panicked"))?
}

/// Runs `f` on a thread of its own inside namespace `ns` (the calling
/// thread stays where it is); what `f` returns.
pub fn inside<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread panicked"))?
    })
}
