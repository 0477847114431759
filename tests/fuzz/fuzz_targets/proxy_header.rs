//! Fuzzes `lbd::net::proxy_protocol` with arbitrary bytes (see checks.rs).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::proxy_header(data));
