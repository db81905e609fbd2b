//! API keys of bot accounts: the `api_keys` settings block, key files read and checked (every error `file:line`, never a key or a digest), and the live key table, swapped whole on reload and looked up per check; never decides.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::config::load::{collect_files, read_text};
use crate::config::{ConfigError, describe_yaml_error, yaml_options};
use crate::core::HttpRequest;
use crate::core::api_key::{ApiKeyEntry, ApiKeyLocation, ApiKeyTable, KeyDigest, RESERVED_CLAIMS};
use crate::core::authn::Authentication;
use crate::core::jwt::JwtError;
use crate::core::redact::MARKER;
use crate::telemetry::Metrics;

/// The `api_keys` settings block: where the key files are, where requests present keys, and
/// the issuer the keys' principals live under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeySettings {
    /// Key files, or directories of them (`*.yaml`, `*.yml`, read recursively, dot-files
    /// skipped): a mounted Kubernetes Secret works as a ConfigMap does.
    pub files: Vec<PathBuf>,
    /// The issuer of every key's principal: `request.auth.principal` is `<issuer>/<principal>`.
    pub issuer: String,
    /// The headers a request may present its key in.
    pub headers: Vec<ApiKeyHeader>,
}

impl Default for ApiKeySettings {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            issuer: "apikeys".into(),
            headers: vec![
                ApiKeyHeader { name: "authorization".into(), prefix: "APIKey ".into() },
                ApiKeyHeader { name: "x-api-key".into(), prefix: String::new() },
            ],
        }
    }
}

/// One header a key may come in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyHeader {
    /// The header's name, any case.
    pub name: String,
    /// What precedes the key in the value (`APIKey `), any case; empty for a header of its own.
    #[serde(default)]
    pub prefix: String,
}

/// Whether `name` is an HTTP field name (RFC 9110 `token`).
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

impl ApiKeySettings {
    /// Every problem of the block, each named by its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.files.is_empty() {
            problems.push("api_keys.files: name at least one key file or directory".into());
        }
        if self.issuer.is_empty() || self.issuer.chars().any(|c| c.is_whitespace() || c.is_control()) {
            problems.push("api_keys.issuer: must be a non-empty text without blanks".into());
        }
        if self.headers.is_empty() {
            problems.push("api_keys.headers: name at least one header".into());
        }
        for (index, header) in self.headers.iter().enumerate() {
            if !is_header_name(&header.name) {
                problems.push(format!("api_keys.headers[{index}].name: `{}` is not a header name", header.name));
            }
            if header.prefix.chars().any(char::is_control) {
                problems.push(format!("api_keys.headers[{index}].prefix: must hold no control character"));
            }
            if header.name.eq_ignore_ascii_case("authorization") && header.prefix.trim().is_empty() {
                problems.push(format!(
                    "api_keys.headers[{index}].prefix: `authorization` needs a scheme such as `APIKey `: without one every bearer token would be read as an API key"
                ));
            }
        }
        problems
    }

    /// Where requests present keys, names in lower case.
    pub fn locations(&self) -> Arc<[ApiKeyLocation]> {
        let locations = self.headers.iter().map(|header| ApiKeyLocation {
            header: header.name.to_ascii_lowercase().into(),
            prefix: header.prefix.as_str().into(),
        });
        locations.collect()
    }
}

/// Every problem found in the key files, each `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct KeyFileErrors(pub Vec<ConfigError>);

/// A key file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyFile {
    keys: Vec<Spanned<RawKey>>,
}

/// One entry of a key file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    sha256: Spanned<String>,
    principal: Spanned<String>,
    #[serde(default)]
    expires: Option<Spanned<String>>,
    #[serde(default)]
    claims: Option<Spanned<Map<String, Value>>>,
}

/// The field names of a key file: the only quoted text a YAML error may keep.
const FIELD_NAMES: [&str; 5] = ["keys", "sha256", "principal", "expires", "claims"];

/// One key read from a key file.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFileEntry {
    /// The digest the file gives.
    pub digest: KeyDigest,
    /// What the key stands for.
    pub entry: ApiKeyEntry,
    /// The line of the entry.
    pub line: u64,
}

