//! The planner without an engine: one case for each thing `tests/reconciler.rs` shows
//! on a real one (dependency order, only changed services touched, each update
//! strategy's order, locks before kills, the rollback choice), plus the corners between.

use std::collections::BTreeSet;
use std::time::Duration;

use bollard::models::ContainerStateStatusEnum as State;
use compose::{parse_compose, target_state};
use protocol::release::{EnvVar, TargetState};

use super::{after_failure, plan, topo_order, AfterFailure, Plan, Step, Update};
use crate::reconciler::engine::Observed;
use crate::reconciler::journal::{Failure, Journal};

fn t(release: &str, compose: &str) -> TargetState {
    target_state(1, "a", release, &parse_compose(compose).unwrap(), &[], &[])
}

/// A container of `service` made from `target`'s spec, named `<service>@<release>`.
fn container(target: &TargetState, service: &str, state: State) -> Observed {
    let spec = &target.services[service];
    Observed {
        id: format!("id-{service}@{}", target.release),
        name: format!("{service}@{}", target.release),
        app_id: target.app_id,
        service: service.into(),
        hash: spec.config_hash(),
        release: target.release.clone(),
        image: spec.image.clone(),
        state,
        health: None,
        exit_code: None,
        restart_count: 0,
        started_at: None,
    }
}

/// Every service of `target` running.
fn running(target: &TargetState) -> Vec<Observed> {
    target
        .services
        .keys()
        .map(|s| container(target, s, State::RUNNING))
        .collect()
}

/// A device asked for `target`, whose last good release is `good`.
fn journal(target: &TargetState, good: Option<&TargetState>) -> Journal {
    Journal {
        target: Some(target.clone()),
        last_good: good.cloned(),
        known_apps: BTreeSet::from([target.app_id]),
        ..Default::default()
    }
}

fn update(plan: Plan) -> Update {
    match plan {
        Plan::Update(u) => u,
        other => panic!("expected an update, got {other:?}"),
    }
}

fn steps(u: &Update) -> Vec<String> {
    u.steps.iter().map(Step::to_string).collect()
}

fn position(u: &Update, f: impl Fn(&Step) -> bool) -> Option<usize> {
    u.steps.iter().position(f)
}

fn kills(step: &Step) -> bool {
    matches!(
        step,
        Step::Remove(_)
            | Step::KillBeforeDownload { .. }
            | Step::Stop { .. }
            | Step::HandOver { .. }
    )
}

const THREE: &str = "services:\n  proxy:\n    image: edge-test/web:v1\n    depends_on:\n      db:\n        condition: service_healthy\n      api:\n        condition: service_started\n  api:\n    image: edge-test/web:v1\n    depends_on:\n      db:\n        condition: service_healthy\n  db:\n    image: edge-test/db:v1\n";

fn web(release: &str, image: &str, strategy: &str) -> TargetState {
    t(
        release,
        &format!("services:\n  web:\n    image: {image}\n    labels:\n      io.balena.update.strategy: {strategy}\n      io.balena.update.handover-timeout: \"15000\"\n"),
    )
}

#[test]
fn dependencies_come_first() {
    let target = t(
        "r",
        "services:\n  proxy:\n    image: x\n    depends_on: [api, db]\n  api:\n    image: x\n    depends_on: [db]\n  db:\n    image: x\n  zed:\n    image: x\n",
    );
    assert_eq!(topo_order(&target), ["db", "zed", "api", "proxy"]);
}

#[test]
fn a_first_install_pulls_then_starts_in_dependency_order() {
    let target = t("r1", THREE);
    let u = update(plan(&journal(&target, None), &[]));
    assert_eq!(
        steps(&u),
        [
            "pull edge-test/db:v1, edge-test/web:v1",
            "give way to a newer target",
            "create volumes and networks",
            "wait for the dependencies of db",
            "create db for release r1",
            "start db",
            "wait for the dependencies of api",
            "create api for release r1",
            "start api",
            "wait for the dependencies of proxy",
            "create proxy for release r1",
            "start proxy",
            "watch the release come up",
        ]
    );
    assert!(!u.rolling_back && !u.is_good);
    assert_eq!(u.changed.len(), 3);
}

