//! The container helper: every libcontainer operation that clones a process
//! (create + start, and a health check's exec) runs in a short-lived,
//! single-threaded re-execution of our own binary, never inside PID1.
//!
//! Why: libcontainer starts its intermediate and init processes with a raw
//! `clone3`, which bypasses libc's fork handlers. In PID1 — a multi-threaded
//! tokio runtime — another thread may hold musl's malloc lock (or any other
//! lock) at that instant; the child inherits it locked and hangs on its first
//! allocation. libcontainer also `chdir`s around its notify socket, which
//! races with a second container being created on another thread. A fresh
//! process with one thread has neither problem.
//!
//! Protocol: PID1 runs `<helper> __container <op>` with
//! - fd 0: one end of a Unix socket pair. PID1 writes one JSON [`Request`]
//!   line; the helper answers with one JSON [`Reply`] line and exits.
//! - fd 1 and 2: the container's stdout and stderr (create), or /dev/null
//!   (exec). libcontainer dups them onto the container's init.
//!
//! These are the only slots `std::process::Command` can fill without `unsafe`
//! on either side (the helper takes them with `try_clone_to_owned`).
//!
//! libcontainer runs with `as_sibling(true)`: its intermediate process, and
//! so the container's init or the exec'd process, are children of the
//! helper's parent — PID1 — which reaps them as before. PID1 waits for the
//! helper itself by pid, holding the spawn side of the reaping lock (see
//! [`ServiceManager`](super::ServiceManager)).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::RuntimeError;
use super::runner;

/// `argv[1]` that turns `dstack-init` into the container helper.
pub const HELPER_COMMAND: &str = "__container";
/// The default helper: PID1's own binary (`/init`).
pub(crate) const SELF_EXE: &str = "/proc/self/exe";
/// Longest reply line we accept.
const MAX_REPLY: usize = 64 * 1024;

/// What the helper is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    /// Create and start container `id` from the bundle; the helper's
    /// stdout and stderr become the container's.
    Create {
        /// libcontainer's state directory.
        state_root: PathBuf,
        /// The container id (the service name).
        id: String,
        /// The bundle directory holding `config.json`.
        bundle: PathBuf,
    },
    /// Run `args` inside running container `id`, output discarded.
    Exec {
        /// libcontainer's state directory.
        state_root: PathBuf,
        /// The container id (the service name).
        id: String,
        /// The command and its arguments.
        args: Vec<String>,
    },
}

impl Request {
    /// The operation's name, as it appears in the helper's argv.
    pub(crate) fn op(&self) -> &'static str {
        match self {
            Request::Create { .. } => "create",
            Request::Exec { .. } => "exec",
        }
    }

    /// The action a failure is reported as, before the helper says otherwise.
    fn action(&self) -> Action {
        match self {
            Request::Create { .. } => Action::Create,
            Request::Exec { .. } => Action::Exec,
        }
    }
}

/// The libcontainer step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    Create,
    Start,
    Exec,
}

impl Action {
    /// The name [`ContainerError::Runtime`](super::ContainerError::Runtime) carries.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Start => "start",
            Action::Exec => "exec",
        }
    }
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Reply {
    /// The container's init (create) or the exec'd process (exec) runs as
    /// a child of the helper's parent.
    Started {
        /// Its pid.
        pid: i32,
    },
    /// libcontainer failed.
    Failed {
        /// Which step.
        action: Action,
        /// Its error chain.
        error: String,
    },
}

/// The helper's arguments after `argv[0]`.
pub(crate) fn helper_args(request: &Request) -> [&'static str; 2] {
    [HELPER_COMMAND, request.op()]
}

/// How PID1 runs the helper: which executable.
#[derive(Debug, Clone)]
pub(crate) struct Helper {
    path: PathBuf,
}

impl Helper {
    pub(crate) fn new(path: PathBuf) -> Self {
        Helper { path }
    }

    /// Runs `request` in a fresh helper and waits for it (by pid: call with
    /// the reap lock's spawn side held). `output` is the container's stdout
    /// and stderr, `None` for /dev/null. The helper is killed when it has
    /// not answered within `timeout`. Blocks.
    pub(crate) fn run(
        &self,
        request: &Request,
        output: Option<(OwnedFd, OwnedFd)>,
        timeout: Duration,
    ) -> Result<i32, (Action, RuntimeError)> {
        let deadline = Instant::now() + timeout;
        let action = request.action();
        let (ours, theirs) = UnixStream::pair().map_err(|e| (action, RuntimeError::Channel(e)))?;
        let (stdout, stderr) = match output {
            Some((out, err)) => (Stdio::from(out), Stdio::from(err)),
            None => (Stdio::null(), Stdio::null()),
        };
        let mut command = Command::new(&self.path);
        command
            .args(helper_args(request))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(stdout)
            .stderr(stderr);
        let spawned = command.spawn();
        // Our copies of the child's ends (the container's output pipes
        // included) close here, so those pipes reach EOF with the container.
        drop(command);
        let mut child = spawned.map_err(|source| {
            let helper = self.path.clone();
            (action, RuntimeError::Spawn { helper, source })
        })?;
        let answer = talk(&ours, request, deadline);
        if answer.is_err() {
            let _ = child.kill();
        }
        let status = child.wait();
        match (answer, status) {
            (Ok(Some(reply)), _) => match reply {
                Reply::Started { pid } => Ok(pid),
                Reply::Failed { action, error } => Err((action, RuntimeError::Helper(error))),
            },
            (Ok(None), Ok(status)) => Err((action, RuntimeError::NoReply { status })),
            (Ok(None), Err(e)) | (Err(e), _) => Err((action, e_or_timeout(e, timeout))),
        }
    }
}

