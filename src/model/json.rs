//! JSON for the model parsers: a compact tree (strings borrowed from the file's bytes, objects as short
//! lists, and only the object keys the parser reads), plus the byte scanning and error mapping every
//! parser shares.
//!
//! Why not `serde_json::Value`: it copies every string and keeps every object in a `BTreeMap`, about
//! seven times the file's size in memory for a Hackolade model (a 50 MB model took 450 MB of heap). Most
//! of a Hackolade file is keys no parser reads (layout, sample data, per-target options); they are skipped
//! while parsing, never stored. The syntax is still checked in full by `serde_json`, with its error
//! messages, line and column, and its recursion limit (128), so deep input cannot overflow the stack.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use super::ParseError;

/// A JSON value whose strings borrow from the parsed bytes where they hold no escapes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    Object(Object<'a>),
}

/// A JSON object: its kept keys in file order. A repeated key reads as its last value, as in
/// `serde_json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Object<'a>(Vec<(Cow<'a, str>, Value<'a>)>);

impl<'a> Object<'a> {
    /// The value of `key` (the last one when the key repeats).
    pub(crate) fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The keys and values in file order (a repeated key appears each time).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Value<'a>)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

impl<'a> Value<'a> {
    pub(crate) fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Which object keys to keep.
#[derive(Clone, Copy)]
pub(crate) struct Keys {
    /// Keys kept in every object.
    pub(crate) keep: &'static [&'static str],
    /// Keys whose value is kept whole (every key of the objects below them), e.g. lookup tables keyed by
    /// GUIDs.
    pub(crate) whole: &'static [&'static str],
}

/// Parses `bytes` as JSON, keeping only the object keys `keys` names. Fails exactly where
/// `serde_json::from_slice` fails, with the same error.
pub(crate) fn parse<'a>(bytes: &'a [u8], keys: Keys) -> Result<Value<'a>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Seed {
        keys,
        mode: Mode::Named,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Parses `bytes` keeping every key (for the property comparison, and for tests that check a key list
/// against the whole file).
pub(crate) fn parse_whole(bytes: &[u8]) -> Result<Value<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Seed {
        keys: Keys {
            keep: &[],
            whole: &[],
        },
        mode: Mode::Whole,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Deserializes one value.
#[derive(Clone, Copy)]
struct Seed {
    keys: Keys,
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Keep the named keys of objects.
    Named,
    /// Keep everything below.
    Whole,
    /// Check the syntax as `serde_json::Value` would (strings' UTF-8 and control characters included, which
    /// `IgnoredAny` lets through) but store nothing.
    Skip,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value<'de>, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value<'de>, E> {
        if self.mode == Mode::Skip {
            return Ok(Value::Null);
        }
        Ok(Value::String(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        if self.mode == Mode::Skip {
            while seq.next_element_seed(self)?.is_some() {}
            return Ok(Value::Null);
        }
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        items.shrink_to_fit();
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let mode = match self.mode {
                Mode::Named if self.keys.whole.contains(&key.as_ref()) => Mode::Whole,
                Mode::Named if self.keys.keep.contains(&key.as_ref()) => Mode::Named,
                Mode::Named => Mode::Skip,
                other => other,
            };
            let value = map.next_value_seed(Seed {
                keys: self.keys,
                mode,
            })?;
            if mode != Mode::Skip {
                entries.push((key, value));
            }
        }
        entries.shrink_to_fit();
        Ok(Value::Object(Object(entries)))
    }
}

/// An object key, borrowed when it holds no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

// ---------------------------------------------------------------------------------------------
// Shared by the parsers: byte scanning before parsing, and `serde_json` errors as `ParseError`s.

fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `bytes` without leading JSON whitespace.
pub(crate) fn skip_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_json_whitespace(b))
        .unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// Where `needle` first occurs in `haystack` (`None` for an empty needle).
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether `needle` occurs in `haystack` (never for an empty needle).
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// A `serde_json` error as a [`ParseError`]: "invalid JSON: …" with its line and column apart.
pub(crate) fn error(err: &serde_json::Error) -> ParseError {
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: Keys = Keys {
        keep: &["a", "b", "list"],
        whole: &["table"],
    };

    #[test]
    fn keeps_named_keys_and_whole_tables_only() {
        let text = br#"{"a": 1, "skip": {"a": [1, 2, {"deep": true}]}, "b": "x\"y", "table": {"g1": "n1", "g2": {"z": null}},
            "list": [{"a": -2.5, "zz": 1}, "s", null, false]}"#;
        let v = parse(text, KEYS).unwrap();
        let root = v.as_object().unwrap();
        assert_eq!(root.get("a"), Some(&Value::Number(1.into())));
        assert!(root.get("skip").is_none(), "unnamed keys are not stored");
        assert_eq!(root.get("b").and_then(Value::as_str), Some("x\"y"));
        let table = root.get("table").and_then(Value::as_object).unwrap();
        assert_eq!(table.get("g1").and_then(Value::as_str), Some("n1"));
        assert!(
            table
                .get("g2")
                .and_then(Value::as_object)
                .unwrap()
                .get("z")
                .is_some()
        );
        let Some(Value::Array(list)) = root.get("list") else {
            panic!("list kept")
        };
        assert_eq!(list.len(), 4);
        let first = list[0].as_object().unwrap();
        assert!(first.get("zz").is_none());
        assert_eq!(
            first.get("a"),
            Some(&Value::Number(Number::from_f64(-2.5).unwrap()))
        );
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let v = parse(br#"{"a": "plain", "b": "esc\n"}"#, KEYS).unwrap();
        let root = v.as_object().unwrap();
        assert!(matches!(
            root.get("a"),
            Some(Value::String(Cow::Borrowed("plain")))
        ));
        assert!(matches!(root.get("b"), Some(Value::String(Cow::Owned(_)))));
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_value() {
        let v = parse(br#"{"a": 1, "a": 2}"#, KEYS).unwrap();
        assert_eq!(
            v.as_object().unwrap().get("a"),
            Some(&Value::Number(2.into()))
        );
    }

    #[test]
    fn errors_are_serde_json_errors_even_in_skipped_values() {
        for bad in [
            &br#"{"skip": [1, 2,]}"#[..],
            br#"{"a": 1} x"#,
            br#"{"a": tru}"#,
            br#"{"skip": "unterminated}"#,
        ] {
            let ours = parse(bad, KEYS).unwrap_err().to_string();
            let theirs = serde_json::from_slice::<serde_json::Value>(bad)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(10_000);
        assert!(
            parse(deep.as_bytes(), KEYS).is_err(),
            "recursion limit holds"
        );
        let deep_skipped = format!("{{\"skip\": {}}}", "[".repeat(10_000));
        assert!(parse(deep_skipped.as_bytes(), KEYS).is_err());
    }
}
