//! JSON Schema files (`*.schema.json`, or JSON objects with a meta-schema `$schema`) → [`Model`].
//!
//! Recognition:
//!
//! - A file is a JSON Schema when its path ends with `.schema.json` (ASCII case-insensitive) and it
//!   holds a JSON object, or when it parses to an object whose `$schema` is a string and that
//!   either names a `json-schema.org` meta-schema or has at least one schema keyword at the top
//!   (`type` with JSON Schema type names, `properties`, `$defs`, `definitions`, `items`, `oneOf`,
//!   `$ref`, `required`, …). The second condition keeps configuration files that point `$schema`
//!   at the schema they follow (`package.json`, `tsconfig.json`, `renovate.json`, … with
//!   `https://json.schemastore.org/...`) out of the catalog; their `"type": "module"` is not a
//!   JSON Schema type.
//! - A file *claims* to be a JSON Schema when its path ends with `.schema.json`, or when it starts
//!   with `{` and, within its first 512 bytes, has a `"$schema"` key whose string value mentions
//!   `json-schema.org`. Broken JSON that claims gives [`Parsed::Invalid`] with `serde_json`'s line
//!   and column; broken JSON that does not claim (JSONC config files, …) is [`Parsed::NotModel`].
//!   A `*.schema.json` file holding valid JSON that is not an object is [`Parsed::Invalid`] too.
//! - Bytes without `"$schema"` anywhere are rejected without parsing unless the name claims them.
//!
//! Mapping (the Hackolade conventions of `hackolade.rs` apply: pre-order flattening, paths joined
//! with `.`, `depth`, `parent` index; empty strings count as absent):
//!
//! - Model: `name` = `title`, else the file name without `.schema.json` / `.json`; `description`;
//!   `guid` = `$id` (draft-04's `id` as a fallback); `db_vendor` = `"JSON Schema"`; `app_target` =
//!   the draft named by `$schema` (`draft-04`, `draft-07`, `2019-09`, `2020-12`, …) when the URI
//!   has a `draft-NN` segment or a `draft/YYYY-MM` pair, else `None`. No containers,
//!   relationships, views or `Model::definitions`.
//! - Entities: first the root schema, when it has a `properties` object, a `type` that includes
//!   `object`, or anything else that yields attributes (compositions, a local `$ref`, array
//!   `items`) (name = `title`, else the file stem; `guid` = `$id`); then every entry of the
//!   top-level `definitions` and `$defs`, in the order the keys appear (name = `code` = the key;
//!   `guid` = its `$id`), even when the entry is not an object schema (it then has no
//!   attributes). Nested `$defs` are not entities.
//! - Attributes of a schema, in document order:
//!   - every entry of `properties` is an attribute named by its key;
//!   - `allOf` / `anyOf` / `oneOf` alternatives and `then` / `else` are structure: their contents
//!     are walked at the same depth, under the same parent, with no node of their own (so a root
//!     `allOf` merges its subschemas' properties, in order, duplicates kept);
//!   - at the entity level only (the entity's schema and the compositions directly in it, not
//!     below an attribute), a `$ref` to a definition of the same file (`#/definitions/NAME` or
//!     `#/$defs/NAME`, `~1` / `~0` unescaped) is structure too: the definition's contents are
//!     walked in its place, with the `required` names around it. So `{"allOf": [{"$ref":
//!     "#/definitions/Base"}, {"properties": …}]}` gives Base's properties and then its own, and
//!     a root that is only `{"$ref": "#/definitions/Config"}` has Config's attributes. Each
//!     definition is expanded once per entity (the entity's own schema counts as expanded, so
//!     cycles end); other references (other files, deeper pointers, `#`) are not followed. The
//!     steps walked through references are bounded per file (1,000,000 schemas and attributes;
//!     past that, the rest of the expanded contents is left out, so the work stays bounded on
//!     files made of references to references);
//!   - array items, at every level: `items` (an object schema, or draft-04…07 tuple lists) and
//!     `prefixItems` give one nameless attribute each, named `[]`, whose properties follow
//!     (`lines`, `lines.[]`, `lines.[].sku`). Item nodes are counted like Hackolade's array
//!     items, scalar items too (`tags.[]` of type `string`). At the entity level this gives a
//!     root `"type": "array"` schema (or an array definition) the attribute `[]` at depth 0, its
//!     items' properties below it (`[].name`, depth 1);
//!   - below an attribute, its own `properties` (whatever its `type`), its compositions and its
//!     items, as above; its `$ref` is kept as its type, never followed.
//!   - `additionalProperties`, `patternProperties`, `not`, `if` and nested `$defs` are not walked.
//! - An attribute's `data_type` is `"reference"` when it has a string `$ref` (with `mode` = the ref,
//!   never resolved, so cycles cannot arise); else `type`, or a `type` list joined with `|`; else,
//!   for a node with only `anyOf` / `oneOf`, the alternatives' names (their `type`, or
//!   `reference`), deduplicated and joined with `|` (`discount: anyOf [$ref, null]` →
//!   `reference|null` with `mode` = the ref), or the single `allOf` alternative's name. Otherwise
//!   `None`. `mode` is the `$ref`, else the alternatives' refs joined with `|`, else `format`
//!   (`date-time`, `uuid`, …).
//! - `required`: the name is in the `required` array of the schema holding the `properties`, or
//!   of the structure levels (compositions) between it and the enclosing attribute or entity.
//!   Item nodes are never required. `primary_key` is always false. `description`; `guid` = the
//!   node's `$id`; `code` is `None`.
//! - Duplicate keys: the last value wins at the first key's position (as `serde_json` would keep
//!   the last value). Key order is kept: the document is read into a small ordered tree here,
//!   since `serde_json`'s map sorts its keys.
//!
//! The walk uses an explicit stack (no recursion); `serde_json`'s recursion limit (128) bounds the
//! parsed tree, so deeply nested input cannot overflow the stack.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::json::{self, contains, find, skip_whitespace};
use super::{Attribute, Entity, Format, Model, ParseError, Parsed};

/// The JSON Schema format (`*.schema.json`, or JSON with a `$schema`).
pub(crate) struct JsonSchema;

