//! A folder's `on_change` hook: after a batch of remote changes has been applied, run
//! the operator's command (a string with `sh -c`, or an argument list executed directly,
//! for images without a shell) in the folder root, the changed paths on stdin (one per
//! line) and the folder, node and root in the environment. Failures are reported to
//! the caller, never fatal.

use crate::protocol::relpath::RelPath;
use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A hook running longer than this is killed (and reported).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// The command of an `on_change` hook, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// `on_change = "reload-app && logger done"`: run with `sh -c`.
    Shell(String),
    /// `on_change = ["/usr/bin/kill", "-HUP", "1"]`: the program (a path, or a name
    /// looked up in `PATH`) and its arguments, executed directly with no shell, so it
    /// works in an image that has none. Never empty (validation refuses `[]`).
    Exec(Vec<String>),
}

impl Hook {
    /// The hook as a `MQSYNC_FOLDER_<ID>_ON_CHANGE` value gives it: a JSON array of
    /// strings (`["/usr/bin/kill","-HUP","1"]`) is the argument list, anything else a
    /// shell command. `None` for an empty value (no hook).
    pub fn from_env_value(value: &str) -> Option<Hook> {
        if value.trim().is_empty() {
            return None;
        }
        match serde_json::from_str::<Vec<String>>(value) {
            Ok(argv) => Some(Hook::Exec(argv)),
            Err(_) => Some(Hook::Shell(value.to_owned())),
        }
    }

    fn command(&self) -> Result<tokio::process::Command, String> {
        match self {
            Hook::Shell(cmd) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(cmd);
                Ok(c)
            }
            Hook::Exec(argv) => {
                let (program, args) = argv
                    .split_first()
                    .ok_or("on_change hook: empty argument list")?;
                let mut c = tokio::process::Command::new(program);
                c.args(args);
                Ok(c)
            }
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hook::Shell(cmd) => write!(f, "sh -c {cmd:?}"),
            Hook::Exec(argv) => write!(f, "{argv:?}"),
        }
    }
}

/// Runs `hook`; `Err` says why it failed (exit status and the end of its stderr).
pub async fn run(
    hook: &Hook,
    root: &Path,
    folder: &str,
    node: &str,
    paths: &[RelPath],
) -> Result<(), String> {
    let mut child = hook
        .command()?
        .current_dir(root)
        .env("MQSYNC_FOLDER", folder)
        .env("MQSYNC_NODE", node)
        .env("MQSYNC_FOLDER_PATH", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start on_change hook {hook}: {e}"))?;
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
        let shell = |cmd: &str| Hook::Shell(cmd.to_owned());
        run(
            &shell("cat > seen; echo \"$MQSYNC_FOLDER $MQSYNC_NODE\" > env"),
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
        let err = run(
            &shell("echo broken >&2; exit 3"),
            d.path(),
            "f",
            "n1",
            &paths,
        )
        .await
        .unwrap_err();
        assert!(err.contains("broken") && err.contains('3'), "{err}");
    }

    #[tokio::test]
    async fn an_argument_list_runs_without_a_shell() {
        let d = tempfile::tempdir().unwrap();
        let paths = vec![RelPath::new("x").unwrap()];
        // Shell syntax in an argument stays one literal argument.
        let exec = |argv: &[&str]| Hook::Exec(argv.iter().map(|a| a.to_string()).collect());
        run(
            &exec(&["touch", "made; by $SHELL", "second"]),
            d.path(),
            "f",
            "n1",
            &paths,
        )
        .await
        .unwrap();
        assert!(d.path().join("made; by $SHELL").exists());
        assert!(d.path().join("second").exists());
        let err = run(&exec(&["false"]), d.path(), "f", "n1", &paths)
            .await
            .unwrap_err();
        assert!(err.contains("failed"), "{err}");
        let err = run(&exec(&["/nonexistent/reload"]), d.path(), "f", "n1", &paths)
            .await
            .unwrap_err();
        assert!(
            err.contains("cannot start") && err.contains("/nonexistent/reload"),
            "{err}"
        );
    }

    #[test]
    fn an_environment_value_is_an_argument_list_only_as_a_json_array() {
        assert_eq!(
            Hook::from_env_value(r#"["/usr/bin/kill", "-HUP", "1"]"#),
            Some(Hook::Exec(vec![
                "/usr/bin/kill".into(),
                "-HUP".into(),
                "1".into()
            ]))
        );
        // A shell test command starts with `[` too.
        assert_eq!(
            Hook::from_env_value("[ -f x ] && reload"),
            Some(Hook::Shell("[ -f x ] && reload".into()))
        );
        assert_eq!(Hook::from_env_value("  "), None);
    }
}
