//! Any bytes as a model file: every format's parser must answer (a model, an error, or "not mine") without
//! panicking or hanging.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelmirror::model;

fuzz_target!(|data: &[u8]| {
    let _ = model::parse_hackolade(data);
    let all: Vec<_> = ["hackolade", "jsonschema", "avro"]
        .iter()
        .filter_map(|n| model::format(n))
        .collect();
    let _ = model::parse_with(&all, "fuzz/m.hck.json", data);
    let _ = model::parse_with(&all, "fuzz/m.avsc", data);
    let _ = model::parse_with(&all, "fuzz/m.schema.json", data);
});
