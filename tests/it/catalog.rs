//! The catalog: search, history, changes, show and rebuild, on the real books history (and the playground
//! history for the property comparison).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::git_http::Auth;
use crate::support::*;

const ID: &str = "g/team/books";

on_both_engines!(
    search_finds_entities_and_attributes_as_people_type_them,
    the_search_index_is_kept_in_step_with_the_catalog,
    history_follows_renames,
    changes_between_two_real_versions_match_an_independent_comparison,
    show_prints_one_model_in_full_at_any_version,
    json_schema_and_avro_models,
    rebuild_restores_the_same_catalog,
    hubignore_added_changed_and_removed_mid_history,
    views_for_users_own_sql,
    catalog_edge_cases,
    properties_changed_agree_with_a_plain_json_diff_on_real_histories,
);

pub(crate) fn books_on(engine: Engine) -> (Env, std::path::PathBuf) {
    let env = Env::on(engine, Auth::None);
    let srv = env.repo_from_bundle("team/books.git", "books");
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"team/books.git\"]\n",
        env.server.url()
    ));
    env.run(&["sync"]).ok();
    (env, srv)
}

fn search_finds_entities_and_attributes_as_people_type_them(engine: Engine) {
    let (env, _) = books_on(engine);
    let hits = env
        .run(&["search", "pet name", "--json", "--limit", "200"])
        .ok()
        .json();
    let hits = hits.as_array().unwrap();
    assert!(!hits.is_empty());
    for key in [
        "repo",
        "path",
        "model",
        "entity",
        "attribute",
        "kind",
        "snippet",
    ] {
        assert!(hits[0].get(key).is_some(), "{key} missing: {}", hits[0]);
    }
    assert!(
        hits.iter().any(|h| h["kind"] == "attribute"
            && h["attribute"] == "Pet Name"
            && h["entity"] == "Pet")
    );
    // Prefixes, case and accents.
    let count = |q: &str, extra: &[&str]| {
        let mut args = vec!["search", q, "--json", "--limit", "1000"];
        args.extend_from_slice(extra);
        env.run(&args).ok().json().as_array().unwrap().len()
    };
    let vacc = count("vaccin", &["--kind", "attribute"]);
    assert!(vacc > 0);
    assert_eq!(
        count("VACCÎN", &["--kind", "attribute"]),
        vacc,
        "case and accents are ignored"
    );
    // Kinds.
    let entities = env
        .run(&["search", "vaccination", "--kind", "entity", "--json"])
        .ok()
        .json();
    assert!(
        entities
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["kind"] == "entity" && h["attribute"].is_null())
    );
    assert!(!entities.as_array().unwrap().is_empty());
    let models = env
        .run(&["search", "dimensional", "--kind", "model", "--json"])
        .ok()
        .json();
    assert!(
        models
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["path"].as_str().unwrap().contains("Dimensional"))
    );
    // Several words must all match; FTS syntax passes through; syntax errors are clear.
    assert!(count("pet zzzznotaword", &[]) == 0);
    assert!(count("\"Pet Name\" OR Vaccination", &[]) > 0);
    let bad = env.run(&["search", "unbalanced \"quote"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("cannot understand the search") && bad.stderr.contains("plain words"),
        "{}",
        bad.stderr
    );
    let human = env
        .run(&["search", "pet name", "--repo", ID, "--limit", "3"])
        .ok()
        .stdout;
    assert!(
        human.starts_with("KIND") && human.contains("[Pet] [Name]"),
        "{human}"
    );
    let unknown = env.run(&["search", "pet", "--repo", "g/other"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("unknown repository `g/other`"));
}

/// The index follows every transaction: at the end of a replayed history it holds exactly the catalog.
fn the_search_index_is_kept_in_step_with_the_catalog(engine: Engine) {
    let env = Env::on(engine, Auth::None);
    let srv = env.repo_from_bundle("team/books.git", "books");
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"team/books.git\"]\n",
        env.server.url()
    ));
    let history = first_parent_history(&srv, "main");
    for c in history
        .iter()
        .step_by(5)
        .chain(std::iter::once(history.last().unwrap()))
    {
        git(&srv, &["update-ref", "refs/heads/main", c]);
        env.run(&["sync"]).ok();
        let q = |sql: &str| env.count(sql);
        let indexed = q("SELECT COUNT(*) FROM search");
        let catalog = q(
            "SELECT (SELECT COUNT(*) FROM models WHERE status = 'ok') + (SELECT COUNT(*) FROM entities) + (SELECT COUNT(*) FROM attributes)",
        );
        assert_eq!(indexed, catalog, "at {c}");
        assert_eq!(
            q(
                "SELECT COUNT(*) FROM search s LEFT JOIN models m ON m.id = s.model_id WHERE m.id IS NULL"
            ),
            0
        );
    }
    // Force-push back: deleted models leave the index too.
    git(&srv, &["update-ref", "refs/heads/main", &history[3]]);
    env.run(&["sync"]).ok();
    let n = env.count(
        "SELECT COUNT(*) FROM search s LEFT JOIN models m ON m.id = s.model_id WHERE m.id IS NULL",
    );
    assert_eq!(n, 0);
}

