//! Running `nft -f -`: the IPVS dataplane's masquerade table and the L2
//! announcer's flow hand-over both hand a script to nftables this way.

use tokio::io::AsyncWriteExt as _;

/// Runs `script` as one nftables transaction; the error carries nft's own
/// message.
pub async fn apply(script: &str) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run nft (install nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
