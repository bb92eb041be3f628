//! Catalog benchmarks: full-text search over a catalog of 100,000+ attributes, the history of a model with
//! 1,000 versions, `changes` between two versions of a 3 MB model, and every property changed between the
//! last two versions of the largest fixture model. Run with `cargo bench --bench catalog`;
//! prints one table. Data is built from the real fixture models (`../shared/fixtures/models`).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use modelmirror::git::CommitInfo;
use modelmirror::model::{self, Model, Parsed};
use modelmirror::store::{Content, Database, StepMeta, StepWriter, Store, StoreError};

fn commit(i: usize) -> CommitInfo {
    CommitInfo {
        id: format!("{i:040x}"),
        author_name: "Bench".into(),
        author_email: "bench@example.com".into(),
        authored_at: "2024-01-01T00:00:00Z".into(),
        committed_at: "2024-01-01T00:00:00Z".into(),
        message: format!("commit {i}"),
    }
}

fn fixture_models() -> Vec<(String, Model)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/models/books");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("fixture models") {
        let p = e.expect("entry").path();
        if let Parsed::Model(m) = model::parse_hackolade(&std::fs::read(&p).expect("read")) {
            out.push((
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                m,
            ));
        }
    }
    out
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&Database::Sqlite(dir.path().join("bench.db"))).expect("store");
    store
        .ensure_repo("b/r", "b", "r", "file:///r")
        .expect("repo");
    let models = fixture_models();
    let per_copy: usize = models.iter().map(|(_, m)| m.attribute_count()).sum();
    let copies = 100_000usize.div_ceil(per_copy.max(1));
    let mut rows = Vec::new();

    // 1. Build a catalog of 100,000+ attributes, one commit per copy of the fixture set.
    let started = Instant::now();
    let mut pointer: Option<String> = None;
    for c in 0..copies {
        let info = commit(c);
        let meta = StepMeta {
            repo_id: "b/r",
            branch: "main",
            commit: &info,
            note: None,
            settings: "bench",
            expect_commit: pointer.as_deref(),
        };
        store
            .apply_step(
                &meta,
                |w: &mut StepWriter<'_, '_>| -> Result<(), StoreError> {
                    for (i, (name, m)) in models.iter().enumerate() {
                        let path = format!("copy{c}/{name}");
                        w.put(
                            &path,
                            None,
                            &format!("{c:020x}{i:020x}"),
                            1000,
                            &Content::Model(m),
                        )?;
                    }
                    Ok(())
                },
            )
            .expect("step");
        pointer = Some(info.id.clone());
    }
    let attributes = per_copy * copies;
    rows.push((
        "import (write + index)",
        format!(
            "{attributes} attributes in {} models",
            models.len() * copies
        ),
        ms(started.elapsed()),
    ));

    // 2. Search.
    let queries = support::QUERIES;
    let mut times = Vec::new();
    let mut hits = 0;
    for _ in 0..20 {
        for q in queries {
            let t = Instant::now();
            hits += store.search(q, None, None, 20).expect("search").len();
            times.push(t.elapsed());
        }
    }
    rows.push((
        "search, top 20 hits",
        format!(
            "{} queries over {attributes} attributes ({hits} hits)",
            times.len()
        ),
        format!(
            "median {}, p95 {}",
            ms(percentile(times.clone(), 0.5)),
            ms(percentile(times, 0.95))
        ),
    ));

    // 3. History of a model with 1,000 versions.
    let (_, m) = models
        .iter()
        .max_by_key(|(_, m)| m.attribute_count())
        .expect("a model");
    for v in 0..1000 {
        let info = commit(copies + v);
        let meta = StepMeta {
            repo_id: "b/r",
            branch: "main",
            commit: &info,
            note: None,
            settings: "bench",
            expect_commit: pointer.as_deref(),
        };
        store
            .apply_step(
                &meta,
                |w: &mut StepWriter<'_, '_>| -> Result<(), StoreError> {
                    w.put(
                        "history/model.hck.json",
                        None,
                        &format!("{v:040x}"),
                        1000,
                        &Content::Model(m),
                    )
                },
            )
            .expect("step");
        pointer = Some(info.id.clone());
    }
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..20 {
        let t = Instant::now();
        n = store
            .history("b/r", "history/model.hck.json")
            .expect("history")
            .len();
        times.push(t.elapsed());
    }
    rows.push((
        "history",
        format!("{n} versions"),
        format!("median {}", ms(percentile(times, 0.5))),
    ));

    // 4. `changes` between two versions of a ~3 MB model: parse both, compare.
    let big = synthetic_model(3 * 1024 * 1024, 0);
    let big2 = synthetic_model(3 * 1024 * 1024, 7);
    let mut parse_times = Vec::new();
    let mut diff_times = Vec::new();
    let mut property_times = Vec::new();
    let (mut changed, mut properties) = (0, 0);
    for _ in 0..5 {
        let t = Instant::now();
        let (Parsed::Model(a), Parsed::Model(b)) =
            (model::parse_hackolade(&big), model::parse_hackolade(&big2))
        else {
            panic!("the synthetic model does not parse");
        };
        parse_times.push(t.elapsed());
        let t = Instant::now();
        let d = model::diff::diff(&a, &b);
        diff_times.push(t.elapsed());
        let t = Instant::now();
        properties = model::properties::properties_changed(
            "hackolade",
            model::properties::Version {
                model: &a,
                bytes: &big,
            },
            model::properties::Version {
                model: &b,
                bytes: &big2,
            },
        )
        .expect("compare")
        .len();
        property_times.push(t.elapsed());
        changed =
            d.attributes_changed.len() + d.attributes_added.len() + d.attributes_removed.len();
    }
    rows.push((
        "changes, 3 MB model",
        format!(
            "{} + {} bytes, {changed} attribute changes, {properties} property changes",
            big.len(),
            big2.len()
        ),
        format!(
            "parse both {}, compare {}, every property {}",
            ms(percentile(parse_times, 0.5)),
            ms(percentile(diff_times, 0.5)),
            ms(percentile(property_times, 0.5))
        ),
    ));

    // 5. Every property changed between the last two versions of the largest fixture model (from the books
    //    history): parse both files, compare the models and the files.
    let (path, old, new) = largest_fixture_versions();
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let (Parsed::Model(a), Parsed::Model(b)) =
            (model::parse_hackolade(&old), model::parse_hackolade(&new))
        else {
            panic!("{path} does not parse");
        };
        let mut d = model::diff::diff(&a, &b);
        d.properties_changed = model::properties::properties_changed(
            "hackolade",
            model::properties::Version {
                model: &a,
                bytes: &old,
            },
            model::properties::Version {
                model: &b,
                bytes: &new,
            },
        )
        .expect("compare");
        found = d.properties_changed.len();
        times.push(t.elapsed());
    }
    rows.push((
        "changes with every property, largest fixture model",
        format!(
            "{path}: {} + {} bytes, {found} property changes",
            old.len(),
            new.len()
        ),
        format!("median {} (target < 100 ms)", ms(percentile(times, 0.5))),
    ));

    println!("| benchmark | size | time |\n|---|---|---|");
    for (name, size, time) in rows {
        println!("| {name} | {size} | {time} |");
    }
}

