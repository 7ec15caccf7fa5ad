//! Running `nft -f -`: the IPVS dataplane's masquerade table and the L2
//! announcer's flow hand-over both hand a script to nftables this way.

use tokio::io::AsyncWriteExt as _;

/// How long one `nft` run may take before it is killed and counts as
/// failed: its callers (the announcer's loop among them) must not wait on
/// a helper process forever. A 50,000-element table takes about 1.2 s in
/// the emulated kernel lab.
const NFT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs `script` as one nftables transaction; the error carries nft's own
/// message, or says that nft did not finish within `NFT_TIMEOUT`.
pub async fn apply(script: &str) -> anyhow::Result<()> {
    let timeout = NFT_TIMEOUT;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run nft (install nftables): {e}"))?;
    let stdin = child.stdin.take();
    let finished = tokio::time::timeout(timeout, async move {
        if let Some(mut stdin) = stdin {
            stdin.write_all(script.as_bytes()).await?;
        }
        child.wait_with_output().await
    })
    .await;
    let out = match finished {
        Ok(out) => out?,
        Err(_) => anyhow::bail!("nft did not finish within {timeout:?}: killed"),
    };
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
