//! Fuzz target `retry_after`: see `squall_fuzz::retry_after` (fuzz/src/checks.rs) for the input format
//! and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::retry_after(data));
