//! Avro schemas (`*.avsc`) and protocols (`*.avpr`) → [`Model`].
//!
//! Recognition is by name only: a path ending with `.avsc` or `.avpr` (ASCII case-insensitive)
//! claims to be Avro, anything else is [`Parsed::NotModel`] without being read. A claimed file
//! that is not valid JSON is [`Parsed::Invalid`] with `serde_json`'s line and column. Every Avro
//! schema and protocol is accepted; its top level must be one of:
//!
//! - a type name: a primitive (`"string"`) or a named type's (full) name, as a JSON string;
//! - an object with a `type`: a named type (`record`, protocol `error`, `enum`, `fixed`), an
//!   `array` / `map` schema, a primitive with attributes (`{"type": "long", "logicalType": …}`),
//!   a type name, or a schema object / union wrapped as `{"type": {…}}`;
//! - a JSON array: a union of types (the usual way to put several named types in one file);
//!   members that are not schemas (numbers, …) are skipped;
//! - a protocol: an object with a string `protocol`, or without `type` but with a `types` array.
//!
//! Anything else (a number, `true`, `null`, `""`, a string that is not a name such as `"a b"`, an
//! object with neither a `type` nor a protocol's keys, such as `{"foo": 1}`) is
//! [`Parsed::Invalid`]: "not an Avro schema: expected a type name, an object with a type, an
//! array of types or a protocol". Names must be `[A-Za-z_][A-Za-z0-9_]*` parts joined by `.`
//! (letters and digits of other scripts are allowed). Referenced names are not resolved, so a
//! schema that uses types defined in another file is accepted. A schema without named types (a
//! primitive, an array of strings) is a model with no entities.
//!
//! Mapping (the Hackolade conventions of `hackolade.rs` apply: pre-order flattening, paths joined
//! with `.`, `depth`, `parent` index; empty strings count as absent):
//!
//! - Model: `name` = the full name (`namespace.name`) of a top-level named type (also when
//!   wrapped as `{"type": {…}}`), or of the protocol; else (a union, an `array` / `map`, a
//!   primitive, a missing name) the file name without `.avsc` / `.avpr`. `description` = the
//!   top-level `doc` (of the wrapper, else of the named type inside); `db_vendor` = `"Avro"`; no
//!   GUID, app target, version, relationships, views or definitions. `containers` = the
//!   entities' namespaces, each once, in order.
//! - Entities: every named type *declared* anywhere in the file, in document order (pre-order):
//!   the top-level schema, a union's members, an array's `items`, a map's `values`, a record's
//!   fields' types, at any depth; in a protocol, its `types` and then, message by message (in
//!   name order), the types of the `request` parameters, the `response` and the `errors`. A
//!   `record` / `error` is an entity with its fields as attributes; an `enum` or `fixed` is an
//!   entity without attributes (so the types other records refer to by name are listed too).
//!   `name` = the short name, `code` = the full name, `container` = the namespace (its own
//!   `namespace`, the dotted part of a full `name`, else the namespace of the most tightly
//!   enclosing named type, else the protocol's namespace), `description` = `doc`. A named type
//!   is declared once in valid Avro; a later declaration of a full name already seen is not
//!   listed again, and a reference by name (`"type": "com.example.Address"`) is not a
//!   declaration. Nameless (invalid) declarations are listed, each one. A record declared inline
//!   in a field is *both* an entity of its own and, as before, the nested attribute tree of the
//!   field (`address`, `address.street`), so its fields count in both places.
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

