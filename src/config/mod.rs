//! Policy configuration: YAML files → raw documents → compiled, checked policies. Every error names `file:line`.

pub mod compile;
pub mod data_source;
pub mod expression;
pub mod load;
pub(crate) mod raw;

use std::fmt;

/// One problem in a policy file, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The policy file.
    pub file: Box<str>,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

/// The line and the one-line message of a YAML parse error (serde-saphyr puts the location
/// at the end of its message; it is reported separately here).
pub fn describe_yaml_error(error: &serde_saphyr::Error) -> (u64, String) {
    let line = error.location().map_or(0, |location| location.line());
    let rendered = error.to_string();
    let first = rendered.lines().next().unwrap_or_default().trim();
    let message = first.rfind(" at line ").map_or(first, |at| &first[..at]);
    (line, message.to_string())
}

/// The options every YAML read uses: serde-saphyr's budgets (alias expansion, depth, size)
/// stay on; snippets are off because errors are printed as `file:line: message`.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}