#[test]
fn the_running_last_good_release_needs_nothing() {
    let target = t("r1", THREE);
    let plan = plan(&journal(&target, Some(&target)), &running(&target));
    assert!(matches!(plan, Plan::Converged { .. }), "{plan:?}");
}

#[test]
fn only_changed_services_are_touched() {
    let compose = |web: &str| {
        format!("services:\n  store:\n    image: edge-test/printer:v1\n    volumes:\n      - data:/data\n  web:\n    image: {web}\nvolumes:\n  data: {{}}\n")
    };
    let r1 = t("r1", &compose("edge-test/web:v1"));
    let r2 = t("r2", &compose("edge-test/web:v2"));
    let mut observed = running(&r1);
    observed[0].restart_count = 2; // store
    let u = update(plan(&journal(&r2, Some(&r1)), &observed));
    assert_eq!(u.changed, BTreeSet::from(["web".to_string()]));
    assert_eq!(
        steps(&u),
        [
            "pull edge-test/web:v2",
            "give way to a newer target",
            "check the update locks of app 1",
            "create volumes and networks",
            "wait for the dependencies of web",
            "create web for release r2",
            "replace web: stop web@r1",
            "start web",
            "replace web: remove web@r1",
            "watch the release come up",
        ]
    );
    // The health watch counts store's restarts from where they are.
    assert_eq!(u.baseline["store"], 2);
    assert_eq!(u.baseline["web"], 0);

    // A new release id with identical services: nothing is touched, only watched.
    let r3 = t("r3", &compose("edge-test/web:v2"));
    let u = update(plan(&journal(&r3, Some(&r2)), &running(&r2)));
    assert!(u.changed.is_empty());
    assert_eq!(
        steps(&u),
        [
            "give way to a newer target",
            "create volumes and networks",
            "watch the release come up",
        ]
    );
}

#[test]
fn a_device_env_change_recreates_only_that_service() {
    let compose = parse_compose(
        "services:\n  a:\n    image: edge-test/web:v1\n  b:\n    image: edge-test/web:v1\n",
    )
    .unwrap();
    let r1 = target_state(1, "a", "r1", &compose, &[], &[]);
    let env = [EnvVar {
        service: "a".into(),
        name: "COLOR".into(),
        value: "blue".into(),
    }];
    let blue = target_state(1, "a", "r1", &compose, &[], &env);
    let u = update(plan(&journal(&blue, Some(&r1)), &running(&r1)));
    assert_eq!(u.changed, BTreeSet::from(["a".to_string()]));
    assert!(
        u.steps.iter().all(|s| !s.to_string().contains(" b")),
        "{:?}",
        steps(&u)
    );
    // The image is there already; the pull step skips it when the pass runs.
    assert_eq!(steps(&u)[0], "pull edge-test/web:v1");
}

#[test]
fn download_then_kill_pulls_while_the_old_container_serves() {
    for strategy in ["download-then-kill", "(default)"] {
        let (r1, r2) = if strategy == "(default)" {
            (
                t("r1", "services:\n  web:\n    image: edge-test/web:v1\n"),
                t("r2", "services:\n  web:\n    image: edge-test/web:v2\n"),
            )
        } else {
            (
                web("r1", "edge-test/web:v1", strategy),
                web("r2", "edge-test/web:v2", strategy),
            )
        };
        let u = update(plan(&journal(&r2, Some(&r1)), &running(&r1)));
        assert_eq!(
            steps(&u),
            [
                "pull edge-test/web:v2",
                "give way to a newer target",
                "check the update locks of app 1",
                "create volumes and networks",
                "wait for the dependencies of web",
                "create web for release r2",
                "replace web: stop web@r1",
                "start web",
                "replace web: remove web@r1",
                "watch the release come up",
            ],
            "{strategy}"
        );
    }
}

