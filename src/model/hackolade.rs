//! Hackolade model files (`*.hck.json`, `*.hackolade.json`, older plain `*.json`) → [`Model`].
//!
//! Follows `../shared/docs/hackolade-format.md` (beside this repository); its "Counting" section is implemented exactly:
//!
//! - entities = every entry of `collections[]` (a non-object entry still counts, as an entity
//!   named `""` without attributes);
//! - an entity's attributes = the object nodes of its `properties` tree, walked through every
//!   node's `properties`, except structure nodes (`type` `choice`, `conditional`,
//!   `conditionalItem`, or `subschema: true`), whose children are still walked;
//! - a derived entity (`type: "reference"` with a `ref` GUID) walks the node with that GUID in
//!   `polyglotDefinitions.properties` (`refType: "polyglot"`) or `externalDefinitions.properties`
//!   (`refType: "external"`), else its own `properties`. The node itself stands for the entity
//!   and is not counted; its `properties` are the attributes.
//!
//! Decisions where the format doc leaves room (checked against the books and playground-models
//! fixtures):
//!
//! - The `ref` lookup is top-level only in the definitions list: in all 35 stubs of the fixtures
//!   the referenced node is a direct element of `polyglotDefinitions.properties`, and nested
//!   nodes there are attributes whose GUIDs are never entity references. A missing or unknown
//!   `refType` searches the polyglot list, then the external one.
//! - Empty strings count as absent for every optional text (`code: ""` is ubiquitous).
//! - [`Attribute::mode`] is `mode`, else `childType`: where both appear `mode` is the specific
//!   physical type (`char`/`varchar2`, `numeric`/`integer`, `varchar`/`text`).
//! - `multipleTypes` entries are objects with their own `type` (strings are accepted too);
//!   their `type`s are joined with `|`. They are not attributes and are not counted.
//! - Primary key: `primaryKey == true` or `compositePrimaryKey == true` on the node, or the node's
//!   GUID listed in the entity's `primaryKey[].compositePrimaryKey[].keyId` (in the fixtures the
//!   163 listed attributes all carry both flags already; an entity's own `primaryKey` is that
//!   list, never a flag).
//! - Required: `required == true`, or the JSON parent's `required` is an array holding the name
//!   (the fixtures only use booleans).
//! - Paths join segments with `.` literally, so array items read `tags.[]` and `pets.[].name`.
//! - Relationship ends and `viewOn` resolve through the entities' GUIDs, then the file's
//!   `idToNameHashTable` (or its old misspelling `idTonNmeHashTable`), else stay the GUID; an
//!   empty GUID (seen in the fixtures) gives `None`.
//! - An entity's container is its `bucketId`'s bucket, else the bucket whose `collectionIds`
//!   lists it; `bucketId: ""` is common and gives `None`.
//! - Definitions: every node of `definitions.properties` is flattened with the same rules, the
//!   definitions themselves at depth 0.
//!
//! The file is parsed into the compact tree of `json.rs`, keeping only the keys listed in `KEYS` (a test
//! checks that nothing else is read). The walk uses an explicit stack (no recursion), and `serde_json`'s
//! recursion limit (128) bounds the parsed tree, so deeply nested input cannot overflow the stack.

use std::collections::{HashMap, HashSet};

use super::json::{self, Object, Value, contains, skip_whitespace};
use super::{Attribute, Container, Entity, Model, ParseError, Parsed, Relationship, View};

const BOM: &[u8] = b"\xEF\xBB\xBF";
const MODEL_NAME_KEY: &[u8] = b"\"modelName\"";

/// Every key this parser reads; the rest of a file (layout, sample data, per-target options: most of it)
/// is checked as JSON but never stored. A test fails when a key read below is missing here.
const KEYS: json::Keys = json::Keys {
    keep: &[
        "GUID",
        "appTarget",
        "arrayItem",
        "bucketId",
        "buckets",
        "childCardinality",
        "childCollection",
        "childType",
        "code",
        "collectionIds",
        "collectionName",
        "collections",
        "compositePrimaryKey",
        "dbVendor",
        "dbVersion",
        "definitions",
        "description",
        "externalDefinitions",
        "keyId",
        "mode",
        "modelName",
        "multipleTypes",
        "name",
        "parentCardinality",
        "parentCollection",
        "polyglotDefinitions",
        "primaryKey",
        "properties",
        "ref",
        "refType",
        "relationshipType",
        "relationships",
        "required",
        "subschema",
        "type",
        "viewOn",
        "views",
    ],
    whole: &["idToNameHashTable", "idTonNmeHashTable"],
};

/// The Hackolade format (`*.hck.json`, and older `*.json`).
pub(crate) struct Hackolade;

