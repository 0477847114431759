//! Fuzzes the config parser and validator (`Config::parse_bytes`) and the
//! duration parser with arbitrary bytes.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config(data));