/// The history of a renamed model is continuous across the rename, and matches `git log --follow`.
fn history_follows_renames(engine: Engine) {
    let (env, srv) = books_on(engine);
    // Added, renamed twice, modified twice.
    let path = "MongoDB/Figures 060-106 - Schema Design Patterns section.hck.json";
    let h = env.run(&["history", ID, path, "--json"]).ok().json();
    let h = h.as_array().unwrap();
    for key in ["commit", "author", "time", "message", "blob", "change"] {
        assert!(h[0].get(key).is_some(), "{key}: {}", h[0]);
    }
    let changes: Vec<&str> = h.iter().map(|v| v["change"].as_str().unwrap()).collect();
    assert_eq!(changes.last(), Some(&"added"), "{changes:?}");
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("renamed from MongoDB/Schema Design Patterns.hck.json")),
        "{changes:?}"
    );
    let ours: Vec<&str> = h.iter().map(|v| v["commit"].as_str().unwrap()).collect();
    let git_log = git(
        &srv,
        &[
            "log",
            "--first-parent",
            "--follow",
            "--format=%H",
            "main",
            "--",
            path,
        ],
    );
    let theirs: Vec<&str> = git_log.lines().collect();
    assert_eq!(
        ours, theirs,
        "versions are the commits git log --follow names"
    );
    for v in h {
        let blob = v["blob"].as_str().unwrap();
        let want = git(
            &srv,
            &[
                "rev-parse",
                &format!("{}:{}", v["commit"].as_str().unwrap(), v_path(v, path)),
            ],
        );
        assert_eq!(blob, want.trim());
    }
    // The history of an old name says where the model went.
    let old = env
        .run(&[
            "history",
            ID,
            "MongoDB/Schema Design Patterns.hck.json",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(
        old[0]["change"], "renamed to MongoDB/Figures - Schema Design Patterns section.hck.json",
        "{old}"
    );
    let missing = env.run(&["history", ID, "no/such.json"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("no history for no/such.json"),
        "{}",
        missing.stderr
    );
}

fn v_path<'a>(v: &'a Value, _current: &'a str) -> &'a str {
    v["path"].as_str().unwrap()
}

/// An independent comparison of two real versions: entity GUIDs, and per entity its attribute GUIDs.
/// `None` when some entity or attribute has no GUID (then names decide, which this comparison does not
/// model) or an entity is derived (its attributes live elsewhere in the file).
type Guids = std::collections::BTreeMap<String, BTreeSet<String>>;

fn guid_sets(json: &Value) -> Option<Guids> {
    fn walk(props: &Value, out: &mut BTreeSet<String>) -> Option<()> {
        for p in props.as_array().into_iter().flatten() {
            let structural = matches!(
                p["type"].as_str(),
                Some("choice" | "conditional" | "conditionalItem")
            ) || p["subschema"] == Value::Bool(true);
            if !structural {
                out.insert(p["GUID"].as_str()?.to_string());
            }
            walk(&p["properties"], out)?;
        }
        Some(())
    }
    let mut entities = Guids::new();
    for c in json["collections"].as_array().into_iter().flatten() {
        if c["type"] == "reference" {
            return None;
        }
        let mut attrs = BTreeSet::new();
        walk(&c["properties"], &mut attrs)?;
        entities.insert(c["GUID"].as_str()?.to_string(), attrs);
    }
    Some(entities)
}

fn changes_between_two_real_versions_match_an_independent_comparison(engine: Engine) {
    let (env, srv) = books_on(engine);
    // Find a model whose last two versions differ in attributes.
    let models = env.run(&["models", "--json"]).ok().json();
    let mut checked = 0;
    for m in models.as_array().unwrap() {
        let path = m["path"].as_str().unwrap();
        let h = env.run(&["history", ID, path, "--json"]).ok().json();
        let h: Vec<&Value> = h
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| !v["blob"].is_null())
            .collect();
        if h.len() < 2 {
            continue;
        }
        let blob_json = |v: &Value| -> Value {
            let text = git(&srv, &["cat-file", "blob", v["blob"].as_str().unwrap()]);
            serde_json::from_str(&text).unwrap()
        };
        let (Some(old), Some(new)) = (guid_sets(&blob_json(h[1])), guid_sets(&blob_json(h[0])))
        else {
            continue;
        };
        if old == new {
            continue;
        }
        // Attributes are compared within the entities both versions have (a removed entity takes its
        // attributes with it).
        let (mut added, mut removed) = (0, 0);
        for (e, new_attrs) in &new {
            if let Some(old_attrs) = old.get(e) {
                added += new_attrs.difference(old_attrs).count();
                removed += old_attrs.difference(new_attrs).count();
            }
        }
        let d = env.run(&["changes", ID, path, "--json"]).ok().json();
        assert_eq!(d["to"]["commit"], h[0]["commit"]);
        assert_eq!(d["from"]["commit"], h[1]["commit"]);
        let n = |k: &str| d[k].as_array().unwrap().len();
        let keys = |m: &Guids| m.keys().cloned().collect::<BTreeSet<_>>();
        assert_eq!(
            n("entities_added"),
            keys(&new).difference(&keys(&old)).count(),
            "{path}: {d}"
        );
        assert_eq!(
            n("entities_removed"),
            keys(&old).difference(&keys(&new)).count(),
            "{path}: {d}"
        );
        assert_eq!(n("attributes_added"), added, "{path}: {d}");
        assert_eq!(n("attributes_removed"), removed, "{path}: {d}");
        // The human form says the same.
        let human = env.run(&["changes", ID, path]).ok().stdout;
        assert_eq!(
            human
                .lines()
                .filter(|l| l.starts_with("+ attribute"))
                .count(),
            n("attributes_added")
        );
        checked += 1;
        if checked == 5 {
            break;
        }
    }
    assert!(checked >= 1, "no model with two differing versions found");
}

fn show_prints_one_model_in_full_at_any_version(engine: Engine) {
    let (env, srv) = books_on(engine);
    let path = "MongoDB/Figure 006 - Subtyping.hck.json";
    let s = env.run(&["show", ID, path, "--json"]).ok().json();
    assert_eq!(s["path"], path);
    let model = &s["model"];
    assert_eq!(model["entities"].as_array().unwrap().len(), 4);
    let account = &model["entities"][0];
    assert_eq!(account["name"], "Account");
    assert!(
        account["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "accountNumber" && a["primary_key"] == true)
    );
    let human = env.run(&["show", ID, path]).ok().stdout;
    assert!(
        human.contains("entity Account (4 attributes)")
            && human.contains("accountNumber: string (pk)"),
        "{human}"
    );
    // An older version, by commit prefix.
    let first = first_parent_history(&srv, "main");
    let first_with_it = first
        .iter()
        .find(|c| git(&srv, &["ls-tree", "--name-only", c, "MongoDB/"]).contains("Subtyping"))
        .unwrap();
    let old = env
        .run(&["show", ID, path, "--commit", &first_with_it[..10], "--json"])
        .ok()
        .json();
    assert_eq!(old["commit"].as_str().unwrap(), first_with_it.as_str());
    let bad = env.run(&["show", ID, "no/such.json"]);
    assert_eq!(bad.code, 2);
}

/// The database is a derived replica: deleted, it is rebuilt from the mirrors with no network, identical.
fn rebuild_restores_the_same_catalog(engine: Engine) {
    let (env, _) = books_on(engine);
    let dump = || {
        let mut out = Vec::new();
        for sql in [
            "SELECT repo_id, path, blob, commit_id, status, name, guid, db_vendor, entity_count, attribute_count, relationship_count FROM models ORDER BY path",
            "SELECT m.path, e.ordinal, e.name, e.code, e.container, e.attribute_count FROM entities e JOIN models m ON m.id = e.model_id ORDER BY 1, 2",
            "SELECT m.path, a.entity_id IS NOT NULL, a.ordinal, a.path, a.type, a.required, a.primary_key FROM attributes a JOIN models m ON m.id = a.model_id ORDER BY 1, 3, 4",
            "SELECT m.path, r.name, r.parent_entity, r.child_entity FROM relationships r JOIN models m ON m.id = r.model_id ORDER BY 1, 2, 3, 4",
            "SELECT repo_id, path, commit_id, change, old_path, blob FROM model_versions ORDER BY id",
            "SELECT repo_id, commit_id, author_name, message FROM commits ORDER BY 1, 2",
            "SELECT COUNT(*) FROM search",
        ] {
            out.push(env.rows(sql));
        }
        out
    };
    let before = dump();
    assert!(before.iter().all(|rows| !rows.is_empty()), "{before:?}");
    env.wipe_catalog();
    env.server.clear_log();
    let run = env.run(&["rebuild"]).ok();
    assert!(
        env.server.requests().is_empty(),
        "rebuild used the network: {:#?}",
        env.server.requests()
    );
    assert!(
        run.stdout
            .starts_with(&format!("{ID} rebuilt: 141 models from 42 commits")),
        "{}",
        run.stdout
    );
    assert_eq!(before, dump());
}

fn paths(env: &Env, repo: &str) -> Vec<String> {
    let models = env.run(&["models", "--repo", repo, "--json"]).ok().json();
    models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap().to_string())
        .collect()
}

/// `.hubignore` added, changed and removed mid-history: each processed commit applies the rules at its root.
fn hubignore_added_changed_and_removed_mid_history(engine: Engine) {
    let env = Env::on(engine, Auth::None);
    let (_, work) = env.new_repo("t/h.git");
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/h.git\"]\n",
        env.server.url()
    ));
    let model = fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json");
    for p in [
        "a/one.hck.json",
        "a/two.hck.json",
        "drafts/x.hck.json",
        "b/three.hck.json",
    ] {
        std::fs::create_dir_all(work.join(p).parent().unwrap()).unwrap();
        std::fs::copy(&model, work.join(p)).unwrap();
    }
    commit_all(&work, "four models");
    std::fs::write(
        work.join(".hubignore"),
        "# drafts are not published\ndrafts/\na/two.hck.json\n",
    )
    .unwrap();
    commit_all(&work, "add .hubignore");
    // A later commit that only touches an ignored file: still left out.
    std::fs::write(
        work.join("drafts/y.hck.json"),
        std::fs::read(&model).unwrap(),
    )
    .unwrap();
    commit_all(&work, "another draft");
    let run = env.run(&["sync"]).ok();
    assert!(run.stdout.contains("updated"), "{}", run.stdout);
    assert_eq!(paths(&env, "g/t/h"), ["a/one.hck.json", "b/three.hck.json"]);
    // The history says when they left.
    let h = env
        .run(&["history", "g/t/h", "a/two.hck.json", "--json"])
        .ok()
        .json();
    assert_eq!(h[0]["change"], "deleted", "{h}");
    let note =
        env.rows("SELECT note FROM sync_steps WHERE note IS NOT NULL ORDER BY id DESC LIMIT 1");
    assert_eq!(note, ["hubignore-changed"]);

    // Changed rules: a negation brings one back, a new rule sends another away.
    std::fs::write(
        work.join(".hubignore"),
        "drafts/*\n!drafts/y.hck.json\nb/\n",
    )
    .unwrap();
    commit_all(&work, "change .hubignore");
    env.run(&["sync"]).ok();
    assert_eq!(
        paths(&env, "g/t/h"),
        ["a/one.hck.json", "a/two.hck.json", "drafts/y.hck.json"]
    );

    // Removed: everything comes back.
    std::fs::remove_file(work.join(".hubignore")).unwrap();
    commit_all(&work, "remove .hubignore");
    env.run(&["sync"]).ok();
    assert_eq!(
        paths(&env, "g/t/h"),
        [
            "a/one.hck.json",
            "a/two.hck.json",
            "b/three.hck.json",
            "drafts/x.hck.json",
            "drafts/y.hck.json"
        ]
    );
    // A fresh import of the same history (backfill) ends the same way.
    let _ = std::fs::remove_dir_all(env.path().join("state"));
    env.wipe_catalog();
    env.run(&["sync"]).ok();
    assert_eq!(paths(&env, "g/t/h").len(), 5);
}

