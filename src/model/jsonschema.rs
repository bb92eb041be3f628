//! JSON Schema files as models (placeholder, being written).

use super::{Format, Parsed};

pub struct JsonSchema;

impl Format for JsonSchema {
    fn name(&self) -> &'static str {
        "jsonschema"
    }
    fn parse(&self, _path: &str, _bytes: &[u8]) -> Parsed {
        Parsed::NotModel
    }
}
