//! Turns a raw `DataSource` document into a checked source definition (its shape, its feed) and its user-data header, reporting every problem with `file:line`; pure.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::ConfigError;
use super::compile::{DocumentOrigin, header_name, parse_duration};
use super::expression::{self, Scope, SourceShapes};
use super::raw;
use crate::core::data::{HeaderShape, Limits, Shape};
use crate::core::snapshot::UserHeader;
use crate::data::{Definition, Feed};

/// The API version of portcullis's own documents.
pub const API_VERSION: &str = "portcullis.dev/v1alpha1";

/// The key field when a source names none.
const DEFAULT_KEY: &str = "_id";
/// The most records a source holds unless it says otherwise.
const DEFAULT_RECORDS: usize = 1_000_000;
/// The most bytes a source holds unless it says otherwise: 256 MiB.
const DEFAULT_BYTES: usize = 256 << 20;
/// The user-data header's name unless the source names another.
const DEFAULT_HEADER: &str = "x-portcullis-user";
/// The longest user-data header value unless the source says otherwise.
const DEFAULT_HEADER_BYTES: usize = 4096;
/// How often an `http` source is polled unless it says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// A compiled `DataSource`: what feeds read and load, and the header it sets, if any.
#[derive(Debug)]
pub struct CompiledSource {
    /// The source's definition.
    pub definition: Definition,
    /// Its user-data header.
    pub user_header: Option<UserHeader>,
}

/// Compiles one `DataSource` document; file paths are read relative to `dir`, the policy
/// file's directory.
pub fn compile_data_source(
    document: raw::DataSource,
    origin: DocumentOrigin<'_>,
    dir: &Path,
) -> Result<CompiledSource, Vec<ConfigError>> {
    let name = document.metadata.value.name.as_ref().map_or("", |name| name.value.as_str());
    let mut report = Reporter { origin, context: format!("data source `{name}`"), errors: Vec::new() };
    if document.api_version.value != API_VERSION {
        let message = format!("unsupported apiVersion `{}`; expected `{API_VERSION}`", document.api_version.value);
        report.at(document.api_version.referenced.line(), "apiVersion", message);
    }
    let metadata_line = document.metadata.referenced.line();
    if name.is_empty() {
        report.at(metadata_line, "metadata.name", "a name is required".into());
    } else if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_".contains(&byte)) {
        let message = format!("`{name}` must be letters, digits, `-` and `_`, as lookups name it (`data.{name}[...]`)");
        report.at(metadata_line, "metadata.name", message);
    }
    let Some(spec) = document.spec else {
        report.at(metadata_line, "spec", "a spec with `fields` and a feed is required".into());
        return Err(report.errors);
    };
    let spec_line = spec.referenced.line();
    let spec = spec.value;
    let key = match &spec.key {
        Some(key) => report.dotted_path(key, "spec.key").unwrap_or_default(),
        None => DEFAULT_KEY.into(),
    };
    let fields = report.dotted_paths(spec.fields.as_ref(), "spec.fields");
    let feed = report.feed(&spec, spec_line, dir);
    let limits = report.limits(spec.limits.as_ref());
    let header = spec.user_header.as_ref().map(|header| report.user_header(header));
    if !report.errors.is_empty() {
        return Err(report.errors);
    }
    let (Some(feed), Some(limits)) = (feed, limits) else { return Err(report.errors) };
    let (header_shape, user_header) = match header {
        Some(Some((shape, name, caller))) => (Some(shape), Some((name, caller))),
        Some(None) => return Err(report.errors),
        None => (None, None),
    };
    let shape = Arc::new(Shape { key, fields: fields.into(), header: header_shape, limits });
    let name: Arc<str> = name.into();
    let user_header = user_header.map(|(header, caller)| UserHeader {
        name: header,
        source: name.clone(),
        shape: shape.clone(),
        caller,
    });
    let declared_at = format!("{}:{}", origin.file, origin.first_line).into();
    Ok(CompiledSource { definition: Definition { name, shape, feed, declared_at }, user_header })
}

struct Reporter<'a> {
    origin: DocumentOrigin<'a>,
    context: String,
    errors: Vec<ConfigError>,
}

