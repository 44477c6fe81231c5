//! The reply decoder on arbitrary bytes: no panic, agrees with the reference
//! decoder, bounded buffering.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| redlease::internals::properties::decode(data));