#[test]
fn kill_then_download_kills_before_it_pulls() {
    let r1 = web("r1", "edge-test/web:v1", "kill-then-download");
    let r2 = web("r2", "edge-test/web:v2", "kill-then-download");
    let u = update(plan(&journal(&r2, Some(&r1)), &running(&r1)));
    assert_eq!(
        steps(&u),
        [
            "give way to a newer target",
            "check the update locks of app 1",
            "create volumes and networks",
            "kill web@r1 before download",
            "pull edge-test/web:v2",
            "wait for the dependencies of web",
            "create web for release r2",
            "start web",
            "watch the release come up",
        ]
    );

    // An old container that is not running has nothing to kill first: it is replaced
    // after the download, like download-then-kill.
    let exited = vec![container(&r1, "web", State::EXITED)];
    let u = update(plan(&journal(&r2, Some(&r1)), &exited));
    assert_eq!(steps(&u)[0], "pull edge-test/web:v2");
    assert!(position(&u, |s| matches!(s, Step::CheckLocks(_))).is_none());
}

#[test]
fn delete_then_download_also_deletes_the_old_image() {
    let r1 = web("r1", "edge-test/web:v1", "delete-then-download");
    let r2 = web("r2", "edge-test/web:v2", "delete-then-download");
    let u = update(plan(&journal(&r2, Some(&r1)), &running(&r1)));
    assert_eq!(
        steps(&u),
        [
            "give way to a newer target",
            "check the update locks of app 1",
            "create volumes and networks",
            "kill web@r1 before download and delete edge-test/web:v1",
            "pull edge-test/web:v2",
            "wait for the dependencies of web",
            "create web for release r2",
            "start web",
            "watch the release come up",
        ]
    );
    // Same image, other config: the image stays (it is the one about to be used).
    let mut r2_same = r1.clone();
    r2_same.release = "r2".into();
    r2_same
        .services
        .get_mut("web")
        .unwrap()
        .environment
        .insert("X".into(), "1".into());
    let u = update(plan(&journal(&r2_same, Some(&r1)), &running(&r1)));
    assert!(
        u.steps.iter().any(|s| matches!(
            s,
            Step::KillBeforeDownload {
                remove_image: false,
                ..
            }
        )),
        "{:?}",
        steps(&u)
    );
}

#[test]
fn hand_over_starts_the_new_container_next_to_the_old() {
    let r1 = web("r1", "edge-test/web:v1", "hand-over");
    let r2 = web("r2", "edge-test/web:v2", "hand-over");
    let u = update(plan(&journal(&r2, Some(&r1)), &running(&r1)));
    assert_eq!(
        steps(&u),
        [
            "pull edge-test/web:v2",
            "give way to a newer target",
            "check the update locks of app 1",
            "create volumes and networks",
            "wait for the dependencies of web",
            "create web for release r2",
            "start web",
            "hand over web",
            "watch the release come up",
        ]
    );
    assert!(u.steps.iter().any(|s| matches!(
        s,
        Step::Create {
            hand_over: true,
            ..
        }
    )));
    let Some(Step::HandOver { old, timeout, .. }) =
        u.steps.iter().find(|s| matches!(s, Step::HandOver { .. }))
    else {
        unreachable!()
    };
    assert_eq!(
        old.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["web@r1"]
    );
    assert_eq!(*timeout, Some(Duration::from_millis(15_000)));
}