impl super::Format for Hackolade {
    fn default_globs(&self) -> &'static [&'static str] {
        &["**/*.json"]
    }
    fn name(&self) -> &'static str {
        "hackolade"
    }
    fn parse(&self, _path: &str, bytes: &[u8]) -> Parsed {
        parse(bytes)
    }
}

/// Parses the bytes of a file that may be a Hackolade model.
///
/// - [`Parsed::NotModel`] for anything that neither claims to be a model (`{` + whitespace +
///   `"modelName"` at the start) nor is structurally one (an object with a string `modelName` and
///   an array `collections`). Bytes without `"modelName"` anywhere are rejected without parsing.
/// - [`Parsed::Invalid`] when the bytes claim to be a model but are not valid JSON (with
///   `serde_json`'s line and column) or lack the model structure.
/// - [`Parsed::Model`] otherwise.
#[must_use]
pub fn parse(bytes: &[u8]) -> Parsed {
    parse_json(bytes, |body| json::parse(body, KEYS))
}

fn parse_json<'a>(
    bytes: &'a [u8],
    json: impl FnOnce(&'a [u8]) -> Result<Value<'a>, serde_json::Error>,
) -> Parsed {
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let claims = claims_to_be_model(body);
    if !claims && !contains(body, MODEL_NAME_KEY) {
        return Parsed::NotModel;
    }
    let value = match json(body) {
        Ok(value) => value,
        Err(err) if claims => return Parsed::Invalid(json::error(&err)),
        Err(_) => return Parsed::NotModel,
    };
    match model_root(&value) {
        Ok(root) => Parsed::Model(build_model(root)),
        Err(message) if claims => Parsed::Invalid(ParseError {
            message: message.to_string(),
            line: None,
            column: None,
        }),
        Err(_) => Parsed::NotModel,
    }
}

/// `{`, optional whitespace, `"modelName"` after optional whitespace (BOM already stripped).
fn claims_to_be_model(body: &[u8]) -> bool {
    match skip_whitespace(body).strip_prefix(b"{") {
        Some(rest) => skip_whitespace(rest).starts_with(MODEL_NAME_KEY),
        None => false,
    }
}

fn model_root<'a>(value: &'a Value<'a>) -> Result<&'a Object<'a>, &'static str> {
    let root = value
        .as_object()
        .ok_or("the top level is not a JSON object")?;
    if !matches!(root.get("modelName"), Some(Value::String(_))) {
        return Err("`modelName` is missing or not a string");
    }
    if !matches!(root.get("collections"), Some(Value::Array(_))) {
        return Err("`collections` is missing or not an array");
    }
    Ok(root)
}

// ---------------------------------------------------------------------------------------------
// Small accessors: tolerate any type, treat "" as absent.

pub(super) fn text<'a>(obj: &'a Object<'a>, key: &str) -> Option<&'a str> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_ref()),
        _ => None,
    }
}

fn owned(obj: &Object<'_>, key: &str) -> Option<String> {
    text(obj, key).map(str::to_string)
}

/// A string, or a number/bool rendered as text (cardinalities are strings in practice).
fn scalar_text(obj: &Object<'_>, key: &str) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    }
}

fn first_text<'a>(obj: &'a Object<'a>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|key| text(obj, key))
}

fn is_true(obj: &Object<'_>, key: &str) -> bool {
    matches!(obj.get(key), Some(Value::Bool(true)))
}