fn e_or_timeout(e: std::io::Error, timeout: Duration) -> RuntimeError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            RuntimeError::TimedOut { after: timeout }
        }
        _ => RuntimeError::Channel(e),
    }
}

/// Sends the request and reads the reply line; `None` when the helper
/// closed the channel without one.
fn talk(
    channel: &UnixStream,
    request: &Request,
    deadline: Instant,
) -> Result<Option<Reply>, std::io::Error> {
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
    };
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    channel.set_write_timeout(Some(remaining()?))?;
    (&*channel).write_all(&line)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        channel.set_read_timeout(Some(remaining()?))?;
        // A read with a timeout is not restarted after a signal handler
        // (PID1 handles SIGCHLD): EINTR means "try again".
        let n = match (&*channel).read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            n => n?,
        };
        if n == 0 {
            return Ok(None);
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some(end) = reply.iter().position(|b| *b == b'\n') {
            return serde_json::from_slice(&reply[..end])
                .map(Some)
                .map_err(std::io::Error::other);
        }
        if reply.len() > MAX_REPLY {
            return Err(std::io::Error::other("the helper's reply is too long"));
        }
    }
}

/// How the helper process ends.
#[repr(u8)]
enum HelperExit {
    /// The reply was written (success or a libcontainer failure).
    Answered = 0,
    /// No usable request, or the reply could not be written.
    BadChannel = 2,
}

/// The helper's `main`: `args` are those after [`HELPER_COMMAND`]. Reads
/// the request from fd 0, runs it, writes the reply to fd 0. Must run before
/// any other thread exists.
pub fn helper_main(mut args: impl Iterator<Item = OsString>) -> ExitCode {
    let op = args.next();
    let channel = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixStream::from);
    let Ok(channel) = channel else {
        eprintln!("dstack-init {HELPER_COMMAND}: fd 0 is not usable");
        return ExitCode::from(HelperExit::BadChannel as u8);
    };
    let mut line = String::new();
    let request = BufReader::new(&channel)
        .take(MAX_REPLY as u64)
        .read_line(&mut line)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<Request>(&line).map_err(|e| e.to_string()))
        .and_then(|request| match op {
            Some(op) if op == request.op() => Ok(request),
            _ => Err(format!("argv names {op:?}, the request {}", request.op())),
        });
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            eprintln!("dstack-init {HELPER_COMMAND}: bad request: {e}");
            return ExitCode::from(HelperExit::BadChannel as u8);
        }
    };
    let reply = match serve(&request) {
        Ok(pid) => Reply::Started { pid },
        Err((action, error)) => Reply::Failed { action, error },
    };
    let written = serde_json::to_vec(&reply)
        .map_err(std::io::Error::other)
        .and_then(|mut line| {
            line.push(b'\n');
            (&channel).write_all(&line)
        });
    match written {
        Ok(()) => ExitCode::from(HelperExit::Answered as u8),
        Err(e) => {
            eprintln!("dstack-init {HELPER_COMMAND}: cannot reply: {e}");
            ExitCode::from(HelperExit::BadChannel as u8)
        }
    }
}

/// Runs one request with libcontainer, in this (single-threaded) process.
fn serve(request: &Request) -> Result<i32, (Action, String)> {
    let own = |fd: std::io::Result<OwnedFd>, action| {
        fd.map_err(|e| (action, format!("cannot take the helper's stdio: {e}")))
    };
    match request {
        Request::Create {
            state_root,
            id,
            bundle,
        } => {
            let stdout = own(
                std::io::stdout().as_fd().try_clone_to_owned(),
                Action::Create,
            )?;
            let stderr = own(
                std::io::stderr().as_fd().try_clone_to_owned(),
                Action::Create,
            )?;
            runner::libcontainer_create(state_root, id, bundle, stdout, stderr)
        }
        Request::Exec {
            state_root,
            id,
            args,
        } => runner::libcontainer_exec(state_root, id, args),
    }
}

/// The helper PID1 runs by default.
pub(crate) fn default_helper() -> PathBuf {
    Path::new(SELF_EXE).to_path_buf()
}

#[cfg(test)]
#[path = "helper_tests.rs"]
mod tests;
