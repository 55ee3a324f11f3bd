//! A folder's `on_change` hook: after a batch of remote changes has been applied, run
//! the operator's command with `sh -c` in the folder root, the changed paths on stdin
//! (one per line) and the folder, node and root in the environment. Failures are
//! reported to the caller, never fatal.

use crate::protocol::relpath::RelPath;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A hook running longer than this is killed (and reported).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `cmd`; `Err` says why it failed (exit status and the end of its stderr).
pub async fn run(
    cmd: &str,
    root: &Path,
    folder: &str,
    node: &str,
    paths: &[RelPath],
) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(root)
        .env("MQSYNC_FOLDER", folder)
        .env("MQSYNC_NODE", node)
        .env("MQSYNC_FOLDER_PATH", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start on_change hook: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut list = String::new();
        for p in paths {
            list.push_str(p.as_str());
            list.push('\n');
        }
        // A hook that does not read its input is fine: ignore a broken pipe.
        let _ = stdin.write_all(list.as_bytes()).await;
    }
    let out = tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "on_change hook still running after {} s; killed",
                HOOK_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("on_change hook: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: String = err
        .trim()
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!("on_change hook failed ({}): {tail}", out.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gets_paths_on_stdin_and_reports_failure() {
        let d = tempfile::tempdir().unwrap();
        let paths = vec![RelPath::new("a/b.txt").unwrap(), RelPath::new("c").unwrap()];
        run(
            "cat > seen; echo \"$MQSYNC_FOLDER $MQSYNC_NODE\" > env",
            d.path(),
            "f",
            "n1",
            &paths,
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("seen")).unwrap(),
            "a/b.txt\nc\n"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("env")).unwrap(),
            "f n1\n"
        );
        let err = run("echo broken >&2; exit 3", d.path(), "f", "n1", &paths)
            .await
            .unwrap_err();
        assert!(err.contains("broken") && err.contains('3'), "{err}");
    }
}
