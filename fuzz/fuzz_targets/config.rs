//! Any text as a configuration file: validation must answer (a configuration or an error naming the file)
//! without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelmirror::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_text(std::path::Path::new("/nonexistent/fuzz/config.toml"), text);
    }
});
