//! Fuzz target `envelope_decode`: see `squall_fuzz::envelope_decode` (fuzz/src/checks.rs) for the input format
//! and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::envelope_decode(data));
