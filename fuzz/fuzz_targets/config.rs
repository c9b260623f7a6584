//! The configuration loader (`Config::parse`: YAML, then semantic validation, then error
//! location). Oracle: no panic; every error carries a message.
//! (The policy loader is being written in parallel: add a `policy` target when it lands.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = Config::parse(text, std::path::Path::new("fuzz.yaml")) {
        assert!(!errors.is_empty());
        for e in errors {
            assert!(!e.message.is_empty());
            let _ = e.to_string();
        }
    }
});
