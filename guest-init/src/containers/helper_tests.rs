use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use super::*;

fn create() -> Request {
    Request::Create {
        state_root: "/run/dstack/youki".into(),
        id: "web".into(),
        bundle: "/run/dstack/containers/web".into(),
    }
}

fn exec() -> Request {
    Request::Exec {
        state_root: "/run/dstack/youki".into(),
        id: "web".into(),
        args: vec!["wget".into(), "-q".into(), "http://127.0.0.1/".into()],
    }
}

#[test]
fn requests_are_one_tagged_json_object() {
    let value = serde_json::to_value(create()).unwrap();
    assert_eq!(
        value,
        json!({"op": "create", "state_root": "/run/dstack/youki", "id": "web",
               "bundle": "/run/dstack/containers/web"})
    );
    let value = serde_json::to_value(exec()).unwrap();
    assert_eq!(
        value,
        json!({"op": "exec", "state_root": "/run/dstack/youki", "id": "web",
               "args": ["wget", "-q", "http://127.0.0.1/"]})
    );
    for request in [create(), exec()] {
        let line = serde_json::to_string(&request).unwrap();
        assert!(!line.contains('\n'), "one line: {line}");
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
    }
    let extra = json!({"op": "exec", "state_root": "/r", "id": "web", "args": [], "tty": true});
    assert!(serde_json::from_value::<Request>(extra).is_err());
    let unknown = json!({"op": "delete", "state_root": "/r", "id": "web"});
    assert!(serde_json::from_value::<Request>(unknown).is_err());
}

#[test]
fn replies_carry_a_pid_or_the_failed_step_and_its_error() {
    let started: Reply = serde_json::from_str(r#"{"result":"started","pid":42}"#).unwrap();
    assert_eq!(started, Reply::Started { pid: 42 });
    let failed = Reply::Failed {
        action: Action::Start,
        error: "failed to start: notify socket".into(),
    };
    let line = serde_json::to_string(&failed).unwrap();
    assert_eq!(
        line,
        r#"{"result":"failed","action":"start","error":"failed to start: notify socket"}"#
    );
    assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), failed);
    assert!(serde_json::from_str::<Reply>(r#"{"result":"started"}"#).is_err());
    assert!(serde_json::from_str::<Reply>(r#"{"result":"started","pid":1,"x":0}"#).is_err());
    assert_eq!(
        [Action::Create, Action::Start, Action::Exec].map(Action::as_str),
        ["create", "start", "exec"]
    );
}

#[test]
fn argv_names_the_hidden_command_and_the_operation() {
    assert_eq!(helper_args(&create()), ["__container", "create"]);
    assert_eq!(helper_args(&exec()), ["__container", "exec"]);
    assert_eq!(default_helper(), Path::new("/proc/self/exe"));
}

/// A stand-in helper: a shell script that checks its argv, reads the
/// request line from fd 0 and runs `body` (which answers on fd 0).
fn fake_helper(dir: &Path, body: &str) -> Helper {
    let path = dir.join("helper");
    let script = format!(
        "#!/bin/sh\n[ \"$1 $2\" = \"__container create\" ] || exit 9\nread -r request\n{body}\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Helper::new(path)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

#[test]
fn the_helper_gets_the_request_and_the_output_pipes_and_its_reply_is_the_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let helper = fake_helper(
        tmp.path(),
        r#"echo "$request" > "$(dirname "$0")/request"
echo to-stdout; echo to-stderr >&2
echo '{"result":"started","pid":4242}' >&0"#,
    );
    let ((out_r, out_w), (err_r, err_w)) = (pipe(), pipe());
    let pid = helper
        .run(&create(), Some((out_w, err_w)), Duration::from_secs(10))
        .unwrap();
    assert_eq!(pid, 4242);
    let request = std::fs::read_to_string(tmp.path().join("request")).unwrap();
    assert_eq!(serde_json::from_str::<Request>(&request).unwrap(), create());
    // Our copies of the write ends are gone: the pipes are at EOF.
    let read_all = |fd: OwnedFd| {
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        text
    };
    assert_eq!(read_all(out_r), "to-stdout\n");
    assert_eq!(read_all(err_r), "to-stderr\n");
}

#[test]
fn failures_are_named_by_step_and_keep_the_helpers_text() {
    let tmp = tempfile::tempdir().unwrap();
    let helper = fake_helper(
        tmp.path(),
        r#"echo '{"result":"failed","action":"start","error":"no such file: config.json"}' >&0"#,
    );
    let (action, error) = helper
        .run(&create(), None, Duration::from_secs(10))
        .unwrap_err();
    assert_eq!(action, Action::Start);
    assert_eq!(error.to_string(), "no such file: config.json");
    let container = crate::containers::ContainerError::runtime("web", action.as_str(), error);
    assert_eq!(
        crate::containers::error_chain(&container),
        "service web: start failed: no such file: config.json"
    );
}

#[test]
fn a_helper_that_exits_without_a_reply_reports_its_status() {
    let tmp = tempfile::tempdir().unwrap();
    let helper = fake_helper(tmp.path(), "exit 3");
    let (action, error) = helper
        .run(&create(), None, Duration::from_secs(10))
        .unwrap_err();
    assert_eq!(action, Action::Create);
    assert!(
        matches!(&error, RuntimeError::NoReply { status } if status.code() == Some(3)),
        "{error:?}"
    );
    let helper = fake_helper(tmp.path(), "echo 'not json' >&0");
    let (_, error) = helper
        .run(&create(), None, Duration::from_secs(10))
        .unwrap_err();
    assert!(matches!(error, RuntimeError::Channel(_)), "{error:?}");
}

#[test]
fn a_helper_that_does_not_answer_in_time_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let helper = fake_helper(tmp.path(), "exec sleep 30");
    let started = Instant::now();
    let (_, error) = helper
        .run(&create(), None, Duration::from_millis(300))
        .unwrap_err();
    assert!(
        matches!(error, RuntimeError::TimedOut { after } if after == Duration::from_millis(300)),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the helper was not killed"
    );
}

#[test]
fn a_missing_helper_is_a_spawn_error_naming_it() {
    let helper = Helper::new("/nonexistent/dstack-init".into());
    let (action, error) = helper
        .run(&exec(), None, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(action, Action::Exec);
    assert_eq!(
        error.to_string(),
        "cannot run the container helper /nonexistent/dstack-init"
    );
}

#[tokio::test]
async fn a_signal_while_waiting_for_the_reply_is_not_a_failure() {
    use nix::sys::pthread::{pthread_kill, pthread_self};
    use nix::sys::signal::Signal;
    // PID1 handles SIGCHLD; a handled signal interrupts the timed read.
    let _usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .expect("handle SIGUSR1");
    let tmp = tempfile::tempdir().unwrap();
    let helper = fake_helper(
        tmp.path(),
        r#"sleep 0.5; echo '{"result":"started","pid":7}' >&0"#,
    );
    let reader = pthread_self();
    let signaller = std::thread::spawn(move || {
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(60));
            pthread_kill(reader, Signal::SIGUSR1).unwrap();
        }
    });
    let pid = helper.run(&create(), None, Duration::from_secs(10));
    signaller.join().unwrap();
    assert_eq!(pid.map_err(|(_, e)| e.to_string()), Ok(7));
}
