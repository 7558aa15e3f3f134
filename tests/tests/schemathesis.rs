//! The management API against its own OpenAPI document, checked by schemathesis (a
//! property-based API tester from PyPI, `pip install schemathesis`): a real gateway with
//! an admin token, a fleet that has a provisioning key, a release and environment
//! variables (the document's examples name it, so the examples phase hits real objects),
//! every check enabled, a bounded number of examples per operation and a time bound.
//!
//! Fails on any 5xx, any status, content type or body the document does not declare,
//! and any schema-violating request the API accepts. Without schemathesis the test prints
//! `SKIPPED: …`; with `CI=true` it fails instead, as the engine tests do.

use std::process::Stdio;
use std::time::Duration;

use e2e_tests::*;
use serde_json::json;

/// The schemathesis executable, if it runs. Panics under `CI=true` when it does not.
fn schemathesis() -> Option<&'static str> {
    let ok = std::process::Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("schemathesis");
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "schemathesis is not installed (pip install schemathesis) and CI=true: the OpenAPI document must be tested"
        );
    }
    eprintln!("SKIPPED: schemathesis is not installed (pip install schemathesis); the OpenAPI document is not tested");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_conforms_to_its_openapi_document() {
    let Some(exe) = schemathesis() else { return };
    let gw = TestGateway::spawn().await;
    let (_, _, admin) = tokens(&gw).await;
    let api = Api::new(&gw);
    // The objects the document's examples name: fleet `kiosks` with a key, a release and
    // fleet variables (so DELETE /v1/fleets/kiosks meets all three), and device 0123…ef.
    let (s, v) = api
        .call(
            "POST",
            "/v1/fleets",
            Some(&admin),
            Some(json!({"name": "kiosks"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/v1/fleets/kiosks/keys",
            Some(&admin),
            Some(json!({"max_uses": 10})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/v1/fleets/kiosks/releases",
            Some(&admin),
            Some(json!({"compose": "services:\n  web:\n    image: edge-test/web:v1\n"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            "/v1/fleets/kiosks/env",
            Some(&admin),
            Some(json!({"vars": {"MODE": "kiosk"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/v1/devices",
            Some(&admin),
            Some(json!({"uuid": "0123456789abcdef0123456789abcdef"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let report = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--config-file")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/schemathesis.toml"
        ))
        .arg("run")
        .arg(format!("http://{}/openapi.json", gw.api_addr))
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        .args(["--checks", "all"])
        // No stateful phase: following links from GET /v1/tokens it would revoke the
        // test's own admin token and test 401s from then on.
        .args(["--phases", "examples,coverage,fuzzing"])
        // Bounded: a few examples per operation and a time budget for the whole run
        // (fuzzing repeats until --max-time is spent: about 75 s in all on a busy machine).
        .args(["--max-examples", "12"])
        .args(["--max-time", "60"])
        .args(["--request-timeout", "10"])
        .args(["--workers", "1"])
        .args(["--seed", "9"])
        .args(["--suppress-health-check", "all"])
        .arg("--no-color")
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(report.path())
        // Its crash cache (`.schemathesis/`, replayed by the next run) goes with the
        // temp dir: every run starts from the seed alone.
        .current_dir(report.path())
        .kill_on_drop(true)
        .stdin(Stdio::null());
    // The outer bound: schemathesis's own --max-time plus its start-up and the last
    // requests, generously; a hung run fails here instead of holding the suite.
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("schemathesis ran over 5 minutes")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
}
