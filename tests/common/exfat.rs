//! An exFAT file system (case-insensitive, no permission bits) in an image file on a
//! loop device, mounted through FUSE: needs root, a loop device and /dev/fuse
//! (scripts/test installs exfat-fuse and exfatprogs). Unmounted on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An exFAT image mounted at a directory for the test's lifetime.
pub struct ExfatMount {
    pub dir: PathBuf,
    loopdev: String,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/test installs exfat-fuse and exfatprogs)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl ExfatMount {
    /// A 64 MiB exFAT image at `image`, mounted through FUSE at `dir`.
    pub fn new(image: &Path, dir: &Path) -> ExfatMount {
        fs::File::create(image).unwrap().set_len(64 << 20).unwrap();
        run("mkfs.exfat", &[image.to_str().unwrap()]);
        let loopdev = run("losetup", &["-f", "--show", image.to_str().unwrap()]);
        fs::create_dir_all(dir).unwrap();
        let m = ExfatMount {
            dir: dir.to_path_buf(),
            loopdev,
        };
        run("mount.exfat-fuse", &[&m.loopdev, dir.to_str().unwrap()]);
        m
    }
}

impl Drop for ExfatMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loopdev)
            .status();
    }
}
