//! Avro schemas (`*.avsc`) and protocols (`*.avpr`) → [`Model`].
//!
//! Recognition is by name only: a path ending with `.avsc` or `.avpr` (ASCII case-insensitive)
//! claims to be Avro, anything else is [`Parsed::NotModel`] without being read. A claimed file
//! that is not valid JSON is [`Parsed::Invalid`] with `serde_json`'s line and column. Its top level
//! must be one of:
//!
//! - a named type object: a `record` (or protocol `error`), or an `enum` / `fixed`;
//! - a JSON array (a union of types, the usual way to put several named types in one file);
//! - a protocol: an object with a string `protocol`, or without `type` but with a `types` array.
//!
//! Anything else (a primitive, an `array` / `map` schema, other JSON) is [`Parsed::Invalid`]: "an
//! Avro schema must be a record, an array of types or a protocol".
//!
//! Mapping (the Hackolade conventions of `hackolade.rs` apply: pre-order flattening, paths joined
//! with `.`, `depth`, `parent` index; empty strings count as absent):
//!
//! - Model: `name` = the full name (`namespace.name`) of a single top-level named type, or of the
//!   protocol; the file name without `.avsc` / `.avpr` for a top-level array (or when the name is
//!   missing). `description` = the top-level `doc`; `db_vendor` = `"Avro"`; no GUID, app target,
//!   version, relationships, views or definitions. `containers` = the entities' namespaces, each
//!   once, in order.
//! - Entities: each named type at the top level (the schema itself, the array's members, the
//!   protocol's `types`). A `record` / `error` is an entity with its fields as attributes; an
//!   `enum` or `fixed` is an entity without attributes (so the types other records refer to by
//!   name are listed too). `name` = the short name, `code` = the full name, `container` = the
//!   namespace (its own `namespace`, the dotted part of a full `name`, else the protocol's
//!   namespace), `description` = `doc`. Other top-level members (primitives, references by name,
//!   `array` / `map` schemas) are skipped. Named types defined inside fields are walked as nested
//!   attributes, not entities.
//! - Attributes: one per field, named by `name` (`?` when missing), `description` = `doc`.
//!   - `data_type`: the primitive or referenced type's name (`long`, `com.example.Address`), the
//!     complex kind (`record`, `enum`, `array`, `map`, `fixed`) of an inline type, or for a union
//!     its members' names joined with `|` (`null|string`, `null|record`). A type object with a
//!     `logicalType` keeps its base type (`long`).
//!   - `mode`: the `logicalType` (`timestamp-millis`, `decimal`), else the name of an inline
//!     named type (`Address`); for a union, the members' modes joined with `|`.
//!   - `required`: the type is not `null` and not a union with a `null` member, and the field has
//!     no `default: null`. `primary_key` is always false; `code` and `guid` are `None`.
//!   - Below a field: a record's fields; an array's `items` as one attribute named `[]` and a
//!     map's `values` as one attribute named `{}` (always, scalar items too, like Hackolade's array
//!     items: `orders.[]`, `orders.[].total`, `attributes.{}`), whose own contents follow. A union
//!     is structure: each member's contents are walked under the same attribute. Item and value
//!     nodes are required when their type is not nullable. References by name are not resolved
//!     (no cycles).
//!
//! The walk uses an explicit stack (no recursion); `serde_json`'s recursion limit (128) bounds the
//! parsed tree, so deeply nested input cannot overflow the stack.

use serde_json::{Map, Value};

use super::json;
use super::{Attribute, Container, Entity, Format, Model, ParseError, Parsed};

type Object = Map<String, Value>;

/// The Avro format (`*.avsc` schemas, `*.avpr` protocols).
pub(crate) struct Avro;

