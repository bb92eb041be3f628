//! The web catalog over real HTTP to a running `modelmirror serve` (and `run`), on the real books history:
//! the API answers exactly what the command line's `--json` prints; every API answer the tests receive
//! validates against `openapi.json`; credentials (bcrypt users, tokens, the failure limit); hostile model
//! content rendered inert; paths with spaces, unicode and `%`; pagination; ETag and 304; 404s.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::git_http::Auth;
use crate::http_client::{Response, connect_from, get, get_from, request};
use crate::support::*;

const YEARLY: &str = "0 0 1 1 *";
/// The hostile model's path: a folder with a space, unicode, `%`, and markup.
const ODD_PATH: &str = "odd dir/ünïcødé 100% <b>.hck.json";
pub(crate) const BOOKS: &str = "g/shelf/books";
const ODD: &str = "g/odd/repo";
/// A repository whose one model parsed at its first commit and does not at its second.
const BROKEN: &str = "g/broken/one";
/// A repository with one model of 210 entities and 21,000 attributes.
const BIG: &str = "g/big/one";

/// `value` percent-encoded for a query string.
pub(crate) fn enc(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

// The catalog's pages and API do not know which engine holds it: these run on both.
on_both_engines!(
    the_api_answers_what_the_cli_prints_paginated_with_etags,
    hostile_content_is_inert_and_odd_paths_work,
    etags_change_with_every_change_to_the_catalog,
);

/// A catalog of the books history and one hostile model, served by `modelmirror serve` (or `run`).
pub(crate) struct Site {
    pub(crate) env: Env,
    pub(crate) addr: SocketAddr,
    _process: Running,
    /// What the process wrote on stderr.
    log: std::path::PathBuf,
}

/// The hostile model: a name and descriptions made of markup, an entity name with quotes, a container named
/// with markup, and a second entity of the same name in another container.
fn hostile_model() -> Vec<u8> {
    let mut m: Value = serde_json::from_slice(&std::fs::read(small_model()).unwrap()).unwrap();
    m["modelName"] = json!("<script>alert(1)</script>");
    m["collections"][0]["collectionName"] = json!("Acc\"ount' <i>&amp;");
    m["collections"][0]["properties"][0]["description"] = json!("<img src=x onerror=alert(1)>");
    let first = m["collections"][0]["GUID"].clone();
    let mut twin = m["collections"][0].clone();
    twin["GUID"] = json!("twin-of-the-first");
    m["collections"].as_array_mut().unwrap().push(twin);
    m["buckets"] = json!([
        {"GUID": "b-1", "name": "<svg onload=alert(3)>", "collectionIds": [first]},
        {"GUID": "b-2", "name": "second", "collectionIds": ["twin-of-the-first"]}
    ]);
    serde_json::to_vec_pretty(&m).unwrap()
}

/// A generated model of `entities` entities of `attributes` attributes each.
fn generated_model(entities: usize, attributes: usize) -> Vec<u8> {
    let collections: Vec<Value> = (0..entities)
        .map(|e| {
            let properties: Vec<Value> = (0..attributes)
                .map(|a| json!({"GUID": format!("a-{e}-{a}"), "name": format!("field_{a}"), "type": "string"}))
                .collect();
            json!({"GUID": format!("e-{e}"), "collectionName": format!("Entity {e}"), "properties": properties})
        })
        .collect();
    serde_json::to_vec(
        &json!({"modelName": "Generated", "dbVendor": "MongoDB", "collections": collections}),
    )
    .unwrap()
}

impl Site {
    /// A site whose `[web]` table is `web` (after `listen`), served by `command` (`serve` or `run`).
    pub(crate) fn start(command: &str, web: &str, top: &str) -> Site {
        Site::start_on(Engine::Sqlite, command, web, top)
    }

    /// [`Site::start`] with the catalog in `engine`.
    pub(crate) fn start_on(engine: Engine, command: &str, web: &str, top: &str) -> Site {
        let env = Env::on(engine, Auth::None);
        env.repo_from_bundle("shelf/books.git", "books");
        let (_, work) = env.new_repo("odd/repo.git");
        let file = work.join(ODD_PATH);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, hostile_model()).unwrap();
        // A model its .hubignore leaves out.
        std::fs::create_dir_all(work.join("ignored")).unwrap();
        std::fs::copy(small_model(), work.join("ignored/secret.hck.json")).unwrap();
        std::fs::write(work.join(".hubignore"), "ignored/\n").unwrap();
        // Its commit's author and message are markup too.
        git(&work, &["add", "-A"]);
        git(
            &work,
            &[
                "commit",
                "-q",
                "--author",
                "Mallory \"&' x=alert(4) <m@example.com>",
                "-m",
                "<script>alert(5)</script> a hostile model",
            ],
        );
        git(&work, &["push", "-q", "-f", "origin", "HEAD:main"]);
        // A model too large to show every attribute tree (21,000 attributes) or every entity in a diagram.
        let (_, work) = env.new_repo("big/one.git");
        std::fs::write(work.join("big.hck.json"), generated_model(210, 100)).unwrap();
        commit_all(&work, "a big model");
        let (_, work) = env.new_repo("broken/one.git");
        std::fs::copy(small_model(), work.join("m.hck.json")).unwrap();
        commit_all(&work, "good");
        std::fs::write(
            work.join("m.hck.json"),
            "{\n  \"modelName\": \"x\",\n  \"collections\": [\n",
        )
        .unwrap();
        commit_all(&work, "broken");
        let port = free_port();
        env.write_config(&format!(
            "schedule = {YEARLY:?}\n{top}\n[web]\nlisten = \"127.0.0.1:{port}\"\n{web}\n\
             [providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"shelf/books.git\", \"odd/repo.git\", \"broken/one.git\", \"big/one.git\"]\n",
            env.server.url()
        ));
        env.run(&["sync"]).ok();
        let log = env.path().join(format!("{command}.log"));
        let process = bin()
            .args([
                "--config",
                &env.path().join("config.toml").to_string_lossy(),
                command,
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("the web catalog to listen", 20, || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        Site {
            env,
            addr,
            _process: Running(process),
            log,
        }
    }

    fn get(&self, path: &str) -> Response {
        get(self.addr, path, &[])
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Value {
        self.env.run(args).ok().json()
    }
}

/// The OpenAPI document, and which of its paths the tests' answers were checked against.
struct Api {
    doc: Value,
    checked: RefCell<BTreeSet<String>>,
}

impl Api {
    fn new(site: &Site) -> Api {
        let r = site.get("/api/v1/openapi.json");
        assert_eq!(r.status, 200);
        let doc = r.json();
        assert_eq!(doc["openapi"], "3.1.0");
        let api = Api {
            doc,
            checked: RefCell::new(BTreeSet::new()),
        };
        api.check("/openapi.json", &r);
        api
    }

    /// `GET /api/v1{path}` with `headers`; the answer must validate against the document.
    fn get(&self, site: &Site, path: &str, headers: &[(&str, &str)]) -> Response {
        let r = get(site.addr, &format!("/api/v1{path}"), headers);
        let route = path.split('?').next().unwrap_or(path);
        self.check(route, &r);
        r
    }

    fn check(&self, route: &str, r: &Response) {
        if r.status == 304 {
            assert!(r.body.is_empty(), "304 with a body");
            return;
        }
        let op = &self.doc["paths"][route]["get"];
        let schema = match op["responses"][r.status.to_string()]["content"]["application/json"]["schema"]
        {
            Value::Null if op.is_null() => &self.doc["components"]["schemas"]["Error"],
            Value::Null => panic!("{route}: status {} is not documented", r.status),
            ref s => s,
        };
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{route}"
        );
        if let Err(e) = validate(&self.doc, schema, &r.json(), "$") {
            panic!(
                "{route} ({}): the answer does not match openapi.json: {e}",
                r.status
            );
        }
        self.checked.borrow_mut().insert(route.to_string());
    }
}

/// Check `value` against `schema` (the subset of JSON Schema that openapi.json uses; anything else is an
/// error, so the document cannot use a keyword this check would ignore).
pub(crate) fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Err(format!("{at}: the schema is not an object"));
    };
    for key in schema.keys() {
        let known = [
            "$ref",
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "enum",
            "description",
            "minimum",
            "maximum",
        ];
        if !known.contains(&key.as_str()) {
            return Err(format!("{at}: keyword {key} is not checked by this test"));
        }
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/components/schemas/")
            .ok_or(format!("{at}: $ref {r}"))?;
        return validate(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("{at}: bad type")),
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number"));
        if !ok {
            return Err(format!("{at}: {actual}, expected {allowed:?}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {options:?}"));
    }
    if let Some(n) = value.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            return Err(format!("{at}: {n} below the minimum"));
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            return Err(format!("{at}: {n} above the maximum"));
        }
    }
    if let Value::Object(map) = value {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = req.as_str().unwrap_or_default();
            if !map.contains_key(name) {
                return Err(format!("{at}: the required {name} is missing"));
            }
        }
        for (k, v) in map {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, v, &format!("{at}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: {k} is not in the schema"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(doc, s, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Every page of a list, following its `Link: <…>; rel="next"` headers.
fn all_pages(api: &Api, site: &Site, first: &str) -> (Vec<Value>, usize) {
    let (mut items, mut pages, mut next) = (Vec::new(), 0, Some(first.to_string()));
    while let Some(path) = next.take() {
        let r = api.get(site, &path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        items.extend(r.json().as_array().unwrap().iter().cloned());
        pages += 1;
        next = r.header("link").map(|l| {
            let url = l.trim_start_matches('<').split('>').next().unwrap();
            url.strip_prefix("/api/v1").unwrap_or(url).to_string()
        });
        assert!(pages < 100, "the pages do not end");
    }
    (items, pages)
}

/// A model path of the books history with at least two versions.
fn model_with_history(site: &Site) -> String {
    for m in site
        .cli(&["models", "--repo", BOOKS, "--json"])
        .as_array()
        .unwrap()
    {
        let path = m["path"].as_str().unwrap();
        let history = site.cli(&["history", BOOKS, path, "--json"]);
        let versions = history
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["blob"].is_string())
            .count();
        if versions >= 2 {
            return path.to_string();
        }
    }
    panic!("no model of the books history has two versions");
}

fn the_api_answers_what_the_cli_prints_paginated_with_etags(engine: Engine) {
    let site = Site::start_on(engine, "serve", "", "");
    let api = Api::new(&site);
    // Repositories: = status --json.
    let r = api.get(&site, "/repos", &[]);
    assert_eq!(r.json(), site.cli(&["status", "--json"]));
    // Models: = models --json, over several pages.
    let models = site.cli(&["models", "--json"]);
    let (paged, pages) = all_pages(&api, &site, "/models?limit=40");
    assert!(pages >= 4, "{pages} pages of 40 for {} models", paged.len());
    assert_eq!(Value::Array(paged), models);
    let (one_repo, _) = all_pages(&api, &site, &format!("/models?repo={}", enc(BOOKS)));
    assert_eq!(
        Value::Array(one_repo),
        site.cli(&["models", "--repo", BOOKS, "--json"])
    );
    // A model, its history and its changes.
    let path = model_with_history(&site);
    let q = format!("repo={}&path={}", enc(BOOKS), enc(&path));
    assert_eq!(
        api.get(&site, &format!("/model?{q}"), &[]).json(),
        site.cli(&["show", BOOKS, &path, "--json"])
    );
    let (history, _) = all_pages(&api, &site, &format!("/history?{q}"));
    assert_eq!(
        Value::Array(history.clone()),
        site.cli(&["history", BOOKS, &path, "--json"])
    );
    assert_eq!(
        api.get(&site, &format!("/changes?{q}"), &[]).json(),
        site.cli(&["changes", BOOKS, &path, "--json"])
    );
    let oldest = history.last().unwrap()["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let at_oldest = api.get(&site, &format!("/model?{q}&commit={oldest}"), &[]);
    assert_eq!(at_oldest.json()["commit"], json!(oldest));
    // Search and events.
    let hits = api.get(&site, "/search?q=pet%20name&limit=15", &[]);
    assert_eq!(
        hits.json(),
        site.cli(&["search", "pet name", "--limit", "15", "--json"])
    );
    let kind = api.get(&site, "/search?q=pet&kind=attribute&limit=5", &[]);
    assert!(
        kind.json()
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["kind"] == "attribute")
    );
    let (events, _) = all_pages(&api, &site, "/events?limit=1");
    assert_eq!(
        Value::Array(events),
        site.cli(&["events", "--limit", "1000", "--json"])
    );
    // ETag: the same answer is not sent twice; a new commit changes it.
    let first = api.get(&site, "/models", &[]);
    let etag = first.header("etag").expect("an ETag").to_string();
    let again = api.get(&site, "/models", &[("If-None-Match", &etag)]);
    assert_eq!(again.status, 304);
    site.env.run(&["sync", BOOKS]).ok();
    // A poll was recorded: the events (and so the catalog's version) changed.
    let after = api.get(&site, "/models", &[("If-None-Match", &etag)]);
    assert_eq!(after.status, 200, "the ETag changed after a poll");
    assert_ne!(after.header("etag"), Some(etag.as_str()));
    // Every documented endpoint was checked against the document.
    let documented: BTreeSet<String> = api.doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(*api.checked.borrow(), documented);
}

#[test]
fn bad_requests_and_unknown_things_get_their_status() {
    let site = Site::start("serve", "", "");
    let api = Api::new(&site);
    for (path, status) in [
        ("/model?repo=g%2Fnope&path=x.json", 404),
        ("/model?path=x.json", 400),
        (
            &format!("/model?repo={}&path=no%2Fsuch.json", enc(BOOKS)) as &str,
            404,
        ),
        (
            &format!("/history?repo={}&path=no%2Fsuch.json", enc(BOOKS)),
            404,
        ),
        ("/models?limit=0", 400),
        ("/models?limit=abc", 400),
        ("/models?cursor=-1", 400),
        ("/search?q=", 400),
        ("/search?q=%22unclosed", 400),
        ("/search?q=x&kind=table", 400),
        (
            &format!("/model?repo={}&path=x.json&commit=0000000", enc(BOOKS)),
            404,
        ),
        ("/models?limit=1001", 400),
        ("/search?q=pet&cursor=100001", 400),
        ("/events?cursor=18446744073709551615", 400),
        ("/models?repo=g%2Fnope", 404),
        ("/events?repo=g%2Fnope", 404),
        ("/search?q=pet&repo=g%2Fnope", 404),
        // Only commit ids: git's revision syntax would let a request search the history.
        (
            &format!("/model?repo={}&path=x.json&commit=%3A%2Fmany", enc(BOOKS)),
            400,
        ),
        (
            &format!("/model?repo={}&path=x.json&commit=HEAD~1", enc(BOOKS)),
            400,
        ),
        (
            &format!("/changes?repo={}&path=x.json&from=main", enc(BOOKS)),
            400,
        ),
    ] {
        let r = api.get(&site, path, &[]);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.json()["status"], json!(status), "{path}");
        assert!(!r.json()["error"].as_str().unwrap().is_empty());
    }
    let unknown = get(site.addr, "/api/v1/nothing", &[]);
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["status"], 404);
    // `If-None-Match: *` matches what exists, and only that.
    let star = [("If-None-Match", "*")];
    assert_eq!(get(site.addr, "/api/v1/nothing", &star).status, 404);
    assert_eq!(get(site.addr, "/api/v1/models?limit=0", &star).status, 400);
    assert_eq!(get(site.addr, "/api/v1/repos", &star).status, 304);
    // HEAD: the headers of GET, no body.
    let head = request(site.addr, "HEAD", "/api/v1/repos", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("etag").is_some());
    assert_eq!(request(site.addr, "HEAD", "/", &[], b"").status, 200);
    // What the catalog would not read is not read for the web either.
    let commit = site
        .cli(&["status", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repo"] == BOOKS)
        .unwrap()["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let not_a_model = api.get(
        &site,
        &format!("/model?repo={}&path=README.md&commit={commit}", enc(BOOKS)),
        &[],
    );
    assert_eq!(not_a_model.status, 404, "{}", not_a_model.text());
    assert!(
        not_a_model.text().contains("not a file the catalog reads"),
        "{}",
        not_a_model.text()
    );
    // Nor what a repository's .hubignore leaves out.
    let odd_commit = site.cli(&["history", ODD, ODD_PATH, "--json"])[0]["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let ignored = api.get(
        &site,
        &format!(
            "/model?repo={}&path=ignored%2Fsecret.hck.json&commit={odd_commit}",
            enc(ODD)
        ),
        &[],
    );
    assert_eq!(ignored.status, 404, "{}", ignored.text());
    assert!(ignored.text().contains(".hubignore"), "{}", ignored.text());
    assert_eq!(get(site.addr, "/api/v2/repos", &[]).status, 404);
    let post = request(site.addr, "POST", "/api/v1/repos", &[], b"{}");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    // Pages: a 404 page with a way back.
    for path in [
        "/nowhere",
        "/models?repo=g%2Fnope",
        &format!("/model?repo={}&path=no%2Fsuch.json", enc(BOOKS)),
    ] {
        let r = site.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.text().contains("href=\"/\""), "{path}: a way back");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    }
    assert_eq!(site.get("/model?repo=g%2Fodd%2Frepo").status, 400);
    // Security headers on pages and API alike.
    for r in [site.get("/"), api.get(&site, "/repos", &[])] {
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    }
}

fn hostile_content_is_inert_and_odd_paths_work(engine: Engine) {
    let site = Site::start_on(engine, "serve", "", "");
    let api = Api::new(&site);
    // The models page lists the hostile model; its link leads to it.
    let list = site.get(&format!("/models?repo={}", enc(ODD))).text();
    assert!(
        !list.contains("<script>alert"),
        "raw markup on the models page"
    );
    assert!(
        list.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{list}"
    );
    let href = list
        .split("href=\"")
        .map(|s| s.split('"').next().unwrap())
        .find(|h| h.starts_with("/model?"))
        .expect("a link to the model")
        .replace("&amp;", "&");
    let page = site.get(&href);
    assert_eq!(page.status, 200, "{href}");
    let html = page.text();
    for raw in ["<script>alert", "<img src=x", "<i>&amp;", "Acc\"ount'"] {
        assert!(!html.contains(raw), "{raw} reached the page raw");
    }
    for escaped in [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&lt;img src=x onerror=alert(1)&gt;",
        "Acc&quot;ount&#39; &lt;i&gt;&amp;amp;",
        "ünïcødé 100% &lt;b&gt;.hck.json",
    ] {
        assert!(html.contains(escaped), "{escaped} is not on the page");
    }
    // The container and the commit's author and message are escaped too.
    for raw in ["<svg onload", "Mallory \"&'", "<script>alert(5)"] {
        assert!(!html.contains(raw), "{raw} reached the page raw");
    }
    for escaped in [
        "&lt;svg onload=alert(3)&gt;",
        "Mallory &quot;&amp;&#39; x=alert(4)",
        "&lt;script&gt;alert(5)&lt;/script&gt;",
    ] {
        assert!(html.contains(escaped), "{escaped} is not on the page");
    }
    // Two entities share a name (in two containers): both are drawn and listed, every id stays unique.
    let ids: Vec<&str> = html
        .split(" id=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "duplicate ids: {ids:?}");
    assert_eq!(html.matches("<g class=\"entity\"").count(), 5);
    assert_eq!(html.matches("<section class=\"entity\"").count(), 5);
    // The only scripts are the site's own file.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(html.contains("<script src=\"/static/app.js?v="), "{html}");
    // The API has the model at its odd path, and so does the command line.
    let q = format!("repo={}&path={}", enc(ODD), enc(ODD_PATH));
    let shown = api.get(&site, &format!("/model?{q}"), &[]).json();
    assert_eq!(shown["path"], json!(ODD_PATH));
    assert_eq!(shown["model"]["name"], json!("<script>alert(1)</script>"));
    assert_eq!(shown, site.cli(&["show", ODD, ODD_PATH, "--json"]));
    let history = site.get(&format!("/history?{q}"));
    assert_eq!(history.status, 200);
    let history = history.text();
    assert!(history.contains("&lt;script&gt;alert(5)&lt;/script&gt;"));
    assert!(history.contains("Mallory &quot;&amp;&#39; x=alert(4)"));
    assert!(!history.contains("<script>alert(5)") && !history.contains("Mallory \"&'"));
    // A search for the hostile text finds it and shows it inert.
    let found = site.get("/search?q=alert").text();
    assert!(found.contains("&lt;script&gt;"), "{found}");
    assert!(!found.contains("<script>alert"));
}

#[test]
fn a_model_that_does_not_parse_shows_its_error_and_its_last_good_version() {
    let site = Site::start("serve", "", "");
    let history = site.cli(&["history", BROKEN, "m.hck.json", "--json"]);
    let good = history[1]["commit"].as_str().unwrap().to_string();
    let page = site.get(&format!("/model?repo={}&path=m.hck.json", enc(BROKEN)));
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("could not be read"), "{html}");
    assert!(
        html.contains("line 4, column"),
        "the error with its line and column: {html}"
    );
    assert!(
        html.contains(&format!("commit={good}")),
        "a link to the last good version: {html}"
    );
    let last_good = site.get(&format!(
        "/model?repo={}&path=m.hck.json&commit={good}",
        enc(BROKEN)
    ));
    assert_eq!(last_good.status, 200);
    assert!(last_good.text().contains("Supertype and subtypes"));
    // The models page lists it with its error.
    let list = site.get(&format!("/models?repo={}", enc(BROKEN))).text();
    assert!(list.contains("error: line 4, column"), "{list}");
}

#[test]
fn a_large_model_shows_one_entity_at_a_time_and_draws_the_first_200() {
    let site = Site::start("serve", "", "max_model_bytes = 500000");
    let model = format!("/model?repo={}&path=big.hck.json", enc(BIG));
    // Over max_model_bytes (500 kB; the file is about 1.3 MB): recorded as skipped, and not read for the web.
    let skipped = site.get(&model).text();
    assert!(skipped.contains("max_model_bytes"), "{skipped}");
    let commit = site.cli(&["history", BIG, "big.hck.json", "--json"])[0]["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let api = get(
        site.addr,
        &format!(
            "/api/v1/model?repo={}&path=big.hck.json&commit={commit}",
            enc(BIG)
        ),
        &[],
    );
    assert_eq!(api.status, 400, "{}", api.text());
    assert!(
        api.text().contains("over max_model_bytes"),
        "{}",
        api.text()
    );
    drop(site);

    let site = Site::start("serve", "", "");
    let page = site.get(&model);
    assert_eq!(page.status, 200);
    let html = page.text();
    // 210 entities: 200 drawn, and the page says so.
    assert_eq!(html.matches("<g class=\"entity\"").count(), 200);
    assert!(
        html.contains("The first 200 of 210 entities are drawn"),
        "no note"
    );
    // 21,000 attributes: a list of the entities, no trees.
    assert!(html.contains("This model has 21000 attributes"), "no note");
    assert_eq!(html.matches("<section class=\"entity\"").count(), 0);
    let table = html
        .split("<table class=\"list entities\"")
        .nth(1)
        .expect("the table of entities");
    let table = table.split("</table>").next().unwrap();
    assert_eq!(
        table.matches("entity=Entity+").count(),
        210,
        "a link per entity"
    );
    // The diagram's boxes lead there too.
    assert!(html.contains("entity=Entity+3#e-"), "a box's link");
    // One entity's tree.
    let one = site.get(&format!("{model}&entity=Entity+7")).text();
    assert_eq!(one.matches("<section class=\"entity\"").count(), 1);
    assert!(one.contains(">Entity 7<"), "the entity's heading");
    assert_eq!(one.matches("<span class=\"attr\"").count(), 100);
    // A search hit in it leads to its tree.
    let found = site
        .get(&format!("/search?q=field_42&repo={}", enc(BIG)))
        .text();
    assert!(found.contains("entity=Entity+"), "{found}");
}

fn etags_change_with_every_change_to_the_catalog(engine: Engine) {
    let site = Site::start_on(engine, "serve", "", "");
    let etag = |path: &str| {
        let r = get(site.addr, path, &[]);
        assert_eq!(r.status, 200);
        r.header("etag").unwrap().to_string()
    };
    let before = etag("/api/v1/repos");
    assert_eq!(
        get(site.addr, "/api/v1/repos", &[("If-None-Match", &before)]).status,
        304
    );
    // A rebuild writes the same models again: answers may have changed, so the tag does.
    site.env.run(&["rebuild", BOOKS]).ok();
    let rebuilt = etag("/api/v1/repos");
    assert_ne!(rebuilt, before);
    // A change made by no poll at all (here by hand, as discovery would mark a repository archived).
    site.env.execute(&format!(
        "UPDATE repos SET state_reason = 'archived on the host' WHERE id = '{BOOKS}'"
    ));
    let changed = get(site.addr, "/api/v1/repos", &[("If-None-Match", &rebuilt)]);
    assert_eq!(changed.status, 200, "a stale ETag matched");
    assert!(changed.text().contains("archived on the host"));
}

#[test]
fn serve_reads_a_catalog_and_creates_nothing() {
    let env = Env::new(Auth::None);
    let port = free_port();
    env.write_config(&format!(
        "[web]\nlisten = \"127.0.0.1:{port}\"\n\
         [providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"x.git\"]\n",
        env.server.url()
    ));
    // Never synced: nothing to serve, and serve makes nothing up.
    let out = env.run(&["serve"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no catalog at"), "{}", out.stderr);
    assert!(out.stderr.contains("modelmirror sync"), "{}", out.stderr);
    assert!(
        !env.path().join("state").exists(),
        "serve created the state folder"
    );
}

#[test]
fn wrong_passwords_sent_at_once_meet_the_limit_and_a_deleted_users_file_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, htpasswd("ann", "correct horse")).unwrap();
    let site = Site::start(
        "serve",
        &format!("users_file = {:?}\n", users.to_string_lossy()),
        "",
    );
    let ip = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    // 16 requests at once with the right password (a client with many workers): all let in.
    let addr = site.addr;
    let good = basic("ann", "correct horse");
    let at_once = |client: u8, authorization: Vec<String>| -> Vec<u16> {
        let threads: Vec<_> = authorization
            .into_iter()
            .map(|a| {
                std::thread::spawn(move || {
                    get_from(ip(client), addr, "/api/v1/repos", &[("Authorization", &a)]).status
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let right = at_once(7, vec![good.clone(); 16]);
    assert!(right.iter().all(|s| *s == 200), "{right:?}");
    // 40 different guesses at once from one address: 10 are checked, the rest wait.
    let statuses = at_once(
        5,
        (0..40)
            .map(|i| basic("ann", &format!("guess-{i}")))
            .collect(),
    );
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let waited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + waited, 40, "{statuses:?}");
    assert!(checked <= 10, "{checked} guesses checked: {statuses:?}");
    // Deleting the users file lets nobody in, even a user signed in a moment ago; it back, they are.
    let status = || get_from(ip(6), addr, "/", &[("Authorization", &good)]).status;
    assert_eq!(status(), 200);
    std::fs::remove_file(&users).unwrap();
    assert_eq!(status(), 401, "a deleted users file still let a user in");
    std::fs::write(&users, htpasswd("ann", "correct horse")).unwrap();
    assert_eq!(status(), 200);
    let log = std::fs::read_to_string(&site.log).unwrap();
    assert!(log.contains("is gone"), "{log}");
}

#[test]
fn with_tokens_only_pages_say_so_and_the_api_takes_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "report-bot-0123456789\n").unwrap();
    let site = Site::start(
        "serve",
        &format!("tokens_file = {:?}\n", tokens.to_string_lossy()),
        "",
    );
    let page = site.get("/");
    assert_eq!(page.status, 401);
    assert!(page.text().contains("API tokens only"), "{}", page.text());
    // No password prompt a browser could never satisfy.
    assert!(
        !page
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic"),
        "{:?}",
        page.header("www-authenticate")
    );
    let api = get(
        site.addr,
        "/api/v1/repos",
        &[("Authorization", "Bearer report-bot-0123456789")],
    );
    assert_eq!(api.status, 200);
}

#[test]
fn serve_reads_a_copy_on_a_read_only_disk() {
    let site = Site::start("serve", "", "");
    // A copy of the catalog, in WAL mode like the live one, alone on a disk then made read only.
    let disk = SmallDisk::mount(&site.env.path().join("copy"), "64m").expect(
        "cannot mount a tmpfs: this test needs root with the right to mount (run scripts/test.sh as root)",
    );
    let copy = site.env.path().join("copy/modelmirror.db");
    site.env
        .db()
        .execute("VACUUM INTO ?1", [copy.to_string_lossy()])
        .unwrap();
    {
        let c = rusqlite::Connection::open(&copy).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    assert!(!site.env.path().join("copy/modelmirror.db-wal").exists());
    disk.read_only();
    // A second catalog server on that copy.
    let port = free_port();
    let config = std::fs::read_to_string(site.env.path().join("config.toml")).unwrap();
    let (first, rest) = config.split_once('\n').unwrap();
    let listen = format!("listen = \"127.0.0.1:{}\"", site.addr.port());
    assert!(rest.contains(&listen));
    let second = site.env.path().join("second.toml");
    std::fs::write(
        &second,
        format!(
            "{first}\ndatabase = {:?}\n{}",
            copy.to_string_lossy(),
            rest.replace(&listen, &format!("listen = \"127.0.0.1:{port}\""))
        ),
    )
    .unwrap();
    let log = site.env.path().join("second.log");
    let _serving = Running(
        bin()
            .args(["--config", &second.to_string_lossy(), "serve"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("the second catalog to listen", 20, || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let repos = get(addr, "/api/v1/repos", &[]);
    assert_eq!(
        repos.status,
        200,
        "{} {}",
        repos.text(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(repos.json(), get(site.addr, "/api/v1/repos", &[]).json());
    let page = get(addr, &format!("/models?repo={}", enc(BOOKS)), &[]);
    assert_eq!(page.status, 200);
}

/// An htpasswd line for `user` with a bcrypt hash of `password` (as `htpasswd -B` writes it).
pub(crate) fn htpasswd(user: &str, password: &str) -> String {
    let hash = bcrypt::hash_with_salt(password, 5, [9u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    format!("{user}:{hash}\n")
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[test]
fn credentials_guard_pages_and_api_and_wrong_ones_are_limited_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, htpasswd("ann", "correct horse")).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# API tokens\nreport-bot-0123456789\n").unwrap();
    let metrics_port = free_port();
    let site = Site::start(
        "run",
        &format!(
            "users_file = {:?}\ntokens_file = {:?}\n",
            users.to_string_lossy(),
            tokens.to_string_lossy()
        ),
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let api = Api::new_authorized(&site, &basic("ann", "correct horse"));
    let good = basic("ann", "correct horse");
    // No credentials: 401 and a Basic challenge, for pages and API.
    let page = site.get("/");
    assert_eq!(page.status, 401);
    assert!(
        page.header("www-authenticate")
            .unwrap()
            .starts_with("Basic realm=\"modelmirror\"")
    );
    let r = api.get(&site, "/repos", &[]);
    assert_eq!(r.status, 401);
    // The right user, on pages and API; a token on the API only.
    assert_eq!(get(site.addr, "/", &[("Authorization", &good)]).status, 200);
    assert_eq!(
        api.get(&site, "/repos", &[("Authorization", &good)]).status,
        200
    );
    let token = "Bearer report-bot-0123456789";
    assert_eq!(
        api.get(&site, "/models?limit=1", &[("Authorization", token)])
            .status,
        200
    );
    assert_eq!(get(site.addr, "/", &[("Authorization", token)]).status, 401);
    // Static files need nothing.
    assert_eq!(site.get("/static/style.css").status, 200);
    // Wrong ones: 401, then 429 for this address once it has sent too many.
    let wrong = basic("ann", "wrong-password-31337");
    assert_eq!(
        get(site.addr, "/", &[("Authorization", &wrong)]).status,
        401
    );
    assert_eq!(
        api.get(&site, "/repos", &[("Authorization", "Bearer not-a-token")])
            .status,
        401
    );
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(site.addr, "/", &[("Authorization", &wrong)]).status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let limited = api.get(&site, "/repos", &[("Authorization", &good)]);
    assert_eq!(limited.status, 429, "even right credentials wait");
    assert_eq!(limited.header("retry-after"), Some("60"));
    // A rotated tokens file applies at once.
    std::fs::write(&tokens, "rotated-token-987654321\n").unwrap();
    let other = request_from(
        site.addr,
        "/api/v1/models?limit=1",
        "Bearer rotated-token-987654321",
    );
    assert_eq!(other.status, 200, "{}", other.text());
    // Counted in the metrics; the passwords never logged.
    let metrics = get(
        format!("127.0.0.1:{metrics_port}").parse().unwrap(),
        "/metrics",
        &[],
    )
    .text();
    let wrong_count: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("modelmirror_web_auth_failures_total{reason=\"wrong\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(wrong_count >= 10.0, "{metrics}");
    assert!(metrics.contains("modelmirror_web_auth_failures_total{reason=\"rate_limited\"}"));
    let log = std::fs::read_to_string(&site.log).unwrap();
    for secret in [
        "wrong-password-31337",
        "correct horse",
        "report-bot-0123456789",
        "rotated-token",
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// A GET from another loopback address (the failure limit is per address).
fn request_from(addr: SocketAddr, path: &str, authorization: &str) -> Response {
    get_from(
        [127, 0, 0, 2].into(),
        addr,
        path,
        &[("Authorization", authorization)],
    )
}

impl Api {
    /// The document read with credentials (a guarded site).
    fn new_authorized(site: &Site, authorization: &str) -> Api {
        let r = get(
            site.addr,
            "/api/v1/openapi.json",
            &[("Authorization", authorization)],
        );
        assert_eq!(r.status, 200);
        Api {
            doc: r.json(),
            checked: RefCell::new(BTreeSet::new()),
        }
    }
}

/// Whether the server closes a connection from `from` without answering a request on it.
fn refused_from(from: std::net::IpAddr, addr: SocketAddr, authorization: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = connect_from(from, addr) else {
        return true;
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "GET /api/v1/repos HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
    );
    let _ = s.write_all(head.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    raw.is_empty()
}

#[test]
fn one_client_cannot_take_every_connection_and_a_proxy_speaks_for_its_clients() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, htpasswd("ann", "correct horse")).unwrap();
    let site = Site::start(
        "serve",
        &format!(
            "users_file = {:?}\ntrusted_proxies = [\"127.0.0.3\"]\n",
            users.to_string_lossy()
        ),
        "",
    );
    let good = basic("ann", "correct horse");
    let wrong = basic("ann", "wrong-password-31337");
    let ip = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);

    // 127.0.0.1 opens its 64 connections and holds them idle; its next one is closed unanswered.
    let held: Vec<_> = (0..64)
        .map(|_| connect_from(ip(1), site.addr).unwrap())
        .collect();
    wait_for("the held connections to be accepted", 10, || {
        refused_from(ip(1), site.addr, &good)
    });
    // Another client is served all the while.
    let other = get_from(
        ip(2),
        site.addr,
        "/api/v1/repos",
        &[("Authorization", &good)],
    );
    assert_eq!(other.status, 200, "{}", other.text());
    drop(held);
    wait_for("127.0.0.1 to be served again", 10, || {
        !refused_from(ip(1), site.addr, &good)
    });

    // The proxy 127.0.0.3 may hold more than 64.
    let proxied: Vec<_> = (0..80)
        .map(|_| connect_from(ip(3), site.addr).unwrap())
        .collect();
    let through = get_from(
        ip(3),
        site.addr,
        "/api/v1/repos",
        &[("Authorization", &good)],
    );
    assert_eq!(through.status, 200, "{}", through.text());
    drop(proxied);

    // Wrong passwords through the proxy count against the client it names, not against the proxy.
    let via = |client: &str, authorization: &str| {
        get_from(
            ip(3),
            site.addr,
            "/api/v1/repos",
            &[
                ("Authorization", authorization),
                ("X-Forwarded-For", &format!("203.0.113.9, {client}")),
            ],
        )
        .status
    };
    let statuses: Vec<u16> = (0..12).map(|_| via("10.1.1.1", &wrong)).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(via("10.1.1.1", &good), 429, "that client waits");
    assert_eq!(
        via("10.2.2.2", &good),
        200,
        "the proxy's other clients do not"
    );
    // A client that is not a trusted proxy cannot choose whom it is counted as.
    let spoofed = get_from(
        ip(4),
        site.addr,
        "/api/v1/repos",
        &[("Authorization", &good), ("X-Forwarded-For", "10.1.1.1")],
    );
    assert_eq!(spoofed.status, 200, "{}", spoofed.text());
}

#[test]
fn unsafe_web_settings_are_refused_at_start() {
    let env = Env::new(Auth::None);
    let port = free_port();
    let cases = [
        (
            format!("[web]\nlisten = \"0.0.0.0:{port}\"\n"),
            "reachable from other hosts",
        ),
        (
            format!(
                "[web]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://u:p@models.example.com\"\n"
            ),
            "holds credentials",
        ),
    ];
    for (text, needle) in cases {
        env.write_config(&text);
        let out = env.run(&["serve"]);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains(needle), "{out:?}");
        assert!(!out.stderr.contains("u:p@"), "{out:?}");
    }
    // Anyone may read when the configuration says so.
    env.write_config(&format!(
        "[web]\nlisten = \"0.0.0.0:{port}\"\nallow_anonymous = true\n"
    ));
    let check = env.run(&["check"]);
    assert!(check.stdout.contains("open to anyone"), "{check:?}");
    // A users file with other hash kinds is refused, saying which and what to do.
    let users = env.path().join("users");
    std::fs::write(&users, "ann:$apr1$Qq1e3.Nz$0.VKpfLZ4gJhQ1XjzV6mB/\n").unwrap();
    env.write_config(&format!(
        "[web]\nlisten = \"127.0.0.1:{port}\"\nusers_file = {:?}\n",
        users.to_string_lossy()
    ));
    let out = env.run(&["serve"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("MD5") && out.stderr.contains("htpasswd -B"),
        "{out:?}"
    );
    let check = env.run(&["check"]);
    assert!(
        check.stdout.contains("error   web") && check.stdout.contains("MD5"),
        "{check:?}"
    );
    // Without [web], serve says what is missing.
    env.write_config("");
    let out = env.run(&["serve"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("[web] listen is not set"), "{out:?}");
}