impl Format for JsonSchema {
    fn default_globs(&self) -> &'static [&'static str] {
        &["**/*.json"]
    }
    fn name(&self) -> &'static str {
        "jsonschema"
    }
    fn parse(&self, path: &str, bytes: &[u8]) -> Parsed {
        parse(path, bytes)
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";
const SCHEMA_KEY: &[u8] = b"\"$schema\"";
const NAME_SUFFIX: &str = ".schema.json";
/// How far into the file a `"$schema"` key makes broken JSON claim to be a schema.
const MARKER_WINDOW: usize = 512;
const META_SCHEMA_HOST: &str = "json-schema.org";
const JSON_TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Parses the bytes of a file that may be a JSON Schema (see the module docs for the rules).
#[must_use]
pub(crate) fn parse(path: &str, bytes: &[u8]) -> Parsed {
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let by_name = ends_with_ignore_case(path, NAME_SUFFIX);
    let claims = by_name || claims_by_marker(body);
    if !claims && !contains(body, SCHEMA_KEY) {
        return Parsed::NotModel;
    }
    let node: Node = match serde_json::from_slice(body) {
        Ok(node) => node,
        Err(err) if claims => return Parsed::Invalid(json::error(&err)),
        Err(_) => return Parsed::NotModel,
    };
    let Node::Object(root) = node else {
        if by_name {
            return Parsed::Invalid(ParseError {
                message: "a JSON Schema file must hold a JSON object".to_string(),
                line: None,
                column: None,
            });
        }
        return Parsed::NotModel;
    };
    if !by_name && !is_schema_root(&root) {
        return Parsed::NotModel;
    }
    Parsed::Model(build_model(path, &root))
}

// ---------------------------------------------------------------------------------------------
// Recognition helpers.

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    let (text, suffix) = (text.as_bytes(), suffix.as_bytes());
    text.len() >= suffix.len()
        && text
            .get(text.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
}

/// Starts with `{` and has `"$schema": "…json-schema.org…"` within the first [`MARKER_WINDOW`]
/// bytes (BOM already stripped).
fn claims_by_marker(body: &[u8]) -> bool {
    if !skip_whitespace(body).starts_with(b"{") {
        return false;
    }
    let window = body
        .get(..MARKER_WINDOW.min(body.len()))
        .unwrap_or_default();
    let Some(at) = find(window, SCHEMA_KEY) else {
        return false;
    };
    let rest = body.get(at + SCHEMA_KEY.len()..).unwrap_or_default();
    let Some(rest) = skip_whitespace(rest).strip_prefix(b":") else {
        return false;
    };
    let Some(value) = skip_whitespace(rest).strip_prefix(b"\"") else {
        return false;
    };
    let end = value.iter().take(256).position(|&b| b == b'"').unwrap_or(0);
    contains(
        value.get(..end).unwrap_or_default(),
        META_SCHEMA_HOST.as_bytes(),
    )
}

/// A top-level object with a string `$schema` that names a json-schema.org meta-schema or sits
/// beside at least one schema keyword.
fn is_schema_root(root: &Obj) -> bool {
    let Some(uri) = root.str("$schema") else {
        return false;
    };
    if uri.contains(META_SCHEMA_HOST) {
        return true;
    }
    root.entries.iter().any(|(key, value)| match key.as_str() {
        "properties" | "patternProperties" | "$defs" | "definitions" => {
            matches!(value, Node::Object(_))
        }
        "additionalProperties" | "items" => matches!(value, Node::Object(_) | Node::Bool),
        "prefixItems" | "oneOf" | "anyOf" | "allOf" | "enum" => matches!(value, Node::Array(_)),
        "$ref" => matches!(value, Node::String(_)),
        "required" => match value {
            Node::Array(items) => items.iter().all(|i| matches!(i, Node::String(_))),
            _ => false,
        },
        "type" => !type_names(value).is_empty(),
        _ => false,
    })
}

/// JSON Schema type names in a `type` value (a string or a list of strings).
fn type_names(value: &Node) -> Vec<&str> {
    let known = |s: &&str| JSON_TYPES.contains(s);
    match value {
        Node::String(s) => [s.as_str()].into_iter().filter(known).collect(),
        Node::Array(items) => items
            .iter()
            .filter_map(Node::as_str)
            .filter(known)
            .collect(),
        _ => Vec::new(),
    }
}

/// The last path segment without `.schema.json` or `.json` (ASCII case-insensitive).
fn file_stem(path: &str) -> &str {
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    for suffix in [NAME_SUFFIX, ".json"] {
        if ends_with_ignore_case(name, suffix)
            && let Some(stem) = name.get(..name.len() - suffix.len())
            && !stem.is_empty()
        {
            return stem;
        }
    }
    name
}

/// `draft-07` from `http://json-schema.org/draft-07/schema#`, `2020-12` from
/// `https://json-schema.org/draft/2020-12/schema`.
fn draft_name(uri: &str) -> Option<String> {
    let segments: Vec<&str> = uri.split(['/', '#', '?']).collect();
    for (i, segment) in segments.iter().enumerate() {
        if let Some(number) = segment.strip_prefix("draft-")
            && !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
        {
            return Some((*segment).to_string());
        }
        if *segment == "draft"
            && let Some(next) = segments.get(i + 1)
            && is_year_month(next)
        {
            return Some((*next).to_string());
        }
    }
    None
}

fn is_year_month(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 7
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

// ---------------------------------------------------------------------------------------------
// Model.

fn build_model(path: &str, root: &Obj) -> Model {
    let stem = file_stem(path);
    let name = root.text("title").unwrap_or(stem).to_string();
    let root_id = root.text("$id").or_else(|| root.text("id"));

    let mut entities = Vec::new();
    let mut budget = MAX_EXPANDED_STEPS;
    let root_attributes = flatten(root, root, &mut budget);
    let object_type = root
        .get("type")
        .is_some_and(|t| type_names(t).contains(&"object"));
    let has_properties = matches!(root.get("properties"), Some(Node::Object(_)));
    let root_entity =
        (has_properties || object_type || !root_attributes.is_empty()).then(|| Entity {
            guid: root_id.map(str::to_string),
            name: name.clone(),
            code: None,
            container: None,
            description: root.owned("description"),
            derived_from: None,
            attributes: root_attributes,
        });

    entities.extend(root_entity);
    for (key, value) in &root.entries {
        if (key == "definitions" || key == "$defs")
            && let Node::Object(defs) = value
        {
            for (def_name, def) in &defs.entries {
                entities.push(definition_entity(def_name, def, root, &mut budget));
            }
        }
    }

    Model {
        name,
        guid: root_id.map(str::to_string),
        db_vendor: Some("JSON Schema".to_string()),
        app_target: root.str("$schema").and_then(draft_name),
        db_version: None,
        description: root.owned("description"),
        containers: Vec::new(),
        entities,
        relationships: Vec::new(),
        views: Vec::new(),
        definitions: Vec::new(),
    }
}

fn definition_entity(name: &str, def: &Node, root: &Obj, budget: &mut usize) -> Entity {
    let obj = def.as_object();
    Entity {
        guid: obj.and_then(|o| o.owned("$id")),
        name: name.to_string(),
        code: (!name.is_empty()).then(|| name.to_string()),
        container: None,
        description: obj.and_then(|o| o.owned("description")),
        derived_from: None,
        attributes: obj.map(|o| flatten(o, root, budget)).unwrap_or_default(),
    }
}

/// One step of the walk.
enum Task<'a> {
    /// Emit an attribute for `node`, then walk below it.
    Attribute {
        name: &'a str,
        node: &'a Node,
        parent: Option<usize>,
        depth: u32,
        required: bool,
    },
    /// Walk a schema's contents (properties, compositions, items) without a node of its own.
    Contents {
        schema: &'a Obj,
        parent: Option<usize>,
        depth: u32,
        /// `required` names from the structure levels above, up to the enclosing attribute.
        required: Required<'a>,
    },
}

/// The `required` names of the structure levels above a schema, up to the enclosing attribute: each
/// level's own names, linked to the level above. Shared, not copied: a level with thousands of names and
/// thousands of sub-schemas costs its names once (a copy per sub-schema would grow with their product).
#[derive(Clone, Default)]
struct Required<'a>(Option<std::rc::Rc<RequiredLevel<'a>>>);

