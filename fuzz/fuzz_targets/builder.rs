//! Builder settings and lock arguments from arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| redlease::internals::properties::builder(data));