impl Format for Avro {
    fn default_globs(&self) -> &'static [&'static str] {
        &["**/*.avsc", "**/*.avpr"]
    }
    fn name(&self) -> &'static str {
        "avro"
    }
    fn parse(&self, path: &str, bytes: &[u8]) -> Parsed {
        parse(path, bytes)
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";
const SUFFIXES: &[&str] = &[".avsc", ".avpr"];
const NOT_A_SCHEMA: &str = "an Avro schema must be a record, an array of types or a protocol";
/// Bound on `{"type": {"type": …}}` wrappers followed when naming a type.
const MAX_WRAPPERS: usize = 64;

/// Parses the bytes of a file that may be an Avro schema or protocol (see the module docs).
#[must_use]
pub(crate) fn parse(path: &str, bytes: &[u8]) -> Parsed {
    let Some(stem) = claimed_stem(path) else {
        return Parsed::NotModel;
    };
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => return Parsed::Invalid(json::error(&err)),
    };
    match build_model(stem, &value) {
        Some(model) => Parsed::Model(model),
        None => Parsed::Invalid(ParseError {
            message: NOT_A_SCHEMA.to_string(),
            line: None,
            column: None,
        }),
    }
}

/// The file name without its Avro suffix, when the path has one.
fn claimed_stem(path: &str) -> Option<&str> {
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    SUFFIXES.iter().find_map(|suffix| {
        let cut = name.len().checked_sub(suffix.len())?;
        let tail = name.get(cut..)?;
        if tail.eq_ignore_ascii_case(suffix) {
            name.get(..cut)
        } else {
            None
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Small accessors: tolerate any type, treat "" as absent.

fn text<'a>(obj: &'a Object, key: &str) -> Option<&'a str> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        _ => None,
    }
}

fn owned(obj: &Object, key: &str) -> Option<String> {
    text(obj, key).map(str::to_string)
}

fn array<'a>(obj: &'a Object, key: &str) -> &'a [Value] {
    match obj.get(key) {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

fn is_named_kind(kind: &str) -> bool {
    matches!(kind, "record" | "error" | "enum" | "fixed")
}

fn is_protocol(obj: &Object) -> bool {
    matches!(obj.get("protocol"), Some(Value::String(_)))
        || (obj.get("type").is_none() && matches!(obj.get("types"), Some(Value::Array(_))))
}

/// A named type's short name, namespace and full name. `name` may itself be a full name; else
/// the type's own `namespace` applies (`""` is the null namespace), else the enclosing one.
fn names<'a>(obj: &'a Object, enclosing: Option<&'a str>) -> (&'a str, Option<&'a str>, String) {
    let name = text(obj, "name").unwrap_or_default();
    if let Some((namespace, short)) = name.rsplit_once('.') {
        let namespace = (!namespace.is_empty()).then_some(namespace);
        return (short, namespace, name.to_string());
    }
    let namespace = match obj.get("namespace") {
        Some(Value::String(s)) => (!s.is_empty()).then_some(s.as_str()),
        _ => enclosing,
    };
    let full = match namespace {
        Some(ns) if !name.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    };
    (name, namespace, full)
}

// ---------------------------------------------------------------------------------------------
// Model.

fn build_model(stem: &str, value: &Value) -> Option<Model> {
    let (name, description, types, enclosing): (String, Option<String>, &[Value], Option<&str>) =
        match value {
            Value::Array(types) => (stem.to_string(), None, types, None),
            Value::Object(obj) if is_protocol(obj) => {
                let namespace = text(obj, "namespace");
                let name = match text(obj, "protocol") {
                    Some(p) if p.contains('.') => p.to_string(),
                    Some(p) => namespace.map_or_else(|| p.to_string(), |ns| format!("{ns}.{p}")),
                    None => stem.to_string(),
                };
                (name, owned(obj, "doc"), array(obj, "types"), namespace)
            }
            Value::Object(obj) if text(obj, "type").is_some_and(is_named_kind) => {
                let (_, _, full) = names(obj, None);
                let name = if full.is_empty() {
                    stem.to_string()
                } else {
                    full
                };
                (name, owned(obj, "doc"), std::slice::from_ref(value), None)
            }
            _ => return None,
        };

    let entities: Vec<Entity> = types
        .iter()
        .filter_map(Value::as_object)
        .filter(|t| text(t, "type").is_some_and(is_named_kind))
        .map(|t| build_entity(t, enclosing))
        .collect();

    let mut containers: Vec<Container> = Vec::new();
    for namespace in entities.iter().filter_map(|e| e.container.as_deref()) {
        if !containers.iter().any(|c| c.name == namespace) {
            containers.push(Container {
                guid: None,
                name: namespace.to_string(),
            });
        }
    }

    Some(Model {
        name,
        guid: None,
        db_vendor: Some("Avro".to_string()),
        app_target: None,
        db_version: None,
        description,
        containers,
        entities,
        relationships: Vec::new(),
        views: Vec::new(),
        definitions: Vec::new(),
    })
}