/// Reads one key file's text (`label` names it in errors): its keys, or every problem found.
/// No message quotes what a file holds but field names, so a key pasted where its digest
/// belongs is never echoed to a log.
pub fn parse_key_file(label: &str, text: &str) -> Result<Vec<KeyFileEntry>, Vec<ConfigError>> {
    let error = |line: u64, message: String| ConfigError { file: label.into(), line, message };
    let file: RawKeyFile = serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|yaml| {
        let (line, message) = describe_yaml_error(&yaml);
        vec![error(line, format!("not a key file: {}", without_quoted_values(&message)))]
    })?;
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in file.keys.into_iter().enumerate() {
        let line = raw.referenced.line();
        let RawKey { sha256, principal, expires, claims } = raw.value;
        let mut report = |at: u64, field: &str, message: &str| {
            errors.push(error(at, format!("keys[{index}].{field}: {message}")));
        };
        let digest = KeyDigest::from_hex(sha256.value.trim());
        if digest.is_none() {
            report(
                sha256.referenced.line(),
                "sha256",
                "must be the key's SHA-256 as 64 hexadecimal digits, never the key itself",
            );
        }
        // `requestPrincipals` split a principal at its last `/`: the issuer's, never one of the key's.
        let principal_ok = !principal.value.is_empty()
            && !principal.value.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control());
        if !principal_ok {
            report(principal.referenced.line(), "principal", "must be a non-empty text without blanks or `/`");
        }
        let expires_at = match &expires {
            Some(expires) => match parse_timestamp(expires.value.trim()) {
                Some(at) => Some(at),
                None => {
                    let message = "must be an RFC 3339 time such as `2027-01-31T00:00:00Z`";
                    report(expires.referenced.line(), "expires", message);
                    None
                }
            },
            None => None,
        };
        let claims = match claims {
            Some(claims) => {
                for name in claims.value.keys().filter(|name| RESERVED_CLAIMS.contains(&name.as_str())) {
                    let message = format!("`{name}` is set by the key's principal, issuer and expiry, not here");
                    report(claims.referenced.line(), "claims", &message);
                }
                claims.value
            }
            None => Map::new(),
        };
        if let (Some(digest), true) = (digest, principal_ok) {
            let entry = ApiKeyEntry { principal: principal.value.into(), claims, expires_at };
            entries.push(KeyFileEntry { digest, entry, line });
        }
    }
    if errors.is_empty() { Ok(entries) } else { Err(errors) }
}

/// A YAML error's message with every quoted text that is not a field name replaced by `…`:
/// serde quotes the value it could not read, which may be a key.
fn without_quoted_values(message: &str) -> String {
    let mut kept = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let (before, from_quote) = rest.split_at(start);
        kept.push_str(before);
        let quote = if from_quote.starts_with('"') { '"' } else { '`' };
        let inside = from_quote.strip_prefix(quote).unwrap_or_default();
        let Some((quoted, after)) = inside.split_once(quote) else {
            kept.push('…');
            return kept;
        };
        kept.push(quote);
        kept.push_str(if FIELD_NAMES.contains(&quoted) { quoted } else { "…" });
        kept.push(quote);
        rest = after;
    }
    kept.push_str(rest);
    kept
}

