//! Fuzz target `config_parse`: see `squall_fuzz::config_parse` (fuzz/src/checks.rs) for the input format
//! and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::config_parse(data));
