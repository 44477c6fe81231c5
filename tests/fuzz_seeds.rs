//! The fuzz targets' committed seed corpus, run through the same property
//! checks as the fuzzers, under plain `cargo test` (no cargo-fuzz needed).
//! Every seed is also cut at every length for the decoder, so each edge case
//! is seen incomplete as well as whole.

use std::path::Path;

use redlease::internals::properties;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("seed entry").path();
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read seed"))
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 3, "{}: too few seeds", dir.display());
    seeds
}

#[test]
fn decode_seeds() {
    for (name, data) in seeds("decode") {
        for cut in 0..=data.len() {
            let result = std::panic::catch_unwind(|| properties::decode(&data[..cut]));
            assert!(result.is_ok(), "decode seed {name} cut at {cut}");
        }
    }
}

#[test]
fn roundtrip_seeds() {
    for (name, data) in seeds("roundtrip") {
        let result = std::panic::catch_unwind(|| properties::roundtrip(&data));
        assert!(result.is_ok(), "roundtrip seed {name}");
    }
}

#[test]
fn builder_seeds() {
    for (name, data) in seeds("builder") {
        let result = std::panic::catch_unwind(|| properties::builder(&data));
        assert!(result.is_ok(), "builder seed {name}");
    }
}
