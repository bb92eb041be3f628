//! Every property that differs between two versions of a model, read from the files themselves (not from the
//! [`Model`], which keeps only the few fields the catalog shows): the `properties_changed` list of `changes`.
//! Pure functions of the two files' bytes and their parsed models.
//!
//! Hackolade (the rules; README.md and docs/cli.md list them for people):
//!
//! - Levels: the model (the file's top-level object), containers (`buckets[]`), entities (`collections[]`),
//!   attributes (the counted nodes of an entity's `properties` tree), relationships, views and definitions
//!   (the counted nodes of `definitions.properties`, and of `polyglotDefinitions.properties` /
//!   `externalDefinitions.properties` not used by an entity, their paths prefixed `polyglotDefinitions.` /
//!   `externalDefinitions.`). Items of a level are paired as `changes` pairs them ([`super::diff::pair`]: the
//!   same GUID, else the same name or path), so a reordered list is no change, and an item added or removed
//!   is reported by the other lists, not here. Entity, attribute, container, view and definition names are
//!   the new version's, as in the other lists.
//! - An item's properties are its own JSON keys; the child lists that are levels themselves (the root's
//!   `collections`, `buckets`, `relationships`, `views`, and the counted nodes of every `properties` tree)
//!   are left to their level. A structure node (`choice`, `conditional`, `conditionalItem`, `subschema`) is
//!   not a level: its keys belong to the nearest attribute (or entity, or definition) above it, under
//!   `properties[<its GUID>]` (`properties[#<index>]` without a GUID).
//! - A derived entity (a reference stub resolved in `polyglotDefinitions` / `externalDefinitions`, as the
//!   parser resolves it) is the stub's keys plus the referenced node's keys, the latter prefixed with the
//!   reference kind (`polyglot.additionalProperties`); the node's attribute tree is its attributes.
//! - Values: objects are compared key by key (`encryptionOptions.algorithm`); an array whose elements are
//!   all objects with distinct non-empty `GUID`s is compared as a set keyed by GUID
//!   (`indexes[<GUID>].name`); any other array, and values of different kinds, are compared whole (one
//!   change with both whole values). A key present on one side only is a change with `from` or `to`
//!   absent. A repeated key reads as its last value.
//! - [`EXCLUDED`] keys are not content (layout, UI state, timestamps, tool versions) and are ignored at any
//!   depth, also inside the values reported.
//!
//! JSON Schema and Avro files are the schema itself: the whole document is compared at level `model` by
//! the same value rules, without exclusions (a JSON Schema's `properties` are objects keyed by name, so the
//! paths name the attribute: `properties.address.properties.zip.format`). Avro arrays whose elements are
//! all objects with distinct names (`fields`, `types`) are compared as sets keyed by `name`
//! (`fields[zip].doc`).
//!
//! Recursion follows the parsed tree, whose depth `serde_json`'s recursion limit (128) bounds; matching
//! uses hash maps, so the cost grows with the files' size.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::Model;
use super::diff::{pair, rel_label};
use super::hackolade::{
    array, is_structure_node, nested_properties, resolve_reference, segment, text,
};
use super::json::{self, Object, Value};

/// Hackolade keys that are not the model's content, ignored at any depth.
pub const EXCLUDED: &[&str] = &[
    // Diagram layout and styles.
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
    // UI state: Hackolade's own bookkeeping, validation markers, shown/collapsed flags.
    "hackoladeMeta",
    "error",
    "show",
    "collapsed",
    "expanded",
    // Timestamps, and the versions of the tool and of its file format.
    "creationTS",
    "lastModifTS",
    "applicationInformation",
    "pluginInformation",
    "persistenceSchemaVersion",
    // The GUID → name lookup table (derived from the names, which are compared where they are).
    "idToNameHashTable",
    "idTonNmeHashTable",
];

/// Where a property sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Model,
    Container,
    Entity,
    Attribute,
    Relationship,
    View,
    Definition,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Model => "model",
            Level::Container => "container",
            Level::Entity => "entity",
            Level::Attribute => "attribute",
            Level::Relationship => "relationship",
            Level::View => "view",
            Level::Definition => "definition",
        }
    }
}

/// One property that differs. Absent fields are left out of the JSON: `entity` outside the entity and
/// attribute levels, `attribute` outside the attribute level, `name` outside the container, relationship,
/// view and definition levels, `from` for an added property, `to` for a removed one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropertyChanged {
    pub level: Level,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// The attribute's path, as the other lists give it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// The container's, relationship's or view's name, or the definition's path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The key path inside the item: `encryptionOptions.algorithm`, `indexes[<GUID>].name`.
    pub property: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<serde_json::Value>,
}

/// Why two versions could not be compared property by property.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    #[error("the {side} version is not valid JSON: {error}")]
    Json {
        side: &'static str,
        error: serde_json::Error,
    },
}

/// One version: its parsed model and the file's bytes.
#[derive(Clone, Copy)]
pub struct Version<'a> {
    pub model: &'a Model,
    pub bytes: &'a [u8],
}

fn parse<'b>(bytes: &'b [u8], side: &'static str) -> Result<Value<'b>, PropertiesError> {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    json::parse_whole(body).map_err(|error| PropertiesError::Json { side, error })
}

