//! A small WebDriver client: one chromedriver process and one headless Chromium session,
//! driven with WebDriver JSON over HTTP (used by the terminal and dashboard tests).

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{eventually, free_port_tcp, http_client, Proc};

/// A chromedriver process and one headless Chromium session, driven with WebDriver JSON.
pub struct Browser {
    driver: Proc,
    base: String,
    /// The WebDriver session id.
    pub session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a 1000 × 700 window; `None` when
    /// chromedriver is not installed.
    pub async fn start() -> Option<Self> {
        Self::start_sized(1000, 700).await
    }

    /// As [`Browser::start`], with a `width` × `height` window.
    pub async fn start_sized(width: u32, height: u32) -> Option<Self> {
        let driver_bin = ["chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())?;
        let port = free_port_tcp();
        // A process group of its own: chromedriver starts Chromium (and Chromium its
        // renderers), which a kill of chromedriver alone would leave running.
        let driver = Proc::spawn(
            std::os::unix::process::CommandExt::process_group(&mut Command::new(driver_bin), 0)
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        );
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Self {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        eventually(Duration::from_secs(10), || async {
            b.call("GET", "/status", None)
                .await
                .filter(|v| v["value"]["ready"] == true)
        })
        .await
        .expect("chromedriver ready");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", b._profile.path().display()),
            ]}
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .await
            .expect("new session");
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Some(b)
    }

    /// One WebDriver command; `None` when it fails or does not answer JSON.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(crate::body(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(60), http_client().request(req))
            .await
            .ok()?
            .ok()?;
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice(&bytes).ok()
    }

    /// A command of this session; panics when it fails.
    pub async fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{}", self.session, path);
        self.call(method, &path, Some(body))
            .await
            .unwrap_or_else(|| panic!("webdriver {path} failed"))
    }

    /// Runs `js` in the page and returns its value.
    pub async fn script(&self, js: &str) -> Value {
        self.session_call("POST", "/execute/sync", json!({"script": js, "args": []}))
            .await["value"]
            .clone()
    }

    /// Opens `url` (waits for the page to load).
    pub async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", json!({"url": url})).await;
    }

    /// The id of the first element matching the CSS `selector`.
    pub async fn find(&self, selector: &str) -> String {
        let el = self
            .session_call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": selector}),
            )
            .await;
        el["value"]["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector:?}: {el}"))
            .to_string()
    }

    /// Types `text` into the element `id`.
    pub async fn type_into(&self, id: &str, text: &str) {
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Clicks the element `id`.
    pub async fn click(&self, id: &str) {
        self.session_call("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// The cookies of the current page, as WebDriver describes them (`name`, `value`,
    /// `httpOnly`, `sameSite`, `secure`, ...).
    pub async fn cookies(&self) -> Vec<Value> {
        let v = self
            .call("GET", &format!("/session/{}/cookie", self.session), None)
            .await
            .expect("webdriver cookies");
        v["value"].as_array().cloned().unwrap_or_default()
    }

    /// Resizes the window.
    pub async fn resize(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// Writes a screenshot of the viewport to `path` (PNG).
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64_png::decode;
        let v = self
            .call(
                "GET",
                &format!("/session/{}/screenshot", self.session),
                None,
            )
            .await
            .expect("webdriver screenshot");
        let b64 = v["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no screenshot: {v}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, decode(b64)).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver, Chromium and its helpers: the whole group (see `start_sized`).
        if let Some(pid) = rustix::process::Pid::from_raw(self.driver.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        self.driver.kill9();
    }
}

/// Standard base64 (what WebDriver screenshots are), decoded; no crate needed for it.
mod base64_png {
    pub(super) fn decode(s: &str) -> Vec<u8> {
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter_map(val) {
            acc = (acc << 6) | c;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }
}