/// JSON Schema and Avro files, with `formats` enabling them: valid, invalid, and JSON that is not a schema.
fn json_schema_and_avro_models(engine: Engine) {
    let env = Env::on(engine, Auth::None);
    let (_, work) = env.new_repo("t/s.git");
    std::fs::create_dir_all(work.join("schemas")).unwrap();
    std::fs::write(
        work.join("schemas/customer.schema.json"),
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "Customer",
  "type": "object",
  "required": ["id"],
  "properties": {
    "id": {"type": "string", "description": "customer number"},
    "address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}}},
    "orders": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}}
  },
  "$defs": {"Money": {"type": "object", "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}}}}
}"#,
    )
    .unwrap();
    std::fs::write(
        work.join("schemas/payment.avsc"),
        r#"{"type": "record", "name": "Payment", "namespace": "com.acme", "doc": "a payment",
            "fields": [
              {"name": "id", "type": "string"},
              {"name": "note", "type": ["null", "string"], "default": null},
              {"name": "payer", "type": {"type": "record", "name": "Payer", "fields": [{"name": "iban", "type": "string"}]}}
            ]}"#,
    )
    .unwrap();
    std::fs::write(
        work.join("schemas/broken.avsc"),
        "{\"type\": \"record\", \"name\": \n",
    )
    .unwrap();
    std::fs::write(
        work.join("schemas/broken.schema.json"),
        "{\"$schema\": \"https://json-schema.org/draft/2020-12/schema\", ",
    )
    .unwrap();
    std::fs::write(work.join("package.json"), r#"{"name": "x", "$schema": "https://json.schemastore.org/package.json", "type": "module"}"#).unwrap();
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        work.join("m.hck.json"),
    )
    .unwrap();
    commit_all(&work, "schemas");
    let config = |formats: &str| {
        env.write_config(&format!(
            "{formats}\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/s.git\"]\n",
            env.server.url()
        ));
    };
    // By default only Hackolade.
    config("");
    env.run(&["sync"]).ok();
    assert_eq!(paths(&env, "g/t/s"), ["m.hck.json"]);
    // All three: a settings change, so everything is read again.
    config("formats = [\"hackolade\", \"jsonschema\", \"avro\"]");
    env.run(&["sync"]).ok();
    let models = env
        .run(&["models", "--repo", "g/t/s", "--json"])
        .ok()
        .json();
    let by = |p: &str| {
        models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["path"] == p)
            .cloned()
            .unwrap_or_else(|| panic!("{p}: {models}"))
    };
    let customer = by("schemas/customer.schema.json");
    assert_eq!(customer["name"], "Customer");
    assert_eq!(customer["target"], "JSON Schema");
    assert_eq!(customer["entities"], 2, "the root and $defs/Money");
    let payment = by("schemas/payment.avsc");
    assert_eq!(payment["target"], "Avro");
    assert_eq!(
        payment["entities"], 2,
        "the payment and the Payer record declared inside it"
    );
    assert_eq!(
        payment["attributes"], 5,
        "id, note, payer, payer.iban, and Payer's own iban"
    );
    assert!(
        by("schemas/broken.avsc")["error"]
            .as_str()
            .unwrap()
            .contains("line"),
        "{models}"
    );
    assert!(
        by("schemas/broken.schema.json")["error"]
            .as_str()
            .unwrap()
            .contains("line"),
        "{models}"
    );
    assert!(
        models
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["path"] != "package.json"),
        "package.json is not a schema"
    );
    // Searchable like any model.
    let hits = env.run(&["search", "iban", "--json"]).ok().json();
    let found: Vec<(&str, &str)> = hits
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| Some((h["entity"].as_str()?, h["attribute"].as_str()?)))
        .collect();
    assert!(found.contains(&("Payment", "payer.iban")), "{hits}");
    assert!(found.contains(&("Payer", "iban")), "{hits}");
    let hits = env.run(&["search", "currency", "--json"]).ok().json();
    assert_eq!(hits[0]["entity"], "Money", "{hits}");
    let bad = env.write_config("formats = [\"xml\"]\n");
    let _ = bad;
    let run = env.run(&["status"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unknown format `xml`"),
        "{}",
        run.stderr
    );
}