/// Every property that differs between `old` and `new`, files of the format named `format` (`hackolade`,
/// `jsonschema`, `avro`).
pub fn properties_changed(
    format: &str,
    old: Version<'_>,
    new: Version<'_>,
) -> Result<Vec<PropertyChanged>, PropertiesError> {
    let (a, b) = (parse(old.bytes, "old")?, parse(new.bytes, "new")?);
    let mut d = Differ {
        excluded: &[],
        id_key: None,
        out: Vec::new(),
    };
    match format {
        "hackolade" => {
            d.excluded = EXCLUDED;
            d.id_key = Some("GUID");
            if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
                hackolade(&mut d, (old.model, a), (new.model, b));
                return Ok(d.out);
            }
        }
        "avro" => d.id_key = Some("name"),
        _ => {}
    }
    let place = Place::at(Level::Model);
    d.value(&place, &mut String::new(), &a, &b);
    Ok(d.out)
}

// ---------------------------------------------------------------------------------------------
// For people

/// The changes grouped for people: the model first, then each container, entity (its attributes with it),
/// relationship and view, then the definitions, in the order they were found. Each group has a heading.
pub(crate) fn grouped(changes: &[PropertyChanged]) -> Vec<(String, Vec<&PropertyChanged>)> {
    let mut groups: Vec<(String, Vec<&PropertyChanged>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for c in changes {
        let heading = match c.level {
            Level::Model => "model".to_string(),
            Level::Entity | Level::Attribute => {
                format!("entity {}", c.entity.as_deref().unwrap_or_default())
            }
            Level::Definition => "definitions".to_string(),
            other => format!(
                "{} {}",
                other.as_str(),
                c.name.as_deref().unwrap_or_default()
            ),
        };
        let i = *index.entry(heading.clone()).or_insert_with(|| {
            groups.push((heading, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(c);
    }
    groups
}

/// What changed, for people: the attribute's path or the definition's before the property
/// (`attribute email.format`, `definition money type`), the property alone otherwise.
pub(crate) fn what(c: &PropertyChanged) -> String {
    match (c.level, &c.attribute, &c.name) {
        (Level::Attribute, Some(a), _) => format!("attribute {a} {}", c.property),
        (Level::Definition, _, Some(n)) => format!("definition {n} {}", c.property),
        _ => c.property.clone(),
    }
}

/// A value for people: compact JSON, cut after `max` characters with an ellipsis; `-` when absent.
pub(crate) fn shown(v: Option<&serde_json::Value>, max: usize) -> String {
    let Some(v) = v else {
        return "-".to_string();
    };
    let text = v.to_string();
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// Where the changes being found belong.
struct Place {
    level: Level,
    entity: Option<String>,
    attribute: Option<String>,
    name: Option<String>,
}

impl Place {
    fn at(level: Level) -> Place {
        Place {
            level,
            entity: None,
            attribute: None,
            name: None,
        }
    }
}

struct Differ<'x> {
    excluded: &'x [&'x str],
    /// The key that identifies the objects of an array compared as a set.
    id_key: Option<&'x str>,
    out: Vec<PropertyChanged>,
}

/// An object's keys in file order, a repeated key once with its last value.
fn entries<'o, 'a>(o: &'o Object<'a>) -> (Vec<(&'o str, &'o Value<'a>)>, HashMap<&'o str, usize>) {
    let mut list: Vec<(&str, &Value<'a>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (k, v) in o.iter() {
        match index.get(k) {
            Some(&i) => list[i].1 = v,
            None => {
                index.insert(k, list.len());
                list.push((k, v));
            }
        }
    }
    (list, index)
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Takes a key of an object over from the plain comparison (returns true when it did): the key, then its old
/// and new values.
type Special<'s, 'x, 'a> =
    &'s mut dyn FnMut(&mut Differ<'x>, &Place, &mut String, &str, &Value<'a>, &Value<'a>) -> bool;

impl<'x> Differ<'x> {
    fn excluded(&self, key: &str) -> bool {
        self.excluded.contains(&key)
    }

    fn change(
        &mut self,
        place: &Place,
        property: &str,
        from: Option<serde_json::Value>,
        to: Option<serde_json::Value>,
    ) {
        self.out.push(PropertyChanged {
            level: place.level,
            entity: place.entity.clone(),
            attribute: place.attribute.clone(),
            name: place.name.clone(),
            property: property.to_string(),
            from,
            to,
        });
    }

    /// `v` as a `serde_json` value, without the excluded keys.
    fn json(&self, v: &Value<'_>) -> serde_json::Value {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => serde_json::Value::Number(n.clone()),
            Value::String(s) => serde_json::Value::String(s.to_string()),
            Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(|i| self.json(i)).collect())
            }
            Value::Object(o) => self.object_json(o, None),
        }
    }

    /// An object as a `serde_json` value, without the excluded keys and `skip`.
    fn object_json(&self, o: &Object<'_>, skip: Option<&str>) -> serde_json::Value {
        serde_json::Value::Object(
            o.iter()
                .filter(|(k, _)| !self.excluded(k) && Some(*k) != skip)
                .map(|(k, v)| (k.to_string(), self.json(v)))
                .collect(),
        )
    }

    /// The array as a set keyed by `id_key`, when every element is an object with a distinct non-empty key.
    fn keyed<'v, 'a>(&self, items: &'v [Value<'a>]) -> Option<Vec<(&'v str, &'v Object<'a>)>> {
        let id = self.id_key?;
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let o = item.as_object()?;
            let key = text(o, id)?;
            if !seen.insert(key) {
                return None;
            }
            out.push((key, o));
        }
        Some(out)
    }

    /// Whether two values are the same by the comparison's rules.
    fn same(&self, a: &Value<'_>, b: &Value<'_>) -> bool {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => self.same_objects(x, y),
            (Value::Array(x), Value::Array(y)) => match (self.keyed(x), self.keyed(y)) {
                (Some(xk), Some(yk)) => {
                    let ym: HashMap<&str, &Object<'_>> = yk.into_iter().collect();
                    xk.len() == ym.len()
                        && xk
                            .iter()
                            .all(|(k, o)| ym.get(k).is_some_and(|p| self.same_objects(o, p)))
                }
                _ => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| self.same(p, q)),
            },
            _ => a == b,
        }
    }

    fn same_objects(&self, a: &Object<'_>, b: &Object<'_>) -> bool {
        let ((al, _), (bl, bi)) = (entries(a), entries(b));
        let count = |l: &[(&str, &Value<'_>)]| l.iter().filter(|(k, _)| !self.excluded(k)).count();
        count(&al) == count(&bl)
            && al
                .iter()
                .filter(|(k, _)| !self.excluded(k))
                .all(|(k, v)| bi.get(k).is_some_and(|&i| self.same(v, bl[i].1)))
    }

    /// Compare two values at `path`.
    fn value(&mut self, place: &Place, path: &mut String, a: &Value<'_>, b: &Value<'_>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => self.object(place, path, x, y, &mut plain),
            (Value::Array(x), Value::Array(y)) => match (self.keyed(x), self.keyed(y)) {
                (Some(xk), Some(yk)) => self.set(place, path, &xk, &yk),
                _ => {
                    if !self.same(a, b) {
                        self.change(place, path, Some(self.json(a)), Some(self.json(b)));
                    }
                }
            },
            _ => {
                if a != b {
                    self.change(place, path, Some(self.json(a)), Some(self.json(b)));
                }
            }
        }
    }

    /// Compare two arrays of identified objects as sets.
    fn set(
        &mut self,
        place: &Place,
        path: &mut String,
        old: &[(&str, &Object<'_>)],
        new: &[(&str, &Object<'_>)],
    ) {
        let by_key: HashMap<&str, &Object<'_>> = new.iter().copied().collect();
        let olds: HashSet<&str> = old.iter().map(|(k, _)| *k).collect();
        let len = path.len();
        for (k, o) in old {
            push_id(path, k);
            match by_key.get(k) {
                Some(n) => self.object(place, path, o, n, &mut plain),
                None => self.change(place, path, Some(self.object_json(o, None)), None),
            }
            path.truncate(len);
        }
        for (k, n) in new {
            if !olds.contains(k) {
                push_id(path, k);
                self.change(place, path, None, Some(self.object_json(n, None)));
                path.truncate(len);
            }
        }
    }

    /// Compare two objects key by key, letting `special` take keys over.
    fn object<'a>(
        &mut self,
        place: &Place,
        path: &mut String,
        a: &Object<'a>,
        b: &Object<'a>,
        special: Special<'_, 'x, 'a>,
    ) {
        let ((al, _), (bl, bi)) = (entries(a), entries(b));
        let len = path.len();
        let mut seen = vec![false; bl.len()];
        for (k, v) in &al {
            if self.excluded(k) {
                continue;
            }
            push_key(path, k);
            match bi.get(k) {
                Some(&i) => {
                    seen[i] = true;
                    let w = bl[i].1;
                    if !special(self, place, path, k, v, w) {
                        self.value(place, path, v, w);
                    }
                }
                None => self.change(place, path, Some(self.json(v)), None),
            }
            path.truncate(len);
        }
        for (i, (k, w)) in bl.iter().enumerate() {
            if seen[i] || self.excluded(k) {
                continue;
            }
            push_key(path, k);
            self.change(place, path, None, Some(self.json(w)));
            path.truncate(len);
        }
    }

    /// Compare two objects whose `properties` list holds a level's items: the counted nodes there are left
    /// to their level; structure nodes are compared as part of this object.
    fn with_children<'a>(
        &mut self,
        place: &Place,
        path: &mut String,
        a: &Object<'a>,
        b: &Object<'a>,
    ) {
        self.object(place, path, a, b, &mut children);
    }

    fn structure_nodes(
        &mut self,
        place: &Place,
        path: &mut String,
        old: &[Value<'_>],
        new: &[Value<'_>],
    ) {
        let (xs, ys) = (structure(old), structure(new));
        let by_key: HashMap<&str, &Object<'_>> = ys.iter().map(|(k, o)| (k.as_str(), *o)).collect();
        let olds: HashSet<&str> = xs.iter().map(|(k, _)| k.as_str()).collect();
        let len = path.len();
        for (k, a) in &xs {
            push_id(path, k);
            match by_key.get(k.as_str()) {
                Some(b) => self.with_children(place, path, a, b),
                None => self.change(place, path, Some(self.object_json(a, None)), None),
            }
            path.truncate(len);
        }
        for (k, b) in &ys {
            if !olds.contains(k.as_str()) {
                push_id(path, k);
                self.change(place, path, None, Some(self.object_json(b, None)));
                path.truncate(len);
            }
        }
    }
}

/// No key taken over.
fn plain(
    _: &mut Differ<'_>,
    _: &Place,
    _: &mut String,
    _: &str,
    _: &Value<'_>,
    _: &Value<'_>,
) -> bool {
    false
}

/// `properties` lists hold a level's items.
fn children(
    d: &mut Differ<'_>,
    place: &Place,
    path: &mut String,
    key: &str,
    a: &Value<'_>,
    b: &Value<'_>,
) -> bool {
    match (key, a, b) {
        ("properties", Value::Array(x), Value::Array(y)) => {
            d.structure_nodes(place, path, x, y);
            true
        }
        _ => false,
    }
}

/// The structure nodes of a `properties` list, by GUID (`#<index>` without one).
fn structure<'v, 'a>(list: &'v [Value<'a>]) -> Vec<(String, &'v Object<'a>)> {
    list.iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let o = v.as_object()?;
            is_structure_node(o).then(|| match text(o, "GUID") {
                Some(g) => (g.to_string(), o),
                None => (format!("#{i}"), o),
            })
        })
        .collect()
}

fn push_id(path: &mut String, id: &str) {
    path.push('[');
    path.push_str(id);
    path.push(']');
}

// ---------------------------------------------------------------------------------------------
// Hackolade

/// A counted node of a `properties` tree: its GUID, its path (as the parser builds it) and its object.
struct Node<'v> {
    guid: Option<&'v str>,
    path: String,
    obj: &'v Object<'v>,
}

