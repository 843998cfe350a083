use super::*;

#[test]
fn backoff_doubles_to_thirty_seconds_and_resets_after_a_stable_run() {
    let t0 = Instant::now();
    let mut b = Backoff::new(RestartPolicy::Always);
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..7 {
        b.started(now);
        now += Duration::from_secs(1);
        let d = b.exited(1, now).unwrap();
        delays.push(d.as_secs());
        now += d;
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    b.started(now);
    assert_eq!(b.exited(0, now + STABLE_RUN), Some(FIRST_DELAY));
}

#[test]
fn policies_decide_whether_to_restart() {
    let now = Instant::now();
    assert_eq!(Backoff::new(RestartPolicy::No).exited(1, now), None);
    assert!(
        Backoff::new(RestartPolicy::UnlessStopped)
            .exited(0, now)
            .is_some()
    );
    let mut on_failure = Backoff::new(RestartPolicy::OnFailure(Some(2)));
    assert_eq!(on_failure.exited(0, now), None);
    assert!(on_failure.exited(1, now).is_some());
    assert!(on_failure.exited(1, now).is_some());
    assert_eq!(on_failure.exited(1, now), None, "at most 2 restarts");
    let mut unlimited = Backoff::new(RestartPolicy::OnFailure(None));
    assert!((0..100).all(|_| unlimited.exited(3, now).is_some()));
}

fn info(state: ContainerState, exit_code: Option<i32>) -> ContainerInfo {
    ContainerInfo {
        service: "db".into(),
        image: "db".into(),
        image_digest: String::new(),
        state,
        pid: None,
        restarts: 0,
        exit_code,
        error: Some("boom".into()),
    }
}

#[test]
fn dependency_conditions() {
    use ContainerState::{Exited, Failed, Pending, Restarting, Running, Unhealthy};
    use DependencyCondition::{CompletedSuccessfully, Started};
    let healthy = DependencyCondition::Healthy;
    assert_eq!(verdict(Started, &info(Pending, None), false), Verdict::Wait);
    assert_eq!(verdict(Started, &info(Running, None), false), Verdict::Met);
    assert_eq!(
        verdict(Started, &info(Failed, None), false),
        Verdict::Failed("failed: boom".into())
    );
    assert_eq!(verdict(healthy, &info(Running, None), true), Verdict::Wait);
    assert_eq!(
        verdict(healthy, &info(ContainerState::Healthy, None), true),
        Verdict::Met
    );
    assert_eq!(
        verdict(healthy, &info(Unhealthy, None), true),
        Verdict::Failed("is unhealthy".into())
    );
    assert_eq!(
        verdict(healthy, &info(Running, None), false),
        Verdict::Failed("has no healthcheck".into())
    );
    assert_eq!(
        verdict(CompletedSuccessfully, &info(Running, None), false),
        Verdict::Wait
    );
    assert_eq!(
        verdict(CompletedSuccessfully, &info(Restarting, Some(1)), false),
        Verdict::Wait
    );
    assert_eq!(
        verdict(CompletedSuccessfully, &info(Exited, Some(0)), false),
        Verdict::Met
    );
    assert_eq!(
        verdict(CompletedSuccessfully, &info(Exited, Some(2)), false),
        Verdict::Failed("exited with code 2".into())
    );
}