/// The read-only views are a documented interface: their columns and the example queries of docs/schema.md work.
fn views_for_users_own_sql(engine: Engine) {
    let (env, _) = books_on(engine);
    if engine == Engine::Sqlite {
        // The schema version the document gives is the database's.
        let version: i64 = env
            .db()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema.md"),
        )
        .unwrap();
        assert!(
            doc.contains(&format!("`PRAGMA user_version` (now {version})")),
            "docs/schema.md gives another schema version than {version}"
        );
    }
    for (view, columns) in [
        (
            "v_models",
            "repo, path, model, target, entities, attributes, \"commit\", blob, status, error",
        ),
        (
            "v_entities",
            "repo, path, model, entity, code, container, description, attributes",
        ),
        (
            "v_attributes",
            "repo, path, model, entity, attribute, name, type, required, primary_key, description",
        ),
        (
            "v_relationships",
            "repo, path, model, relationship, parent_entity, child_entity, parent_cardinality, child_cardinality",
        ),
        (
            "v_history",
            "repo, path, change, old_path, \"commit\", author, time, message, blob, model",
        ),
    ] {
        let n = env.count(&format!(
            "SELECT COUNT(*) FROM (SELECT {columns} FROM {view}) AS v"
        ));
        assert!(n > 0, "{view} is empty");
    }
    let attrs = env.count(&format!(
        "SELECT COUNT(*) FROM v_attributes WHERE repo = '{ID}'"
    ));
    let total = env.count(&format!(
        "SELECT CAST(SUM(attributes) AS BIGINT) FROM v_models WHERE repo = '{ID}'"
    ));
    assert_eq!(attrs, total);
    // docs/schema.md's example: where is a field called "Pet Name", and how is it typed?
    let n =
        env.count("SELECT COUNT(*) FROM v_attributes WHERE name = 'Pet Name' AND entity = 'Pet'");
    assert!(n > 0);
}

