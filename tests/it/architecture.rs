//! The shape of the source tree, read from the sources themselves: the top-level modules form a graph with no
//! cycles, in the layers `src/lib.rs` describes, and each outside library that one module wraps (libgit2,
//! SQLite, the HTTP server, the HTTP client) is used in that module only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may use only modules of lower layers. A new top-level module must be
/// placed here (the test fails until it is).
const LAYERS: &[&[&str]] = &[
    &[
        "secret",
        "redact",
        "schedule",
        "hubignore",
        "model",
        "metrics",
    ],
    &["git"],
    &["forge", "store"],
    &["config"],
    &["poll", "query"],
    &["service"],
    &["cli"],
];

/// Outside crates that exactly one module may use, and that module.
const CONFINED: &[(&str, &str)] = &[
    ("git2", "git"),
    ("rusqlite", "store"),
    ("postgres", "store"),
    ("postgres_openssl", "store"),
    ("hyper", "service"),
    ("reqwest", "forge"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without its comments (doc comments name modules in prose).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.find("//") {
            // `://` is a URL inside a string, not a comment.
            Some(i) if !l[..i].ends_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`src/store/step.rs` → `store`); `None` for the crate roots.
fn top_module(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// The top-level modules `text` names through `crate::`: `crate::store::Store`, and each first name in
/// `use crate::{git, service::{self, x}}`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The names at the top level of the braces.
            let (mut depth, mut name, mut at_start) = (0, String::new(), true);
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(std::mem::take(&mut name));
                        at_start = true;
                    }
                    c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => {
                        name.push(c)
                    }
                    c if depth == 0 && !c.is_whitespace() => at_start = false,
                    _ => {}
                }
            }
            found.insert(name);
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found.retain(|n| !n.is_empty());
    found
}

/// Module → the other top-level modules it uses.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src()) {
        let Some(module) = top_module(&file) else {
            continue;
        };
        let mut uses = crate_references(&code(&file));
        uses.remove(&module);
        graph.entry(module).or_default().extend(uses);
    }
    graph
}

/// A cycle through the graph, as a path that starts and ends at the same module, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_reference_reader_sees_every_form_of_crate_path() {
    let refs = crate_references(
        "use crate::config::{Config, RepoConfig};\nuse crate::{git, service::{self, x}};\nlet a = crate::store::Store::open(p);\nurl = \"https://x\"; crate::model::parse(b)",
    );
    let expected: BTreeSet<String> = ["config", "git", "model", "service", "store"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(refs, expected);
    // A cycle is found and shown as a path.
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph).map(|c| c.join(" → ")).as_deref(),
        Some("a → b → c → a")
    );
}

#[test]
fn top_level_modules_form_a_graph_without_cycles_in_the_documented_layers() {
    let graph = module_graph();
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the top-level modules use each other in a circle: {}; move the type both need to the lower module",
            cycle.join(" → ")
        );
    }
    let layer_of = |m: &str| LAYERS.iter().position(|layer| layer.contains(&m));
    let mut problems = Vec::new();
    for (module, uses) in &graph {
        let Some(layer) = layer_of(module) else {
            problems.push(format!(
                "{module} is in no layer: add it to LAYERS here and to the layers in src/lib.rs"
            ));
            continue;
        };
        for used in uses {
            match layer_of(used) {
                Some(l) if l < layer => {}
                Some(_) => problems.push(format!(
                    "{module} uses {used}, which is not in a lower layer (see src/lib.rs)"
                )),
                None => problems.push(format!("{module} uses {used}, which is in no layer")),
            }
        }
    }
    for layer in LAYERS {
        for m in *layer {
            if !graph.contains_key(*m) {
                problems.push(format!("LAYERS names {m}, which is not a module in src/"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The description in lib.rs lists the same layers.
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    for layer in LAYERS {
        for m in *layer {
            assert!(
                lib.contains(&format!("[`{m}`]")),
                "src/lib.rs does not describe {m}"
            );
        }
    }
}

#[test]
fn outside_libraries_stay_in_the_module_that_wraps_them() {
    let mut problems = Vec::new();
    for file in rust_files(&src()) {
        let Some(module) = top_module(&file) else {
            continue;
        };
        let text = code(&file);
        for (krate, owner) in CONFINED {
            let used =
                text.contains(&format!("{krate}::")) || text.contains(&format!("use {krate}"));
            if used && module != *owner {
                problems.push(format!(
                    "{} uses {krate}, which only {owner} may use",
                    file.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
