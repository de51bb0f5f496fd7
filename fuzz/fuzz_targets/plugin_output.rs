//! Fuzz target `plugin_output`: see `squall_fuzz::plugin_output` (fuzz/src/checks.rs) for the input format
//! and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::plugin_output(data));
