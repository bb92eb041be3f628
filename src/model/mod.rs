//! Model files → one neutral [`Model`] type.
//!
//! This module owns turning the bytes of a data-model file into a [`Model`]: its containers,
//! entities with their flattened attribute trees, relationships, views and definitions. Everything
//! here is a pure function of the input bytes: no I/O, no clock, no global state, and no panics on
//! any input. Callers read files and decide what to do with the three outcomes of [`Parsed`]
//! (not a model, a model, or a file that claims to be a model but is broken).
//!
//! Formats sit behind one small trait, [`Format`]: Hackolade (`hackolade.rs`, with the format rules and the
//! counting definition), JSON Schema (`jsonschema.rs`) and Avro (`avro.rs`). Adding a format is one new file
//! and one line in [`FORMATS`]; its
//! file names come with it ([`Format::default_globs`]), so the configuration needs no change.

use std::fmt;

pub(crate) mod avro;
#[cfg(test)]
mod corpus_tests;
pub mod diff;
mod filter;
pub(crate) mod hackolade;
pub(crate) mod json;
pub(crate) mod jsonschema;
pub mod properties;

pub(crate) use filter::{DEFAULT_FORMATS, FileFilter, FilterError};
pub use hackolade::parse as parse_hackolade;

/// A model file format.
pub trait Format: Sync {
    /// The name used in the `formats` setting.
    fn name(&self) -> &'static str;
    /// Read one file: not a model of this format, a model, or a file that claims to be one but is broken.
    /// `path` is the file's path in the repository (some formats are recognised by name).
    fn parse(&self, path: &str, bytes: &[u8]) -> Parsed;
    /// The files this format reads when `include` is not set.
    fn default_globs(&self) -> &'static [&'static str];
}

/// Every format modelmirror knows, in the order they are tried.
pub(crate) const FORMATS: &[&dyn Format] =
    &[&hackolade::Hackolade, &jsonschema::JsonSchema, &avro::Avro];

/// The format named `name`.
pub fn format(name: &str) -> Option<&'static dyn Format> {
    FORMATS.iter().copied().find(|f| f.name() == name)
}

/// Try each enabled format in turn: the first that says anything but "not a model" decides.
pub fn parse_with(formats: &[&'static dyn Format], path: &str, bytes: &[u8]) -> Parsed {
    for f in formats {
        match f.parse(path, bytes) {
            Parsed::NotModel => continue,
            other => return other,
        }
    }
    Parsed::NotModel
}

/// The version of what the parsers extract. Raise it when a change makes the same file parse differently:
/// the next poll of every repository then reads all its models again (`settings-changed`).
pub(crate) const PARSER_VERSION: u32 = 2;

/// A parsed data model, independent of the tool that wrote it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Model {
    pub name: String,
    pub guid: Option<String>,
    pub db_vendor: Option<String>,
    pub app_target: Option<String>,
    pub db_version: Option<String>,
    pub description: Option<String>,
    pub containers: Vec<Container>,
    pub entities: Vec<Entity>,
    pub relationships: Vec<Relationship>,
    pub views: Vec<View>,
    /// Flattened definition trees from the model's `definitions` only (not the polyglot or
    /// external ones), pre-order; each top-level definition is an attribute of depth 0.
    pub definitions: Vec<Attribute>,
}

/// The longest name a path segment holds, in characters; a longer one is cut and ends in `…`.
const MAX_SEGMENT_CHARS: usize = 128;
/// The longest attribute path, in bytes; a longer one is cut and ends in `…` and a hash of the whole.
const MAX_PATH_BYTES: usize = 512;

/// The path of an attribute named `name` below the attribute at `parent` (`None`: at the top). Names are
/// joined with `.`; a segment is cut at [`MAX_SEGMENT_CHARS`] and a path at [`MAX_PATH_BYTES`], so a
/// model file with long names over many nested attributes cannot multiply its size in the catalog (the
/// attribute's `name` keeps the whole name).
pub(crate) fn child_path(parent: Option<&str>, name: &str) -> String {
    let segment = match name.char_indices().nth(MAX_SEGMENT_CHARS) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_string(),
    };
    let path = match parent {
        Some(p) => format!("{p}.{segment}"),
        None => segment,
    };
    if path.len() <= MAX_PATH_BYTES {
        return path;
    }
    // FNV-1a of the whole path: stable across runs and versions, so a cut path names the same attribute.
    let hash = path.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let mut cut = MAX_PATH_BYTES - 16;
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…{hash:08x}", &path[..cut])
}

impl Model {
    /// Number of entities (every entry of the model's entity list).
    #[must_use]
    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    /// Sum of the entities' attribute counts (definitions are not included).
    #[must_use]
    pub fn attribute_count(&self) -> usize {
        self.entities.iter().map(|e| e.attributes.len()).sum()
    }
}

/// A schema, keyspace, database or other grouping of entities.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Container {
    pub guid: Option<String>,
    pub name: String,
}