pub(super) fn array<'a>(obj: &'a Object<'a>, key: &str) -> &'a [Value<'a>] {
    match obj.get(key) {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

/// `obj[key].properties` as a list (empty when anything is missing or of the wrong type).
pub(super) fn nested_properties<'a>(obj: &'a Object<'a>, key: &str) -> &'a [Value<'a>] {
    match obj.get(key) {
        Some(Value::Object(inner)) => array(inner, "properties"),
        _ => &[],
    }
}

// ---------------------------------------------------------------------------------------------

fn build_model(root: &Object<'_>) -> Model {
    let containers: Vec<Container> = array(root, "buckets")
        .iter()
        .filter_map(Value::as_object)
        .map(|b| Container {
            guid: owned(b, "GUID"),
            name: first_text(b, &["name", "code"])
                .unwrap_or_default()
                .to_string(),
        })
        .collect();

    let mut bucket_by_guid: HashMap<&str, &str> = HashMap::new();
    let mut bucket_by_member: HashMap<&str, &str> = HashMap::new();
    for bucket in array(root, "buckets").iter().filter_map(Value::as_object) {
        let name = first_text(bucket, &["name", "code"]).unwrap_or_default();
        if let Some(guid) = text(bucket, "GUID") {
            bucket_by_guid.entry(guid).or_insert(name);
        }
        for member in array(bucket, "collectionIds")
            .iter()
            .filter_map(Value::as_str)
        {
            bucket_by_member.entry(member).or_insert(name);
        }
    }

    let polyglot = nested_properties(root, "polyglotDefinitions");
    let external = nested_properties(root, "externalDefinitions");

    let entities: Vec<Entity> = array(root, "collections")
        .iter()
        .map(|entry| match entry.as_object() {
            Some(obj) => build_entity(obj, polyglot, external, &bucket_by_guid, &bucket_by_member),
            None => Entity {
                guid: None,
                name: String::new(),
                code: None,
                container: None,
                description: None,
                derived_from: None,
                attributes: Vec::new(),
            },
        })
        .collect();

    let names = NameResolver::new(root, &entities);

    let relationships = array(root, "relationships")
        .iter()
        .filter_map(Value::as_object)
        .map(|r| Relationship {
            guid: owned(r, "GUID"),
            name: owned(r, "name"),
            parent_entity: names.resolve(text(r, "parentCollection")),
            child_entity: names.resolve(text(r, "childCollection")),
            parent_cardinality: scalar_text(r, "parentCardinality"),
            child_cardinality: scalar_text(r, "childCardinality"),
            relationship_type: owned(r, "relationshipType"),
        })
        .collect();

    let views = array(root, "views")
        .iter()
        .filter_map(Value::as_object)
        .map(|v| View {
            guid: owned(v, "GUID"),
            name: first_text(v, &["name", "code"])
                .unwrap_or_default()
                .to_string(),
            view_on: names.resolve(text(v, "viewOn")),
        })
        .collect();

    let definitions = match root.get("definitions") {
        Some(Value::Object(defs)) => flatten(defs, &HashSet::new()),
        _ => Vec::new(),
    };

    Model {
        name: text(root, "modelName").unwrap_or_default().to_string(),
        guid: owned(root, "GUID"),
        db_vendor: owned(root, "dbVendor"),
        app_target: owned(root, "appTarget"),
        db_version: owned(root, "dbVersion"),
        description: owned(root, "description"),
        containers,
        entities,
        relationships,
        views,
        definitions,
    }
}

fn build_entity(
    obj: &Object<'_>,
    polyglot: &[Value<'_>],
    external: &[Value<'_>],
    bucket_by_guid: &HashMap<&str, &str>,
    bucket_by_member: &HashMap<&str, &str>,
) -> Entity {
    let resolved = resolve_reference(obj, polyglot, external);
    let (tree, derived_from) = match resolved {
        Some((node, kind)) => (node, Some(kind.to_string())),
        None => (obj, None),
    };
    let guid = owned(obj, "GUID");
    let name = first_text(obj, &["collectionName", "code", "name"])
        .or_else(|| first_text(tree, &["collectionName", "code", "name"]))
        .unwrap_or_default()
        .to_string();
    let container = text(obj, "bucketId")
        .and_then(|id| bucket_by_guid.get(id).copied())
        .or_else(|| {
            guid.as_deref()
                .and_then(|g| bucket_by_member.get(g).copied())
        })
        .filter(|name| !name.is_empty())
        .map(str::to_string);

    let mut key_ids: HashSet<&str> = HashSet::new();
    collect_composite_key_ids(obj, &mut key_ids);
    collect_composite_key_ids(tree, &mut key_ids);

    Entity {
        guid,
        name,
        code: owned(obj, "code").or_else(|| owned(tree, "code")),
        container,
        description: owned(obj, "description").or_else(|| owned(tree, "description")),
        derived_from,
        attributes: flatten(tree, &key_ids),
    }
}

/// For a `type: "reference"` stub with a `ref` GUID: the definition node it points to, and
/// whether it was found among the polyglot or the external definitions.
pub(super) fn resolve_reference<'a>(
    obj: &Object<'_>,
    polyglot: &'a [Value<'a>],
    external: &'a [Value<'a>],
) -> Option<(&'a Object<'a>, &'static str)> {
    if text(obj, "type") != Some("reference") {
        return None;
    }
    let target = text(obj, "ref")?;
    let lists: &[(&'static str, &'a [Value<'a>])] = match text(obj, "refType") {
        Some("polyglot") => &[("polyglot", polyglot)],
        Some("external") => &[("external", external)],
        _ => &[("polyglot", polyglot), ("external", external)],
    };
    lists.iter().find_map(|&(kind, list)| {
        list.iter()
            .filter_map(Value::as_object)
            .find(|node| text(node, "GUID") == Some(target))
            .map(|node| (node, kind))
    })
}

/// GUIDs listed in an entity's `primaryKey[].compositePrimaryKey[].keyId`.
fn collect_composite_key_ids<'a>(obj: &'a Object<'a>, out: &mut HashSet<&'a str>) {
    for key in array(obj, "primaryKey").iter().filter_map(Value::as_object) {
        for part in array(key, "compositePrimaryKey")
            .iter()
            .filter_map(Value::as_object)
        {
            if let Some(id) = text(part, "keyId") {
                out.insert(id);
            }
        }
    }
}

pub(super) fn is_structure_node(node: &Object<'_>) -> bool {
    matches!(
        text(node, "type"),
        Some("choice" | "conditional" | "conditionalItem")
    ) || is_true(node, "subschema")
}

/// This node's path segment: its name, `[]` for a nameless array item, else code, GUID or `?`.
pub(super) fn segment(node: &Object<'_>) -> String {
    if let Some(name) = text(node, "name") {
        return name.to_string();
    }
    if is_true(node, "arrayItem") {
        return "[]".to_string();
    }
    first_text(node, &["code", "GUID"])
        .unwrap_or("?")
        .to_string()
}

fn data_type(node: &Object<'_>) -> Option<String> {
    let ty = text(node, "type")?;
    if ty == "multiple" {
        let parts: Vec<&str> = array(node, "multipleTypes")
            .iter()
            .filter_map(|member| match member {
                Value::String(s) => Some(s.as_ref()),
                Value::Object(m) => text(m, "type"),
                _ => None,
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return Some(parts.join("|"));
        }
    }
    Some(ty.to_string())
}

fn listed_as_required(parent: &Object<'_>, name: Option<&str>) -> bool {
    let Some(name) = name else {
        return false;
    };
    array(parent, "required")
        .iter()
        .any(|r| r.as_str() == Some(name))
}

/// Pre-order flattening of the counted nodes below `root` (the root itself is not counted).
fn flatten(root: &Object<'_>, key_ids: &HashSet<&str>) -> Vec<Attribute> {
    struct Frame<'a> {
        node: &'a Value<'a>,
        json_parent: &'a Object<'a>,
        parent: Option<usize>,
        depth: u32,
    }

    fn push_children<'a>(
        stack: &mut Vec<Frame<'a>>,
        node: &'a Object<'a>,
        parent: Option<usize>,
        depth: u32,
    ) {
        for child in array(node, "properties").iter().rev() {
            stack.push(Frame {
                node: child,
                json_parent: node,
                parent,
                depth,
            });
        }
    }

    let mut out: Vec<Attribute> = Vec::new();
    let mut stack: Vec<Frame<'_>> = Vec::new();
    push_children(&mut stack, root, None, 0);

    while let Some(frame) = stack.pop() {
        let Some(node) = frame.node.as_object() else {
            continue;
        };
        if is_structure_node(node) {
            push_children(&mut stack, node, frame.parent, frame.depth);
            continue;
        }
        let name = segment(node);
        let path = super::child_path(
            frame
                .parent
                .and_then(|p| out.get(p))
                .map(|p| p.path.as_str()),
            &name,
        );
        let guid = owned(node, "GUID");
        let primary_key = is_true(node, "primaryKey")
            || is_true(node, "compositePrimaryKey")
            || guid.as_deref().is_some_and(|g| key_ids.contains(g));
        let required =
            is_true(node, "required") || listed_as_required(frame.json_parent, text(node, "name"));
        let index = out.len();
        out.push(Attribute {
            guid,
            path,
            name,
            code: owned(node, "code"),
            data_type: data_type(node),
            mode: first_text(node, &["mode", "childType"]).map(str::to_string),
            required,
            primary_key,
            description: owned(node, "description"),
            depth: frame.depth,
            parent: frame.parent,
        });
        push_children(&mut stack, node, Some(index), frame.depth.saturating_add(1));
    }
    out
}

/// GUID → entity name, through the entities first, then `idToNameHashTable`.
struct NameResolver<'a> {
    entities: HashMap<&'a str, &'a str>,
    /// `idToNameHashTable` as a map (it can hold tens of thousands of GUIDs; a repeated GUID reads as its
    /// last value, like every other key).
    table: HashMap<&'a str, &'a Value<'a>>,
}