impl Reporter<'_> {
    fn at(&mut self, line: u64, field: &str, message: String) {
        let error = self.origin.error(line, format!("{}: {field}: {message}", self.context));
        self.errors.push(error);
    }

    /// A dotted path into a document: names separated by single dots.
    fn dotted_path(&mut self, path: &Spanned<String>, field: &str) -> Option<Box<str>> {
        let text = path.value.as_str();
        if text.is_empty() || text.split('.').any(str::is_empty) {
            self.at(
                path.referenced.line(),
                field,
                format!("`{text}` is not a field path such as `account` or `profile.team`"),
            );
            return None;
        }
        Some(text.into())
    }

    fn dotted_paths(&mut self, paths: Option<&raw::Values>, field: &str) -> Vec<Box<str>> {
        let mut kept: Vec<Box<str>> = Vec::new();
        for (index, path) in paths.into_iter().flatten().enumerate() {
            let entry = format!("{field}[{index}]");
            if let Some(path) = self.dotted_path(path, &entry) {
                if kept.contains(&path) {
                    self.at(path_line(paths, index), &entry, format!("`{path}` is listed twice"));
                }
                kept.push(path);
            }
        }
        kept
    }

    /// The one feed: `couchdb`, `file`, `http` or `ndjson`.
    fn feed(&mut self, spec: &raw::DataSourceSpec, spec_line: u64, dir: &Path) -> Option<Feed> {
        let given: Vec<(&str, u64)> = [
            ("couchdb", spec.couchdb.as_ref().map(|feed| feed.referenced.line())),
            ("file", spec.file.as_ref().map(|feed| feed.referenced.line())),
            ("http", spec.http.as_ref().map(|feed| feed.referenced.line())),
            ("ndjson", spec.ndjson.as_ref().map(|feed| feed.referenced.line())),
        ]
        .into_iter()
        .filter_map(|(name, line)| line.map(|line| (name, line)))
        .collect();
        match given.as_slice() {
            [] => {
                let message = "a source needs one feed: `couchdb`, `file`, `http` or `ndjson`".into();
                self.at(spec_line, "spec", message);
                return None;
            }
            [_] => {}
            [(first, _), (second, line), ..] => {
                let message = format!("only one feed may be set; `{first}` and `{second}` are");
                self.at(*line, &format!("spec.{second}"), message);
                return None;
            }
        }
        if let Some(file) = &spec.file {
            let Some(path) = file.value.path.as_ref().filter(|path| !path.value.is_empty()) else {
                self.at(file.referenced.line(), "spec.file.path", "a path is required".into());
                return None;
            };
            return Some(Feed::File { path: dir.join(&path.value) });
        }
        let (name, remote) = [("couchdb", &spec.couchdb), ("http", &spec.http), ("ndjson", &spec.ndjson)]
            .into_iter()
            .find_map(|(name, feed)| feed.as_ref().map(|feed| (name, feed)))?;
        let field = format!("spec.{name}");
        let line = remote.referenced.line();
        let remote = &remote.value;
        let url = match &remote.url {
            Some(url) if url.value.starts_with("http://") || url.value.starts_with("https://") => url.value.clone(),
            Some(url) => {
                let shown = crate::outbound::redact_url(&url.value);
                self.at(url.referenced.line(), &format!("{field}.url"), format!("`{shown}` is not an http(s) URL"));
                return None;
            }
            None => {
                self.at(line, &format!("{field}.url"), "a URL is required".into());
                return None;
            }
        };
        let authorization_file = remote.authorization_file.as_ref().map(|file| dir.join(&file.value));
        let interval = match (&remote.interval, name) {
            (None, _) => DEFAULT_INTERVAL,
            (Some(interval), "http") => match parse_duration(&interval.value).filter(|interval| !interval.is_zero()) {
                Some(interval) => interval,
                None => {
                    let message = format!("invalid interval `{}`; expected a duration such as `30s`", interval.value);
                    self.at(interval.referenced.line(), &format!("{field}.interval"), message);
                    return None;
                }
            },
            (Some(interval), _) => {
                let message = "only an `http` feed is polled; this feed follows changes as they come".into();
                self.at(interval.referenced.line(), &format!("{field}.interval"), message);
                return None;
            }
        };
        Some(match name {
            "couchdb" => Feed::CouchDb { url, authorization_file },
            "http" => Feed::Http { url, interval, authorization_file },
            _ => Feed::NdJson { url, authorization_file },
        })
    }

    fn limits(&mut self, limits: Option<&Spanned<raw::DataLimits>>) -> Option<Limits> {
        let Some(limits) = limits else {
            return Some(Limits { records: DEFAULT_RECORDS, bytes: DEFAULT_BYTES });
        };
        let records = match &limits.value.records {
            None => Some(DEFAULT_RECORDS),
            Some(records) => match usize::try_from(records.value).ok().filter(|records| *records > 0) {
                Some(records) => Some(records),
                None => {
                    let message = "must be a whole number above 0".into();
                    self.at(records.referenced.line(), "spec.limits.records", message);
                    None
                }
            },
        };
        let bytes = match &limits.value.bytes {
            None => Some(DEFAULT_BYTES),
            Some(bytes) => match parse_size(&bytes.value).filter(|bytes| *bytes > 0) {
                Some(bytes) => Some(bytes),
                None => {
                    let message =
                        format!("invalid size `{}`; expected bytes such as `1048576`, `512Ki` or `256Mi`", bytes.value);
                    self.at(bytes.referenced.line(), "spec.limits.bytes", message);
                    None
                }
            },
        };
        Some(Limits { records: records?, bytes: bytes? })
    }

    /// The header's shape, name and caller expression; `None` when something is wrong.
    fn user_header(
        &mut self,
        header: &Spanned<raw::UserHeader>,
    ) -> Option<(HeaderShape, Arc<str>, crate::core::value::Expr)> {
        let line = header.referenced.line();
        let header = &header.value;
        let before = self.errors.len();
        let name = match &header.name {
            None => Some(Arc::from(DEFAULT_HEADER)),
            Some(name) => header_name(&name.value)
                .map_err(|message| self.at(name.referenced.line(), "spec.userHeader.name", message))
                .ok(),
        };
        let caller = match &header.caller {
            None => {
                let message = "a caller expression is required, such as `request.auth.claims[sub]`".into();
                self.at(line, "spec.userHeader.caller", message);
                None
            }
            Some(caller) => {
                let no_sources = SourceShapes::new();
                let scope = Scope { sources: &no_sources, templates: &[], not_templates: &[], lookups: false };
                expression::parse(&caller.value, scope)
                    .map_err(|message| self.at(caller.referenced.line(), "spec.userHeader.caller", message))
                    .ok()
            }
        };
        let fields = self.dotted_paths(header.fields.as_ref(), "spec.userHeader.fields");
        if fields.is_empty() {
            self.at(line, "spec.userHeader.fields", "at least one field is required".into());
        }
        let max_bytes = match &header.max_bytes {
            None => Some(DEFAULT_HEADER_BYTES),
            Some(max) => match usize::try_from(max.value).ok().filter(|max| *max > 0) {
                Some(max) => Some(max),
                None => {
                    self.at(max.referenced.line(), "spec.userHeader.maxBytes", "must be a whole number above 0".into());
                    None
                }
            },
        };
        if self.errors.len() != before {
            return None;
        }
        Some((HeaderShape { fields: fields.into(), max_bytes: max_bytes? }, name?, caller?))
    }
}

