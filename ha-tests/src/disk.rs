//! A member's data directory on a disk of its own: an ext4 filesystem on a
//! loop device, which a test can freeze (`fsfreeze`: every write blocks,
//! as on a stalled disk), thaw, or fail (ext4's `errors=remount-ro`, as a
//! failing disk does). Needs root, e2fsprogs, util-linux and mount.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(line: &str) -> anyhow::Result<String> {
    let out = Command::new("sh").arg("-c").arg(line).output()?;
    anyhow::ensure!(
        out.status.success(),
        "`{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// An ext4 filesystem on a loop device mounted at `at`; thawed, unmounted
/// and its loop device freed when dropped.
#[derive(Debug)]
pub struct LoopFs {
    at: PathBuf,
    device: String,
}

impl LoopFs {
    /// A 64 MB image at `image`, mounted at `at` (created).
    pub fn mount(image: &Path, at: &Path) -> anyhow::Result<LoopFs> {
        sh(&format!(
            "truncate -s 64M {0} && mkfs.ext4 -q -F {0}",
            image.display()
        ))?;
        std::fs::create_dir_all(at)?;
        sh(&format!(
            "mount -o loop,errors=remount-ro {} {}",
            image.display(),
            at.display()
        ))?;
        let device = sh(&format!("findmnt -n -o SOURCE {}", at.display()))?;
        Ok(LoopFs {
            at: at.to_owned(),
            device,
        })
    }

    /// What a failing disk does to ext4: an error, and the filesystem
    /// turns read-only under its open files.
    pub fn fail(&self) -> anyhow::Result<()> {
        let name = Path::new(&self.device)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1")?;
        Ok(())
    }

    /// A stalled disk: every write (and fsync) blocks until `thaw`.
    pub fn freeze(&self) -> anyhow::Result<()> {
        sh(&format!("fsfreeze -f {}", self.at.display())).map(|_| ())
    }

    pub fn thaw(&self) -> anyhow::Result<()> {
        sh(&format!("fsfreeze -u {}", self.at.display())).map(|_| ())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // A process blocked on a frozen filesystem cannot even be killed.
        let _ = sh(&format!("fsfreeze -u {} 2>/dev/null", self.at.display()));
        let _ = sh(&format!("umount -l {}", self.at.display()));
        let _ = sh(&format!("losetup -d {}", self.device));
    }
}