struct RequiredLevel<'a> {
    names: HashSet<&'a str>,
    up: Required<'a>,
}

impl<'a> Required<'a> {
    /// These names added below the levels so far.
    fn with(&self, names: impl Iterator<Item = &'a str>) -> Required<'a> {
        let names: HashSet<&'a str> = names.collect();
        if names.is_empty() {
            return self.clone();
        }
        Required(Some(std::rc::Rc::new(RequiredLevel {
            names,
            up: self.clone(),
        })))
    }

    fn contains(&self, name: &str) -> bool {
        let mut level = self.0.as_deref();
        while let Some(l) = level {
            if l.names.contains(name) {
                return true;
            }
            level = l.up.0.as_deref();
        }
        false
    }
}

const ITEM_NAME: &str = "[]";

/// Pre-order flattening of the attributes below an entity's `schema` (the schema itself is not
/// counted). `root` holds the definitions that local `$ref`s at the entity level name; `budget`
/// is what is left of the file's [`MAX_EXPANDED_STEPS`].
fn flatten<'a>(schema: &'a Obj, root: &'a Obj, budget: &mut usize) -> Vec<Attribute> {
    let mut out: Vec<Attribute> = Vec::new();
    let mut walk = Walk {
        root,
        expanded: HashSet::from([std::ptr::from_ref(schema)]),
        budget,
    };
    // Each task with whether it comes from an expanded reference.
    let mut stack: Vec<(Task<'_>, bool)> = vec![(
        Task::Contents {
            schema,
            parent: None,
            depth: 0,
            required: Required::default(),
        },
        false,
    )];
    let mut children: Vec<(Task<'_>, bool)> = Vec::new();

    while let Some((task, expanded)) = stack.pop() {
        if expanded {
            // Steps through references share the file's budget: once it is spent, what is left
            // of the expanded contents is dropped.
            if *walk.budget == 0 {
                continue;
            }
            *walk.budget -= 1;
        }
        match task {
            Task::Contents {
                schema,
                parent,
                depth,
                required,
            } => {
                walk.push_contents(&mut children, schema, parent, depth, required, expanded);
            }
            Task::Attribute {
                name,
                node,
                parent,
                depth,
                required,
            } => {
                let path = super::child_path(
                    parent.and_then(|p| out.get(p)).map(|p| p.path.as_str()),
                    name,
                );
                let obj = node.as_object();
                let (data_type, mode) = obj.map(data_type_and_mode).unwrap_or_default();
                let index = out.len();
                out.push(Attribute {
                    guid: obj.and_then(|o| o.owned("$id")),
                    path,
                    name: name.to_string(),
                    code: None,
                    data_type,
                    mode,
                    required,
                    primary_key: false,
                    description: obj.and_then(|o| o.owned("description")),
                    depth,
                    parent,
                });
                if let Some(obj) = obj {
                    walk.push_contents(
                        &mut children,
                        obj,
                        Some(index),
                        depth.saturating_add(1),
                        Required::default(),
                        expanded,
                    );
                }
            }
        }
        if expanded {
            *walk.budget = walk.budget.saturating_sub(children.len());
        }
        // Children in document order: push them reversed so the first is popped first.
        stack.extend(children.drain(..).rev());
    }
    out
}

/// How many steps (schemas and attributes) one file's entities walk through expanded local
/// references, at most: each expansion walks a definition again, so this bounds the work on
/// files made of references to references.
const MAX_EXPANDED_STEPS: usize = 1_000_000;

/// What one entity's walk knows beyond its tasks.
struct Walk<'a, 'b> {
    /// The document, whose `definitions` / `$defs` local references name.
    root: &'a Obj,
    /// The schemas already walked at the entity level (the entity's own first): each definition
    /// is expanded once per entity, so reference cycles end.
    expanded: HashSet<*const Obj>,
    /// Steps through expanded references left for the file.
    budget: &'b mut usize,
}