#[test]
fn the_lock_check_comes_before_every_kill() {
    for strategy in [
        "download-then-kill",
        "kill-then-download",
        "delete-then-download",
        "hand-over",
    ] {
        let r1 = web("r1", "edge-test/web:v1", strategy);
        let r2 = web("r2", "edge-test/web:v2", strategy);
        let u = update(plan(&journal(&r2, Some(&r1)), &running(&r1)));
        let check = position(&u, |s| matches!(s, Step::CheckLocks(_))).expect(strategy);
        let first_kill = position(&u, kills).expect(strategy);
        assert!(check < first_kill, "{strategy}: {:?}", steps(&u));
    }

    // An app change: the old app's containers go, so its locks count too; containers of
    // an app this agent never ran (another agent's) are left alone.
    let old_app = target_state(
        2,
        "old",
        "o1",
        &parse_compose("services:\n  main:\n    image: edge-test/web:v1\n").unwrap(),
        &[],
        &[],
    );
    let foreign = target_state(
        3,
        "foreign",
        "f1",
        &parse_compose("services:\n  x:\n    image: edge-test/web:v1\n").unwrap(),
        &[],
        &[],
    );
    let target = t("r1", "services:\n  web:\n    image: edge-test/web:v1\n");
    let mut j = journal(&target, None);
    j.known_apps.insert(2);
    let observed = [running(&old_app), running(&foreign)].concat();
    let u = update(plan(&j, &observed));
    assert_eq!(
        steps(&u),
        [
            "pull edge-test/web:v1",
            "give way to a newer target",
            "check the update locks of app 1, 2",
            "create volumes and networks",
            "remove main@o1 (main)",
            "wait for the dependencies of web",
            "create web for release r1",
            "start web",
            "watch the release come up",
        ]
    );
}

#[test]
fn a_forced_target_and_a_rollback_do_not_wait_for_locks() {
    let r1 = web("r1", "edge-test/web:v1", "download-then-kill");
    let r2 = web("r2", "edge-test/web:v2", "download-then-kill");
    let mut j = journal(&r2, Some(&r1));
    j.force = true;
    let u = update(plan(&j, &running(&r1)));
    assert!(position(&u, kills).is_some());
    assert!(position(&u, |s| matches!(s, Step::CheckLocks(_))).is_none());
}

#[test]
fn nothing_to_kill_needs_no_lock_check() {
    // A service added next to a running one.
    let r1 = t("r1", "services:\n  a:\n    image: edge-test/web:v1\n");
    let r2 = t(
        "r2",
        "services:\n  a:\n    image: edge-test/web:v1\n  b:\n    image: edge-test/printer:v1\n",
    );
    let u = update(plan(&journal(&r2, Some(&r1)), &running(&r1)));
    assert_eq!(u.changed, BTreeSet::from(["b".to_string()]));
    assert!(position(&u, |s| matches!(s, Step::CheckLocks(_))).is_none());
    assert!(position(&u, kills).is_none());
}

#[test]
fn a_failed_release_rolls_back_to_the_last_good_one() {
    let good = t(
        "good",
        "services:\n  web:\n    image: edge-test/web:v1\n  other:\n    image: edge-test/printer:v1\n",
    );
    let bad = t(
        "bad",
        "services:\n  web:\n    image: edge-test/web:v2\n  other:\n    image: edge-test/printer:v1\n",
    );
    let mut j = journal(&bad, Some(&good));
    // Before it fails, the bad release is the target.
    let u = update(plan(&j, &running(&good)));
    assert_eq!((u.target.release.as_str(), u.rolling_back), ("bad", false));

    j.failed = Some(Failure {
        release: "bad".into(),
        reason: "service web is unhealthy".into(),
    });
    let u = update(plan(&j, &running(&bad)));
    assert_eq!(u.target, good);
    assert!(u.rolling_back);
    assert_eq!(u.changed, BTreeSet::from(["web".to_string()]));
    assert_eq!(
        steps(&u),
        [
            "pull edge-test/web:v1",
            "give way to a newer target",
            // No lock check: a rollback goes through locks.
            "create volumes and networks",
            "wait for the dependencies of web",
            "create web for release good",
            "replace web: stop web@bad",
            "start web",
            "replace web: remove web@bad",
            "watch the release come up",
        ]
    );

    // Nothing to roll back to: the failed target stays, untouched and not retried.
    j.last_good = None;
    match plan(&j, &running(&bad)) {
        Plan::StayFailed { target, reason } => {
            assert_eq!(target, bad);
            assert_eq!(reason.as_deref(), Some("service web is unhealthy"));
        }
        other => panic!("expected StayFailed, got {other:?}"),
    }
}

