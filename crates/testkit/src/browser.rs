//! Browser harness for the UI test (feature `browser`): Debian's chromedriver on an ephemeral port driving headless
//! chromium with a fresh profile, through fantoccini; screenshots into `target/ui-screenshots/`.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where screenshots go: `<workspace>/target/ui-screenshots/` (or `$KAKUREMICHI_SCREENSHOTS`).
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("KAKUREMICHI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots")
        })
}

/// chromedriver + chromium, or `None` (the test is skipped, or fails when peers are required).
pub fn binaries(test: &str) -> Option<(PathBuf, PathBuf)> {
    use crate::peers::{can_run, find_in_path};
    let found =
        find_in_path(&["chromedriver"]).zip(find_in_path(&["chromium", "chromium-browser"]));
    let why = "chromium or chromedriver not installed (apt-get install chromium chromium-driver)";
    can_run(test, found.is_none().then(|| why.to_string()))
        .then_some(found)
        .flatten()
}

/// A running chromedriver and a browser session; both end on drop / [`Browser::close`].
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless chromium that resolves `host_rules` (e.g.
    /// `MAP app.test 127.0.0.1`) instead of asking DNS.
    pub async fn start(
        driver: &std::path::Path,
        chromium: &std::path::Path,
        host_rules: &str,
    ) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--host-resolver-rules={host_rules}"),
                ]
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::rustls()
                .expect("rustls")
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot start a chromium session: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Saves a PNG of the page as `<screenshot_dir>/<name>.png`.
    pub async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The text of `css` once the page shows it: after a form post the browser may still be on
    /// the previous page (which has no such element) for a moment.
    pub async fn read(&self, css: &str) -> String {
        let what = format!("{css} on the page");
        crate::eventually(Duration::from_secs(30), &what, || async {
            let got = self.text(css).await;
            (!got.trim().is_empty()).then_some(got)
        })
        .await
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    /// Waits until the browser is on `want` (a form post may still be loading; a login hashes a
    /// password with Argon2, slow in a test build on a busy machine).
    pub async fn wait_path(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let path = self.path().await;
            if path == want {
                return;
            }
            if Instant::now() > deadline {
                self.shot("failed").await;
                let text = self.text("main").await;
                panic!("still on {path}, want {want}; the page says: {text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (without reloading) until the element's text is `want`.
    pub async fn wait_text(&self, css: &str, want: &str, within: Duration) {
        let what = format!("{css} to read {want:?}");
        crate::eventually(within, &what, || async {
            self.text(css).await.trim() == want
        })
        .await;
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
