//! Fuzzes path normalization: never panics, and a normalized path (every reading) normalizes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::core::path::{PathOptions, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    for merge_slashes in [true, false] {
        let options = PathOptions { merge_slashes };
        let Ok(normalized) = normalize(raw, options) else { continue };
        let again = normalize(&normalized.path, options).map(|twice| twice.path.into_owned());
        assert_eq!(again.as_deref(), Ok(&*normalized.path), "not idempotent: {raw:?}");
        assert!(normalized.path.starts_with('/'), "not absolute: {raw:?}");
        for other in &normalized.other_readings {
            let again = normalize(other, options).map(|twice| twice.path.into_owned());
            assert_eq!(again.as_deref(), Ok(other.as_str()), "other reading not idempotent: {raw:?}");
        }
    }
});
