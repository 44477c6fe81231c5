//! Our commands for arbitrary keys, tokens and TTLs decode to what we meant.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| redlease::internals::properties::roundtrip(data));