use std::collections::HashSet;

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
const NOT_A_SCHEMA: &str = "not an Avro schema: expected a type name, an object with a type, an array of types or a protocol";
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
    let (name, description, roots, enclosing): (String, Option<String>, Vec<&Value>, Option<&str>) =
        match value {
            Value::Object(obj) if is_protocol(obj) => {
                let namespace = text(obj, "namespace");
                let name = match text(obj, "protocol") {
                    Some(p) if p.contains('.') => p.to_string(),
                    Some(p) => namespace.map_or_else(|| p.to_string(), |ns| format!("{ns}.{p}")),
                    None => stem.to_string(),
                };
                (name, owned(obj, "doc"), protocol_schemas(obj), namespace)
            }
            _ if is_schema(value) => {
                let top = unwrap(value).as_object();
                let named = top.filter(|t| text(t, "type").is_some_and(is_named_kind));
                let name = named
                    .map(|t| names(t, None).2)
                    .filter(|full| !full.is_empty())
                    .unwrap_or_else(|| stem.to_string());
                let description = value
                    .as_object()
                    .and_then(|o| owned(o, "doc"))
                    .or_else(|| top.and_then(|t| owned(t, "doc")));
                (name, description, vec![value], None)
            }
            _ => return None,
        };

    let entities = declarations(&roots, enclosing);

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

/// A valid Avro name, or a full name of dot-separated names (`[A-Za-z_][A-Za-z0-9_]*`, letters
/// and digits of other scripts allowed as some implementations do).
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
                && chars.all(|c| c == '_' || c.is_alphanumeric())
        })
}

/// A top-level value that is a schema: a type name (a primitive or a named type's name), an
/// object whose `type` is a type name or a schema, or an array (a union; members that are not
/// schemas are skipped by the walk).
fn is_schema(value: &Value) -> bool {
    match value {
        Value::String(s) => is_name(s),
        Value::Array(_) => true,
        Value::Object(obj) => match obj.get("type") {
            Some(Value::String(s)) => is_name(s),
            Some(Value::Object(_) | Value::Array(_)) => true,
            _ => false,
        },
        _ => false,
    }
}

/// The schemas a protocol declares types in: its `types`, then for each message (in name
/// order) its request parameters' types, its `response` and its `errors`.
fn protocol_schemas(obj: &Object) -> Vec<&Value> {
    let mut roots: Vec<&Value> = array(obj, "types").iter().collect();
    if let Some(Value::Object(messages)) = obj.get("messages") {
        for message in messages.values().filter_map(Value::as_object) {
            roots.extend(
                array(message, "request")
                    .iter()
                    .filter_map(Value::as_object)
                    .filter_map(|parameter| parameter.get("type")),
            );
            roots.extend(message.get("response"));
            roots.extend(message.get("errors"));
        }
    }
    roots
}

/// Every named type declared in `roots`, in document order (pre-order): the named types
/// themselves, union members, array items, map values and record fields' types, at any depth.
/// A declaration whose full name was already declared is not listed again (references by name
/// are not declarations); nameless ones are all listed. A nested type's enclosing namespace is
/// the namespace of the named type around it.
fn declarations(roots: &[&Value], enclosing: Option<&str>) -> Vec<Entity> {
    let mut entities: Vec<Entity> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    // Each type with its enclosing namespace, and whether it is declared at the top (not inside a record).
    let mut stack: Vec<(&Value, Option<&str>, bool)> = roots
        .iter()
        .rev()
        .map(|root| (*root, enclosing, true))
        .collect();
    let mut children: Vec<(&Value, Option<&str>, bool)> = Vec::new();
    while let Some((ty, enclosing, top)) = stack.pop() {
        match ty {
            Value::Array(members) => children.extend(members.iter().map(|m| (m, enclosing, top))),
            Value::Object(obj) => match obj.get("type") {
                Some(Value::String(kind)) => match kind.as_str() {
                    "record" | "error" | "enum" | "fixed" => {
                        let (_, namespace, full) = names(obj, enclosing);
                        if full.is_empty() || seen.insert(full) {
                            entities.push(build_entity(obj, enclosing, top));
                        }
                        if matches!(kind.as_str(), "record" | "error") {
                            children.extend(
                                array(obj, "fields")
                                    .iter()
                                    .filter_map(Value::as_object)
                                    .filter_map(|field| field.get("type"))
                                    .map(|t| (t, namespace, false)),
                            );
                        }
                    }
                    "array" => children.extend(obj.get("items").map(|t| (t, enclosing, top))),
                    "map" => children.extend(obj.get("values").map(|t| (t, enclosing, top))),
                    _ => {}
                },
                Some(inner @ (Value::Object(_) | Value::Array(_))) => {
                    children.push((inner, enclosing, top));
                }
                _ => {}
            },
            _ => {}
        }
        // Children in document order: push them reversed so the first is popped first.
        stack.extend(children.drain(..).rev());
    }
    entities
}