/// `2027-01-31T00:00:00Z`, or with an offset (`+02:00`), as seconds since the epoch; a
/// fraction of a second is dropped.
fn parse_timestamp(text: &str) -> Option<u64> {
    let number = |digits: &str, length: usize| -> Option<i64> {
        (digits.len() == length && digits.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    let (date, time) = text.split_once(['T', 't'])?;
    let mut date_parts = date.split('-');
    let (year, month, day) = (date_parts.next()?, date_parts.next()?, date_parts.next()?);
    let (year, month, day) = (number(year, 4)?, number(month, 2)?, number(day, 2)?);
    if date_parts.next().is_some() || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let (clock, offset) = match time.strip_suffix(['Z', 'z']) {
        Some(clock) => (clock, 0),
        None => {
            let at = time.rfind(['+', '-'])?;
            let (clock, offset) = time.split_at(at);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (hours, minutes) = offset.get(1..)?.split_once(':')?;
            let (hours, minutes) = (number(hours, 2)?, number(minutes, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            (clock, sign * (hours * 3600 + minutes * 60))
        }
    };
    let (whole, fraction) = clock.split_once('.').unwrap_or((clock, "0"));
    if fraction.is_empty() || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let mut clock_parts = whole.split(':');
    let (hours, minutes, seconds) = (clock_parts.next()?, clock_parts.next()?, clock_parts.next()?);
    let (hours, minutes, seconds) = (number(hours, 2)?, number(minutes, 2)?, number(seconds, 2)?);
    if clock_parts.next().is_some() || hours > 23 || minutes > 59 || seconds > 60 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hours * 3600 + minutes * 60 + seconds - offset;
    u64::try_from(seconds).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Reads every key file the settings name into one table; every problem of every file, not
/// the first. A digest given twice is an error: its two entries would disagree on who it is.
pub fn read_key_files(settings: &ApiKeySettings) -> Result<ApiKeyTable, KeyFileErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in &settings.files {
        collect_files(path, &mut files, &mut errors);
    }
    let mut table = ApiKeyTable::new(&settings.issuer);
    let mut first_seen: HashMap<KeyDigest, String> = HashMap::new();
    for file in &files {
        let label = file.display().to_string();
        let entries = match read_text(file) {
            Ok(text) => parse_key_file(&label, &text),
            Err(message) => Err(vec![ConfigError { file: label.as_str().into(), line: 0, message }]),
        };
        match entries {
            Ok(entries) => {
                for KeyFileEntry { digest, entry, line } in entries {
                    if let Some(first) = first_seen.get(&digest) {
                        let message = format!("the same key as at {first}: give each key one entry");
                        errors.push(ConfigError { file: label.as_str().into(), line, message });
                    } else {
                        first_seen.insert(digest, format!("{label}:{line}"));
                        table.insert(digest, entry);
                    }
                }
            }
            Err(mut found) => errors.append(&mut found),
        }
    }
    if errors.is_empty() { Ok(table) } else { Err(KeyFileErrors(errors)) }
}

/// The live API keys: the last good table read from the key files, swapped whole.
#[derive(Debug)]
pub struct ApiKeys {
    settings: ApiKeySettings,
    locations: Arc<[ApiKeyLocation]>,
    table: ArcSwap<ApiKeyTable>,
    metrics: Arc<Metrics>,
}

impl ApiKeys {
    /// Reads the key files `settings` name; any problem stops the start.
    pub fn load(settings: ApiKeySettings, metrics: Arc<Metrics>) -> Result<Self, KeyFileErrors> {
        let table = read_key_files(&settings)?;
        metrics.record_api_keys_loaded(table.len());
        tracing::info!(keys = table.len(), issuer = %settings.issuer, "Loaded the API keys");
        let locations = settings.locations();
        Ok(Self { settings, locations, table: ArcSwap::from_pointee(table), metrics })
    }

    /// Reads the key files again and swaps the new table in; on any problem the last good one
    /// stays, and every problem is logged (`file:line`). Returns whether the new table is live.
    pub fn reload(&self) -> bool {
        match read_key_files(&self.settings) {
            Ok(table) => {
                let keys = table.len();
                self.table.store(Arc::new(table));
                self.metrics.record_api_key_reload(true, keys);
                tracing::info!(keys, "Reloaded the API keys");
                true
            }
            Err(KeyFileErrors(errors)) => {
                for error in &errors {
                    tracing::error!(%error, "API key reload rejected; the last good keys stay");
                }
                self.metrics.record_api_key_reload(false, self.table.load().len());
                false
            }
        }
    }

    /// `text` as it may be logged for `http`: every key the request presents replaced by
    /// [`MARKER`], since a client may echo its key as its request id.
    pub fn redacted<'t>(&self, http: &HttpRequest<'_>, text: &'t str) -> Cow<'t, str> {
        let mut redacted = Cow::Borrowed(text);
        for key in self.locations.iter().flat_map(|location| location.keys_in(http)).filter(|key| !key.is_empty()) {
            if redacted.contains(key) {
                redacted = Cow::Owned(redacted.replace(key, MARKER));
            }
        }
        redacted
    }

    /// The key files and directories, as the settings name them.
    pub fn paths(&self) -> &[PathBuf] {
        &self.settings.files
    }

    /// The live key table, to look a presented key up in (see [`ApiKeys::counted`]).
    pub fn table(&self) -> Arc<ApiKeyTable> {
        self.table.load_full()
    }

    /// A key's lookup, counted by its outcome.
    pub fn counted(&self, authentication: Authentication<'static>) -> Authentication<'static> {
        let result = match &authentication {
            Authentication::ApiKey { .. } => "known",
            Authentication::Failed { error: JwtError::ApiKeyExpired } => "expired",
            _ => "unknown",
        };
        self.metrics.record_api_key_check(result);
        authentication
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    fn errors_of(text: &str) -> Vec<(u64, String)> {
        match parse_key_file("keys.yaml", text) {
            Ok(entries) => panic!("read {} keys from a broken file", entries.len()),
            Err(errors) => errors.into_iter().map(|error| (error.line, error.message)).collect(),
        }
    }

    #[test]
    fn a_key_file_gives_each_entry_its_principal_claims_and_expiry() {
        let text = format!(
            "keys:\n- sha256: {DIGEST}\n  principal: ci-bot\n  expires: 2027-01-31T00:00:00Z\n  claims:\n    owner: platform\n    scope: [svc-a:read]\n- sha256: {}\n  principal: ci-bot\n",
            DIGEST.to_ascii_uppercase()
        );
        let entries = parse_key_file("keys.yaml", &text).map_err(KeyFileErrors);
        let entries = entries.unwrap_or_else(|errors| panic!("{errors}"));
        assert_eq!(entries.len(), 2);
        let first = &entries[0];
        assert_eq!((first.digest, first.line), (KeyDigest::of("secret"), 2));
        assert_eq!(&*first.entry.principal, "ci-bot");
        assert_eq!(first.entry.expires_at, Some(1_801_353_600));
        assert_eq!(
            Value::Object(first.entry.claims.clone()),
            serde_json::json!({"owner": "platform", "scope": ["svc-a:read"]})
        );
        assert_eq!((entries[1].entry.expires_at, entries[1].line), (None, 8));
    }

    #[test]
    fn every_problem_of_a_key_file_is_located_and_quotes_no_key() {
        let text = "keys:\n- sha256: my-plain-secret-key\n  principal: ci-bot\n- sha256: 2bb8\n  principal: ''\n  expires: next year\n  claims: {sub: admin}\n";
        let errors = errors_of(text);
        let lines: Vec<u64> = errors.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [2, 4, 5, 6, 7], "{errors:?}");
        assert!(errors.iter().all(|(_, message)| !message.contains("my-plain-secret-key")), "{errors:?}");
        assert!(errors[0].1.starts_with("keys[0].sha256: must be the key's SHA-256"), "{errors:?}");
        assert!(errors[4].1.contains("`sub` is set by the key's principal"), "{errors:?}");
    }

    #[test]
    fn a_file_that_is_no_key_file_is_located_without_its_text() {
        let rows = [
            ("keys:\n- my-plain-secret-key\n", 2),
            ("keys:\n- sha256: abc\n  principal: bot\n  colour: \"my-plain-secret-key\"\n", 4),
            ("my-plain-secret-key\n", 1),
            ("keys: [\n", 1),
        ];
        for (text, line) in rows {
            let errors = errors_of(text);
            assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
            assert_eq!(errors[0].0, line, "{text:?}: {errors:?}");
            assert!(!errors[0].1.contains("my-plain-secret-key"), "{text:?}: {errors:?}");
        }
    }

    #[test]
    fn quoted_values_leave_yaml_errors_but_field_names_stay() {
        let message = "unknown field `colour`, expected one of `sha256`, `principal`; invalid type: string \"k\"";
        assert_eq!(
            without_quoted_values(message),
            "unknown field `…`, expected one of `sha256`, `principal`; invalid type: string \"…\""
        );
        assert_eq!(without_quoted_values("unterminated \"secret"), "unterminated …");
    }

    #[test]
    fn rfc_3339_times_are_read_to_the_second() {
        let rows = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2027-01-31T00:00:00Z", Some(1_801_353_600)),
            ("2027-01-31t00:00:00.999z", Some(1_801_353_600)),
            ("2027-01-31T02:00:00+02:00", Some(1_801_353_600)),
            ("2027-01-30T22:00:00-02:00", Some(1_801_353_600)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800)),
            ("2023-02-29T00:00:00Z", None),
            ("2027-13-01T00:00:00Z", None),
            ("2027-01-31", None),
            ("2027-01-31T00:00:00", None),
            ("2027-01-31T24:00:00Z", None),
            ("2027-01-31T00:00:00.Z", None),
            ("+027-01-31T00:00:00Z", None),
            ("1969-12-31T23:59:59Z", None),
            ("next year", None),
        ];
        for (text, expected) in rows {
            assert_eq!(parse_timestamp(text), expected, "{text}");
        }
    }

    #[test]
    fn the_settings_block_names_each_of_its_problems() {
        let good = ApiKeySettings { files: vec!["keys".into()], ..ApiKeySettings::default() };
        assert_eq!(good.problems(), Vec::<String>::new());
        let bad = ApiKeySettings {
            files: Vec::new(),
            issuer: "api keys".into(),
            headers: vec![
                ApiKeyHeader { name: "Authorization".into(), prefix: " ".into() },
                ApiKeyHeader { name: ":path".into(), prefix: "\n".into() },
            ],
        };
        let problems = bad.problems();
        let fields: Vec<&str> = problems.iter().filter_map(|problem| problem.split(':').next()).collect();
        assert_eq!(
            fields,
            [
                "api_keys.files",
                "api_keys.issuer",
                "api_keys.headers[0].prefix",
                "api_keys.headers[1].name",
                "api_keys.headers[1].prefix"
            ]
        );
        let locations = good.locations();
        assert_eq!(
            locations.iter().map(|location| &*location.header).collect::<Vec<_>>(),
            ["authorization", "x-api-key"]
        );
    }

    #[test]
    fn a_digest_in_two_files_is_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let entry = format!("keys:\n- sha256: {DIGEST}\n  principal: bot\n");
        std::fs::write(dir.path().join("a.yaml"), &entry).unwrap();
        std::fs::write(dir.path().join("b.yaml"), &entry).unwrap();
        let settings = ApiKeySettings { files: vec![dir.path().into()], ..ApiKeySettings::default() };
        let KeyFileErrors(errors) = read_key_files(&settings).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().ends_with(&format!(
                "b.yaml:2: the same key as at {}:2: give each key one entry",
                dir.path().join("a.yaml").display()
            )),
            "{errors:?}"
        );
    }
}