/// Review cases: a pruned repository leaves nothing in the index (and the next sync of another one works);
/// plain words with colons and operators are text; rebuild refuses an empty mirror; `changes --to` a commit
/// between versions compares with the version before; a rename in the commit that changes `.hubignore` stays
/// a rename.
fn catalog_edge_cases(engine: Engine) {
    let env = Env::on(engine, Auth::None);
    let (_, work) = env.new_repo("t/e.git");
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/e.git\"]\n",
        env.server.url()
    ));
    let model = |name: &str, attrs: &[&str]| {
        let props: Vec<String> = attrs
            .iter()
            .map(|a| format!("{{\"GUID\":\"g-{a}\",\"name\":\"{a}\",\"type\":\"string\"}}"))
            .collect();
        format!(
            "{{\n  \"modelName\": \"{name}\",\n  \"collections\": [{{\"GUID\":\"e1\",\"collectionName\":\"E\",\"properties\":[{}]}}]\n}}\n",
            props.join(",")
        )
    };
    std::fs::create_dir_all(work.join("m")).unwrap();
    std::fs::write(work.join("m/a.json"), model("ns:field AND more", &["x"])).unwrap();
    let c1 = commit_all(&work, "c1");
    std::fs::write(work.join("other.txt"), "x").unwrap();
    let c1b = commit_all(&work, "c1b: another file");
    std::fs::write(
        work.join("m/a.json"),
        model("ns:field AND more", &["x", "y"]),
    )
    .unwrap();
    let c2 = commit_all(&work, "c2");
    std::fs::write(
        work.join("m/a.json"),
        model("ns:field AND more", &["x", "y", "z"]),
    )
    .unwrap();
    commit_all(&work, "c3");
    env.run(&["sync"]).ok();

    // Plain words, colons and operators included.
    for q in ["ns:field", "AND", "field AND", "x^y"] {
        let run = env.run(&["search", q, "--json"]);
        assert_eq!(run.code, 0, "{q}: {}", run.stderr);
    }
    assert_eq!(
        env.run(&["search", "ns:field", "--json", "--kind", "model"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // --to a commit between two versions: compared with the version before it, in the right direction.
    let d = env.run(&["changes", "g/t/e", "m/a.json", "--to", &c1b[..10], "--json"]);
    assert_eq!(
        d.code, 2,
        "c1b has only the first version before it: {}",
        d.stdout
    );
    let d = env
        .run(&[
            "changes",
            "g/t/e",
            "m/a.json",
            "--from",
            &c1b[..10],
            "--to",
            &c2[..10],
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(d["from"]["commit"], c1.as_str());
    assert_eq!(d["attributes_added"][0]["attribute"], "y", "{d}");
    assert!(
        d["attributes_removed"].as_array().unwrap().is_empty(),
        "{d}"
    );
    assert_eq!(
        env.run(&["changes", "g/t/e", "m/a.json", "--from", ""])
            .code,
        2
    );

    // A rename (with an edit) in the same commit that adds a .hubignore stays a rename.
    git(&work, &["mv", "m/a.json", "m/b.json"]);
    std::fs::write(
        work.join("m/b.json"),
        model("ns:field AND more", &["x", "y", "z", "w"]),
    )
    .unwrap();
    std::fs::write(work.join(".hubignore"), "nothing-here/\n").unwrap();
    commit_all(&work, "rename and .hubignore");
    env.run(&["sync"]).ok();
    let h = env
        .run(&["history", "g/t/e", "m/b.json", "--json"])
        .ok()
        .json();
    assert_eq!(h[0]["change"], "renamed from m/a.json", "{h}");
    let h = env
        .run(&["history", "g/t/e", "m/a.json", "--json"])
        .ok()
        .json();
    assert_eq!(h[0]["change"], "renamed to m/b.json", "{h}");

    // Pruning leaves nothing in the index; the next stored model is indexed fine.
    env.execute("DELETE FROM repos WHERE id = 'g/t/e'");
    let left = env.count("SELECT COUNT(*) FROM search");
    assert_eq!(left, 0, "the triggers unindexed everything");
    env.run(&["sync"]).ok();
    assert_eq!(
        env.run(&["models", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // rebuild refuses an empty mirror and keeps the catalog.
    let mirror = env.path().join("state/mirrors/g/t/e.git");
    std::fs::remove_dir_all(&mirror).unwrap();
    git(
        env.path(),
        &["init", "-q", "--bare", &mirror.to_string_lossy()],
    );
    let run = env.run(&["rebuild"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("has no branch yet; nothing was changed"),
        "{}",
        run.stdout
    );
    assert_eq!(
        env.run(&["models", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// The keys `properties_changed` leaves out (README.md, docs/cli.md), copied here on purpose: a key added to
/// or dropped from the list without the docs and this test makes the comparison below fail.
const NOT_CONTENT: &[&str] = &[
    "settings",
    "diagramViews",
    "decorativeSymbols",
    "hackoladeStyles",
    "x",
    "y",
    "width",
    "height",
    "color",
    "backgroundColor",
    "fontStyle",
    "lineSize",
    "autoHeight",
    "autoWidth",
    "hasERDDivider",
    "hackoladeMeta",
    "error",
    "show",
    "collapsed",
    "expanded",
    "creationTS",
    "lastModifTS",
    "applicationInformation",
    "pluginInformation",
    "persistenceSchemaVersion",
    "idToNameHashTable",
    "idTonNmeHashTable",
];

/// A value without the keys that are not content.
fn content(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !NOT_CONTENT.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), content(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(content).collect()),
        other => other.clone(),
    }
}

/// The array's objects by GUID, when every element is an object with its own non-empty GUID.
fn by_guid(v: &Value) -> Option<Vec<(String, &Value)>> {
    let mut out: Vec<(String, &Value)> = Vec::new();
    for item in v.as_array()? {
        let g = item.get("GUID")?.as_str().filter(|g| !g.is_empty())?;
        if out.iter().any(|(k, _)| k == g) {
            return None;
        }
        out.push((g.to_string(), item));
    }
    Some(out)
}

fn is_structure(node: &Value) -> bool {
    matches!(
        node["type"].as_str(),
        Some("choice" | "conditional" | "conditionalItem")
    ) || node["subschema"] == Value::Bool(true)
}

/// A node's path segment, as the format doc defines attribute paths.
fn seg(node: &Value) -> String {
    let text = |k: &str| {
        node[k]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    text("name")
        .or_else(|| (node["arrayItem"] == Value::Bool(true)).then(|| "[]".to_string()))
        .or_else(|| text("code"))
        .or_else(|| text("GUID"))
        .unwrap_or_else(|| "?".into())
}

#[derive(Clone, Copy, PartialEq)]
enum Holds {
    /// `properties` is a plain value.
    Nothing,
    /// The model: its level lists and definition roots.
    Levels,
    /// `properties` lists attributes (or definitions) below `path`.
    Children,
}

/// Where a property sits: (level, entity, attribute, name) and the key path so far.
#[derive(Clone)]
struct Owner {
    level: &'static str,
    entity: Option<String>,
    attribute: Option<String>,
    name: Option<String>,
    /// The counted path children extend (an attribute's path, a definition's, "" at an entity's top).
    path: Option<String>,
    holds: Holds,
    property: String,
}

impl Owner {
    fn key(&self, k: &str) -> Owner {
        let mut o = self.clone();
        if !o.property.is_empty() {
            o.property.push('.');
        }
        o.property.push_str(k);
        o
    }
    fn id(&self, g: &str) -> Owner {
        let mut o = self.clone();
        o.property.push_str(&format!("[{g}]"));
        o
    }
    fn item(&self, level: &'static str, name: Option<String>, holds: Holds) -> Owner {
        Owner {
            level,
            entity: None,
            attribute: None,
            name,
            path: None,
            holds,
            property: String::new(),
        }
    }
}

/// What a test expects of one side: names by GUID, and which polyglot nodes belong to which entity.
struct Names {
    entities: std::collections::HashMap<String, String>,
    containers: std::collections::HashMap<String, String>,
    relationships: std::collections::HashMap<String, String>,
    views: std::collections::HashMap<String, String>,
    /// node GUID → (entity name, list kind)
    derived: std::collections::HashMap<String, (String, &'static str)>,
    derived_stubs: BTreeSet<String>,
    /// Every object of the old file in a `properties` list, by GUID: an attribute moved to another parent
    /// is still the same attribute.
    old_nodes: std::collections::HashMap<String, Value>,
}

fn index_nodes(v: &Value, out: &mut std::collections::HashMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "properties"
                    && let Value::Array(items) = x
                {
                    for i in items {
                        if let Some(g) = i["GUID"].as_str() {
                            out.entry(g.to_string()).or_insert_with(|| i.clone());
                        }
                    }
                }
                index_nodes(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| index_nodes(x, out)),
        _ => {}
    }
}

fn names(shown: &Value, file: &Value, old_file: &Value) -> Names {
    let map = |list: &Value, name: &dyn Fn(&Value) -> String| {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| Some((x["guid"].as_str()?.to_string(), name(x))))
            .collect()
    };
    let m = &shown["model"];
    let mut n = Names {
        entities: map(&m["entities"], &|e| e["name"].as_str().unwrap_or("").into()),
        containers: map(&m["containers"], &|e| {
            e["name"].as_str().unwrap_or("").into()
        }),
        relationships: map(&m["relationships"], &|r| match r["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!(
                "{} -> {}",
                r["parent_entity"].as_str().unwrap_or("?"),
                r["child_entity"].as_str().unwrap_or("?")
            ),
        }),
        views: map(&m["views"], &|v| v["name"].as_str().unwrap_or("").into()),
        derived: Default::default(),
        derived_stubs: BTreeSet::new(),
        old_nodes: Default::default(),
    };
    index_nodes(old_file, &mut n.old_nodes);
    for c in file["collections"].as_array().into_iter().flatten() {
        if c["type"] != "reference" {
            continue;
        }
        let (Some(g), Some(r)) = (c["GUID"].as_str(), c["ref"].as_str()) else {
            continue;
        };
        for (root, kind) in [
            ("polyglotDefinitions", "polyglot"),
            ("externalDefinitions", "external"),
        ] {
            let found = file[root]["properties"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["GUID"] == r);
            if found && (c["refType"] == kind || c["refType"].is_null()) {
                n.derived
                    .insert(r.to_string(), (n.entities[g].clone(), kind));
                n.derived_stubs.insert(g.to_string());
                break;
            }
        }
    }
    n
}

/// The path of a counted node below `at`.
fn child_path(at: &Owner, node: &Value) -> String {
    let parent = at.path.clone().unwrap_or_default();
    if parent.is_empty() || parent.ends_with('.') {
        format!("{parent}{}", seg(node))
    } else {
        format!("{parent}.{}", seg(node))
    }
}

type Row = (String, Value, Value, Value, String, Value, Value);

/// A plain recursive JSON diff of two whole files (keys skipped as documented, arrays of GUID objects as
/// sets), each difference put where it belongs by walking down the path: the independent version of
/// `properties_changed`.
fn plain_diff(a: Option<&Value>, b: Option<&Value>, at: &Owner, n: &Names, out: &mut Vec<Row>) {
    let emit = |out: &mut Vec<Row>, a: Option<&Value>, b: Option<&Value>| {
        let opt = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
        out.push((
            at.level.to_string(),
            opt(&at.entity),
            opt(&at.attribute),
            opt(&at.name),
            at.property.clone(),
            a.map_or(Value::Null, content),
            b.map_or(Value::Null, content),
        ));
    };
    let (Some(a), Some(b)) = (a, b) else {
        emit(out, a, b);
        return;
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if NOT_CONTENT.contains(&k.as_str()) {
                    continue;
                }
                let (va, vb) = (x.get(k), y.get(k));
                let both_arrays =
                    va.is_some_and(Value::is_array) && vb.is_some_and(Value::is_array);
                if at.holds == Holds::Levels
                    && both_arrays
                    && ["collections", "buckets", "relationships", "views"].contains(&k.as_str())
                {
                    let (Some(xs), Some(ys)) = (by_guid(va.unwrap()), by_guid(vb.unwrap())) else {
                        panic!("{k}: a level list without GUIDs");
                    };
                    for (g, xa) in &xs {
                        let Some((_, yb)) = ys.iter().find(|(h, _)| h == g) else {
                            continue;
                        };
                        let owner = match k.as_str() {
                            "collections" => {
                                let mut o = at.item(
                                    "entity",
                                    None,
                                    if n.derived_stubs.contains(g) {
                                        Holds::Nothing
                                    } else {
                                        Holds::Children
                                    },
                                );
                                o.entity = Some(n.entities[g].clone());
                                o.path = Some(String::new());
                                o
                            }
                            "buckets" => {
                                at.item("container", Some(n.containers[g].clone()), Holds::Nothing)
                            }
                            "relationships" => at.item(
                                "relationship",
                                Some(n.relationships[g].clone()),
                                Holds::Nothing,
                            ),
                            _ => at.item("view", Some(n.views[g].clone()), Holds::Nothing),
                        };
                        plain_diff(Some(xa), Some(yb), &owner, n, out);
                    }
                    continue;
                }
                let definition_root = at.holds == Holds::Levels
                    && ["definitions", "polyglotDefinitions", "externalDefinitions"]
                        .contains(&k.as_str())
                    && va.is_some_and(Value::is_object)
                    && vb.is_some_and(Value::is_object);
                let children = (at.holds == Holds::Children || definition_root)
                    && k == "properties"
                    && both_arrays;
                if definition_root {
                    // Its `properties` are definitions; its other keys the model's.
                    let mut o = at.key(k);
                    o.holds = Holds::Children;
                    o.path = Some(match k.as_str() {
                        "definitions" => String::new(),
                        other => format!("{other}."),
                    });
                    plain_diff(va, vb, &o, n, out);
                    continue;
                }
                if children {
                    let (Some(xs), Some(ys)) = (by_guid(va.unwrap()), by_guid(vb.unwrap())) else {
                        panic!("{}: a properties list without GUIDs", at.property);
                    };
                    let base = at.key(k);
                    for (g, yb) in &ys {
                        let here = xs.iter().find(|(h, _)| h == g).map(|(_, x)| *x);
                        let moved = if here.is_none() && !is_structure(yb) && at.level != "model" {
                            n.old_nodes.get(g)
                        } else {
                            None
                        };
                        let Some(xa) = here.or(moved) else {
                            if is_structure(yb) {
                                plain_diff(None, Some(yb), &base.id(g), n, out);
                            } else if at.level != "model" {
                                // A new node: attributes moved into it are still compared.
                                let empty = serde_json::json!({"properties": []});
                                let path = child_path(at, yb);
                                let definition = at.level == "definition";
                                let o = Owner {
                                    level: if definition {
                                        "definition"
                                    } else {
                                        "attribute"
                                    },
                                    entity: at.entity.clone(),
                                    attribute: (!definition).then(|| path.clone()),
                                    name: definition.then(|| path.clone()),
                                    path: Some(path.clone()),
                                    holds: Holds::Children,
                                    property: String::new(),
                                };
                                let mut sink = Vec::new();
                                plain_diff(Some(&empty), Some(yb), &o, n, &mut sink);
                                // Only what was found below it (its own keys are an added attribute's).
                                let own = Value::String(path);
                                out.extend(
                                    sink.into_iter().filter(|r| {
                                        if definition { r.3 != own } else { r.2 != own }
                                    }),
                                );
                            }
                            continue;
                        };
                        if is_structure(yb) {
                            plain_diff(Some(xa), Some(yb), &base.id(g), n, out);
                            continue;
                        }
                        let path = child_path(at, yb);
                        let owner = if at.level == "model" {
                            match n.derived.get(g) {
                                Some((entity, kind)) => Owner {
                                    level: "entity",
                                    entity: Some(entity.clone()),
                                    attribute: None,
                                    name: None,
                                    path: Some(String::new()),
                                    holds: Holds::Children,
                                    property: (*kind).to_string(),
                                },
                                None => Owner {
                                    path: Some(path.clone()),
                                    ..at.item("definition", Some(path), Holds::Children)
                                },
                            }
                        } else if at.level == "definition" {
                            Owner {
                                path: Some(path.clone()),
                                ..at.item("definition", Some(path), Holds::Children)
                            }
                        } else {
                            Owner {
                                level: "attribute",
                                entity: at.entity.clone(),
                                attribute: Some(path.clone()),
                                name: None,
                                path: Some(path),
                                holds: Holds::Children,
                                property: String::new(),
                            }
                        };
                        plain_diff(Some(xa), Some(yb), &owner, n, out);
                    }
                    for (g, xa) in &xs {
                        if !ys.iter().any(|(h, _)| h == g) && is_structure(xa) {
                            plain_diff(Some(xa), None, &base.id(g), n, out);
                        }
                    }
                    continue;
                }
                let mut o = at.key(k);
                if o.holds == Holds::Levels {
                    o.holds = Holds::Nothing;
                }
                plain_diff(va, vb, &o, n, out);
            }
        }
        (Value::Array(_), Value::Array(_)) => match (by_guid(a), by_guid(b)) {
            (Some(xs), Some(ys)) => {
                let mut o = at.clone();
                o.holds = if at.holds == Holds::Levels {
                    Holds::Nothing
                } else {
                    at.holds
                };
                for (g, xa) in &xs {
                    let yb = ys.iter().find(|(h, _)| h == g).map(|(_, v)| *v);
                    plain_diff(Some(xa), yb, &o.id(g), n, out);
                }
                for (g, yb) in &ys {
                    if !xs.iter().any(|(h, _)| h == g) {
                        plain_diff(None, Some(yb), &o.id(g), n, out);
                    }
                }
            }
            _ => {
                if content(a) != content(b) {
                    emit(out, Some(a), Some(b));
                }
            }
        },
        _ => {
            if a != b {
                emit(out, Some(a), Some(b));
            }
        }
    }
}

/// `properties_changed` of `changes --json`, as rows (absent values as null).
fn reported(d: &Value) -> Vec<Row> {
    d["properties_changed"]
        .as_array()
        .expect("properties_changed")
        .iter()
        .map(|c| {
            for k in c.as_object().unwrap().keys() {
                assert!(
                    [
                        "level",
                        "entity",
                        "attribute",
                        "name",
                        "property",
                        "from",
                        "to"
                    ]
                    .contains(&k.as_str()),
                    "{k}"
                );
            }
            let v = |k: &str| c.get(k).cloned().unwrap_or(Value::Null);
            (
                c["level"].as_str().unwrap().to_string(),
                v("entity"),
                v("attribute"),
                v("name"),
                c["property"].as_str().unwrap().to_string(),
                v("from"),
                v("to"),
            )
        })
        .collect()
}

/// Every pair of consecutive versions of every model of the real histories (books, playground-models): the
/// property changes `changes` reports are exactly those of an independent plain JSON diff.
fn properties_changed_agree_with_a_plain_json_diff_on_real_histories(engine: Engine) {
    let env = Env::on(engine, Auth::None);
    let mut repos = Vec::new();
    for (rel, bundle) in [
        ("team/books.git", "books"),
        ("team/pg.git", "playground-models"),
    ] {
        repos.push((
            format!("g/{}", rel.trim_end_matches(".git")),
            env.repo_from_bundle(rel, bundle),
        ));
    }
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"team/books.git\", \"team/pg.git\"]\n",
        env.server.url()
    ));
    env.run(&["sync"]).ok();
    let (mut pairs, mut rows, mut attribute_rows, mut human_checked) = (0, 0, 0, 0);
    for (id, srv) in &repos {
        let models = env.run(&["models", "--repo", id, "--json"]).ok().json();
        for m in models.as_array().unwrap() {
            let path = m["path"].as_str().unwrap();
            let h = env.run(&["history", id, path, "--json"]).ok().json();
            let versions: Vec<&Value> = h.as_array().unwrap().iter().collect();
            for w in versions.windows(2) {
                let (new, old) = (w[0], w[1]);
                if new["blob"].is_null()
                    || old["blob"].is_null()
                    || new["error"].is_string()
                    || old["error"].is_string()
                {
                    continue;
                }
                let file = |v: &Value| -> Value {
                    serde_json::from_str(&git(
                        srv,
                        &["cat-file", "blob", v["blob"].as_str().unwrap()],
                    ))
                    .unwrap()
                };
                let (a, b) = (file(old), file(new));
                let (from, to) = (
                    old["commit"].as_str().unwrap(),
                    new["commit"].as_str().unwrap(),
                );
                let d = env
                    .run(&["changes", id, path, "--from", from, "--to", to, "--json"])
                    .ok()
                    .json();
                let shown = env
                    .run(&[
                        "show",
                        id,
                        new["path"].as_str().unwrap(),
                        "--commit",
                        to,
                        "--json",
                    ])
                    .ok()
                    .json();
                let model = Owner {
                    level: "model",
                    entity: None,
                    attribute: None,
                    name: None,
                    path: None,
                    holds: Holds::Levels,
                    property: String::new(),
                };
                let mut expected = Vec::new();
                plain_diff(
                    Some(&a),
                    Some(&b),
                    &model,
                    &names(&shown, &b, &a),
                    &mut expected,
                );
                let mut got = reported(&d);
                expected.sort_by_key(|r| format!("{r:?}"));
                got.sort_by_key(|r| format!("{r:?}"));
                assert_eq!(got, expected, "{id} {path} {from}..{to}");
                if !got.is_empty() && human_checked < 5 {
                    // The human form: one line per change, under one heading per group.
                    let human = env
                        .run(&["changes", id, path, "--from", from, "--to", to])
                        .ok()
                        .stdout;
                    let lines = human
                        .lines()
                        .filter(|l| ["  + ", "  - ", "  ~ "].iter().any(|p| l.starts_with(p)))
                        .count();
                    assert_eq!(lines, got.len(), "{human}");
                    let headings = human
                        .lines()
                        .filter(|l| l.starts_with("properties of "))
                        .count();
                    assert!(headings >= 1, "{human}");
                    human_checked += 1;
                }
                pairs += 1;
                rows += got.len();
                attribute_rows += got.iter().filter(|r| r.0 == "attribute").count();
            }
        }
    }
    println!("{pairs} pairs of versions, {rows} property changes, {attribute_rows} of attributes");
    assert!(
        pairs >= 20 && rows >= 100 && attribute_rows >= 10,
        "{pairs} {rows} {attribute_rows}"
    );
}
