//! Fuzzes the admin API's request handling (hyper parsing, the access
//! policy, routing, bodies) through a real daemon with a bearer token.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::admin_request(data));
