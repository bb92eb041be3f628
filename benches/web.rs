//! Web catalog benchmark: `modelmirror serve` over a catalog of 100,000+ attributes (copies of the real
//! fixture models), a generated model of 5,000 attributes (100 entities in 5 containers, nested attributes,
//! 99 relationships) and the largest fixture model. For each request: the server's time (its
//! `Server-Timing` header) and the client's (to the last byte, over loopback), p50 and p95, beside the
//! baseline of the same run: a static file through the same listener. Then 200 clients at once, spread over
//! 127.0.0.1–127.0.0.8, each sending 10 requests; then one greedy client beside a polite one. Run with
//! `cargo bench --bench web`; `REQUESTS=N` changes the number of requests per row (default 200).

#[path = "../tests/common/http_client.rs"]
mod http_client;
mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use http_client::{Response, get, try_get_from};
use modelmirror::model::{self, Parsed};
use support::{env_or, fast_import, fixtures, timed_modelmirror, verdict};

const CLIENTS: usize = 200;
const PER_CLIENT: usize = 10;
const BIG: &str = "generated/five thousand attributes.hck.json";

fn main() {
    let requests = env_or("REQUESTS", 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();

    // The fixture models, parsed once to count their attributes.
    let mut models = Vec::new();
    for e in std::fs::read_dir(fixtures().join("models/books")).expect("fixture models") {
        let p = e.expect("entry").path();
        let bytes = std::fs::read(&p).expect("read");
        if let Parsed::Model(m) = model::parse_hackolade(&bytes) {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .replace("__", "/");
            models.push((name, m.attribute_count(), bytes));
        }
    }
    let per_copy: usize = models.iter().map(|(_, n, _)| n).sum();
    let copies = 100_000usize.div_ceil(per_copy.max(1));
    let (largest, largest_attributes) = models
        .iter()
        .max_by_key(|(_, n, _)| *n)
        .map(|(name, n, _)| (format!("copy0/{name}"), *n))
        .expect("a fixture model");
    let big = generated_model();
    let Parsed::Model(parsed) = model::parse_hackolade(&big) else {
        panic!("the generated model does not parse");
    };
    assert_eq!(parsed.attribute_count(), 5_000);

    // One repository, one commit holding all of them; imported by `sync`.
    let bare = root.join("srv/catalog.git");
    fast_import(&bare, true, |w| {
        writeln!(w, "commit refs/heads/main").unwrap();
        writeln!(w, "committer Bench <bench@example.com> 1700000000 +0000").unwrap();
        writeln!(w, "data 7\ncatalog").unwrap();
        let mut file = |path: &str, bytes: &[u8]| {
            writeln!(w, "M 100644 inline {}", quoted(path)).unwrap();
            writeln!(w, "data {}", bytes.len()).unwrap();
            w.write_all(bytes).unwrap();
            writeln!(w).unwrap();
        };
        for c in 0..copies {
            for (name, _, bytes) in &models {
                file(&format!("copy{c}/{name}"), bytes);
            }
        }
        file(BIG, &big);
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nlog_level = \"warn\"\n[web]\nlisten = \"127.0.0.1:{port}\"\n\
             [providers.b]\nkind = \"git\"\nurl = {:?}\nrepos = [\"catalog.git\"]\n",
            root.join("state"),
            root.join("srv")
        ),
    )
    .expect("config");
    let import = timed_modelmirror(&config, &["sync"]);
    let mut server = Command::new(env!("CARGO_BIN_EXE_modelmirror"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("modelmirror serve");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "modelmirror serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let repos = get(addr, "/api/v1/repos", &[]).json();
    let repo = repos[0]["repo"]
        .as_str()
        .unwrap_or_else(|| panic!("no repository in {repos}"))
        .to_string();
    let total: usize = per_copy * copies + 5_000;
    let q = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();

    let model_page = |path: &str| format!("/model?repo={}&path={}", q(&repo), q(path));
    let api_model = |path: &str| format!("/api/v1/model?repo={}&path={}", q(&repo), q(path));
    let queries = support::QUERIES;
    let search_pages: Vec<String> = queries
        .iter()
        .map(|s| format!("/search?q={}", q(s)))
        .collect();
    let search_api: Vec<String> = queries
        .iter()
        .map(|s| format!("/api/v1/search?q={}", q(s)))
        .collect();
    // (what, size, paths, target in ms of the server's p95)
    let rows: Vec<(&str, String, Vec<String>, Option<f64>)> = vec![
        (
            "baseline: /static/style.css",
            "4 KiB static file".into(),
            vec!["/static/style.css".into()],
            None,
        ),
        (
            "model page, generated model",
            "5,000 attributes, 100 entities".into(),
            vec![model_page(BIG)],
            Some(100.0),
        ),
        (
            "API model, generated model",
            "5,000 attributes, 100 entities".into(),
            vec![api_model(BIG)],
            None,
        ),
        (
            "model page, largest fixture model",
            format!("{largest_attributes} attributes"),
            vec![model_page(&largest)],
            Some(100.0),
        ),
        (
            "API model, largest fixture model",
            format!("{largest_attributes} attributes"),
            vec![api_model(&largest)],
            None,
        ),
        (
            "search page (8 queries in turn)",
            format!("{total} attributes"),
            search_pages.clone(),
            Some(50.0),
        ),
        (
            "API search (8 queries in turn)",
            format!("{total} attributes"),
            search_api,
            Some(50.0),
        ),
    ];

    println!(
        "Catalog: {total} attributes in {} models; `sync` imported it in {:.1} s.\n",
        models.len() * copies + 1,
        import.as_secs_f64()
    );
    println!(
        "| request | catalog | server p50 | server p95 | client p50 | client p95 | answer | target (server p95) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (what, size, paths, target) in &rows {
        let mut server_ms = Vec::new();
        let mut client_ms = Vec::new();
        let mut bytes = 0;
        for i in 0..requests {
            let path = &paths[i % paths.len()];
            let started = Instant::now();
            let r = get(addr, path, &[]);
            client_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            server_ms.push(server_time(&r));
            bytes = bytes.max(r.body.len());
        }
        let p95 = percentile(&server_ms, 0.95);
        println!(
            "| {what} | {size} | {:.1} ms | {p95:.1} ms | {:.1} ms | {:.1} ms | {} KiB | {} |",
            percentile(&server_ms, 0.5),
            percentile(&client_ms, 0.5),
            percentile(&client_ms, 0.95),
            bytes / 1024,
            match target {
                Some(t) => format!("< {t} ms: {}", verdict(p95 < *t)),
                None => String::new(),
            }
        );
    }

    // 200 clients at once over eight loopback addresses, each sending its requests one after another.
    let mix = Arc::new(vec![
        model_page(BIG),
        api_model(&largest),
        search_pages[0].clone(),
        format!("/models?repo={}", q(&repo)),
        "/".to_string(),
    ]);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mix = mix.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let from = IpAddr::from([127, 0, 0, 1 + (c % 8) as u8]);
                barrier.wait();
                let mut times = Vec::new();
                let mut errors = Vec::new();
                for i in 0..PER_CLIENT {
                    let path = &mix[(c + i) % mix.len()];
                    let t = Instant::now();
                    match try_get_from(from, addr, path, &[]) {
                        Ok(r) if r.status == 200 => times.push(t.elapsed().as_secs_f64() * 1000.0),
                        Ok(r) => errors.push(format!("{path}: {}", r.status)),
                        Err(e) => errors.push(format!("{path}: {e}")),
                    }
                }
                (times, errors)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut errors = Vec::new();
    for c in clients {
        let (t, e) = c.join().expect("a client thread");
        times.extend(t);
        errors.extend(e);
    }
    let wall = started.elapsed();
    println!(
        "\n| concurrency | answers | errors | client p50 | client p95 | wall time | target |\n|---|---|---|---|---|---|---|"
    );
    println!(
        "| {CLIENTS} clients over 127.0.0.1–127.0.0.8, {PER_CLIENT} requests each (model page, API model, search, models, repositories) | {} | {} | {:.1} ms | {:.1} ms | {:.1} s | no error: {} |",
        times.len(),
        errors.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        wall.as_secs_f64(),
        verdict(errors.is_empty())
    );
    for e in errors.iter().take(5) {
        eprintln!("error: {e}");
    }

    // One greedy client: 32 requests for the 5,000-attribute page at once, again and again, from 127.0.0.1;
    // meanwhile another client (127.0.0.2) asks for the repositories, one request after another.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let greedy_page = Arc::new(model_page(BIG));
    let greedy: Vec<_> = (0..32)
        .map(|_| {
            let stop = stop.clone();
            let page = greedy_page.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = try_get_from(IpAddr::from([127, 0, 0, 1]), addr, &page, &[]);
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut polite = Vec::new();
    let mut polite_errors = 0;
    for _ in 0..50 {
        let t = Instant::now();
        match try_get_from(IpAddr::from([127, 0, 0, 2]), addr, "/api/v1/repos", &[]) {
            Ok(r) if r.status == 200 => polite.push(t.elapsed().as_secs_f64() * 1000.0),
            _ => polite_errors += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let greedy_answers: usize = greedy.into_iter().map(|g| g.join().unwrap_or(0)).sum();
    println!(
        "\n| fairness | greedy client's answers | other client: answers, errors | p50 | p95 | target |\n|---|---|---|---|---|---|"
    );
    let p95 = percentile(&polite, 0.95);
    println!(
        "| 127.0.0.1 sends 32 requests for the 5,000-attribute page at once, over and over; 127.0.0.2 asks for /api/v1/repos 50 times | {greedy_answers} | {}, {polite_errors} | {:.1} ms | {p95:.1} ms | p95 < 250 ms, no error: {} |",
        polite.len(),
        percentile(&polite, 0.5),
        verdict(p95 < 250.0 && polite_errors == 0)
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
    let _ = server.wait();
}

/// The server's time from its `Server-Timing: app;dur=N` header, in milliseconds.
fn server_time(r: &Response) -> f64 {
    r.header("server-timing")
        .and_then(|v| v.split("dur=").nth(1))
        .and_then(|d| d.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Server-Timing header: {:?}", r.headers))
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A path in `git fast-import`'s C-style quotes.
fn quoted(path: &str) -> String {
    format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A Hackolade model of 5,000 attributes: 100 entities in 5 containers, each with 40 plain attributes and 2
/// documents of 4 nested attributes (the first plain one a required primary key), and a relationship from
/// each entity to the next.
fn generated_model() -> Vec<u8> {
    let mut entities = Vec::new();
    let mut relationships = Vec::new();
    for e in 0..100 {
        let mut attrs = Vec::new();
        for a in 0..40 {
            attrs.push(format!(
                r#"{{"GUID":"a-{e}-{a}","name":"attribute_{a}","type":"string","required":{},"primaryKey":{},"description":"Attribute {a} of entity {e}, as modelers describe them: what it holds and where it comes from."}}"#,
                a == 0,
                a == 0
            ));
        }
        for d in 0..2 {
            let children: Vec<String> = (0..4)
                .map(|c| {
                    format!(
                        r#"{{"GUID":"n-{e}-{d}-{c}","name":"part_{c}","type":"string","description":"nested"}}"#
                    )
                })
                .collect();
            attrs.push(format!(
                r#"{{"GUID":"d-{e}-{d}","name":"document_{d}","type":"document","properties":[{}]}}"#,
                children.join(",")
            ));
        }
        entities.push(format!(
            r#"{{"GUID":"e-{e}","collectionName":"Entity {e}","description":"entity {e}","properties":[{}]}}"#,
            attrs.join(",")
        ));
        if e > 0 {
            relationships.push(format!(
                r#"{{"GUID":"r-{e}","name":"next {e}","parentCollection":"e-{}","childCollection":"e-{e}","parentCardinality":"1","childCardinality":"0..n"}}"#,
                e - 1
            ));
        }
    }
    let buckets: Vec<String> = (0..5)
        .map(|b| {
            let ids: Vec<String> = (b * 20..b * 20 + 20)
                .map(|e| format!("\"e-{e}\""))
                .collect();
            format!(
                r#"{{"GUID":"b-{b}","name":"container {b}","collectionIds":[{}]}}"#,
                ids.join(",")
            )
        })
        .collect();
    format!(
        r#"{{"modelName":"Five thousand attributes","GUID":"m","dbVendor":"MongoDB","buckets":[{}],"collections":[{}],"relationships":[{}]}}"#,
        buckets.join(","),
        entities.join(","),
        relationships.join(",")
    )
    .into_bytes()
}