/// The counted nodes below `root`, pre-order, with the parser's paths (`hackolade.rs`'s `flatten`).
/// `skip` leaves out top-level nodes (by GUID).
fn nodes<'v>(root: &'v Object<'v>, prefix: &str, skip: &HashSet<&str>) -> Vec<Node<'v>> {
    let mut out: Vec<Node<'v>> = Vec::new();
    // (node, parent path or None at the top)
    let mut stack: Vec<(&'v Value<'v>, Option<usize>)> = Vec::new();
    let push = |stack: &mut Vec<(&'v Value<'v>, Option<usize>)>, node: &'v Object<'v>, parent| {
        for child in array(node, "properties").iter().rev() {
            stack.push((child, parent));
        }
    };
    push(&mut stack, root, None);
    while let Some((value, parent)) = stack.pop() {
        let Some(node) = value.as_object() else {
            continue;
        };
        if is_structure_node(node) {
            push(&mut stack, node, parent);
            continue;
        }
        if parent.is_none() && text(node, "GUID").is_some_and(|g| skip.contains(g)) {
            continue;
        }
        let name = segment(node);
        let path = match parent.and_then(|p| out.get(p)) {
            Some(p) => super::child_path(Some(&p.path), &name),
            None => format!("{prefix}{}", super::child_path(None, &name)),
        };
        let index = out.len();
        out.push(Node {
            guid: text(node, "GUID"),
            path,
            obj: node,
        });
        push(&mut stack, node, Some(index));
    }
    out
}

