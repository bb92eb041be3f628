//! The Avro and JSON Schema parsers over real public schema collections vendored under
//! `tests/data/schemas/` (sources and licences in `tests/data/schemas/SOURCES.md`): every file is
//! a model, nothing panics, and the entities and their attribute counts equal those of an
//! independent walk written here, a plain recursion over `serde_json::Value` that shares no code
//! with the parsers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::testutil::check_tree_invariants;
use super::{Model, Parsed, avro, jsonschema};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/schemas");

/// Every file below `dir` whose name ends with one of `suffixes`, sorted. Missing data fails.
fn files(dir: &str, suffixes: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(DATA).join(dir);
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (the corpus is needed)", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if suffixes.iter().any(|s| path.to_string_lossy().ends_with(s)) {
                out.push(path);
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no files under {}", root.display());
    out
}

fn model_of(parsed: Parsed, path: &Path) -> Model {
    match parsed {
        Parsed::Model(model) => model,
        other => panic!("{}: expected a model, got {other:?}", path.display()),
    }
}

/// The model's entities as (code or name, attribute count), sorted, after checking each tree.
fn entity_counts(model: &Model, path: &Path) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = model
        .entities
        .iter()
        .map(|e| {
            check_tree_invariants(&e.attributes, &path.to_string_lossy());
            (
                e.code.clone().unwrap_or_else(|| e.name.clone()),
                e.attributes.len(),
            )
        })
        .collect();
    out.sort();
    out
}

fn read_json(path: &Path) -> (Vec<u8>, Value) {
    let bytes = std::fs::read(path).expect("read corpus file");
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    (bytes, value)
}

// ---------------------------------------------------------------------------------------------
// Avro, by the specification: named types are declared wherever a schema may stand.

fn string<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// The full name of a named type and the namespace its nested types inherit.
fn avro_full_name(schema: &Value, enclosing: &str) -> (String, String) {
    let name = string(schema, "name").unwrap_or("");
    if let Some(dot) = name.rfind('.') {
        return (name.to_string(), name[..dot].to_string());
    }
    let namespace = string(schema, "namespace").unwrap_or(enclosing);
    if namespace.is_empty() || name.is_empty() {
        (name.to_string(), namespace.to_string())
    } else {
        (format!("{namespace}.{name}"), namespace.to_string())
    }
}

/// Attribute nodes below a type: record fields (one each), array items and map values (one
/// node each), union members and `{"type": …}` wrappers adding none of their own. With `whole`
/// false, records declared below add nothing (they are entities of their own).
fn avro_nodes(ty: &Value, whole: bool) -> usize {
    match ty {
        Value::Array(members) => members.iter().map(|m| avro_nodes(m, whole)).sum(),
        Value::Object(obj) => match obj.get("type") {
            Some(Value::String(kind)) => match kind.as_str() {
                "record" | "error" if whole => avro_fields(ty, whole),
                "array" => 1 + obj.get("items").map_or(0, |t| avro_nodes(t, whole)),
                "map" => 1 + obj.get("values").map_or(0, |t| avro_nodes(t, whole)),
                _ => 0,
            },
            Some(inner @ (Value::Object(_) | Value::Array(_))) => avro_nodes(inner, whole),
            _ => 0,
        },
        _ => 0,
    }
}

fn avro_fields(record: &Value, whole: bool) -> usize {
    let Some(Value::Array(fields)) = record.get("fields") else {
        return 0;
    };
    fields
        .iter()
        .filter(|f| f.is_object())
        .map(|f| 1 + f.get("type").map_or(0, |t| avro_nodes(t, whole)))
        .sum()
}