impl<'a> NameResolver<'a> {
    fn new(root: &'a Object<'a>, entities: &'a [Entity]) -> Self {
        let mut by_guid = HashMap::new();
        for entity in entities {
            if let Some(guid) = entity.guid.as_deref() {
                by_guid.entry(guid).or_insert(entity.name.as_str());
            }
        }
        let table = ["idToNameHashTable", "idTonNmeHashTable"]
            .iter()
            .find_map(|key| root.get(key).and_then(Value::as_object))
            .map(|t| t.iter().collect())
            .unwrap_or_default();
        NameResolver {
            entities: by_guid,
            table,
        }
    }

    fn resolve(&self, guid: Option<&str>) -> Option<String> {
        let guid = guid?;
        let name = self
            .entities
            .get(guid)
            .copied()
            .filter(|name| !name.is_empty())
            .or_else(|| match self.table.get(guid) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.as_ref()),
                _ => None,
            })
            .unwrap_or(guid);
        Some(name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// `<workspace>/shared/fixtures/models`, found from the real crate (`/work/main`) or from a
    /// scratch crate elsewhere on the same machine.
    fn fixtures_dir() -> Option<PathBuf> {
        [PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/models"
        ))]
        .into_iter()
        .find(|p| p.is_dir())
    }

    fn fixture_files(folder: &str) -> Option<Vec<PathBuf>> {
        // Missing fixtures fail the test: a test that silently checks nothing cannot fail.
        let dir = fixtures_dir().expect(
            "../shared/fixtures/models is missing: the tests need shared/ beside the project",
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(folder))
            .expect("read fixture folder")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        Some(files)
    }

    fn parse_model(bytes: &[u8]) -> Model {
        match parse(bytes) {
            Parsed::Model(m) => m,
            other => panic!("expected a model, got {other:?}"),
        }
    }

    fn file_name(p: &Path) -> String {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Parses every file of a fixture folder; returns (models, entities, attributes).
    fn parse_folder(folder: &str) -> Option<(usize, usize, usize)> {
        let files = fixture_files(folder)?;
        let (mut entities, mut attributes) = (0, 0);
        for path in &files {
            let bytes = std::fs::read(path).expect("read fixture");
            let model = parse_model(&bytes);
            let name = file_name(path);
            for e in &model.entities {
                check_tree_invariants(&e.attributes, &name);
            }
            check_tree_invariants(&model.definitions, &name);
            println!(
                "{folder}/{name}: {} entities, {} attributes",
                model.entity_count(),
                model.attribute_count()
            );
            entities += model.entity_count();
            attributes += model.attribute_count();
        }
        println!(
            "{folder}: {} models, {entities} entities, {attributes} attributes",
            files.len()
        );
        Some((files.len(), entities, attributes))
    }

    #[test]
    fn every_books_fixture_is_a_model() {
        let Some((models, entities, attributes)) = parse_folder("books") else {
            return;
        };
        // Includes the three models saved under plain `*.json` names.
        assert_eq!(models, 141);
        assert_eq!((entities, attributes), (781, 3344));
    }

    /// The key list drops nothing the parser reads: every fixture, and every mutation of it, parses the same
    /// with only the listed keys kept as with the whole file kept.
    #[test]
    fn keeping_only_the_listed_keys_changes_nothing() {
        let mut checked = 0;
        for folder in ["books", "playground-models"] {
            for file in fixture_files(folder).unwrap_or_default() {
                let bytes = std::fs::read(&file).expect("read fixture");
                let mut rng = crate::model::testutil::Rng(bytes.len() as u64 | 1);
                let mut inputs = vec![bytes.clone()];
                inputs.extend((0..8).map(|_| rng.mutate(&bytes, b"{}[]\",:\\ 0tfn\x01\xff")));
                for input in inputs {
                    let sparse = format!("{:?}", parse(&input));
                    let whole = format!("{:?}", parse_json(&input, json::parse_whole));
                    assert_eq!(sparse, whole, "{}", file.display());
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000, "only {checked} inputs checked");
    }

    #[test]
    fn every_playground_fixture_is_a_model() {
        let Some((models, entities, attributes)) = parse_folder("playground-models") else {
            return;
        };
        assert_eq!(models, 14);
        assert_eq!((entities, attributes), (36, 198));
    }

    #[test]
    fn derived_models_count_the_polyglot_definitions() {
        let Some(files) = fixture_files("playground-models") else {
            return;
        };
        let derived: Vec<&PathBuf> = files
            .iter()
            .filter(|p| file_name(p).contains(" - Derived - "))
            .collect();
        assert_eq!(derived.len(), 11);
        for path in derived {
            let model = parse_model(&std::fs::read(path).expect("read fixture"));
            let name = file_name(path);
            if name.contains("OpenAPI") {
                // Its only stub sits in `definitions.schemas`, not in `collections[]`: by the
                // counting definition it has no entities at all.
                assert_eq!(model.entity_count(), 0, "{name}");
                assert!(
                    model
                        .definitions
                        .iter()
                        .any(|d| d.path == "schemas.Account")
                );
                continue;
            }
            assert!(model.attribute_count() > 0, "{name}");
            assert!(
                model
                    .entities
                    .iter()
                    .all(|e| e.derived_from.as_deref() == Some("polyglot")),
                "{name}"
            );
        }

        let postgres = files
            .iter()
            .find(|p| file_name(p).contains("PostgreSQL - Derived"))
            .expect("PostgreSQL derived model");
        let model = parse_model(&std::fs::read(postgres).expect("read fixture"));
        let counts: Vec<(&str, usize)> = model
            .entities
            .iter()
            .map(|e| (e.name.as_str(), e.attributes.len()))
            .collect();
        assert_eq!(
            counts,
            [("Account", 7), ("checking", 3), ("savings", 3), ("loan", 5)]
        );
        let account = &model.entities[0];
        assert_eq!(account.derived_from.as_deref(), Some("polyglot"));
        assert_eq!(account.container.as_deref(), Some("Bank"));
        assert_eq!(account.attributes[0].path, "accountNumber");
        assert!(account.attributes[0].primary_key);
    }

    #[test]
    fn choice_subschemas_in_a_real_model_are_not_counted() {
        let Some(files) = fixture_files("books") else {
            return;
        };
        let path = files
            .iter()
            .find(|p| file_name(p).starts_with("Cassandra__Figure 058"))
            .expect("fixture with a choice");
        let model = parse_model(&std::fs::read(path).expect("read fixture"));
        let all: Vec<&Attribute> = model.entities.iter().flat_map(|e| &e.attributes).collect();
        assert!(!all.is_empty());
        assert!(all.iter().all(|a| a.data_type.as_deref() != Some("choice")));
        assert!(
            all.iter()
                .any(|a| a.path == "Dog Good with Children Indicator")
        );
    }

    const TREE: &str = r#"{
        "modelName": "t",
        "collections": [{
            "GUID": "e1", "collectionName": "Pet", "bucketId": "b1",
            "required": ["id"],
            "primaryKey": [{"compositePrimaryKey": [{"keyId": "a-kind"}]}],
            "properties": [
                {"GUID": "a-id", "name": "id", "type": "string", "mode": "varchar2", "childType": "char"},
                {"GUID": "a-kind", "name": "kind", "type": "multiple",
                 "multipleTypes": [{"type": "null"}, {"type": "string"}]},
                {"GUID": "c1", "type": "choice", "choice": "oneOf", "properties": [
                    {"GUID": "s1", "subschema": true, "type": "document", "properties": [
                        {"GUID": "a-bark", "name": "bark", "type": "boolean", "required": true}
                    ]},
                    {"GUID": "s2", "subschema": true, "type": "document", "required": ["purr"],
                     "properties": [{"GUID": "a-purr", "name": "purr", "type": "boolean"}]}
                ]},
                {"GUID": "k1", "type": "conditional", "properties": [
                    {"GUID": "k2", "type": "conditionalItem", "properties": [
                        {"GUID": "a-if", "name": "if", "type": "string"}
                    ]}
                ]},
                {"GUID": "a-tags", "name": "tags", "type": "array", "properties": [
                    {"GUID": "a-tag", "type": "string", "arrayItem": true},
                    {"GUID": "a-obj", "type": "document", "arrayItem": true, "properties": [
                        {"GUID": "a-deep", "code": "deep_code", "type": "string"},
                        {"GUID": "a-guid", "type": "string"},
                        {"type": "string"}
                    ]}
                ]},
                "not an object", 42, null,
                {"GUID": "a-pk", "name": "pk", "primaryKey": true, "compositePrimaryKey": false,
                 "code": "", "properties": "not a list"}
            ]
        }, 17],
        "buckets": [{"GUID": "b1", "name": "zoo"}],
        "relationships": [
            {"name": "r", "parentCollection": "e1", "childCollection": "gone",
             "parentCardinality": "1", "childCardinality": "0..n", "relationshipType": "Foreign Key"},
            {"parentCollection": "", "childCollection": "old"}
        ],
        "views": [{"GUID": "v1", "name": "petView", "viewOn": "e1"}],
        "idToNameHashTable": {"old": "Retired"},
        "definitions": {"properties": [
            {"GUID": "d1", "name": "address", "type": "document", "properties": [
                {"GUID": "d2", "name": "zip", "type": "string"}
            ]}
        ]}
    }"#;

    #[test]
    fn counting_paths_and_flags_follow_the_format_doc() {
        let model = parse_model(TREE.as_bytes());
        assert_eq!(model.entity_count(), 2);
        assert_eq!(model.entities[1].name, "");
        assert!(model.entities[1].attributes.is_empty());

        let pet = &model.entities[0];
        assert_eq!(pet.container.as_deref(), Some("zoo"));
        let paths: Vec<&str> = pet.attributes.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "id",
                "kind",
                "bark",
                "purr",
                "if",
                "tags",
                "tags.[]",
                "tags.[]",
                "tags.[].deep_code",
                "tags.[].a-guid",
                "tags.[].?",
                "pk",
            ]
        );
        assert_eq!(model.attribute_count(), 12);
        check_tree_invariants(&pet.attributes, "TREE");

        let by_path = |p: &str| {
            pet.attributes
                .iter()
                .find(|a| a.path == p)
                .expect("attribute")
        };
        let id = by_path("id");
        assert!(id.required && !id.primary_key);
        assert_eq!(id.mode.as_deref(), Some("varchar2"));
        let kind = by_path("kind");
        assert_eq!(kind.data_type.as_deref(), Some("null|string"));
        assert!(kind.primary_key && !kind.required);
        assert!(by_path("bark").required);
        assert!(by_path("purr").required);
        assert_eq!((by_path("bark").depth, by_path("bark").parent), (0, None));
        let deep = by_path("tags.[].deep_code");
        assert_eq!(deep.depth, 2);
        assert_eq!(deep.code.as_deref(), Some("deep_code"));
        let pk = by_path("pk");
        assert!(pk.primary_key);
        assert_eq!(pk.code, None);

        assert_eq!(
            model.relationships[0],
            Relationship {
                guid: None,
                name: Some("r".into()),
                parent_entity: Some("Pet".into()),
                child_entity: Some("gone".into()),
                parent_cardinality: Some("1".into()),
                child_cardinality: Some("0..n".into()),
                relationship_type: Some("Foreign Key".into()),
            }
        );
        assert_eq!(model.relationships[1].parent_entity, None);
        assert_eq!(
            model.relationships[1].child_entity.as_deref(),
            Some("Retired")
        );
        assert_eq!(model.views[0].view_on.as_deref(), Some("Pet"));
        assert_eq!(
            model.containers,
            [Container {
                guid: Some("b1".into()),
                name: "zoo".into()
            }]
        );
        let defs: Vec<(&str, u32)> = model
            .definitions
            .iter()
            .map(|a| (a.path.as_str(), a.depth))
            .collect();
        assert_eq!(defs, [("address", 0), ("address.zip", 1)]);
    }

    #[test]
    fn reference_stubs_resolve_or_fall_back() {
        let json = r#"{"modelName": "d", "collections": [
            {"GUID": "e1", "collectionName": "A", "type": "reference", "refType": "polyglot",
             "ref": "p1", "properties": []},
            {"GUID": "e2", "collectionName": "B", "type": "reference", "refType": "external",
             "ref": "x1", "properties": []},
            {"GUID": "e3", "collectionName": "C", "type": "reference", "refType": "polyglot",
             "ref": "missing", "properties": [{"name": "own"}]},
            {"GUID": "e4", "collectionName": "D", "type": "reference", "refType": "polyglot",
             "ref": "nested", "properties": []}
        ],
        "polyglotDefinitions": {"properties": [
            {"GUID": "p1", "type": "object", "properties": [
                {"name": "a1", "GUID": "nested"}, {"name": "a2", "properties": [{"name": "a3"}]}
            ]}
        ]},
        "externalDefinitions": {"properties": [
            {"GUID": "x1", "properties": [{"name": "x"}]}
        ]}}"#;
        let model = parse_model(json.as_bytes());
        let summary: Vec<(&str, Option<&str>, Vec<&str>)> = model
            .entities
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.derived_from.as_deref(),
                    e.attributes.iter().map(|a| a.path.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("A", Some("polyglot"), vec!["a1", "a2", "a2.a3"]),
                ("B", Some("external"), vec!["x"]),
                ("C", None, vec!["own"]),
                ("D", None, vec![]),
            ]
        );
    }

    #[test]
    fn invalid_json_that_claims_to_be_a_model_reports_the_position() {
        let bytes = b"\xEF\xBB\xBF{\n    \"modelName\": \"x\",\n    \"collections\": [,]\n}";
        let Parsed::Invalid(err) = parse(bytes) else {
            panic!("expected Invalid");
        };
        assert_eq!(err.line, Some(3));
        assert!(err.column.is_some());
        assert!(err.message.starts_with("invalid JSON: "), "{}", err.message);
        assert!(!err.message.contains(" at line "), "{}", err.message);
        let shown = err.to_string();
        assert!(shown.starts_with("line 3, column "), "{shown}");

        let Parsed::Invalid(err) = parse(b"{\"modelName\": \"x\", \"collections\": [") else {
            panic!("expected Invalid");
        };
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn a_claimed_model_without_the_structure_is_invalid() {
        let cases: [(&str, &str); 4] = [
            (
                r#"{"modelName": "x"}"#,
                "`collections` is missing or not an array",
            ),
            (
                r#"{"modelName": "x", "collections": {}}"#,
                "`collections` is missing or not an array",
            ),
            (
                r#"{"modelName": 3, "collections": []}"#,
                "`modelName` is missing or not a string",
            ),
            (r#"{ "modelName" }"#, "invalid JSON"),
        ];
        for (input, expected) in cases {
            match parse(input.as_bytes()) {
                Parsed::Invalid(err) => {
                    assert!(err.message.starts_with(expected), "{input}: {err}")
                }
                other => panic!("{input}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_json_is_not_a_model() {
        let cases: [&[u8]; 10] = [
            br#"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}"#,
            br#"{"openapi": "3.0.0", "paths": {}}"#,
            br#"[{"modelName": "x", "collections": []}]"#,
            b"[1, 2, 3]",
            b"{ not json",
            br#"{"name": "pkg", "description": "has \"modelName\" in it", oops"#,
            br#"{"name": "pkg", "modelName": 3, "collections": []}"#,
            br#"{"name": "pkg", "modelName": "x"}"#,
            b"",
            b"\xFF\xFE garbage",
        ];
        for input in cases {
            assert_eq!(
                parse(input),
                Parsed::NotModel,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_model_whose_name_is_not_the_first_key_is_still_a_model() {
        let model = parse_model(br#"{"GUID": "g", "collections": [], "modelName": "late"}"#);
        assert_eq!(model.name, "late");
        assert_eq!(model.guid.as_deref(), Some("g"));
        assert_eq!(model.entity_count(), 0);
    }

    #[test]
    fn deeply_nested_input_does_not_overflow() {
        let depth = 10_000;
        let mut arrays = "[".repeat(depth);
        arrays.push_str(&"]".repeat(depth));
        assert_eq!(parse(arrays.as_bytes()), Parsed::NotModel);

        let claimed = format!(r#"{{"modelName": "x", "collections": {arrays}}}"#);
        assert!(matches!(parse(claimed.as_bytes()), Parsed::Invalid(_)));

        let hidden = format!(r#"[{arrays}, {{"modelName": "x"}}]"#);
        assert_eq!(parse(hidden.as_bytes()), Parsed::NotModel);

        // As deep as serde_json allows: nested `properties` all the way down.
        let levels = 40;
        let mut nested = String::new();
        for i in 0..levels {
            nested.push_str(&format!(r#"{{"name": "n{i}", "properties": ["#));
        }
        nested.push_str(&"]}".repeat(levels));
        let json =
            format!(r#"{{"modelName": "x", "collections": [{{"properties": [{nested}]}}]}}"#);
        let model = parse_model(json.as_bytes());
        assert_eq!(model.attribute_count(), levels);
        assert_eq!(
            model.entities[0].attributes.last().map(|a| a.depth),
            Some(39)
        );
    }
    use crate::model::testutil::{Rng, check_tree_invariants};

    #[test]
    fn random_mutations_of_a_real_model_never_panic() {
        let Some(files) = fixture_files("playground-models") else {
            return;
        };
        let path = files
            .iter()
            .find(|p| file_name(p).contains("Neo4j - Derived"))
            .expect("fixture");
        let original = std::fs::read(path).expect("read fixture");
        let interesting: &[u8] = b"{}[]\",:0-e.tn\\ \n\xFF";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut outcomes = [0usize; 3];
        for _ in 0..1500 {
            let bytes = rng.mutate(&original, interesting);
            let slot = match parse(&bytes) {
                Parsed::NotModel => 0,
                Parsed::Model(_) => 1,
                Parsed::Invalid(_) => 2,
            };
            outcomes[slot] += 1;
        }
        println!("mutations: not-model/model/invalid = {outcomes:?}");
        assert!(outcomes[1] > 0 && outcomes[2] > 0);
    }

    #[test]
    fn structural_mutations_of_a_real_model_never_panic() {
        // Replace values inside the tree with every JSON type, so the walkers meet wrong types.
        let Some(files) = fixture_files("playground-models") else {
            return;
        };
        let path = files
            .iter()
            .find(|p| file_name(p).contains("PostgreSQL - Derived"))
            .expect("fixture");
        let text = std::fs::read_to_string(path).expect("read fixture");
        let keys = [
            "\"properties\": ",
            "\"type\": ",
            "\"ref\": ",
            "\"name\": ",
            "\"GUID\": ",
            "\"required\": ",
            "\"multipleTypes\": ",
            "\"primaryKey\": ",
            "\"polyglotDefinitions\": ",
            "\"buckets\": ",
            "\"bucketId\": ",
            "\"relationships\": ",
            "\"viewOn\": ",
            "\"idToNameHashTable\": ",
        ];
        let replacements = [
            "null, \"x\": ",
            "7, \"x\": ",
            "\"s\", \"x\": ",
            "[{}], \"x\": ",
        ];
        let mut rng = Rng(42);
        for key in keys {
            for replacement in replacements {
                let hits: Vec<usize> = text.match_indices(key).map(|(i, _)| i).collect();
                if hits.is_empty() {
                    continue;
                }
                let at = hits[rng.below(hits.len())] + key.len();
                let mutated = format!("{}{}{}", &text[..at], replacement, &text[at..]);
                // Valid JSON with duplicate keys would be odd; just make sure nothing panics.
                let _ = parse(mutated.as_bytes());
            }
        }
    }
}