/// An entry of `collections[]`: the stub (when an object), the node it resolves to with the list it was
/// found in, and the attribute nodes.
struct EntitySide<'v> {
    stub: Option<&'v Object<'v>>,
    resolved: Option<(&'v Object<'v>, &'static str)>,
    attributes: Vec<Node<'v>>,
}

/// One side of a Hackolade comparison, read as the parser reads it.
struct Side<'v> {
    model: &'v Model,
    root: &'v Object<'v>,
    /// Per entry of `collections[]`, aligned with `model.entities`.
    entities: Vec<EntitySide<'v>>,
    containers: Vec<&'v Object<'v>>,
    relationships: Vec<&'v Object<'v>>,
    views: Vec<&'v Object<'v>>,
    definitions: Vec<Node<'v>>,
}

fn objects<'v>(root: &'v Object<'v>, key: &str) -> Vec<&'v Object<'v>> {
    array(root, key)
        .iter()
        .filter_map(Value::as_object)
        .collect()
}

fn side<'v>(model: &'v Model, root: &'v Object<'v>) -> Side<'v> {
    let polyglot = nested_properties(root, "polyglotDefinitions");
    let external = nested_properties(root, "externalDefinitions");
    let mut used: HashSet<&str> = HashSet::new();
    let entities = array(root, "collections")
        .iter()
        .map(|entry| match entry.as_object() {
            Some(stub) => {
                let resolved = resolve_reference(stub, polyglot, external);
                if let Some(g) = resolved.and_then(|(node, _)| text(node, "GUID")) {
                    used.insert(g);
                }
                let tree = resolved.map_or(stub, |(node, _)| node);
                EntitySide {
                    stub: Some(stub),
                    resolved,
                    attributes: nodes(tree, "", &HashSet::new()),
                }
            }
            None => EntitySide {
                stub: None,
                resolved: None,
                attributes: Vec::new(),
            },
        })
        .collect();
    let mut definitions = match root.get("definitions") {
        Some(Value::Object(defs)) => nodes(defs, "", &HashSet::new()),
        _ => Vec::new(),
    };
    for key in ["polyglotDefinitions", "externalDefinitions"] {
        if let Some(Value::Object(defs)) = root.get(key) {
            definitions.extend(nodes(defs, &format!("{key}."), &used));
        }
    }
    Side {
        model,
        root,
        entities,
        containers: objects(root, "buckets"),
        relationships: objects(root, "relationships"),
        views: objects(root, "views"),
        definitions,
    }
}

