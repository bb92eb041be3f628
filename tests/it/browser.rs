//! The web catalog in a real browser: headless Chromium driven over WebDriver (chromedriver, from Debian's
//! `chromium` and `chromium-driver`), against `modelmirror run` serving the books history behind Basic
//! authentication. A modeler's way through it: sign in, open the repositories page, go to a repository and a
//! model, expand a nested attribute, see the diagram's entities, search for an attribute and land on it, open
//! the history and compare two versions. No page may log a console error. Screenshots of the main pages are
//! saved in `target/screenshots/` for a person to look at.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::http_client::request;
use crate::support::*;
use crate::web::{BOOKS, Site, enc, htpasswd};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The model the walk goes through: nested attributes (`Gender` › `Gender Code`) and three versions.
const MODEL: &str = "MongoDB/Figure 026 - PDM nested for animal shelter.hck.json";
/// A model that grew from 208 to 215 attributes over three versions.
const GROWN: &str = "Cassandra/Cassandra Data Model Book.hck.json";
/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session in it; both end when dropped.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).is_file(),
                "{path} is missing: install the {package} package (scripts/test.sh does)"
            );
        }
        let port = free_port();
        // Its own process group: dropping the browser kills chromedriver and every Chromium process it started,
        // even when no session was made.
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("chromedriver to listen", 20, || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        let profile = tempfile::tempdir().unwrap();
        // No network beyond this machine: Chromium's background services stay off.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call("POST", "/session", Some(caps));
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = request(
            self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        let v = r.json();
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.session("POST", "/url", Some(json!({"url": url})));
    }

    fn url(&self) -> String {
        self.session("GET", "/url", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn title(&self) -> String {
        self.session("GET", "/title", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Every element matching a CSS selector.
    fn all(&self, css: &str) -> Vec<String> {
        self.session(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[ELEMENT].as_str().unwrap().to_string())
        .collect()
    }

    /// The first element matching `css`, waiting a few seconds for it.
    /// Wait (10 s at most) until the page's address holds `part`: a click that navigates returns before the
    /// new page has replaced the old one.
    fn wait_for_url(&self, part: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.url().contains(part) {
            assert!(
                Instant::now() < deadline,
                "never reached {part}: at {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.all(css).into_iter().next() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, element: &str) {
        self.session(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    fn text(&self, element: &str) -> String {
        self.session("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn property(&self, element: &str, name: &str) -> Value {
        self.session("GET", &format!("/element/{element}/property/{name}"), None)
    }

    fn displayed(&self, element: &str) -> bool {
        self.session("GET", &format!("/element/{element}/displayed"), None)
            .as_bool()
            .unwrap_or(false)
    }

    fn type_into(&self, element: &str, text: &str) {
        self.session(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        );
    }

    /// Run `script` in the page; its result.
    fn script(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn resize(&self, width: u32, height: u32) {
        self.session(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// Save the page as a PNG under `target/screenshots/`.
    fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.session("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The console's errors since the last call.
    fn console_errors(&self) -> Vec<String> {
        self.session("POST", "/se/log", Some(json!({"type": "browser"})))
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                &[],
                b"",
            );
        }
        // SAFETY: signalling the process group this test started.
        unsafe { libc::kill(-(self.driver.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

#[test]
fn a_modeler_browses_searches_and_compares_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, htpasswd("ann", "correct horse")).unwrap();
    let site = Site::start(
        "run",
        &format!("users_file = {:?}\n", users.to_string_lossy()),
        "",
    );
    let b = Browser::start();
    let base = format!("http://{}", site.addr);
    let mut errors = Vec::new();
    let mut check_console = |b: &Browser, page: &str| {
        errors.extend(
            b.console_errors()
                .into_iter()
                .map(|e| format!("{page}: {e}")),
        );
    };

    // Without credentials the browser is asked for them.
    // (Headless Chromium shows no prompt; the catalog is not shown either.)
    b.go(&format!("{base}/"));
    assert!(
        b.all("table.repos").is_empty(),
        "the catalog shown without credentials"
    );
    let _ = b.console_errors(); // the 401 itself is logged; that is the point of this step
    // Signed in (credentials in the URL, as a person would type them into the browser's prompt).
    b.go(&format!("http://ann:correct%20horse@{}/", site.addr));
    assert_eq!(b.title(), "Repositories · modelmirror");
    assert!(b.text(&b.find("table.repos")).contains(BOOKS));
    b.screenshot("repositories");
    check_console(&b, "repositories");

    // A repository, then the model.
    b.click(&b.find(&format!(
        "table.repos a[href='/models?repo={}']",
        enc(BOOKS)
    )));
    b.wait_for_url("/models?repo=");
    b.screenshot("models");
    check_console(&b, "models");
    let model_link = format!(
        "table.models a[href='/model?repo={}&path={}']",
        enc(BOOKS),
        enc(MODEL)
    );
    b.click(&b.find(&model_link));
    b.wait_for_url("/model?");

    // A nested attribute, closed, opens when clicked.
    let nested = b.find("ul.tree details");
    assert_eq!(b.property(&nested, "open"), json!(false));
    let summary = b.find("ul.tree details > summary");
    b.click(&summary);
    assert_eq!(b.property(&nested, "open"), json!(true));
    let child = b.find("ul.tree details ul .attr");
    assert!(
        b.displayed(&child),
        "the nested attribute is shown once opened"
    );
    // The diagram has a box per entity.
    let shown = site.cli(&["show", BOOKS, MODEL, "--json"]);
    let entities = shown["model"]["entities"].as_array().unwrap().len();
    assert_eq!(b.all("svg.diagram g.entity").len(), entities);
    b.screenshot("model");
    check_console(&b, "model");

    // Search for an attribute from the box on the page, and land on it.
    let search = b.find("form.search input[name=q]");
    b.type_into(&search, "gender code\u{E007}"); // Enter submits
    b.wait_for_url("/search?q=");
    let first = b.find("a.result");
    assert!(
        !b.all("section.hit mark").is_empty(),
        "matched words are highlighted"
    );
    b.screenshot("search");
    check_console(&b, "search");
    b.click(&first);
    b.wait_for_url("#");
    let landed = b.url();
    assert!(
        landed.contains("/model?") && landed.contains('#'),
        "{landed}"
    );
    let fragment = landed.split('#').nth(1).unwrap();
    let target = b.find(&format!("[id='{fragment}']"));
    assert!(
        b.text(&target).contains("Gender Code"),
        "landed on {}",
        b.text(&target)
    );
    assert!(b.displayed(&target), "its subtree was opened");
    check_console(&b, "search result");

    // History, and a comparison of two versions: the first and the last of a model that grew.
    b.go(&format!(
        "{base}/model?repo={}&path={}",
        enc(BOOKS),
        enc(GROWN)
    ));
    let boxes = b.all("svg.diagram g.entity").len();
    assert!(boxes >= 20, "{boxes} entities drawn");
    // Drawn at its natural size, the diagram scrolls in its frame; "Fit" shrinks it to the frame's width.
    let wider = "const f = document.querySelector('.diagram-frame'); \
                 return f.scrollWidth > f.clientWidth;";
    assert_eq!(
        b.script(wider),
        json!(true),
        "the diagram was shrunk to fit"
    );
    let fit = b
        .all(".zoom-tools button")
        .into_iter()
        .find(|e| b.text(e) == "Fit")
        .expect("a Fit button");
    b.click(&fit);
    assert_eq!(b.script(wider), json!(false), "Fit did not fit");
    b.screenshot("model-diagram");
    check_console(&b, "model-diagram");
    b.click(&b.find("p.actions a[href^='/history']"));
    b.wait_for_url("/history?");
    b.find("table.history tbody tr");
    let rows = b.all("table.history tbody tr");
    assert_eq!(rows.len(), 3, "three versions");
    b.click(&b.find("table.history tbody tr:last-child input[name=from]"));
    b.screenshot("history");
    check_console(&b, "history");
    b.click(&b.find("form[action='/compare'] button[type=submit]"));
    b.wait_for_url("/compare?");
    let heading = b.text(&b.find("h1"));
    assert!(heading.starts_with("Changes to"), "{heading}");
    let added = b.all("table.compare tr.added");
    assert!(!added.is_empty(), "attributes added between the versions");
    assert!(b.text(&added[0]).contains("added"), "{}", b.text(&added[0]));
    b.screenshot("compare");
    check_console(&b, "compare");

    // The events page.
    b.go(&format!("{base}/events"));
    assert!(!b.all("table.events tbody tr").is_empty());
    b.screenshot("events");
    check_console(&b, "events");

    // On a phone's screen the pages fit its width (wide tables scroll inside their frame).
    b.resize(390, 844);
    for (name, url) in [
        ("phone-repositories", format!("{base}/")),
        (
            "phone-model",
            format!("{base}/model?repo={}&path={}", enc(BOOKS), enc(GROWN)),
        ),
        ("phone-search", format!("{base}/search?q=gender+code")),
    ] {
        b.go(&url);
        let fits = b.script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1 \
             ? 'yes' : document.documentElement.scrollWidth + ' > ' + window.innerWidth",
        );
        assert_eq!(fits, json!("yes"), "{name} is wider than the phone");
        b.screenshot(name);
        check_console(&b, name);
    }

    assert!(errors.is_empty(), "console errors:\n{}", errors.join("\n"));
}