/// `top`: declared outside any record (its entity keeps the whole tree).
fn avro_declarations(
    ty: &Value,
    enclosing: &str,
    top: bool,
    seen: &mut HashSet<String>,
    out: &mut Vec<(String, usize)>,
) {
    match ty {
        Value::Array(members) => {
            for member in members {
                avro_declarations(member, enclosing, top, seen, out);
            }
        }
        Value::Object(obj) => match obj.get("type") {
            Some(Value::String(kind)) => match kind.as_str() {
                "record" | "error" | "enum" | "fixed" => {
                    let (full, namespace) = avro_full_name(ty, enclosing);
                    let is_record = kind == "record" || kind == "error";
                    if full.is_empty() || seen.insert(full.clone()) {
                        let short = full.rsplit('.').next().unwrap_or("").to_string();
                        let key = if full.is_empty() { short } else { full };
                        out.push((key, if is_record { avro_fields(ty, top) } else { 0 }));
                    }
                    if is_record && let Some(Value::Array(fields)) = obj.get("fields") {
                        for field_type in fields.iter().filter_map(|f| f.get("type")) {
                            avro_declarations(field_type, &namespace, false, seen, out);
                        }
                    }
                }
                "array" => {
                    if let Some(items) = obj.get("items") {
                        avro_declarations(items, enclosing, top, seen, out);
                    }
                }
                "map" => {
                    if let Some(values) = obj.get("values") {
                        avro_declarations(values, enclosing, top, seen, out);
                    }
                }
                _ => {}
            },
            Some(inner @ (Value::Object(_) | Value::Array(_))) => {
                avro_declarations(inner, enclosing, top, seen, out);
            }
            _ => {}
        },
        _ => {}
    }
}

/// The named types a file declares, as (full name, attribute count), sorted.
fn avro_independent(file: &Value) -> Vec<(String, usize)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let is_protocol = file.get("protocol").is_some_and(Value::is_string)
        || (file.get("type").is_none() && file.get("types").is_some_and(Value::is_array));
    if is_protocol {
        let namespace = string(file, "namespace").unwrap_or("");
        if let Some(Value::Array(types)) = file.get("types") {
            for ty in types {
                avro_declarations(ty, namespace, true, &mut seen, &mut out);
            }
        }
        if let Some(Value::Object(messages)) = file.get("messages") {
            for message in messages.values() {
                if let Some(Value::Array(request)) = message.get("request") {
                    for parameter_type in request.iter().filter_map(|p| p.get("type")) {
                        avro_declarations(parameter_type, namespace, true, &mut seen, &mut out);
                    }
                }
                for key in ["response", "errors"] {
                    if let Some(ty) = message.get(key) {
                        avro_declarations(ty, namespace, true, &mut seen, &mut out);
                    }
                }
            }
        }
    } else {
        avro_declarations(file, "", true, &mut seen, &mut out);
    }
    out.sort();
    out
}

#[test]
fn every_vendored_avro_schema_and_protocol_is_read() {
    let files = files("avro", &[".avsc", ".avpr"]);
    assert!(files.len() >= 150, "{} Avro files", files.len());
    let (mut entities, mut attributes, mut not_records, mut protocols) = (0, 0, 0, 0);
    for path in &files {
        let (bytes, value) = read_json(path);
        let model = model_of(avro::parse(&path.to_string_lossy(), &bytes), path);
        let expected = avro_independent(&value);
        assert_eq!(entity_counts(&model, path), expected, "{}", path.display());
        entities += model.entity_count();
        attributes += model.attribute_count();
        match &value {
            Value::Object(obj) if obj.contains_key("protocol") => protocols += 1,
            Value::Object(obj)
                if matches!(
                    obj.get("type").and_then(Value::as_str),
                    Some("record" | "error" | "enum" | "fixed")
                ) => {}
            _ => not_records += 1,
        }
    }
    println!(
        "avro corpus: {} files ({protocols} protocols, {not_records} with another top level), \
         {entities} entities, {attributes} attributes",
        files.len()
    );
    // The corpus exercises what the issue is about.
    assert!(
        not_records >= 20 && protocols >= 20,
        "{not_records} {protocols}"
    );
    assert!(entities >= 500 && attributes >= 1000);
}

// ---------------------------------------------------------------------------------------------
// JSON Schema, by the rules in `jsonschema.rs`'s module docs.