/// Root keys whose lists are levels of their own.
const LEVEL_LISTS: &[&str] = &["collections", "buckets", "relationships", "views"];
/// Root keys holding a `properties` list of definitions.
const DEFINITION_ROOTS: &[&str] = &["definitions", "polyglotDefinitions", "externalDefinitions"];

/// At the model level: the level lists are left to their levels, the definition roots' `properties` too.
fn model_keys(
    d: &mut Differ<'_>,
    place: &Place,
    path: &mut String,
    key: &str,
    a: &Value<'_>,
    b: &Value<'_>,
) -> bool {
    match (a, b) {
        (Value::Array(_), Value::Array(_)) if LEVEL_LISTS.contains(&key) => true,
        (Value::Object(x), Value::Object(y)) if DEFINITION_ROOTS.contains(&key) => {
            d.with_children(place, path, x, y);
            true
        }
        _ => false,
    }
}

fn hackolade(d: &mut Differ<'_>, old: (&Model, &Object<'_>), new: (&Model, &Object<'_>)) {
    let (o, n) = (side(old.0, old.1), side(new.0, new.1));

    let model = Place::at(Level::Model);
    d.object(&model, &mut String::new(), o.root, n.root, &mut model_keys);

    named_items(
        d,
        Level::Container,
        (&o.model.containers, &n.model.containers),
        (&o.containers, &n.containers),
        |c| c.guid.as_deref(),
        |c| c.name.clone(),
    );

    for (i, j) in matched(
        &o.model.entities,
        &n.model.entities,
        |e| e.guid.as_deref(),
        |e| e.name.clone(),
    ) {
        if let (Some(oe), Some(ne), Some(e)) = (
            o.entities.get(i),
            n.entities.get(j),
            n.model.entities.get(j),
        ) {
            entity(d, &e.name, oe, ne);
        }
    }

    named_items(
        d,
        Level::Relationship,
        (&o.model.relationships, &n.model.relationships),
        (&o.relationships, &n.relationships),
        |r| r.guid.as_deref(),
        rel_label,
    );
    named_items(
        d,
        Level::View,
        (&o.model.views, &n.model.views),
        (&o.views, &n.views),
        |v| v.guid.as_deref(),
        |v| v.name.clone(),
    );

    for (i, j) in matched(
        &o.definitions,
        &n.definitions,
        |a| a.guid,
        |a| a.path.clone(),
    ) {
        if let (Some(a), Some(b)) = (o.definitions.get(i), n.definitions.get(j)) {
            let place = Place {
                name: Some(b.path.clone()),
                ..Place::at(Level::Definition)
            };
            d.with_children(&place, &mut String::new(), a.obj, b.obj);
        }
    }
}

/// The (old, new) indexes of the items [`pair`] matches.
fn matched<T>(
    old: &[T],
    new: &[T],
    guid: fn(&T) -> Option<&str>,
    key: fn(&T) -> String,
) -> impl Iterator<Item = (usize, usize)> {
    pair(old, new, guid, key)
        .into_iter()
        .enumerate()
        .filter_map(|(i, j)| Some((i, j?)))
}

/// Items of one `level` (containers, relationships, views), matched as the model's lists match them and
/// compared property by property, each under its name (`key`) in the newer version.
fn named_items<T>(
    d: &mut Differ<'_>,
    level: Level,
    items: (&[T], &[T]),
    raw: (&[&Object<'_>], &[&Object<'_>]),
    guid: fn(&T) -> Option<&str>,
    key: fn(&T) -> String,
) {
    for (i, j) in matched(items.0, items.1, guid, key) {
        if let (Some(a), Some(b), Some(item)) = (raw.0.get(i), raw.1.get(j), items.1.get(j)) {
            let place = Place {
                name: Some(key(item)),
                ..Place::at(level)
            };
            d.object(&place, &mut String::new(), a, b, &mut plain);
        }
    }
}

