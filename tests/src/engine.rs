//! The real container engine in tests: is it there (skip here, fail under `CI=true`), the
//! fixture images, and containers removed when a test ends.

use std::process::{Command, Stdio};

/// Whether a container engine answers. Without one, panics when `CI=true` (CI must test
/// this) and otherwise prints why `what` is skipped.
pub fn engine_available(what: &str) -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("no container engine reachable (docker info failed) and CI=true: {what} must be tested");
        }
        eprintln!("SKIPPED: no container engine reachable (docker info failed); {what} not tested");
    }
    ok
}

/// Builds the `edge-test/*` images from Debian's busybox-static (idempotent, no pull).
pub fn build_test_images() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/engine/build-images.sh"
    );
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "build-images.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A container started with `docker run -d ARGS`, removed (with `-f`) on drop.
pub struct Container(pub String);

impl Container {
    pub fn run(args: &[&str]) -> Self {
        let out = Command::new("docker")
            .args(["run", "-d"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