/// The entity of a named type. A record declared at the top keeps its whole tree, records declared in it
/// included; one declared inside a record lists down to the records declared in it (their fields are under
/// their own entities), so every field is listed at most twice however deep records nest.
fn build_entity(obj: &Object, enclosing: Option<&str>, top: bool) -> Entity {
    let (short, namespace, full) = names(obj, enclosing);
    let attributes = if matches!(text(obj, "type"), Some("record" | "error")) {
        flatten(array(obj, "fields"), top)
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
fn flatten(fields: &[Value], whole: bool) -> Vec<Attribute> {
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
                let path = super::child_path(
                    parent.and_then(|p| out.get(p)).map(|p| p.path.as_str()),
                    name,
                );
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
                    // Below a field, a record is a declaration with an entity of its own: walked here
                    // only in a top-level entity's whole tree.
                    Some("record" | "error") if whole || parent.is_none() => {
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

    /// Each entity's name, full name, namespace and attribute count.
    fn entity_rows(model: &Model) -> Vec<(&str, Option<&str>, Option<&str>, usize)> {
        model
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
            .collect()
    }

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
    fn a_realistic_record_maps_to_its_named_types() {
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
        // The record, then the named types declared inline in its fields, in document order.
        let entities = entity_rows(&model);
        assert_eq!(
            entities,
            [
                (
                    "Customer",
                    Some("com.example.crm.Customer"),
                    Some("com.example.crm"),
                    18
                ),
                (
                    "Address",
                    Some("com.example.crm.Address"),
                    Some("com.example.crm"),
                    2
                ),
                (
                    "Status",
                    Some("com.example.crm.Status"),
                    Some("com.example.crm"),
                    0
                ),
                (
                    "Order",
                    Some("com.example.crm.Order"),
                    Some("com.example.crm"),
                    2
                ),
                (
                    "MD5",
                    Some("com.example.crm.MD5"),
                    Some("com.example.crm"),
                    0
                ),
            ]
        );
        assert_eq!(
            model.entities[1].description.as_deref(),
            Some("Postal address")
        );
        assert_eq!(
            summary(&model.entities[3].attributes),
            [
                ("orderId", Some("string"), None, true, 0),
                ("total", Some("bytes"), Some("decimal"), true, 0),
            ]
        );
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
        assert_eq!(customer.attributes.len(), 18);
        assert_eq!(model.attribute_count(), 22);
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
        let entities = entity_rows(&model);
        assert_eq!(
            entities,
            [
                ("Suit", Some("cards.Suit"), Some("cards"), 0),
                ("Card", Some("cards.Card"), Some("cards"), 2),
                ("Hand", Some("Hand"), None, 6),
                ("Inner", Some("Inner"), None, 1),
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
        assert_eq!(model.attribute_count(), 9);
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

    fn entity_codes(model: &Model) -> Vec<(&str, usize)> {
        model
            .entities
            .iter()
            .map(|e| (e.code.as_deref().unwrap_or(""), e.attributes.len()))
            .collect()
    }

    #[test]
    fn every_kind_of_top_level_schema_is_accepted() {
        // No named types: a model without entities, named after the file.
        for input in [
            r#""string""#,
            r#""com.example.Defined.Elsewhere""#,
            r#"{"type": "string"}"#,
            r#"{"type": "long", "logicalType": "timestamp-millis"}"#,
            r#"{"type": "com.example.Address"}"#,
            r#"{"type": "map", "values": "long"}"#,
            r#"{"type": "array", "items": {"type": "array", "items": "int"}}"#,
            r#"["null", "string"]"#,
            "[]",
            r#"[1, true, null, {}]"#,
        ] {
            let model = parse_model("dir/plain.avsc", input.as_bytes());
            assert_eq!(
                (model.name.as_str(), model.entity_count()),
                ("plain", 0),
                "{input}"
            );
            assert_eq!(model.db_vendor.as_deref(), Some("Avro"));
        }

        // An array of records: the items are the entity.
        let json = r#"{"type": "array", "doc": "Many", "items": {"type": "record",
            "name": "Line", "namespace": "shop", "fields": [
                {"name": "sku", "type": "string"},
                {"name": "tags", "type": {"type": "array", "items": "string"}}
            ]}}"#;
        let model = parse_model("lines.avsc", json.as_bytes());
        assert_eq!(model.name, "lines");
        assert_eq!(model.description.as_deref(), Some("Many"));
        assert_eq!(entity_codes(&model), [("shop.Line", 3)]);
        assert_eq!(
            summary(&model.entities[0].attributes),
            [
                ("sku", Some("string"), None, true, 0),
                ("tags", Some("array"), None, true, 0),
                ("tags.[]", Some("string"), None, true, 1),
            ]
        );
        let names: Vec<&str> = model.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["shop"]);

        // A map whose values are a union of records, each declaring another type inside.
        let json = r#"{"type": "map", "values": ["null",
            {"type": "record", "name": "a.Cat", "fields": [
                {"name": "toy", "type": {"type": "enum", "name": "Toy", "symbols": ["BALL"]}}]},
            {"type": "record", "name": "Dog", "namespace": "b", "fields": [
                {"name": "bone", "type": {"type": "fixed", "name": "c.Bone", "size": 4}},
                {"name": "friend", "type": ["null", "a.Cat"]}]}
        ]}"#;
        let model = parse_model("pets.avsc", json.as_bytes());
        assert_eq!(model.name, "pets");
        assert_eq!(
            entity_codes(&model),
            [("a.Cat", 1), ("a.Toy", 0), ("b.Dog", 2), ("c.Bone", 0)]
        );
        let names: Vec<&str> = model.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);

        // A named type wrapped in `{"type": …}` names the model.
        let json = r#"{"type": {"type": "record", "name": "W", "namespace": "n", "doc": "In",
            "fields": []}}"#;
        let model = parse_model("w.avsc", json.as_bytes());
        assert_eq!(model.name, "n.W");
        assert_eq!(model.description.as_deref(), Some("In"));
        assert_eq!(entity_codes(&model), [("n.W", 0)]);
    }

    #[test]
    fn deeply_nested_records_list_each_field_at_most_twice() {
        // 40 records, each inside the one before, with 50 fields each.
        let mut schema = String::from(r#"{"type": "record", "name": "R40", "fields": []}"#);
        for level in (0..40).rev() {
            let fields: Vec<String> = (0..50)
                .map(|i| format!(r#"{{"name": "f{i}", "type": "string"}}"#))
                .collect();
            schema = format!(
                r#"{{"type": "record", "name": "R{level}", "fields": [{}, {{"name": "next", "type": {schema}}}]}}"#,
                fields.join(", ")
            );
        }
        let model = parse_model("deep.avsc", schema.as_bytes());
        assert_eq!(model.entities.len(), 41);
        let nodes = 40 * 51;
        assert_eq!(
            model.entities[0].attributes.len(),
            nodes,
            "the top keeps its whole tree"
        );
        let total: usize = model.entities.iter().map(|e| e.attributes.len()).sum();
        assert_eq!(
            total,
            nodes + 39 * 51,
            "R1 to R39 list their own 51 fields, R40 none"
        );
        assert!(total <= 2 * nodes);
    }

    #[test]
    fn a_named_type_is_listed_once_where_it_is_declared() {
        let json = r#"[
            {"type": "record", "name": "Outer", "namespace": "x.y", "fields": [
                {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
                    {"name": "deeper", "type": {"type": "record", "name": "Deeper",
                        "namespace": "", "fields": [
                        {"name": "leaf", "type": {"type": "enum", "name": "Leaf",
                                                  "symbols": ["A"]}}]}}]}},
                {"name": "again", "type": "Inner"},
                {"name": "listed", "type": {"type": "array", "items": "x.y.Inner"}}
            ]},
            {"type": "record", "name": "x.y.Inner", "fields": []},
            "x.y.Outer",
            {"type": "record", "fields": [{"name": "a", "type": "int"}]},
            {"type": "record", "name": "", "fields": []}
        ]"#;
        let model = parse_model("dups.avsc", json.as_bytes());
        // Deeper is in the null namespace, and so is Leaf inside it; the second declaration of
        // x.y.Inner is not listed again; nameless records are listed each time. Outer keeps its
        // whole tree; Inner, declared inside it, lists its field `deeper` but not Deeper's fields.
        assert_eq!(
            entity_codes(&model),
            [
                ("x.y.Outer", 6),
                ("x.y.Inner", 1),
                ("Deeper", 1),
                ("Leaf", 0),
                ("", 1),
                ("", 0)
            ]
        );
        let containers: Vec<Option<&str>> = model
            .entities
            .iter()
            .map(|e| e.container.as_deref())
            .collect();
        assert_eq!(
            containers,
            [Some("x.y"), Some("x.y"), None, None, None, None]
        );
    }

    #[test]
    fn a_protocol_declares_types_in_its_messages_too() {
        let json = r#"{
            "protocol": "Shop", "namespace": "shop",
            "types": [{"type": "record", "name": "Item", "fields": [
                {"name": "id", "type": "long"}]}],
            "messages": {
                "order": {
                    "request": [
                        {"name": "item", "type": "Item"},
                        {"name": "note", "type": {"type": "record", "name": "Note",
                                                  "fields": [{"name": "text", "type": "string"}]}}
                    ],
                    "response": {"type": "array", "items": {"type": "record",
                        "name": "other.Receipt", "fields": [{"name": "n", "type": "int"}]}},
                    "errors": [{"type": "error", "name": "SoldOut", "fields": []}, "Item"]
                },
                "ping": {"request": [], "response": "null", "one-way": true},
                "broken": {"request": "x", "response": 3, "errors": {"type": "fixed",
                    "name": "Odd", "size": 1}},
                "notAMessage": 7
            }
        }"#;
        let model = parse_model("shop.avpr", json.as_bytes());
        assert_eq!(model.name, "shop.Shop");
        // Messages come in name order: broken, order, ping.
        assert_eq!(
            entity_codes(&model),
            [
                ("shop.Item", 1),
                ("shop.Odd", 0),
                ("shop.Note", 1),
                ("other.Receipt", 1),
                ("shop.SoldOut", 0)
            ]
        );
        let names: Vec<&str> = model.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["shop", "other"]);
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
            r#"{"name": "pkg", "version": "1.0.0"}"#,
            r#"{"modelName": "m", "collections": []}"#,
            r#"{"foo": 1}"#,
            r#"{"type": 3, "name": "R"}"#,
            r#"{"type": "", "fields": []}"#,
            r#"{"type": "not a name"}"#,
            r#""""#,
            r#""two words""#,
            r#""1abc""#,
            r#""a..b""#,
            "null",
            "true",
            "17",
            "-0.5",
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
        assert_eq!(model.entity_count(), levels);
        assert_eq!(model.entities[39].attributes.len(), 1);
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