/// A table, collection, node label, record, … with its attributes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entity {
    pub guid: Option<String>,
    /// Display name (`collectionName`); empty when the file gives none.
    pub name: String,
    /// Technical name (`code`), when the file records one.
    pub code: Option<String>,
    /// Name of the container the entity belongs to.
    pub container: Option<String>,
    pub description: Option<String>,
    /// `"polyglot"` or `"external"` when the entity is a reference stub whose definition was
    /// found and used for the attributes.
    pub derived_from: Option<String>,
    /// Pre-order flattening of the counted attribute nodes.
    pub attributes: Vec<Attribute>,
}

/// One attribute (field, column, property) in a flattened tree.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Attribute {
    pub guid: Option<String>,
    /// Names from the entity down to this attribute joined with `.`.
    pub path: String,
    /// Last path segment.
    pub name: String,
    pub code: Option<String>,
    pub data_type: Option<String>,
    /// Physical / sub type (`mode`, else `childType`).
    pub mode: Option<String>,
    pub required: bool,
    pub primary_key: bool,
    pub description: Option<String>,
    /// 0 = direct child of the entity; structure nodes add no depth.
    pub depth: u32,
    /// Index into the same `Vec` of the nearest counted ancestor.
    pub parent: Option<usize>,
}

/// A relationship between two entities.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Relationship {
    pub guid: Option<String>,
    pub name: Option<String>,
    /// Entity name resolved from its GUID, or the GUID itself when it cannot be resolved.
    pub parent_entity: Option<String>,
    /// Entity name resolved from its GUID, or the GUID itself when it cannot be resolved.
    pub child_entity: Option<String>,
    pub parent_cardinality: Option<String>,
    pub child_cardinality: Option<String>,
    pub relationship_type: Option<String>,
}

/// A view defined on an entity.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct View {
    pub guid: Option<String>,
    pub name: String,
    /// Name of the entity the view is on (or its GUID when it cannot be resolved).
    pub view_on: Option<String>,
}

/// Outcome of parsing a file that may or may not be a model.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per parsed file, consumed at once; boxing would only add an allocation"
)]
pub enum Parsed {
    /// Not a model file (other JSON, other text): skip it quietly.
    NotModel,
    Model(Model),
    /// The file claims to be a model but cannot be read as one.
    Invalid(ParseError),
}

/// Why a file that claims to be a model could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", DisplayError(self))]
pub struct ParseError {
    pub message: String,
    /// 1-based line of the error, when known.
    pub line: Option<usize>,
    /// 1-based column of the error, when known.
    pub column: Option<usize>,
}

struct DisplayError<'a>(&'a ParseError);

impl fmt::Display for DisplayError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        match (e.line, e.column) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}: {}", e.message),
            (Some(line), None) => write!(f, "line {line}: {}", e.message),
            _ => f.write_str(&e.message),
        }
    }
}

/// Test helpers shared by the parsers' tests.
#[cfg(test)]
pub(crate) mod testutil {
    /// xorshift64*: deterministic randomness without a dependency.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        /// `original` with 1 to 8 random edits: a byte replaced by one of `interesting` or by any byte, a
        /// byte removed, or the rest cut off.
        pub(crate) fn mutate(&mut self, original: &[u8], interesting: &[u8]) -> Vec<u8> {
            let mut bytes = original.to_vec();
            for _ in 0..1 + self.below(8) {
                if bytes.is_empty() {
                    break;
                }
                let at = self.below(bytes.len());
                match self.below(4) {
                    0 => bytes[at] = interesting[self.below(interesting.len())],
                    1 => bytes[at] = self.next() as u8,
                    2 => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at),
                }
            }
            bytes
        }
    }

    /// Every attribute tree is flattened parent-first, with depths and dotted paths that agree.
    pub(crate) fn check_tree_invariants(attrs: &[crate::model::Attribute], context: &str) {
        for (i, a) in attrs.iter().enumerate() {
            match a.parent {
                None => {
                    assert_eq!(a.depth, 0, "{context}: {}", a.path);
                    assert_eq!(a.path, crate::model::child_path(None, &a.name), "{context}");
                }
                Some(p) => {
                    assert!(p < i, "{context}: parent after child");
                    assert_eq!(a.depth, attrs[p].depth + 1, "{context}: {}", a.path);
                    assert_eq!(
                        a.path,
                        crate::model::child_path(Some(&attrs[p].path), &a.name),
                        "{context}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_bounded_however_long_the_names() {
        assert_eq!(child_path(None, "a"), "a");
        assert_eq!(child_path(Some("a"), "b"), "a.b");
        let long = "é".repeat(1000);
        let segment = child_path(None, &long);
        assert_eq!(segment.chars().count(), MAX_SEGMENT_CHARS + 1);
        assert!(segment.ends_with('…'));
        let mut path = String::from("root");
        for i in 0..20 {
            path = child_path(Some(&path), &format!("{long}{i}"));
            assert!(path.len() <= MAX_PATH_BYTES, "{}", path.len());
        }
        // Two paths cut at the same place stay apart.
        let a = child_path(Some(&"x".repeat(600)), "a");
        let b = child_path(Some(&"x".repeat(600)), "b");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_PATH_BYTES);
    }
}