/// One pair of entities: the stubs, the resolved nodes, the attributes.
fn entity(d: &mut Differ<'_>, name: &str, oe: &EntitySide<'_>, ne: &EntitySide<'_>) {
    let place = Place {
        entity: Some(name.to_string()),
        ..Place::at(Level::Entity)
    };
    if let (Some(a), Some(b)) = (oe.stub, ne.stub) {
        // A resolved stub's own `properties` is not its attribute list.
        if oe.resolved.is_none() && ne.resolved.is_none() {
            d.with_children(&place, &mut String::new(), a, b);
        } else {
            d.object(&place, &mut String::new(), a, b, &mut plain);
        }
    }
    match (oe.resolved, ne.resolved) {
        (Some((a, ka)), Some((b, kb))) if ka == kb => {
            d.with_children(&place, &mut ka.to_string(), a, b);
        }
        (a, b) => {
            // Resolved on one side only (or in another list): the node, without its attribute tree.
            if let Some((node, kind)) = a {
                d.change(
                    &place,
                    kind,
                    Some(d.object_json(node, Some("properties"))),
                    None,
                );
            }
            if let Some((node, kind)) = b {
                d.change(
                    &place,
                    kind,
                    None,
                    Some(d.object_json(node, Some("properties"))),
                );
            }
        }
    }
    for (k, l) in matched(
        &oe.attributes,
        &ne.attributes,
        |a| a.guid,
        |a| a.path.clone(),
    ) {
        if let (Some(a), Some(b)) = (oe.attributes.get(k), ne.attributes.get(l)) {
            let place = Place {
                entity: Some(name.to_string()),
                attribute: Some(b.path.clone()),
                ..Place::at(Level::Attribute)
            };
            d.with_children(&place, &mut String::new(), a.obj, b.obj);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Parsed, parse_hackolade};
    use serde_json::json;

    fn changes(format: &str, old: &str, new: &str) -> Vec<PropertyChanged> {
        let model = |s: &str| match format {
            "hackolade" => match parse_hackolade(s.as_bytes()) {
                Parsed::Model(m) => m,
                other => panic!("{other:?}"),
            },
            _ => match crate::model::format(format)
                .expect("format")
                .parse("x.schema.json", s.as_bytes())
            {
                Parsed::Model(m) => m,
                other => panic!("{other:?}"),
            },
        };
        let (a, b) = (model(old), model(new));
        properties_changed(
            format,
            Version {
                model: &a,
                bytes: old.as_bytes(),
            },
            Version {
                model: &b,
                bytes: new.as_bytes(),
            },
        )
        .expect("compare")
    }

    /// (level, entity, attribute or name, property, from, to) for short assertions.
    type Row = (
        &'static str,
        Option<String>,
        Option<String>,
        String,
        Option<serde_json::Value>,
        Option<serde_json::Value>,
    );
    fn rows(c: &[PropertyChanged]) -> Vec<Row> {
        c.iter()
            .map(|c| {
                (
                    c.level.as_str(),
                    c.entity.clone(),
                    c.attribute.clone().or_else(|| c.name.clone()),
                    c.property.clone(),
                    c.from.clone(),
                    c.to.clone(),
                )
            })
            .collect()
    }

    const OLD: &str = r##"{"modelName": "m", "GUID": "m1", "lastModifTS": 1, "author": "a",
        "hackoladeMeta": {"x": 1}, "settings": {"erd": [{"GUID": "e1", "x": 1}]},
        "buckets": [{"GUID": "b1", "name": "shop", "backgroundColor": {"r": 1}, "ifNotExist": true}],
        "collections": [
          {"GUID": "e1", "collectionName": "Customer", "color": {"hex": "#fff"},
           "indexes": [{"GUID": "i1", "name": "by_mail"}, {"GUID": "i2", "name": "by_id"}],
           "encryptionOptions": {"algorithm": "AES", "keys": ["a", "b"]},
           "properties": [
             {"GUID": "a1", "name": "id", "type": "string", "unique": true, "error": {"name": false}},
             {"GUID": "c1", "type": "choice", "choice": "oneOf", "properties": [
               {"GUID": "s1", "type": "subschema", "subschema": true, "properties": [
                 {"GUID": "a2", "name": "mail", "type": "string", "pattern": "@"}]}]}]},
          {"GUID": "e2", "collectionName": "Order", "properties": []}],
        "relationships": [{"GUID": "r1", "name": "places", "parentCollection": "e1",
           "childCollection": "e2", "isActivated": true, "hackoladeStyles": {"shape": [1]}}],
        "views": [{"GUID": "v1", "name": "vip", "viewOn": "e1", "selectStatement": "a"}],
        "definitions": {"GUID": "d0", "properties": [{"GUID": "d1", "name": "money", "type": "numeric"}]}}"##;

    #[test]
    fn every_property_is_reported_where_it_sits() {
        // Same content, every list reordered, layout and UI keys changed.
        let reordered = r##"{"modelName": "m", "GUID": "m1", "lastModifTS": 2, "author": "a",
        "hackoladeMeta": {"x": 2}, "settings": {},
        "buckets": [{"GUID": "b1", "name": "shop", "backgroundColor": {"r": 2}, "ifNotExist": true}],
        "collections": [
          {"GUID": "e2", "collectionName": "Order", "properties": []},
          {"GUID": "e1", "collectionName": "Customer", "color": {"hex": "#000"},
           "indexes": [{"GUID": "i2", "name": "by_id"}, {"GUID": "i1", "name": "by_mail"}],
           "encryptionOptions": {"keys": ["a", "b"], "algorithm": "AES"},
           "properties": [
             {"GUID": "c1", "type": "choice", "choice": "oneOf", "properties": [
               {"GUID": "s1", "type": "subschema", "subschema": true, "properties": [
                 {"GUID": "a2", "name": "mail", "type": "string", "pattern": "@"}]}]},
             {"GUID": "a1", "name": "id", "type": "string", "unique": true, "error": {"name": true}}]}],
        "relationships": [{"GUID": "r1", "name": "places", "parentCollection": "e1",
           "childCollection": "e2", "isActivated": true, "hackoladeStyles": {"shape": [2]}}],
        "views": [{"GUID": "v1", "name": "vip", "viewOn": "e1", "selectStatement": "a"}],
        "definitions": {"GUID": "d0", "properties": [{"GUID": "d1", "name": "money", "type": "numeric"}]}}"##;
        assert_eq!(rows(&changes("hackolade", OLD, reordered)), vec![]);

        let new = r#"{"modelName": "m", "GUID": "m1", "lastModifTS": 2, "author": "b",
        "buckets": [{"GUID": "b1", "name": "shop", "ifNotExist": false}],
        "collections": [
          {"GUID": "e2", "collectionName": "Order", "properties": []},
          {"GUID": "e1", "collectionName": "Customer",
           "indexes": [{"GUID": "i2", "name": "by_id"}, {"GUID": "i1", "name": "by_email"},
                       {"GUID": "i3", "name": "new"}],
           "encryptionOptions": {"algorithm": "RSA", "keys": ["b", "a"]},
           "properties": [
             {"GUID": "c1", "type": "choice", "choice": "anyOf", "properties": [
               {"GUID": "s1", "type": "subschema", "subschema": true, "properties": [
                 {"GUID": "a2", "name": "mail", "type": "string", "pattern": "@", "format": "email"}]}]},
             {"GUID": "a1", "name": "id", "type": "string"}]}],
        "relationships": [{"GUID": "r1", "name": "places", "parentCollection": "e1",
           "childCollection": "e2", "isActivated": false}],
        "views": [{"GUID": "v1", "name": "vip", "viewOn": "e1", "selectStatement": "b"}],
        "definitions": {"GUID": "d0", "properties": [{"GUID": "d1", "name": "money", "type": "string"}]}}"#;
        let s = |v: &str| Some(v.to_string());
        let customer = s("Customer");
        assert_eq!(
            rows(&changes("hackolade", OLD, new)),
            vec![
                (
                    "model",
                    None,
                    None,
                    "author".into(),
                    Some(json!("a")),
                    Some(json!("b"))
                ),
                (
                    "container",
                    None,
                    s("shop"),
                    "ifNotExist".into(),
                    Some(json!(true)),
                    Some(json!(false))
                ),
                (
                    "entity",
                    customer.clone(),
                    None,
                    "indexes[i1].name".into(),
                    Some(json!("by_mail")),
                    Some(json!("by_email"))
                ),
                (
                    "entity",
                    customer.clone(),
                    None,
                    "indexes[i3]".into(),
                    None,
                    Some(json!({"GUID": "i3", "name": "new"}))
                ),
                (
                    "entity",
                    customer.clone(),
                    None,
                    "encryptionOptions.algorithm".into(),
                    Some(json!("AES")),
                    Some(json!("RSA"))
                ),
                (
                    "entity",
                    customer.clone(),
                    None,
                    "encryptionOptions.keys".into(),
                    Some(json!(["a", "b"])),
                    Some(json!(["b", "a"]))
                ),
                (
                    "entity",
                    customer.clone(),
                    None,
                    "properties[c1].choice".into(),
                    Some(json!("oneOf")),
                    Some(json!("anyOf"))
                ),
                // A flag removed from a field: modified, `to` absent.
                (
                    "attribute",
                    customer.clone(),
                    s("id"),
                    "unique".into(),
                    Some(json!(true)),
                    None
                ),
                (
                    "attribute",
                    customer.clone(),
                    s("mail"),
                    "format".into(),
                    None,
                    Some(json!("email"))
                ),
                (
                    "relationship",
                    None,
                    s("places"),
                    "isActivated".into(),
                    Some(json!(true)),
                    Some(json!(false))
                ),
                (
                    "view",
                    None,
                    s("vip"),
                    "selectStatement".into(),
                    Some(json!("a")),
                    Some(json!("b"))
                ),
                (
                    "definition",
                    None,
                    s("money"),
                    "type".into(),
                    Some(json!("numeric")),
                    Some(json!("string"))
                ),
            ]
        );
        // Absent means absent in the JSON.
        let removed = changes("hackolade", OLD, new)
            .into_iter()
            .find(|c| c.property == "unique")
            .expect("unique");
        let v = serde_json::to_value(&removed).expect("json");
        assert_eq!(
            v,
            json!({"level": "attribute", "entity": "Customer", "attribute": "id", "property": "unique", "from": true})
        );
    }

    #[test]
    fn excluded_keys_are_left_out_of_reported_values_too() {
        let old = r#"{"modelName": "m", "collections": [{"GUID": "e1", "collectionName": "E",
            "properties": []}]}"#;
        let new = r#"{"modelName": "m", "collections": [{"GUID": "e1", "collectionName": "E",
            "partitioning": {"by": "day", "hackoladeMeta": {}, "color": "red"}, "properties": []}]}"#;
        assert_eq!(
            rows(&changes("hackolade", old, new)),
            vec![(
                "entity",
                Some("E".into()),
                None,
                "partitioning".into(),
                None,
                Some(json!({"by": "day"}))
            )]
        );
    }

    #[test]
    fn derived_entities_read_through_their_reference() {
        let model = |desc: &str, ty: &str| {
            format!(
                r#"{{"modelName": "d", "collections": [
                  {{"GUID": "e1", "collectionName": "A", "type": "reference", "refType": "polyglot",
                    "ref": "p1", "properties": []}}],
                "polyglotDefinitions": {{"properties": [
                  {{"GUID": "p1", "description": "{desc}", "properties": [
                    {{"GUID": "a1", "name": "x", "type": "{ty}"}}]}},
                  {{"GUID": "p2", "name": "spare", "type": "{ty}"}}]}}}}"#
            )
        };
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            rows(&changes(
                "hackolade",
                &model("one", "string"),
                &model("two", "number")
            )),
            vec![
                (
                    "entity",
                    s("A"),
                    None,
                    "polyglot.description".into(),
                    Some(json!("one")),
                    Some(json!("two"))
                ),
                (
                    "attribute",
                    s("A"),
                    s("x"),
                    "type".into(),
                    Some(json!("string")),
                    Some(json!("number"))
                ),
                (
                    "definition",
                    None,
                    s("polyglotDefinitions.spare"),
                    "type".into(),
                    Some(json!("string")),
                    Some(json!("number"))
                ),
            ]
        );
    }

    #[test]
    fn json_schema_and_avro_compare_the_whole_document() {
        let old = r#"{"$schema": "http://json-schema.org/draft-07/schema#", "title": "T", "type": "object",
            "properties": {"zip": {"type": "string", "maxLength": 5}}}"#;
        let new = r#"{"$schema": "http://json-schema.org/draft-07/schema#", "title": "T", "type": "object",
            "properties": {"zip": {"type": "string", "maxLength": 9}}}"#;
        assert_eq!(
            rows(&changes("jsonschema", old, new)),
            vec![(
                "model",
                None,
                None,
                "properties.zip.maxLength".into(),
                Some(json!(5)),
                Some(json!(9))
            )]
        );
        let old = br#"{"type": "record", "name": "R", "fields": [
            {"name": "a", "type": "long"}, {"name": "b", "type": "string", "doc": "x"}]}"#;
        let new = br#"{"type": "record", "name": "R", "fields": [
            {"name": "b", "type": "string", "doc": "y"}, {"name": "a", "type": "long"}]}"#;
        let parse = |b: &[u8]| match crate::model::format("avro")
            .expect("avro")
            .parse("r.avsc", b)
        {
            Parsed::Model(m) => m,
            other => panic!("{other:?}"),
        };
        let (a, b) = (parse(old), parse(new));
        let c = properties_changed(
            "avro",
            Version {
                model: &a,
                bytes: old,
            },
            Version {
                model: &b,
                bytes: new,
            },
        )
        .expect("compare");
        assert_eq!(
            rows(&c),
            vec![(
                "model",
                None,
                None,
                "fields[b].doc".into(),
                Some(json!("x")),
                Some(json!("y"))
            )]
        );
    }

    #[test]
    fn values_for_people_are_bounded() {
        let long = json!("é".repeat(500));
        let s = shown(Some(&long), 10);
        assert_eq!(s.chars().count(), 11);
        assert!(s.ends_with('…'));
        assert_eq!(shown(None, 10), "-");
        assert_eq!(shown(Some(&json!(true)), 10), "true");
        let c = changes(
            "hackolade",
            OLD,
            OLD.replace("\"author\": \"a\"", "\"author\": \"b\"")
                .as_str(),
        );
        let g = grouped(&c);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].0, "model");
    }

    fn fixture(folder: &str) -> Vec<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/models")
            .join(folder);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("../shared/fixtures/models is missing")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        files
    }

    /// The walk finds the attributes and definitions the parser finds, with the same paths.
    #[test]
    fn the_walk_agrees_with_the_parser_on_every_fixture() {
        let mut checked = 0;
        for path in fixture("books")
            .into_iter()
            .chain(fixture("playground-models"))
        {
            let bytes = std::fs::read(&path).expect("read");
            let Parsed::Model(model) = parse_hackolade(&bytes) else {
                panic!("{}", path.display());
            };
            let value = json::parse_whole(&bytes).expect("json");
            let root = value.as_object().expect("object");
            let s = side(&model, root);
            assert_eq!(s.entities.len(), model.entities.len());
            for (e, w) in model.entities.iter().zip(&s.entities) {
                let a: Vec<&str> = e.attributes.iter().map(|a| a.path.as_str()).collect();
                let b: Vec<&str> = w.attributes.iter().map(|a| a.path.as_str()).collect();
                assert_eq!(a, b, "{}", path.display());
            }
            let defs: Vec<&str> = s
                .definitions
                .iter()
                .map(|d| d.path.as_str())
                .filter(|p| {
                    !p.starts_with("polyglotDefinitions.") && !p.starts_with("externalDefinitions.")
                })
                .collect();
            let expected: Vec<&str> = model.definitions.iter().map(|d| d.path.as_str()).collect();
            assert_eq!(defs, expected, "{}", path.display());
            assert_eq!(s.containers.len(), model.containers.len());
            assert_eq!(s.relationships.len(), model.relationships.len());
            assert_eq!(s.views.len(), model.views.len());
            checked += 1;
        }
        assert_eq!(checked, 155);
    }

    #[test]
    fn random_mutations_never_panic() {
        let path = fixture("playground-models")
            .into_iter()
            .find(|p| p.to_string_lossy().contains("Neo4j - Derived"))
            .expect("fixture");
        let original = std::fs::read(&path).expect("read");
        let Parsed::Model(base) = parse_hackolade(&original) else {
            panic!("fixture");
        };
        let mut rng = crate::model::testutil::Rng(7);
        let mut compared = 0;
        for _ in 0..300 {
            let bytes = rng.mutate(&original, b"{}[]\",:0tn ");
            if let Parsed::Model(m) = parse_hackolade(&bytes) {
                let old = Version {
                    model: &base,
                    bytes: &original,
                };
                let new = Version {
                    model: &m,
                    bytes: &bytes,
                };
                properties_changed("hackolade", old, new).expect("compare");
                properties_changed("hackolade", new, old).expect("compare");
                compared += 1;
            }
        }
        assert!(compared > 0);
    }

    #[test]
    fn the_readme_lists_every_exclusion() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for key in EXCLUDED {
            assert!(
                readme.contains(&format!("`{key}`")),
                "README.md does not list `{key}`"
            );
        }
    }
}