fn build_entity(obj: &Object, enclosing: Option<&str>) -> Entity {
    let (short, namespace, full) = names(obj, enclosing);
    let attributes = if matches!(text(obj, "type"), Some("record" | "error")) {
        flatten(array(obj, "fields"))
    } else {
        Vec::new()
    };
    Entity {
        guid: None,
        name: short.to_string(),
        code: (!full.is_empty()).then_some(full),
        container: namespace.map(str::to_string),
        description: owned(obj, "doc"),
        derived_from: None,
        attributes,
    }
}

// ---------------------------------------------------------------------------------------------
// Types.

/// Follows `{"type": {…}}` / `{"type": […]}` wrappers to the type they hold.
fn unwrap(mut ty: &Value) -> &Value {
    for _ in 0..MAX_WRAPPERS {
        match ty {
            Value::Object(obj) => match obj.get("type") {
                Some(inner @ (Value::Object(_) | Value::Array(_))) => ty = inner,
                _ => break,
            },
            _ => break,
        }
    }
    ty
}

/// The name of a non-union type: a primitive or referenced name, or an inline type's kind.
fn simple_name(ty: &Value) -> Option<&str> {
    match unwrap(ty) {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Object(obj) => text(obj, "type"),
        Value::Array(_) => Some("union"),
        _ => None,
    }
}

fn type_name(ty: &Value) -> Option<String> {
    match unwrap(ty) {
        Value::Array(members) => {
            let names: Vec<&str> = members.iter().filter_map(simple_name).collect();
            (!names.is_empty()).then(|| names.join("|"))
        }
        other => simple_name(other).map(str::to_string),
    }
}

/// `logicalType`, else an inline named type's name.
fn simple_mode(ty: &Value) -> Option<&str> {
    let Value::Object(obj) = unwrap(ty) else {
        return None;
    };
    text(obj, "logicalType").or_else(|| {
        text(obj, "type")
            .filter(|kind| is_named_kind(kind))
            .and_then(|_| text(obj, "name"))
    })
}

fn type_mode(ty: &Value) -> Option<String> {
    match unwrap(ty) {
        Value::Array(members) => {
            let modes: Vec<&str> = members.iter().filter_map(simple_mode).collect();
            (!modes.is_empty()).then(|| modes.join("|"))
        }
        other => simple_mode(other).map(str::to_string),
    }
}

fn nullable(ty: &Value) -> bool {
    match unwrap(ty) {
        Value::Array(members) => members.iter().any(|m| simple_name(m) == Some("null")),
        other => simple_name(other) == Some("null"),
    }
}

// ---------------------------------------------------------------------------------------------
// Flattening.

/// One step of the walk.
enum Task<'a> {
    /// Emit an attribute (a field, an array's items or a map's values), then walk its type.
    Attribute {
        name: &'a str,
        ty: &'a Value,
        field: Option<&'a Object>,
        parent: Option<usize>,
        depth: u32,
    },
    /// Walk what lies below a type (record fields, items, values, union members), no node.
    Contents {
        ty: &'a Value,
        parent: Option<usize>,
        depth: u32,
    },
}

const ITEM_NAME: &str = "[]";
const VALUE_NAME: &str = "{}";
static NULL: Value = Value::Null;

fn push_fields<'a>(
    out: &mut Vec<Task<'a>>,
    fields: &'a [Value],
    parent: Option<usize>,
    depth: u32,
) {
    for field in fields.iter().filter_map(Value::as_object) {
        out.push(Task::Attribute {
            name: text(field, "name").unwrap_or("?"),
            ty: field.get("type").unwrap_or(&NULL),
            field: Some(field),
            parent,
            depth,
        });
    }
}