impl<'a> Walk<'a, '_> {
    /// The tasks for one schema's contents, in document order. At the entity level (no
    /// `parent`), a local `$ref` to a definition is structure too: the definition's contents
    /// are walked in its place, once per entity. `expanded`: `schema` was reached through such a
    /// reference (and so are the tasks it gives).
    fn push_contents(
        &mut self,
        out: &mut Vec<(Task<'a>, bool)>,
        schema: &'a Obj,
        parent: Option<usize>,
        depth: u32,
        required: Required<'a>,
        expanded: bool,
    ) {
        let required = match schema.get("required") {
            Some(Node::Array(names)) => required.with(names.iter().filter_map(Node::as_str)),
            _ => required,
        };
        for (key, value) in &schema.entries {
            match (key.as_str(), value) {
                ("properties", Node::Object(props)) => {
                    for (name, node) in &props.entries {
                        let task = Task::Attribute {
                            name,
                            node,
                            parent,
                            depth,
                            required: required.contains(name.as_str()),
                        };
                        out.push((task, expanded));
                    }
                }
                ("allOf" | "anyOf" | "oneOf", Node::Array(alternatives)) => {
                    for alternative in alternatives.iter().filter_map(Node::as_object) {
                        let task = Task::Contents {
                            schema: alternative,
                            parent,
                            depth,
                            required: required.clone(),
                        };
                        out.push((task, expanded));
                    }
                }
                ("then" | "else", Node::Object(branch)) => {
                    let task = Task::Contents {
                        schema: branch,
                        parent,
                        depth,
                        required: required.clone(),
                    };
                    out.push((task, expanded));
                }
                ("$ref", Node::String(reference)) if parent.is_none() => {
                    if let Some(target) = resolve(self.root, reference)
                        && self.expanded.insert(std::ptr::from_ref(target))
                    {
                        let task = Task::Contents {
                            schema: target,
                            parent,
                            depth,
                            required: required.clone(),
                        };
                        out.push((task, true));
                    }
                }
                ("items" | "prefixItems", _) => {
                    let list: &[Node] = match value {
                        Node::Array(list) => list,
                        single @ Node::Object(_) => std::slice::from_ref(single),
                        _ => &[],
                    };
                    for item in list.iter().filter(|i| matches!(i, Node::Object(_))) {
                        let task = Task::Attribute {
                            name: ITEM_NAME,
                            node: item,
                            parent,
                            depth,
                            required: false,
                        };
                        out.push((task, expanded));
                    }
                }
                _ => {}
            }
        }
    }
}

/// The definition a local reference names: `#/definitions/NAME` or `#/$defs/NAME` of the
/// document (`~1` and `~0` unescaped as in a JSON pointer; no deeper paths, no other files).
fn resolve<'a>(root: &'a Obj, reference: &str) -> Option<&'a Obj> {
    let (table, name) = reference
        .strip_prefix("#/definitions/")
        .map(|name| ("definitions", name))
        .or_else(|| {
            reference
                .strip_prefix("#/$defs/")
                .map(|name| ("$defs", name))
        })?;
    if name.contains('/') {
        return None;
    }
    let name = name.replace("~1", "/").replace("~0", "~");
    root.get(table)?.as_object()?.get(&name)?.as_object()
}

/// A schema's own type name: `reference` for a `$ref`, else its `type` (list joined with `|`).
fn own_type(schema: &Obj) -> Option<String> {
    if schema.text("$ref").is_some() {
        return Some("reference".to_string());
    }
    match schema.get("type") {
        Some(Node::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Node::Array(types)) => {
            let names: Vec<&str> = types
                .iter()
                .filter_map(Node::as_str)
                .filter(|s| !s.is_empty())
                .collect();
            (!names.is_empty()).then(|| names.join("|"))
        }
        _ => None,
    }
}

fn data_type_and_mode(schema: &Obj) -> (Option<String>, Option<String>) {
    if let Some(reference) = schema.text("$ref") {
        return (Some("reference".to_string()), Some(reference.to_string()));
    }
    let format = schema.owned("format");
    if let Some(ty) = own_type(schema) {
        return (Some(ty), format);
    }
    let alternatives: Vec<&Obj> = match (
        schema.get("anyOf"),
        schema.get("oneOf"),
        schema.get("allOf"),
    ) {
        (Some(Node::Array(list)), _, _) | (None, Some(Node::Array(list)), _) => {
            list.iter().filter_map(Node::as_object).collect()
        }
        (None, None, Some(Node::Array(list))) if list.len() == 1 => {
            list.iter().filter_map(Node::as_object).collect()
        }
        _ => Vec::new(),
    };
    let mut names: Vec<String> = Vec::new();
    let mut refs: Vec<&str> = Vec::new();
    for alternative in alternatives {
        if let Some(name) = own_type(alternative)
            && !names.contains(&name)
        {
            names.push(name);
        }
        if let Some(reference) = alternative.text("$ref")
            && !refs.contains(&reference)
        {
            refs.push(reference);
        }
    }
    let data_type = (!names.is_empty()).then(|| names.join("|"));
    let mode = if refs.is_empty() {
        format
    } else {
        Some(refs.join("|"))
    };
    (data_type, mode)
}

// ---------------------------------------------------------------------------------------------
// An ordered JSON tree: `serde_json::Value` sorts object keys, and property order matters here.

#[derive(Debug)]
enum Node {
    Null,
    Bool,
    Number,
    String(String),
    Array(Vec<Node>),
    Object(Obj),
}

/// A JSON object's entries in document order (a repeated key keeps its first position and its
/// last value).
#[derive(Debug)]
struct Obj {
    entries: Vec<(String, Node)>,
}

impl Node {
    fn as_object(&self) -> Option<&Obj> {
        match self {
            Node::Object(obj) => Some(obj),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }
}

impl Obj {
    fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string value (possibly empty).
    fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Node::as_str)
    }

    /// A non-empty string value.
    fn text(&self, key: &str) -> Option<&str> {
        self.str(key).filter(|s| !s.is_empty())
    }

    fn owned(&self, key: &str) -> Option<String> {
        self.text(key).map(str::to_string)
    }
}