fn path_line(paths: Option<&raw::Values>, index: usize) -> u64 {
    paths.and_then(|paths| paths.get(index)).map_or(0, |path| path.referenced.line())
}

/// A size in bytes: a whole number, or one with a binary (`Ki`, `Mi`, `Gi`) or decimal (`k`,
/// `M`, `G`) suffix, as Kubernetes quantities write them.
pub fn parse_size(text: &str) -> Option<usize> {
    let units: [(&str, usize); 6] =
        [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000)];
    let (number, unit) = units
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|number| (number, *unit)))
        .unwrap_or((text, 1));
    if number.is_empty() || !number.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    number.parse::<usize>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_kubernetes_quantities() {
        let table: &[(&str, Option<usize>)] = &[
            ("1048576", Some(1 << 20)),
            ("256Mi", Some(256 << 20)),
            ("512Ki", Some(512 << 10)),
            ("1Gi", Some(1 << 30)),
            ("5M", Some(5_000_000)),
            ("2k", Some(2_000)),
            ("", None),
            ("Mi", None),
            ("-1", None),
            ("1.5Mi", None),
            ("10MB", None),
            ("99999999999999999999Gi", None),
        ];
        for &(text, expected) in table {
            assert_eq!(parse_size(text), expected, "`{text}`");
        }
    }
}