/// Pre-order flattening of a record's fields.
fn flatten(fields: &[Value]) -> Vec<Attribute> {
    let mut out: Vec<Attribute> = Vec::new();
    let mut stack: Vec<Task<'_>> = Vec::new();
    let mut children: Vec<Task<'_>> = Vec::new();
    push_fields(&mut children, fields, None, 0);
    stack.extend(children.drain(..).rev());

    while let Some(task) = stack.pop() {
        match task {
            Task::Attribute {
                name,
                ty,
                field,
                parent,
                depth,
            } => {
                let path = match parent.and_then(|p| out.get(p)) {
                    Some(p) => format!("{}.{}", p.path, name),
                    None => name.to_string(),
                };
                let default_null =
                    field.is_some_and(|f| matches!(f.get("default"), Some(Value::Null)));
                let index = out.len();
                out.push(Attribute {
                    guid: None,
                    path,
                    name: name.to_string(),
                    code: None,
                    data_type: type_name(ty),
                    mode: type_mode(ty),
                    required: !nullable(ty) && !default_null,
                    primary_key: false,
                    description: field.and_then(|f| owned(f, "doc")),
                    depth,
                    parent,
                });
                children.push(Task::Contents {
                    ty,
                    parent: Some(index),
                    depth: depth.saturating_add(1),
                });
            }
            Task::Contents { ty, parent, depth } => match unwrap(ty) {
                Value::Array(members) => {
                    for member in members {
                        children.push(Task::Contents {
                            ty: member,
                            parent,
                            depth,
                        });
                    }
                }
                Value::Object(obj) => match text(obj, "type") {
                    Some("record" | "error") => {
                        push_fields(&mut children, array(obj, "fields"), parent, depth);
                    }
                    Some("array") => {
                        if let Some(items) = obj.get("items") {
                            children.push(Task::Attribute {
                                name: ITEM_NAME,
                                ty: items,
                                field: None,
                                parent,
                                depth,
                            });
                        }
                    }
                    Some("map") => {
                        if let Some(values) = obj.get("values") {
                            children.push(Task::Attribute {
                                name: VALUE_NAME,
                                ty: values,
                                field: None,
                                parent,
                                depth,
                            });
                        }
                    }
                    _ => {}
                },
                _ => {}
            },
        }
        // Children in document order: push them reversed so the first is popped first.
        stack.extend(children.drain(..).rev());
    }
    out
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

    type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, bool, u32);

    fn summary(attrs: &[Attribute]) -> Vec<Row<'_>> {
        attrs
            .iter()
            .map(|a| {
                (
                    a.path.as_str(),
                    a.data_type.as_deref(),
                    a.mode.as_deref(),
                    a.required,
                    a.depth,
                )
            })
            .collect()
    }

    const CUSTOMER: &str = r#"{
        "type": "record",
        "name": "Customer",
        "namespace": "com.example.crm",
        "doc": "A customer of the shop",
        "fields": [
            {"name": "id", "type": "long", "doc": "Customer id"},
            {"name": "email", "type": ["null", "string"], "default": null},
            {"name": "created", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "address", "type": {
                "type": "record", "name": "Address", "doc": "Postal address",
                "fields": [
                    {"name": "street", "type": "string"},
                    {"name": "zip", "type": ["null", "string"]}
                ]
            }},
            {"name": "status", "type": {"type": "enum", "name": "Status",
                                        "symbols": ["ACTIVE", "CLOSED"]}},
            {"name": "orders", "type": {"type": "array", "items": {
                "type": "record", "name": "Order",
                "fields": [
                    {"name": "orderId", "type": "string"},
                    {"name": "total", "type": {"type": "bytes", "logicalType": "decimal",
                                               "precision": 10, "scale": 2}}
                ]
            }}},
            {"name": "attributes", "type": {"type": "map", "values": "string"}},
            {"name": "billing", "type": ["null", "Address"], "default": null},
            {"name": "phones", "type": ["null", {"type": "array", "items": "string"}]},
            {"name": "nickname", "type": "string", "default": null},
            {"name": "fingerprint", "type": {"type": "fixed", "name": "MD5", "size": 16}}
        ]
    }"#;

    #[test]
    fn a_realistic_record_maps_to_one_entity() {
        let model = parse_model("schemas/customer.avsc", CUSTOMER.as_bytes());
        assert_eq!(model.name, "com.example.crm.Customer");
        assert_eq!(model.db_vendor.as_deref(), Some("Avro"));
        assert_eq!(model.description.as_deref(), Some("A customer of the shop"));
        assert_eq!(
            (model.guid.as_deref(), model.app_target.as_deref()),
            (None, None)
        );
        assert_eq!(
            model.containers,
            [Container {
                guid: None,
                name: "com.example.crm".into()
            }]
        );
        assert_eq!(model.entity_count(), 1);
        let customer = &model.entities[0];
        assert_eq!(customer.name, "Customer");
        assert_eq!(customer.code.as_deref(), Some("com.example.crm.Customer"));
        assert_eq!(customer.container.as_deref(), Some("com.example.crm"));
        assert_eq!(
            customer.description.as_deref(),
            Some("A customer of the shop")
        );
        check_tree_invariants(&customer.attributes, "customer");
        assert_eq!(
            summary(&customer.attributes),
            [
                ("id", Some("long"), None, true, 0),
                ("email", Some("null|string"), None, false, 0),
                ("created", Some("long"), Some("timestamp-millis"), true, 0),
                ("address", Some("record"), Some("Address"), true, 0),
                ("address.street", Some("string"), None, true, 1),
                ("address.zip", Some("null|string"), None, false, 1),
                ("status", Some("enum"), Some("Status"), true, 0),
                ("orders", Some("array"), None, true, 0),
                ("orders.[]", Some("record"), Some("Order"), true, 1),
                ("orders.[].orderId", Some("string"), None, true, 2),
                ("orders.[].total", Some("bytes"), Some("decimal"), true, 2),
                ("attributes", Some("map"), None, true, 0),
                ("attributes.{}", Some("string"), None, true, 1),
                ("billing", Some("null|Address"), None, false, 0),
                ("phones", Some("null|array"), None, false, 0),
                ("phones.[]", Some("string"), None, true, 1),
                ("nickname", Some("string"), None, false, 0),
                ("fingerprint", Some("fixed"), Some("MD5"), true, 0),
            ]
        );
        assert_eq!(model.attribute_count(), 18);
        assert_eq!(
            customer.attributes[0].description.as_deref(),
            Some("Customer id")
        );
        assert_eq!(customer.attributes[9].parent, Some(8));
        assert_eq!(customer.attributes[15].parent, Some(14));
        assert!(
            customer
                .attributes
                .iter()
                .all(|a| !a.primary_key && a.code.is_none())
        );
    }

    #[test]
    fn an_array_of_types_gives_one_entity_per_named_type() {
        let json = r#"[
            {"type": "enum", "name": "Suit", "namespace": "cards", "symbols": ["HEARTS"],
             "doc": "A suit"},
            {"type": "record", "name": "cards.Card", "fields": [
                {"name": "suit", "type": "cards.Suit"},
                {"name": "rank", "type": "int"}
            ]},
            {"type": "record", "name": "Hand", "namespace": "", "fields": [
                {"name": "cards", "type": {"type": "array", "items": "cards.Card"}},
                {"nameless": true, "type": "string"},
                "not a field",
                {"name": "odd", "type": {"type": {"type": "map", "values": {"type": "record",
                    "name": "Inner", "fields": [{"name": "deep", "type": ["int", "null"]}]}}}}
            ]},
            "string",
            {"type": "map", "values": "long"},
            ["nested"],
            42
        ]"#;
        let model = parse_model("cards.AVSC", json.as_bytes());
        assert_eq!(model.name, "cards");
        assert_eq!(model.description, None);
        let entities: Vec<(&str, Option<&str>, Option<&str>, usize)> = model
            .entities
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.code.as_deref(),
                    e.container.as_deref(),
                    e.attributes.len(),
                )
            })
            .collect();
        assert_eq!(
            entities,
            [
                ("Suit", Some("cards.Suit"), Some("cards"), 0),
                ("Card", Some("cards.Card"), Some("cards"), 2),
                ("Hand", Some("Hand"), None, 6),
            ]
        );
        assert_eq!(model.entities[0].description.as_deref(), Some("A suit"));
        let names: Vec<&str> = model.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["cards"]);
        assert_eq!(
            summary(&model.entities[1].attributes),
            [
                ("suit", Some("cards.Suit"), None, true, 0),
                ("rank", Some("int"), None, true, 0),
            ]
        );
        let hand = &model.entities[2];
        check_tree_invariants(&hand.attributes, "hand");
        assert_eq!(
            summary(&hand.attributes),
            [
                ("cards", Some("array"), None, true, 0),
                ("cards.[]", Some("cards.Card"), None, true, 1),
                ("?", Some("string"), None, true, 0),
                ("odd", Some("map"), None, true, 0),
                ("odd.{}", Some("record"), Some("Inner"), true, 1),
                ("odd.{}.deep", Some("int|null"), None, false, 2),
            ]
        );
        assert_eq!(model.attribute_count(), 8);
    }

    #[test]
    fn a_protocol_lists_its_types() {
        let json = r#"{
            "protocol": "Mail", "namespace": "org.example", "doc": "Mail service",
            "types": [
                {"type": "record", "name": "Message", "fields": [
                    {"name": "to", "type": "string"}, {"name": "body", "type": "string"}
                ]},
                {"type": "error", "name": "Bounce", "namespace": "org.errors", "fields": [
                    {"name": "reason", "type": ["null", "string"]}
                ]},
                {"type": "fixed", "name": "Hash", "size": 32}
            ],
            "messages": {"send": {"request": [{"name": "message", "type": "Message"}],
                                  "response": "string"}}
        }"#;
        let model = parse_model("mail.avpr", json.as_bytes());
        assert_eq!(model.name, "org.example.Mail");
        assert_eq!(model.description.as_deref(), Some("Mail service"));
        let entities: Vec<(&str, Option<&str>, usize)> = model
            .entities
            .iter()
            .map(|e| (e.name.as_str(), e.code.as_deref(), e.attributes.len()))
            .collect();
        assert_eq!(
            entities,
            [
                ("Message", Some("org.example.Message"), 2),
                ("Bounce", Some("org.errors.Bounce"), 1),
                ("Hash", Some("org.example.Hash"), 0),
            ]
        );
        let names: Vec<&str> = model.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["org.example", "org.errors"]);

        // A protocol without types, and a top-level enum on its own.
        let model = parse_model("empty.avpr", br#"{"protocol": "Empty"}"#);
        assert_eq!((model.name.as_str(), model.entity_count()), ("Empty", 0));
        let model = parse_model(
            "suit.avsc",
            br#"{"type": "enum", "name": "Suit", "symbols": ["A"]}"#,
        );
        assert_eq!(model.name, "Suit");
        assert_eq!(model.entity_count(), 1);
        assert_eq!(model.attribute_count(), 0);
    }

    #[test]
    fn invalid_avro_files_are_reported() {
        let bytes = b"\xEF\xBB\xBF{\n  \"type\": \"record\",\n  \"fields\": [,]\n}";
        let Parsed::Invalid(err) = parse("x/customer.avsc", bytes) else {
            panic!("expected Invalid");
        };
        assert_eq!(err.line, Some(3));
        assert!(err.column.is_some());
        assert!(err.message.starts_with("invalid JSON: "), "{}", err.message);
        assert!(!err.message.contains(" at line "), "{}", err.message);
        assert!(err.to_string().starts_with("line 3, column "), "{err}");

        let Parsed::Invalid(err) = parse("p.avpr", b"{\"protocol\": ") else {
            panic!("expected Invalid");
        };
        assert_eq!(err.line, Some(1));

        for input in [
            r#""string""#,
            r#"{"type": "map", "values": "long"}"#,
            r#"{"type": "string"}"#,
            r#"{"name": "pkg", "version": "1.0.0"}"#,
            r#"{"modelName": "m", "collections": []}"#,
            "null",
            "17",
        ] {
            match parse("x.avsc", input.as_bytes()) {
                Parsed::Invalid(err) => {
                    assert_eq!(err.message, NOT_A_SCHEMA, "{input}");
                    assert_eq!((err.line, err.column), (None, None));
                }
                other => panic!("{input}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_files_are_not_avro() {
        let cases: [(&str, &[u8]); 7] = [
            ("package.json", br#"{"name": "pkg", "version": "1.0.0"}"#),
            ("customer.json", CUSTOMER.as_bytes()),
            (
                "model.hck.json",
                br#"{"modelName": "m", "collections": []}"#,
            ),
            ("list.json", b"[1, 2, 3]"),
            ("broken.json", b"{ not json"),
            ("avsc", CUSTOMER.as_bytes()),
            ("dir.avsc/readme.txt", CUSTOMER.as_bytes()),
        ];
        for (path, input) in cases {
            assert_eq!(parse(path, input), Parsed::NotModel, "{path}");
        }
        // A directory named like a schema does not make its files schemas; the stem is the name.
        assert_eq!(claimed_stem("a.avsc/b.avsc"), Some("b"));
        assert_eq!(claimed_stem(".avsc"), Some(""));
        let model = parse_model(".avsc", br#"[]"#);
        assert_eq!(model.name, "");
    }

    #[test]
    fn a_hackolade_fixture_is_not_avro() {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/models/books"
        ));
        let path = dir.join("MongoDB__Figure 026 - PDM nested for animal shelter.hck.json");
        let bytes = std::fs::read(&path).expect("read fixture (../shared/fixtures is needed)");
        let name = path.to_string_lossy();
        assert_eq!(parse(&name, &bytes), Parsed::NotModel);
        assert_eq!(
            super::super::jsonschema::parse(&name, &bytes),
            Parsed::NotModel
        );
        // Under an Avro name it claims to be Avro, and is not a record.
        assert!(matches!(parse("renamed.avsc", &bytes), Parsed::Invalid(_)));
    }

    #[test]
    fn deeply_nested_input_does_not_overflow() {
        let depth = 10_000;
        let mut arrays = "[".repeat(depth);
        arrays.push_str(&"]".repeat(depth));
        assert!(matches!(
            parse("deep.avsc", arrays.as_bytes()),
            Parsed::Invalid(_)
        ));

        // As deep as serde_json allows: records nested in fields all the way down.
        let levels = 40;
        let mut nested = String::from("\"int\"");
        for i in (0..levels).rev() {
            nested = format!(
                r#"{{"type": "record", "name": "R{i}", "fields": [{{"name": "f{i}", "type": {nested}}}]}}"#
            );
        }
        let model = parse_model("deep.avsc", nested.as_bytes());
        let attrs = &model.entities[0].attributes;
        assert_eq!(attrs.len(), levels);
        check_tree_invariants(attrs, "deep");
        assert_eq!(attrs.last().map(|a| a.depth), Some(39));
        assert_eq!(
            attrs.last().and_then(|a| a.data_type.as_deref()),
            Some("int")
        );

        // Type wrappers and unions nested as deep as allowed.
        let mut wrapped = String::from("\"long\"");
        for i in 0..120 {
            wrapped = if i % 2 == 0 {
                format!(r#"{{"type": {wrapped}}}"#)
            } else {
                format!("[{wrapped}]")
            };
        }
        let json = format!(
            r#"{{"type": "record", "name": "W", "fields": [{{"name": "w", "type": {wrapped}}}]}}"#
        );
        let model = parse_model("w.avsc", json.as_bytes());
        assert_eq!(model.attribute_count(), 1);
    }
    use crate::model::testutil::{Rng, check_tree_invariants};

    #[test]
    fn random_mutations_never_panic() {
        let original = CUSTOMER.as_bytes();
        let interesting: &[u8] = b"{}[]\",:0-e.tn\\ \n\xFF";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut outcomes = [0usize; 3];
        for _ in 0..3000 {
            let bytes = rng.mutate(original, interesting);
            let slot = match parse("c.avsc", &bytes) {
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
        assert_eq!(outcomes[0], 0);
        assert!(outcomes[1] > 0 && outcomes[2] > 0);
    }

    #[test]
    fn structural_mutations_never_panic() {
        let keys = [
            "\"type\": ",
            "\"fields\": ",
            "\"items\": ",
            "\"values\": ",
            "\"name\": ",
            "\"namespace\": ",
            "\"logicalType\": ",
            "\"doc\": ",
            "\"default\": ",
        ];
        let replacements = [
            "null, \"x\": ",
            "7, \"x\": ",
            "\"s\", \"x\": ",
            "[{}], \"x\": ",
            "{\"type\": [[]]}, \"x\": ",
            "false, \"x\": ",
        ];
        for key in keys {
            for replacement in replacements {
                for (at, _) in CUSTOMER.match_indices(key) {
                    let at = at + key.len();
                    let mutated = format!("{}{}{}", &CUSTOMER[..at], replacement, &CUSTOMER[at..]);
                    if let Parsed::Model(m) = parse("c.avsc", mutated.as_bytes()) {
                        for e in &m.entities {
                            check_tree_invariants(&e.attributes, "structural");
                        }
                    }
                }
            }
        }
    }
}
