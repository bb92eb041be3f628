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

use super::{Attribute, Container, Entity, Format, Model, ParseError, Parsed};

type Object = Map<String, Value>;

/// The Avro format (`*.avsc` schemas, `*.avpr` protocols).
pub struct Avro;

impl Format for Avro {
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
pub fn parse(path: &str, bytes: &[u8]) -> Parsed {
    let Some(stem) = claimed_stem(path) else {
        return Parsed::NotModel;
    };
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => return Parsed::Invalid(json_error(&err)),
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

fn json_error(err: &serde_json::Error) -> ParseError {
    let full = err.to_string();
    let (line, column) = if err.line() == 0 {
        (None, None)
    } else {
        (Some(err.line()), Some(err.column()))
    };
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let message = match full.strip_suffix(&suffix) {
        Some(stripped) => stripped.to_string(),
        None => full,
    };
    ParseError {
        message: format!("invalid JSON: {message}"),
        line,
        column,
    }
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