#[test]
fn after_a_failure_roll_back_once_then_give_up() {
    let good = t("good", "services:\n  web:\n    image: edge-test/web:v1\n");
    let bad = t("bad", "services:\n  web:\n    image: edge-test/web:v2\n");
    let j = journal(&bad, Some(&good));
    assert_eq!(
        after_failure(&j, &bad, false),
        AfterFailure::RollBack(good.clone())
    );
    // The rollback failing too ends it.
    assert_eq!(after_failure(&j, &good, true), AfterFailure::RollbackFailed);
    // No earlier good release, or only this same one: nothing to go back to.
    assert_eq!(
        after_failure(&journal(&bad, None), &bad, false),
        AfterFailure::GiveUp
    );
    let mut same = bad.clone();
    same.services.get_mut("web").unwrap().image = "edge-test/web:v3".into();
    assert_eq!(
        after_failure(&journal(&same, Some(&bad)), &same, false),
        AfterFailure::GiveUp
    );
}

#[test]
fn an_operator_stopped_service_stays_stopped() {
    let r1 = t("r1", "services:\n  web:\n    image: edge-test/web:v1\n");
    let stopped = vec![container(&r1, "web", State::EXITED)];
    let mut j = journal(&r1, Some(&r1));
    j.stopped.insert("web".into());
    assert!(matches!(plan(&j, &stopped), Plan::Converged { .. }));
    // Not even a release that is still being watched starts it.
    j.last_good = None;
    let u = update(plan(&j, &stopped));
    assert!(position(&u, |s| matches!(s, Step::Start { .. })).is_none());
    // A changed service is created for the new release, but not started.
    let r2 = t("r2", "services:\n  web:\n    image: edge-test/web:v2\n");
    let mut j = journal(&r2, Some(&r1));
    j.stopped.insert("web".into());
    let u = update(plan(&j, &stopped));
    assert!(position(&u, |s| matches!(s, Step::Create { .. })).is_some());
    assert!(position(&u, |s| matches!(s, Step::Start { .. })).is_none());
}

#[test]
fn containers_that_are_not_running_are_started() {
    let r1 = t("r1", "services:\n  web:\n    image: edge-test/web:v1\n");
    // Created but never started (a crash between the two): started even when good.
    let created = vec![container(&r1, "web", State::CREATED)];
    let u = update(plan(&journal(&r1, Some(&r1)), &created));
    assert_eq!(
        steps(&u),
        [
            "give way to a newer target",
            "create volumes and networks",
            "wait for the dependencies of web",
            "start web",
            "watch the release come up",
        ]
    );
    assert!(matches!(
        &u.steps[3],
        Step::Start { container: Some(id), .. } if id == "id-web@r1"
    ));
    // Exited, in a release still being watched: started again. Once the release is
    // good, the engine's restart policy owns it.
    let exited = vec![container(&r1, "web", State::EXITED)];
    let u = update(plan(&journal(&r1, None), &exited));
    assert!(position(&u, |s| matches!(s, Step::Start { .. })).is_some());
    assert!(matches!(
        plan(&journal(&r1, Some(&r1)), &exited),
        Plan::Converged { .. }
    ));
}

#[test]
fn services_no_longer_in_the_target_are_removed_after_the_lock_check() {
    let r1 = t(
        "r1",
        "services:\n  web:\n    image: edge-test/web:v1\n  old:\n    image: edge-test/printer:v1\n",
    );
    let r2 = t("r2", "services:\n  web:\n    image: edge-test/web:v1\n");
    let u = update(plan(&journal(&r2, Some(&r1)), &running(&r1)));
    assert_eq!(
        steps(&u),
        [
            "give way to a newer target",
            "check the update locks of app 1",
            "create volumes and networks",
            "remove old@r1 (old)",
            "watch the release come up",
        ]
    );
}

#[test]
fn no_target_no_plan() {
    assert!(matches!(plan(&Journal::default(), &[]), Plan::NoTarget));
}
