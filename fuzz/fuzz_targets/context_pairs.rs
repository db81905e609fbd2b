//! Fuzzes the HTTP door's context parser (`x-portcullis-context`, the auth request's query): never panics, and a map it returns has no key twice and reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::doors::http::parse_context;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for separator in [',', '&'] {
        let Ok(context) = parse_context(text, separator) else { continue };
        let written: Vec<String> = context.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let again = parse_context(&written.join(&separator.to_string()), separator);
        assert_eq!(again, Ok(context), "not read back: {text:?}");
    }
});