/// The largest model of the books history that has two versions, at its last two versions (read with git
/// from the fixture bundle).
fn largest_fixture_versions() -> (String, Vec<u8>, Vec<u8>) {
    let bundle =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/repos/books.bundle");
    let dir = tempfile::tempdir().expect("tempdir");
    let git = |args: &[&str]| -> Vec<u8> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}");
        out.stdout
    };
    git(&["clone", "-q", "--bare", &bundle.to_string_lossy(), "r.git"]);
    let r = dir.path().join("r.git");
    let r = r.to_string_lossy();
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    let mut best: Option<(u64, String, Vec<String>)> = None;
    for path in text(git(&[
        "--git-dir",
        &r,
        "ls-tree",
        "-r",
        "--name-only",
        "HEAD",
    ]))
    .lines()
    {
        if !path.ends_with(".json") {
            continue;
        }
        let size: u64 = text(git(&[
            "--git-dir",
            &r,
            "cat-file",
            "-s",
            &format!("HEAD:{path}"),
        ]))
        .trim()
        .parse()
        .expect("size");
        let commits: Vec<String> = text(git(&["--git-dir", &r, "log", "--format=%H", "--", path]))
            .lines()
            .map(str::to_string)
            .collect();
        if commits.len() >= 2 && best.as_ref().is_none_or(|b| size > b.0) {
            best = Some((size, path.to_string(), commits));
        }
    }
    let (_, path, commits) = best.expect("a model with two versions");
    let at = |c: &str| git(&["--git-dir", &r, "show", &format!("{c}:{path}")]);
    (path.clone(), at(&commits[1]), at(&commits[0]))
}

/// A Hackolade model of about `bytes` bytes; `variant` changes every 10th attribute's type and description.
fn synthetic_model(bytes: usize, variant: usize) -> Vec<u8> {
    let mut entities = Vec::new();
    let mut size = 0;
    let mut e = 0;
    while size < bytes {
        let mut attrs = Vec::new();
        for a in 0..40 {
            let changed = variant > 0 && (e * 40 + a) % 10 == 0;
            let ty = if changed { "numeric" } else { "string" };
            let desc = if changed {
                "changed"
            } else {
                "the attribute's description, as modelers write them"
            };
            attrs.push(format!(
                r#"{{"GUID":"a-{e}-{a}","name":"attribute_{a}","code":"attr_{a}","type":"{ty}","required":{},"description":"{desc}","properties":[]}}"#,
                a % 3 == 0
            ));
        }
        let ent = format!(
            r#"{{"GUID":"e-{e}","collectionName":"Entity {e}","code":"entity_{e}","description":"entity {e}","properties":[{}]}}"#,
            attrs.join(",")
        );
        size += ent.len();
        entities.push(ent);
        e += 1;
    }
    format!(
        r#"{{"modelName":"big","GUID":"m","dbVendor":"PostgreSQL","collections":[{}]}}"#,
        entities.join(",")
    )
    .into_bytes()
}
