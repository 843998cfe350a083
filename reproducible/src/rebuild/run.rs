//! Running one build step as a build's user, in its environment, with its
//! output in a log whose last line is reported while the step runs.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BuildError, RebuildError};

/// Everything a step runs with besides its program and arguments.
#[derive(Debug, Clone)]
pub(crate) struct StepContext {
    /// `a` or `b`, for messages.
    pub(crate) side: String,
    /// Switch to this uid/gid (when running as root).
    pub(crate) user: Option<(u32, u32)>,
    /// The octal umask the step starts with.
    pub(crate) umask: &'static str,
    /// The whole environment.
    pub(crate) env: Vec<(String, OsString)>,
    /// Working directory.
    pub(crate) cwd: PathBuf,
    /// Show the step this directory at another path (root only).
    pub(crate) mount: Option<Mount>,
}

/// A directory mounted over another path for one step, in a mount namespace
/// of its own: nothing outside the step sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The directory.
    pub(crate) real: PathBuf,
    /// The path the step sees it at.
    pub(crate) seen: PathBuf,
    /// An ancestor of `seen` the step's user cannot enter (e.g. `/root`),
    /// covered with an empty tmpfs first; `seen` is then created in it.
    pub(crate) hide: Option<PathBuf>,
}

impl Mount {
    /// `real` shown at `seen`, covering the topmost ancestor of `seen` that
    /// others cannot enter.
    pub(crate) fn new(real: PathBuf, seen: PathBuf) -> Self {
        let hide = seen
            .ancestors()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .skip(1) // never `/` itself
            .find(|dir| fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
            .map(Path::to_path_buf);
        Mount { real, seen, hide }
    }
}

/// Runs as root in a fresh mount namespace: covers `$1` (if given) with a
/// tmpfs, mounts `$3` at `$2`, then becomes uid `$4`/gid `$5` without
/// supplementary groups and runs the rest with umask `$6`.
const MOUNT_AND_RUN: &str = r#"set -e
hide=$1 seen=$2 real=$3 uid=$4 gid=$5 mask=$6
shift 6
if [ -n "$hide" ]; then mount -t tmpfs -o mode=0755,size=1m dstack-rebuild "$hide"; fi
mkdir -p "$seen"
mount --bind "$real" "$seen"
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- /bin/sh -c 'umask "$0" && exec "$@"' "$mask" "$@"
"#;

/// Runs `program args` to completion, its output appended to `log`;
/// `tick` gets the elapsed time and the log's last line every second.
pub(crate) fn step(
    ctx: &StepContext,
    name: &str,
    program: &Path,
    args: &[OsString],
    log: &Path,
    tick: &dyn Fn(Duration, String),
) -> Result<Duration, RebuildError> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(BuildError::write(log))?;
    let err = out.try_clone().map_err(BuildError::write(log))?;
    // The umask through sh: std's Command has no umask of its own.
    let mut cmd = match (&ctx.mount, ctx.user) {
        (Some(mount), Some((uid, gid))) => {
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(MOUNT_AND_RUN)
                .arg("sh")
                .arg(mount.hide.as_deref().unwrap_or(Path::new("")))
                .arg(&mount.seen)
                .arg(&mount.real)
                .arg(uid.to_string())
                .arg(gid.to_string())
                .arg(ctx.umask);
            cmd
        }
        _ => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(format!("umask {} && exec \"$0\" \"$@\"", ctx.umask));
            if let Some((uid, gid)) = ctx.user {
                // std drops the supplementary groups too when root changes uid.
                cmd.uid(uid).gid(gid);
            }
            cmd
        }
    };
    cmd.arg(program)
        .args(args)
        .current_dir(&ctx.cwd)
        .env_clear()
        .envs(ctx.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| RebuildError::Spawn {
        tool: program.display().to_string(),
        source,
    })?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(RebuildError::Spawn {
                    tool: program.display().to_string(),
                    source,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        tick(start.elapsed(), last_line(log));
    };
    if status.success() {
        return Ok(start.elapsed());
    }
    Err(RebuildError::Step {
        side: ctx.side.clone(),
        step: name.to_owned(),
        status: status.to_string(),
        log: log.to_owned(),
        tail: tail(log, 40),
    })
}

/// The end of the log file, at most `max` bytes of it.
fn log_end(log: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last non-empty line of the log (after the last carriage return of
/// progress-bar output).
pub(crate) fn last_line(log: &Path) -> String {
    log_end(log, 4096)
        .lines()
        .rev()
        .map(|l| l.rsplit('\r').next().unwrap_or(l).trim())
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned()
}

/// The log's last `lines` lines.
pub(crate) fn tail(log: &Path, lines: usize) -> String {
    let end = log_end(log, 16384);
    let all: Vec<&str> = end.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &Path) -> StepContext {
        StepContext {
            side: "a".into(),
            user: None,
            umask: "077",
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: dir.to_owned(),
            mount: None,
        }
    }

    #[test]
    fn a_step_runs_with_its_umask_and_only_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("s.log");
        let args: Vec<OsString> = vec![
            "-c".into(),
            "umask; echo HOME=${HOME:-unset}; touch f; echo done".into(),
        ];
        step(
            &ctx(dir.path()),
            "test",
            Path::new("/bin/sh"),
            &args,
            &log,
            &|_, _| {},
        )
        .unwrap();
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("0077\nHOME=unset\n"), "{text}");
        assert_eq!(last_line(&log), "done");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_mount_covers_the_topmost_closed_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("home");
        fs::create_dir_all(closed.join("inner/.cargo")).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        let seen = closed.join("inner/.cargo");
        let mount = Mount::new("/real".into(), seen.clone());
        assert_eq!(mount.hide.as_deref(), Some(closed.as_path()));
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o755)).unwrap();
        // /tmp and the rest are open: nothing to cover.
        assert_eq!(Mount::new("/real".into(), seen).hide, None);
    }

    #[test]
    fn a_failing_step_names_itself_and_shows_its_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("s.log");
        let args: Vec<OsString> = vec![
            "-c".into(),
            "echo compiling; echo broken >&2; exit 3".into(),
        ];
        let err = step(
            &ctx(dir.path()),
            "init",
            Path::new("/bin/sh"),
            &args,
            &log,
            &|_, _| {},
        )
        .unwrap_err();
        let RebuildError::Step {
            side, step, tail, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!((side.as_str(), step.as_str()), ("a", "init"));
        assert_eq!(tail, "compiling\nbroken");
        assert!(err.to_string().contains("exit status: 3"), "{err}");
    }
}