/// The definition a `#/definitions/NAME` or `#/$defs/NAME` reference names, with its key.
fn json_target<'a>(root: &'a Value, reference: &str) -> Option<(String, &'a Value)> {
    let pointer = reference.strip_prefix('#')?;
    let mut parts = pointer.split('/').skip(1);
    let (table, name) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || !(table == "definitions" || table == "$defs") {
        return None;
    }
    let name = name.replace("~1", "/").replace("~0", "~");
    let target = root.get(table)?.get(&name)?;
    target
        .is_object()
        .then(|| (format!("{table}/{name}"), target))
}

/// Attribute nodes below a schema. `entity_level`: not below an attribute, where local
/// references are followed, each definition once (`expanded`).
fn json_nodes(
    root: &Value,
    schema: &Value,
    entity_level: bool,
    expanded: &mut HashSet<String>,
) -> usize {
    let Value::Object(obj) = schema else {
        return 0;
    };
    let mut count = 0;
    if let Some(Value::Object(properties)) = obj.get("properties") {
        for property in properties.values() {
            count += 1 + json_nodes(root, property, false, expanded);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(alternatives)) = obj.get(key) {
            for alternative in alternatives {
                count += json_nodes(root, alternative, entity_level, expanded);
            }
        }
    }
    for key in ["then", "else"] {
        if let Some(branch) = obj.get(key) {
            count += json_nodes(root, branch, entity_level, expanded);
        }
    }
    for key in ["items", "prefixItems"] {
        match obj.get(key) {
            Some(item @ Value::Object(_)) => count += 1 + json_nodes(root, item, false, expanded),
            Some(Value::Array(list)) => {
                for item in list.iter().filter(|i| i.is_object()) {
                    count += 1 + json_nodes(root, item, false, expanded);
                }
            }
            _ => {}
        }
    }
    if entity_level
        && let Some(Value::String(reference)) = obj.get("$ref")
        && let Some((key, target)) = json_target(root, reference)
        && expanded.insert(key)
    {
        count += json_nodes(root, target, true, expanded);
    }
    count
}

/// The entities of a schema file, as (name, attribute count), sorted.
fn json_independent(root: &Value, stem: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let root_nodes = json_nodes(root, root, true, &mut HashSet::new());
    let has_properties = root.get("properties").is_some_and(Value::is_object);
    let object_type = match root.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        _ => false,
    };
    if has_properties || object_type || root_nodes > 0 {
        let title = string(root, "title")
            .filter(|t| !t.is_empty())
            .unwrap_or(stem);
        out.push((title.to_string(), root_nodes));
    }
    for table in ["definitions", "$defs"] {
        if let Some(Value::Object(definitions)) = root.get(table) {
            for (name, definition) in definitions {
                let mut expanded = HashSet::from([format!("{table}/{name}")]);
                out.push((
                    name.clone(),
                    json_nodes(root, definition, true, &mut expanded),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_vendored_json_schema_is_read() {
    let files = files("jsonschema", &[".json"]);
    assert!(files.len() >= 60, "{} JSON Schema files", files.len());
    let (mut entities, mut attributes) = (0, 0);
    let (mut root_all_of, mut root_arrays, mut root_refs) = (0, 0, 0);
    for path in &files {
        let (bytes, value) = read_json(path);
        let model = model_of(jsonschema::parse(&path.to_string_lossy(), &bytes), path);
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .expect("a .json file name");
        let expected = json_independent(&value, stem);
        assert_eq!(entity_counts(&model, path), expected, "{}", path.display());
        entities += model.entity_count();
        attributes += model.attribute_count();
        root_all_of += usize::from(value.get("allOf").is_some());
        root_arrays += usize::from(value.get("type").is_some_and(|t| t == "array"));
        root_refs += usize::from(value.get("$ref").is_some());
    }
    println!(
        "json schema corpus: {} files ({root_all_of} with a root allOf, {root_arrays} root \
         arrays, {root_refs} root $refs), {entities} entities, {attributes} attributes",
        files.len()
    );
    assert!(root_all_of >= 15 && root_arrays >= 15 && root_refs >= 10);
    assert!(entities >= 500 && attributes >= 2000);
}
