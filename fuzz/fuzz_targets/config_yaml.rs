//! A hostile or broken bridge.yaml gets an error with a position, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livefeed_bridge::config::Config;

fuzz_target!(|data: &str| {
    if let Err(e) = Config::parse(data, "fuzz.yaml", &|name| (name == "SET").then(|| "value".to_string())) {
        let _ = e.to_string();
    }
});