/// Objects this large switch from a linear scan to a map for duplicate keys.
const INDEX_FROM: usize = 16;

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Bool)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Number)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Node)> = Vec::new();
        let mut index: Option<HashMap<String, usize>> = None;
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Node>()?;
            let existing = match &index {
                Some(index) => index.get(&key).copied(),
                None => entries.iter().position(|(k, _)| *k == key),
            };
            if let Some(slot) = existing.and_then(|i| entries.get_mut(i)) {
                slot.1 = value;
                continue;
            }
            if let Some(index) = &mut index {
                index.insert(key.clone(), entries.len());
            }
            entries.push((key, value));
            if index.is_none() && entries.len() >= INDEX_FROM {
                index = Some(
                    entries
                        .iter()
                        .enumerate()
                        .map(|(i, (k, _))| (k.clone(), i))
                        .collect(),
                );
            }
        }
        Ok(Node::Object(Obj { entries }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse_model(path: &str, bytes: &[u8]) -> Model {
        match parse(path, bytes) {
            Parsed::Model(m) => m,
            other => panic!("expected a model, got {other:?}"),
        }
    }

    const ORDER: &str = r##"{
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://example.com/order.schema.json",
        "title": "Order",
        "description": "A customer order",
        "type": "object",
        "required": ["id", "customer", "lines"],
        "properties": {
            "id": {"type": "string", "format": "uuid", "description": "Order id"},
            "customer": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "address": {"$ref": "#/$defs/Address"}
                }
            },
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["sku"],
                    "properties": {
                        "sku": {"type": "string"},
                        "quantity": {"type": "integer", "minimum": 1}
                    }
                }
            },
            "tags": {"type": "array", "items": {"type": "string"}},
            "note": {"type": ["string", "null"]},
            "payment": {
                "oneOf": [
                    {"type": "object", "required": ["card"],
                     "properties": {"card": {"type": "string"}}},
                    {"type": "object", "properties": {"iban": {"type": "string"}}}
                ]
            },
            "discount": {"anyOf": [{"$ref": "#/$defs/Money"}, {"type": "null"}]},
            "flexible": true
        },
        "$defs": {
            "Address": {
                "type": "object",
                "description": "A postal address",
                "required": ["city"],
                "properties": {
                    "street": {"type": "string"},
                    "city": {"type": "string"},
                    "next": {"$ref": "#/$defs/Address"}
                }
            },
            "Money": {
                "type": "object",
                "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}}
            },
            "Status": {"type": "string", "enum": ["open", "closed"]}
        }
    }"##;

    fn summary(attrs: &[Attribute]) -> Vec<(&str, Option<&str>, bool, u32)> {
        attrs
            .iter()
            .map(|a| (a.path.as_str(), a.data_type.as_deref(), a.required, a.depth))
            .collect()
    }

    #[test]
    fn a_realistic_schema_maps_to_entities_and_attributes() {
        let model = parse_model("schemas/order.schema.json", ORDER.as_bytes());
        assert_eq!(model.name, "Order");
        assert_eq!(model.description.as_deref(), Some("A customer order"));
        assert_eq!(model.db_vendor.as_deref(), Some("JSON Schema"));
        assert_eq!(model.app_target.as_deref(), Some("2020-12"));
        assert_eq!(
            model.guid.as_deref(),
            Some("https://example.com/order.schema.json")
        );
        assert!(model.definitions.is_empty() && model.containers.is_empty());

        let names: Vec<(&str, Option<&str>, usize)> = model
            .entities
            .iter()
            .map(|e| (e.name.as_str(), e.code.as_deref(), e.attributes.len()))
            .collect();
        assert_eq!(
            names,
            [
                ("Order", None, 16),
                ("Address", Some("Address"), 3),
                ("Money", Some("Money"), 2),
                ("Status", Some("Status"), 0),
            ]
        );
        assert_eq!(model.entity_count(), 4);
        assert_eq!(model.attribute_count(), 21);

        let order = &model.entities[0];
        check_tree_invariants(&order.attributes, "order");
        assert_eq!(
            summary(&order.attributes),
            [
                ("id", Some("string"), true, 0),
                ("customer", Some("object"), true, 0),
                ("customer.name", Some("string"), true, 1),
                ("customer.address", Some("reference"), false, 1),
                ("lines", Some("array"), true, 0),
                ("lines.[]", Some("object"), false, 1),
                ("lines.[].sku", Some("string"), true, 2),
                ("lines.[].quantity", Some("integer"), false, 2),
                ("tags", Some("array"), false, 0),
                ("tags.[]", Some("string"), false, 1),
                ("note", Some("string|null"), false, 0),
                ("payment", Some("object"), false, 0),
                ("payment.card", Some("string"), true, 1),
                ("payment.iban", Some("string"), false, 1),
                ("discount", Some("reference|null"), false, 0),
                ("flexible", None, false, 0),
            ]
        );
        let by_path = |p: &str| {
            order
                .attributes
                .iter()
                .find(|a| a.path == p)
                .expect("attribute")
        };
        assert_eq!(by_path("id").mode.as_deref(), Some("uuid"));
        assert_eq!(by_path("id").description.as_deref(), Some("Order id"));
        assert_eq!(
            by_path("customer.address").mode.as_deref(),
            Some("#/$defs/Address")
        );
        assert_eq!(by_path("customer.address").parent, Some(1));
        assert_eq!(by_path("lines.[].sku").parent, Some(5));
        assert_eq!(by_path("payment.iban").parent, Some(11));
        assert_eq!(by_path("discount").mode.as_deref(), Some("#/$defs/Money"));
        assert!(order.attributes.iter().all(|a| !a.primary_key));

        let address = &model.entities[1];
        assert_eq!(address.description.as_deref(), Some("A postal address"));
        assert_eq!(
            summary(&address.attributes),
            [
                ("street", Some("string"), false, 0),
                ("city", Some("string"), true, 0),
                ("next", Some("reference"), false, 0),
            ]
        );
    }

    #[test]
    fn draft_07_definitions_and_root_compositions() {
        let json = r##"{
            "$schema": "http://json-schema.org/draft-07/schema#",
            "id": "urn:pets",
            "required": ["kind"],
            "allOf": [
                {"properties": {"kind": {"type": "string"}}},
                {"if": {"properties": {"kind": {"const": "dog"}}},
                 "then": {"properties": {"bark": {"type": "boolean"}}, "required": ["bark"]},
                 "else": {"properties": {"purr": {"type": "boolean"}}}}
            ],
            "definitions": {
                "pet": {"type": "object", "properties": {
                    "tags": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
                    "owner": {"allOf": [{"$ref": "#/definitions/person"}]},
                    "alias": {"anyOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]}
                }},
                "person": {"properties": {"name": {"type": "string"}}},
                "flag": true
            }
        }"##;
        let model = parse_model("models/pets.json", json.as_bytes());
        assert_eq!(model.name, "pets");
        assert_eq!(model.app_target.as_deref(), Some("draft-07"));
        assert_eq!(model.guid.as_deref(), Some("urn:pets"));
        let names: Vec<&str> = model.entities.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["pets", "pet", "person", "flag"]);
        assert_eq!(
            summary(&model.entities[0].attributes),
            [
                ("kind", Some("string"), true, 0),
                ("bark", Some("boolean"), true, 0),
                ("purr", Some("boolean"), false, 0),
            ]
        );
        let pet = &model.entities[1];
        check_tree_invariants(&pet.attributes, "pet");
        assert_eq!(
            summary(&pet.attributes),
            [
                ("tags", Some("array"), false, 0),
                ("tags.[]", Some("string"), false, 1),
                ("tags.[]", Some("integer"), false, 1),
                ("owner", Some("reference"), false, 0),
                ("alias", Some("string"), false, 0),
            ]
        );
        assert_eq!(
            pet.attributes[3].mode.as_deref(),
            Some("#/definitions/person")
        );
        assert!(model.entities[3].attributes.is_empty());
    }

    #[test]
    fn a_root_all_of_merges_its_subschemas_and_local_references() {
        let json = r##"{
            "$schema": "http://json-schema.org/draft-07/schema#",
            "title": "Dog",
            "required": ["name", "bark"],
            "allOf": [
                {"$ref": "#/definitions/Animal"},
                {"$ref": "#/$defs/a~1b"},
                {"properties": {"bark": {"type": "boolean"}}},
                {"$ref": "#/definitions/Animal"},
                {"$ref": "other.json#/definitions/Animal"},
                {"$ref": "#/definitions/Animal/properties/name"},
                {"$ref": "#/definitions/Missing"},
                {"$ref": "#"}
            ],
            "definitions": {
                "Animal": {"allOf": [{"$ref": "#/definitions/Living"}],
                           "properties": {"name": {"type": "string"},
                                          "mother": {"$ref": "#/definitions/Animal"}}},
                "Living": {"required": ["born"], "properties": {"born": {"type": "string"}},
                           "oneOf": [{"$ref": "#/definitions/Animal"}]},
                "Alias": {"$ref": "#/definitions/Living"},
                "Self": {"anyOf": [{"$ref": "#/definitions/Self"}],
                         "properties": {"x": {}}}
            },
            "$defs": {"a/b": {"properties": {"slash": {"type": "integer"}}}}
        }"##;
        let model = parse_model("dog.json", json.as_bytes());
        let names: Vec<(&str, usize)> = model
            .entities
            .iter()
            .map(|e| (e.name.as_str(), e.attributes.len()))
            .collect();
        assert_eq!(
            names,
            [
                ("Dog", 5),
                ("Animal", 3),
                ("Living", 3),
                ("Alias", 3),
                ("Self", 1),
                ("a/b", 1)
            ]
        );
        let dog = &model.entities[0];
        check_tree_invariants(&dog.attributes, "dog");
        // Animal's own required list is its own; the root's applies to everything merged.
        assert_eq!(
            summary(&dog.attributes),
            [
                ("born", Some("string"), true, 0),
                ("name", Some("string"), true, 0),
                ("mother", Some("reference"), false, 0),
                ("slash", Some("integer"), false, 0),
                ("bark", Some("boolean"), true, 0),
            ]
        );
        // A nested `$ref` stays a reference; a definition that refers back to itself stops.
        assert_eq!(
            summary(&model.entities[1].attributes),
            [
                ("born", Some("string"), true, 0),
                ("name", Some("string"), false, 0),
                ("mother", Some("reference"), false, 0),
            ]
        );
        assert_eq!(
            summary(&model.entities[2].attributes),
            [
                ("born", Some("string"), true, 0),
                ("name", Some("string"), false, 0),
                ("mother", Some("reference"), false, 0),
            ]
        );

        // A root that is only a reference takes the definition's attributes.
        let json = r##"{"$schema": "http://json-schema.org/draft-07/schema#",
            "$ref": "#/definitions/Config",
            "definitions": {"Config": {"type": "object", "properties": {"a": {}, "b": {}}}}}"##;
        let model = parse_model("config.json", json.as_bytes());
        let names: Vec<(&str, usize)> = model
            .entities
            .iter()
            .map(|e| (e.name.as_str(), e.attributes.len()))
            .collect();
        assert_eq!(names, [("config", 2), ("Config", 2)]);

        // References to nothing give no root entity.
        let json = r##"{"$schema": "http://json-schema.org/draft-07/schema#",
            "$ref": "#/definitions/Nothing", "definitions": {"Empty": {}}}"##;
        let model = parse_model("nothing.json", json.as_bytes());
        assert_eq!(model.entity_count(), 1);
    }

    #[test]
    fn items_at_the_entity_level_are_walked() {
        let json = r##"{
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Rules",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id"],
                "properties": {
                    "id": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}}
                }
            },
            "$defs": {
                "Pair": {"type": "array", "prefixItems": [{"type": "string"},
                         {"$ref": "#/$defs/Point"}], "items": false},
                "Points": {"type": "array", "items": {"$ref": "#/$defs/Point"}},
                "Point": {"properties": {"x": {"type": "number"}}}
            }
        }"##;
        let model = parse_model("rules.json", json.as_bytes());
        let rules = &model.entities[0];
        assert_eq!(rules.name, "Rules");
        check_tree_invariants(&rules.attributes, "rules");
        assert_eq!(
            summary(&rules.attributes),
            [
                ("[]", Some("object"), false, 0),
                ("[].id", Some("string"), true, 1),
                ("[].tags", Some("array"), false, 1),
                ("[].tags.[]", Some("string"), false, 2),
            ]
        );
        assert_eq!(
            summary(&model.entities[1].attributes),
            [
                ("[]", Some("string"), false, 0),
                ("[]", Some("reference"), false, 0),
            ]
        );
        assert_eq!(
            model.entities[2].attributes[0].mode.as_deref(),
            Some("#/$defs/Point")
        );
        assert_eq!(model.attribute_count(), 4 + 2 + 1 + 1);

        // Draft-04 tuple items at the root, and a root array of scalars.
        let json = br#"{"$schema": "http://json-schema.org/draft-04/schema#", "type": "array",
            "items": [{"type": "string"}, {"type": "object", "properties": {"n": {}}}, 3]}"#;
        let model = parse_model("tuple.json", json);
        assert_eq!(
            summary(&model.entities[0].attributes),
            [
                ("[]", Some("string"), false, 0),
                ("[]", Some("object"), false, 0),
                ("[].n", None, false, 1),
            ]
        );
        let json = br#"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
            "items": {"type": "string"}}"#;
        let model = parse_model("names.json", json);
        assert_eq!(
            summary(&model.entities[0].attributes),
            [("[]", Some("string"), false, 0)]
        );
    }

    #[test]
    fn references_to_references_are_bounded() {
        // Every definition refers to every other: each entity expands each once, and the file
        // as a whole walks at most MAX_EXPANDED_STEPS steps through references.
        let n = 150;
        let refs: Vec<String> = (0..n)
            .map(|i| format!(r##"{{"$ref": "#/definitions/d{i}"}}"##))
            .collect();
        let refs = refs.join(",");
        let defs: Vec<String> = (0..n)
            .map(|i| format!(r#""d{i}": {{"properties": {{"p{i}": {{}}}}, "allOf": [{refs}]}}"#))
            .collect();
        let json = format!(
            r#"{{"$schema": "http://json-schema.org/draft-07/schema#", "allOf": [{refs}],
                "definitions": {{{}}}}}"#,
            defs.join(",")
        );
        let model = parse_model("mesh.json", json.as_bytes());
        assert_eq!(model.entity_count(), n + 1);
        assert_eq!(model.entities[0].attributes.len(), n);
        assert_eq!(model.entities[1].attributes.len(), n);
        // (n + 1) entities × n expansions of 2n + 2 steps each exceed the budget: the later
        // entities stop early, keeping their own attributes.
        assert!(model.attribute_count() < (n + 1) * n);
        assert!(model.attribute_count() > MAX_EXPANDED_STEPS / (2 * n + 2));
        assert!(
            model
                .entities
                .iter()
                .skip(1)
                .all(|e| !e.attributes.is_empty())
        );
        assert_eq!(model.entities[n].attributes.len(), 1);
    }

    #[test]
    fn recognition_by_name_and_by_meta_schema() {
        // By name, without `$schema`.
        let model = parse_model(
            "a/b/Customer.Schema.JSON",
            br#"{"type": "object", "properties": {"x": {}}}"#,
        );
        assert_eq!(model.name, "Customer");
        assert_eq!(model.app_target, None);
        assert_eq!(model.entities[0].name, "Customer");
        assert_eq!(model.attribute_count(), 1);

        // `$schema` with schema keywords but an unknown meta-schema URI.
        let model = parse_model(
            "api.json",
            br#"{"$schema": "https://spec.openapis.org/oas/3.1/dialect/base", "type": "string"}"#,
        );
        assert_eq!(model.entity_count(), 0);
        assert_eq!(model.app_target, None);

        // A json-schema.org meta-schema alone is enough; no root entity without structure.
        let model = parse_model(
            "x.json",
            br#"{"$schema": "http://json-schema.org/schema#", "$defs": {}}"#,
        );
        assert_eq!((model.entity_count(), model.app_target), (0, None));

        for (uri, draft) in [
            ("http://json-schema.org/draft-04/schema#", Some("draft-04")),
            (
                "http://json-schema.org/draft-06/hyper-schema",
                Some("draft-06"),
            ),
            (
                "https://json-schema.org/draft/2019-09/schema",
                Some("2019-09"),
            ),
            ("https://json-schema.org/draft/20-12/schema", None),
            ("draft-", None),
            ("", None),
        ] {
            assert_eq!(draft_name(uri).as_deref(), draft, "{uri}");
        }
    }

    #[test]
    fn property_order_is_document_order_and_duplicates_keep_the_last_value() {
        let mut props = String::new();
        for i in (0..40).rev() {
            props.push_str(&format!(r#""p{i}": {{"type": "string"}}, "#));
        }
        props.push_str(r#""p7": {"type": "integer"}"#);
        let json = format!(
            r#"{{"$schema": "http://json-schema.org/draft-07/schema#", "properties": {{{props}}}}}"#
        );
        let model = parse_model("order.json", json.as_bytes());
        let attrs = &model.entities[0].attributes;
        assert_eq!(attrs.len(), 40);
        assert_eq!(attrs[0].path, "p39");
        assert_eq!(attrs[39].path, "p0");
        assert_eq!(attrs[32].path, "p7");
        assert_eq!(attrs[32].data_type.as_deref(), Some("integer"));
    }

    #[test]
    fn invalid_json_that_claims_to_be_a_schema_reports_the_position() {
        let bytes = b"\xEF\xBB\xBF{\n  \"title\": \"x\",\n  \"properties\": {,}\n}";
        let Parsed::Invalid(err) = parse("x/customer.schema.json", bytes) else {
            panic!("expected Invalid");
        };
        assert_eq!(err.line, Some(3));
        assert!(err.column.is_some());
        assert!(err.message.starts_with("invalid JSON: "), "{}", err.message);
        assert!(!err.message.contains(" at line "), "{}", err.message);

        let marked = b"{\n  \"$schema\" : \"http://json-schema.org/draft-07/schema#\",\n  \"type\": object\n}";
        let Parsed::Invalid(err) = parse("customer.json", marked) else {
            panic!("expected Invalid");
        };
        assert_eq!(err.line, Some(3));
        assert!(err.to_string().starts_with("line 3, column "), "{err}");

        let Parsed::Invalid(err) = parse("list.schema.json", b"[1, 2]") else {
            panic!("expected Invalid");
        };
        assert_eq!((err.line, err.column), (None, None));
    }

    #[test]
    fn other_json_is_not_a_schema() {
        let cases: [(&str, &[u8]); 12] = [
            (
                "package.json",
                br#"{"$schema": "https://json.schemastore.org/package.json", "name": "pkg",
                     "type": "module", "version": "1.0.0", "dependencies": {}}"#,
            ),
            (
                "tsconfig.json",
                b"{\n  \"$schema\": \"https://json.schemastore.org/tsconfig\",\n  // comment\n  \"compilerOptions\": {}\n}",
            ),
            (
                "model.hck.json",
                br#"{"modelName": "m", "collections": [{"collectionName": "c", "properties": []}]}"#,
            ),
            ("list.json", br#"[{"$schema": "http://json-schema.org/schema#"}]"#),
            (
                "nested.json",
                br#"{"x": {"$schema": "http://json-schema.org/schema#", "type": "object"}}"#,
            ),
            ("plain.json", br#"{"type": "object", "properties": {}}"#),
            ("broken.json", br#"{"name": "x", "$schema": oops"#),
            ("number.json", br#"{"$schema": 7, "type": "object"}"#),
            ("empty.json", b""),
            ("garbage.json", b"\xFF\xFE garbage"),
            ("x.avsc", br#"{"type": "record", "name": "R", "fields": []}"#),
            ("schema.json", br#"[1, 2, 3]"#),
        ];
        for (path, input) in cases {
            assert_eq!(
                parse(path, input),
                Parsed::NotModel,
                "{path}: {}",
                String::from_utf8_lossy(input)
            );
        }
    }

    fn books() -> Vec<PathBuf> {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/models/books"
        ));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("../shared/fixtures/models/books is missing: the tests need shared/")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn hackolade_fixtures_are_not_schemas() {
        let files = books();
        assert!(files.len() > 100);
        for path in &files {
            let bytes = std::fs::read(path).expect("read fixture");
            let name = path.to_string_lossy();
            assert_eq!(parse(&name, &bytes), Parsed::NotModel, "{name}");
            assert_eq!(
                super::super::avro::parse(&name, &bytes),
                Parsed::NotModel,
                "{name}"
            );
        }
        // The one with a nested `$schema` (a JSON Schema target inside the model).
        let oracle = files
            .iter()
            .find(|p| p.to_string_lossy().contains("Oracle JSON Schema"))
            .expect("fixture");
        let bytes = std::fs::read(oracle).expect("read fixture");
        assert!(contains(&bytes, SCHEMA_KEY));
        assert_eq!(parse("Oracle JSON Schema.json", &bytes), Parsed::NotModel);
    }

    #[test]
    fn deeply_nested_input_does_not_overflow() {
        let depth = 10_000;
        let mut arrays = "[".repeat(depth);
        arrays.push_str(&"]".repeat(depth));
        assert_eq!(parse("deep.json", arrays.as_bytes()), Parsed::NotModel);
        let claimed = format!(r#"{{"$schema": "http://json-schema.org/schema#", "x": {arrays}}}"#);
        assert!(matches!(
            parse("deep.json", claimed.as_bytes()),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse("deep.schema.json", arrays.as_bytes()),
            Parsed::Invalid(_)
        ));

        // As deep as serde_json allows: nested `properties` all the way down.
        let levels = 60;
        let mut nested = String::new();
        for i in 0..levels {
            nested.push_str(&format!(r#"{{"properties": {{"n{i}": "#));
        }
        nested.push_str("{}");
        nested.push_str(&"}}".repeat(levels));
        let json = format!(r#"{{"$schema": "http://json-schema.org/schema#", "x": {nested}}}"#);
        let json = json.replacen(r#""x": {"properties""#, r#""properties""#, 1);
        let json = json.replacen("}}}", "}}", 1);
        let model = match parse("deep.json", json.as_bytes()) {
            Parsed::Model(m) => m,
            other => panic!("{other:?}"),
        };
        let attrs = &model.entities[0].attributes;
        assert_eq!(attrs.len(), levels);
        check_tree_invariants(attrs, "deep");
        assert_eq!(attrs.last().map(|a| a.depth), Some(59));

        // Compositions nested as deep as allowed: structure only, no recursion.
        let mut all_of = String::from(r#"{"properties": {"leaf": {}}}"#);
        for _ in 0..60 {
            all_of = format!(r#"{{"allOf": [{all_of}]}}"#);
        }
        let json =
            format!(r#"{{"$schema": "http://json-schema.org/schema#", "allOf": [{all_of}]}}"#);
        let model = parse_model("deep.json", json.as_bytes());
        assert_eq!(
            summary(&model.entities[0].attributes),
            [("leaf", None, false, 0)]
        );
    }
    use crate::model::testutil::{Rng, check_tree_invariants};

    #[test]
    fn random_mutations_never_panic() {
        let original = ORDER.as_bytes();
        let interesting: &[u8] = b"{}[]\",:0-e.tn\\ \n\xFF$";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut outcomes = [0usize; 3];
        for round in 0..3000 {
            let bytes = rng.mutate(original, interesting);
            let path = if round % 2 == 0 {
                "o.schema.json"
            } else {
                "o.json"
            };
            let slot = match parse(path, &bytes) {
                Parsed::NotModel => 0,
                Parsed::Model(m) => {
                    for e in &m.entities {
                        check_tree_invariants(&e.attributes, "mutation");
                    }
                    1
                }
                Parsed::Invalid(_) => 2,
            };
            outcomes[slot] += 1;
        }
        println!("mutations: not-model/model/invalid = {outcomes:?}");
        assert!(outcomes[1] > 0 && outcomes[2] > 0);
    }

    #[test]
    fn structural_mutations_never_panic() {
        // Replace values inside the tree with every JSON type, so the walk meets wrong types.
        let keys = [
            "\"properties\": ",
            "\"type\": ",
            "\"items\": ",
            "\"required\": ",
            "\"oneOf\": ",
            "\"anyOf\": ",
            "\"$ref\": ",
            "\"$defs\": ",
            "\"title\": ",
            "\"$schema\": ",
            "\"format\": ",
        ];
        let replacements = [
            "null, \"x\": ",
            "7, \"x\": ",
            "\"s\", \"x\": ",
            "[{}], \"x\": ",
            "{\"a\": [true]}, \"x\": ",
            "false, \"x\": ",
        ];
        for key in keys {
            for replacement in replacements {
                for (at, _) in ORDER.match_indices(key) {
                    let at = at + key.len();
                    let mutated = format!("{}{}{}", &ORDER[..at], replacement, &ORDER[at..]);
                    if let Parsed::Model(m) = parse("o.json", mutated.as_bytes()) {
                        for e in &m.entities {
                            check_tree_invariants(&e.attributes, "structural");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn wide_required_lists_over_many_subschemas_are_shared_not_copied() {
        let names: Vec<String> = (0..5_000).map(|i| format!("\"p{i}\"")).collect();
        let empties = vec!["{}"; 5_000].join(",");
        let json = format!(
            r#"{{"$schema": "http://json-schema.org/draft-07/schema#", "required": [{}],
                "properties": {{"p1": {{"type": "string"}}, "q": {{"type": "string"}}}},
                "allOf": [{empties}, {{"properties": {{"p2": {{"type": "integer"}}}}}}]}}"#,
            names.join(",")
        );
        let model = parse_model("wide.schema.json", json.as_bytes());
        let attrs = &model.entities[0].attributes;
        let required: Vec<(&str, bool)> = attrs
            .iter()
            .map(|a| (a.path.as_str(), a.required))
            .collect();
        assert_eq!(required, [("p1", true), ("q", false), ("p2", true)]);
    }
}
