//! Avro schemas as models (placeholder, being written).

use super::{Format, Parsed};

pub struct Avro;

impl Format for Avro {
    fn name(&self) -> &'static str {
        "avro"
    }
    fn parse(&self, _path: &str, _bytes: &[u8]) -> Parsed {
        Parsed::NotModel
    }
}
