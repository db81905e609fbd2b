//! Fuzzes the API key file reader: any text gives keys or errors located in the file, never a panic; the keys it gives fill a table that looks them up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::core::api_key::{ApiKeyTable, KeyDigest};
use portcullis::identity::api_keys::parse_key_file;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_key_file("fuzz.yaml", text) {
        Ok(entries) => {
            let mut table = ApiKeyTable::new("apikeys");
            let digests: Vec<KeyDigest> = entries.iter().map(|entry| entry.digest).collect();
            for entry in entries {
                table.insert(entry.digest, entry.entry);
            }
            assert!(table.len() <= digests.len(), "a table holds no more keys than the file gives");
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an error result without errors");
            let lines = u64::try_from(text.lines().count()).unwrap_or(u64::MAX);
            for error in errors {
                assert_eq!(&*error.file, "fuzz.yaml");
                assert!(error.line <= lines.saturating_add(1), "an error past the end of the file: {error}");
            }
        }
    }
});
