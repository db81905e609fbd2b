//! Reads policy files and directories (regular files only, bounded), splits multi-document YAML, and compiles every Istio security policy in them.

use std::collections::BTreeMap;
use std::fs::{File, FileType};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compile::{self, CompiledPolicy, DocumentOrigin};
use super::data_source::{self, CompiledSource};
use super::expression::SourceShapes;
use super::raw;
use super::{ConfigError, describe_yaml_error, yaml_options};
use crate::core::authn::AuthnPolicy;
use crate::core::policy::{Policy, PolicyId};
use crate::core::snapshot::{DataSources, UserHeader};

/// Files larger than this are refused rather than parsed.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// The API group of Istio's security policies.
const ISTIO_SECURITY_GROUP: &str = "security.istio.io";

/// Every kind of Istio's `security.istio.io` group (its CRDs in istio/api), in name order.
const ISTIO_SECURITY_KINDS: [&str; 3] = ["AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"];

/// The API group of portcullis's own documents.
const PORTCULLIS_GROUP: &str = "portcullis.dev";

/// Every kind of portcullis's group.
const PORTCULLIS_KINDS: [&str; 1] = ["DataSource"];

/// A document read but not evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedDocument {
    /// `file:line` of the document.
    pub location: String,
    /// `apiVersion/kind`.
    pub kind: String,
    /// Why it is not evaluated.
    pub reason: &'static str,
}

/// The policies found under the configured paths.
#[derive(Debug, Default)]
pub struct LoadedPolicies {
    /// The AuthorizationPolicies evaluated here, compiled.
    pub policies: Vec<Policy>,
    /// The RequestAuthentications, compiled.
    pub authn: Vec<AuthnPolicy>,
    /// CUSTOM policies: accepted, not evaluated.
    pub custom: Vec<PolicyId>,
    /// The `DataSource` documents: the live data lookups read.
    pub data_sources: Vec<crate::data::Definition>,
    /// The user-data headers the sources feed.
    pub user_headers: Vec<UserHeader>,
    /// Documents of other kinds, skipped.
    pub skipped: Vec<SkippedDocument>,
    /// Policy files read.
    pub files: usize,
}

impl LoadedPolicies {
    /// What a snapshot keeps of the data sources: shapes and user-data headers.
    pub fn snapshot_data_sources(&self) -> DataSources {
        DataSources {
            shapes: self.data_sources.iter().map(|source| (source.name.clone(), source.shape.clone())).collect(),
            user_headers: self.user_headers.clone(),
        }
    }
}

/// One policy file's text, and the directory its relative paths are read from.
struct PolicyText {
    label: String,
    dir: PathBuf,
    text: String,
}

/// Loads every `*.yaml` / `*.yml` under `paths`; returns every problem found, not the first.
pub fn load_policies(paths: &[PathBuf]) -> Result<LoadedPolicies, Vec<ConfigError>> {
    let mut loaded = LoadedPolicies::default();
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files, &mut errors);
    }
    if files.is_empty() && errors.is_empty() {
        // An empty set allows everything: never take it from an emptied directory.
        let shown: Vec<String> = paths.iter().map(|path| path.display().to_string()).collect();
        let message = "no policy files (*.yaml, *.yml) found; an empty set would allow everything".into();
        errors.push(ConfigError { file: shown.join(", ").into(), line: 0, message });
    }
    let mut texts = Vec::new();
    for file in &files {
        loaded.files += 1;
        let label = file.display().to_string();
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        match read_text(file) {
            Ok(text) => texts.push(PolicyText { label, dir, text }),
            Err(message) => errors.push(ConfigError { file: label.into(), line: 0, message }),
        }
    }
    load_texts(&texts, &mut loaded, &mut errors);
    if errors.is_empty() {
        Ok(loaded)
    } else {
        errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        Err(errors)
    }
}

/// A digest of the policy files under `paths`: their names and contents, and any error in
/// reading them. It changes when a file is added, removed, edited, or swapped behind a
/// symlink, as Kubernetes updates a mounted ConfigMap. Files are read as the loader reads
/// them: regular files only, at most `MAX_FILE_BYTES + 1` bytes each.
pub fn fingerprint(paths: &[PathBuf]) -> [u8; 32] {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        collect_files(path, &mut files, &mut errors);
    }
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for error in &errors {
        digest.update(error.to_string().as_bytes());
    }
    for file in &files {
        digest.update(file.display().to_string().as_bytes());
        match read_regular_file(file) {
            Ok(bytes) => {
                digest.update(&(bytes.len() as u64).to_le_bytes());
                digest.update(&bytes);
            }
            Err(message) => digest.update(message.as_bytes()),
        }
    }
    let mut out = [0; 32];
    out.copy_from_slice(digest.finish().as_ref());
    out
}

/// Loads policies from YAML text, as if read from a file named `label` in the current
/// directory.
pub fn load_policy_text(label: &str, text: &str) -> Result<LoadedPolicies, Vec<ConfigError>> {
    let mut loaded = LoadedPolicies { files: 1, ..LoadedPolicies::default() };
    let mut errors = Vec::new();
    let texts = [PolicyText { label: label.into(), dir: PathBuf::new(), text: text.into() }];
    load_texts(&texts, &mut loaded, &mut errors);
    if errors.is_empty() { Ok(loaded) } else { Err(errors) }
}

/// Compiles every document of a set's files into `loaded`: the data sources first, so that a
/// policy's lookups can name a source declared in any file of the set.
fn load_texts(texts: &[PolicyText], loaded: &mut LoadedPolicies, errors: &mut Vec<ConfigError>) {
    let documents: Vec<(&PolicyText, Vec<Document>)> =
        texts.iter().map(|text| (text, split_documents(&text.text))).collect();
    let mut declared: BTreeMap<Arc<str>, String> = BTreeMap::new();
    let mut header_names: BTreeMap<Arc<str>, String> = BTreeMap::new();
    for (text, documents) in &documents {
        for document in documents {
            let origin = DocumentOrigin { file: &text.label, first_line: document.first_line };
            match load_data_source(&document.text, origin, &text.dir) {
                None => {}
                Some(Err(mut found)) => errors.append(&mut found),
                Some(Ok(CompiledSource { definition, user_header })) => {
                    let here = format!("{}:{}", text.label, document.first_line);
                    if let Some(first) = declared.insert(definition.name.clone(), here.clone()) {
                        let message = format!("data source `{}` is declared twice; first at {first}", definition.name);
                        errors.push(origin.error(1, message));
                    }
                    if let Some(header) = &user_header
                        && let Some(first) = header_names.insert(header.name.clone(), here)
                    {
                        let message = format!(
                            "data source `{}`: spec.userHeader.name: header `{}` is already set by the source at {first}",
                            definition.name, header.name
                        );
                        errors.push(origin.error(1, message));
                    }
                    loaded.data_sources.push(definition);
                    loaded.user_headers.extend(user_header);
                }
            }
        }
    }
    let shapes: SourceShapes =
        loaded.data_sources.iter().map(|source| (source.name.clone(), source.shape.clone())).collect();
    let mut seen = BTreeMap::new();
    for (text, documents) in &documents {
        load_documents(&text.label, documents, &shapes, loaded, &mut seen, errors);
    }
}

/// A `portcullis.dev` `DataSource` document compiled; `None` for a document of another kind.
fn load_data_source(
    text: &str,
    origin: DocumentOrigin<'_>,
    dir: &Path,
) -> Option<Result<CompiledSource, Vec<ConfigError>>> {
    let header: raw::ObjectHeader = serde_saphyr::from_str_with_options(text, yaml_options()).ok()?;
    let group = header.api_version.as_deref()?.split('/').next().unwrap_or_default();
    if group != PORTCULLIS_GROUP || header.kind?.value != "DataSource" {
        return None;
    }
    let document: raw::DataSource = match serde_saphyr::from_str_with_options(text, yaml_options()) {
        Ok(document) => document,
        Err(error) => return Some(Err(vec![yaml_error(origin, &error)])),
    };
    Some(data_source::compile_data_source(document, origin, dir))
}

/// Compiles every document of one file but its data sources into `loaded`; `seen` finds
/// duplicate names.
fn load_documents(
    label: &str,
    documents: &[Document],
    sources: &SourceShapes,
    loaded: &mut LoadedPolicies,
    seen: &mut BTreeMap<PolicyId, String>,
    errors: &mut Vec<ConfigError>,
) {
    let mut seen_authn = BTreeMap::new();
    for document in documents {
        let origin = DocumentOrigin { file: label, first_line: document.first_line };
        let here = format!("{label}:{}", document.first_line);
        match load_document(&document.text, origin, sources) {
            Ok(Loaded::Policy(policy)) => {
                if let Some(first) = seen.insert((*policy.id).clone(), here) {
                    let message = format!("authorization policy `{}` is defined twice; first at {first}", policy.id);
                    errors.push(origin.error(1, message));
                }
                loaded.policies.push(policy);
            }
            Ok(Loaded::Authn(policy)) => {
                if let Some(first) = seen_authn.insert((*policy.id).clone(), here) {
                    let message = format!("request authentication `{}` is defined twice; first at {first}", policy.id);
                    errors.push(origin.error(1, message));
                }
                loaded.authn.push(policy);
            }
            Ok(Loaded::Custom(id)) => loaded.custom.push(id),
            Ok(Loaded::Skipped { kind, reason }) => {
                loaded.skipped.push(SkippedDocument { location: here, kind, reason })
            }
            Ok(Loaded::Empty) => {}
            Err(mut found) => errors.append(&mut found),
        }
    }
}

enum Loaded {
    Policy(Policy),
    Authn(AuthnPolicy),
    Custom(PolicyId),
    Skipped { kind: String, reason: &'static str },
    Empty,
}

pub(crate) fn read_text(file: &Path) -> Result<String, String> {
    let bytes = read_regular_file(file)?;
    String::from_utf8(bytes).map_err(|_| "file is not UTF-8".into())
}

/// The bytes of a regular file (a symlink to one is fine: ConfigMap files are symlinks). A
/// FIFO, device or socket is refused before it is opened, since opening a FIFO blocks and a
/// device never ends, and again on the opened handle, in case the path was swapped in between
/// (`O_NONBLOCK` keeps that open from blocking). At most `MAX_FILE_BYTES + 1` bytes are read,
/// whatever size the metadata claims.
fn read_regular_file(file: &Path) -> Result<Vec<u8>, String> {
    let cannot_read = |error: std::io::Error| format!("cannot read: {error}");
    let before_opening = std::fs::metadata(file).map_err(cannot_read)?;
    refuse_non_regular(before_opening.file_type())?;
    let opened = File::options().read(true).custom_flags(libc::O_NONBLOCK).open(file).map_err(cannot_read)?;
    refuse_non_regular(opened.metadata().map_err(cannot_read)?.file_type())?;
    let mut bytes = Vec::new();
    opened.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(cannot_read)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("file is over the limit of {MAX_FILE_BYTES} bytes"));
    }
    Ok(bytes)
}

fn refuse_non_regular(file_type: FileType) -> Result<(), String> {
    if file_type.is_file() {
        return Ok(());
    }
    let kind = if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_dir() {
        "directory"
    } else {
        "unknown type"
    };
    Err(format!("not a regular file ({kind})"))
}

/// A file, or the YAML files under a directory in name order. Entries whose names start with
/// `.` are skipped: Kubernetes keeps a ConfigMap's real files under `..data` and `..TIMESTAMP`.
pub(crate) fn collect_files(path: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<ConfigError>) {
    let error = |message: String| ConfigError { file: path.display().to_string().into(), line: 0, message };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(cause) => return errors.push(error(format!("cannot read: {cause}"))),
    };
    if !metadata.is_dir() {
        files.push(path.to_path_buf());
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(cause) => return errors.push(error(format!("cannot list: {cause}"))),
    };
    let mut children: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.path())
        .collect();
    children.sort();
    for child in children {
        if child.is_dir() {
            collect_files(&child, files, errors);
        } else if child.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
            files.push(child);
        }
    }
}

/// One YAML document of a stream and the file line it starts at.
#[derive(Debug, PartialEq, Eq)]
struct Document {
    first_line: u64,
    text: String,
}

/// Splits a YAML stream at `---` and `...` markers (which YAML only allows at column 0), keeping
/// line numbers: a marker line stays in its document as blanks.
fn split_documents(text: &str) -> Vec<Document> {
    let is_marker = |line: &str, marker: &str| {
        line.strip_prefix(marker).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    let mut documents = Vec::new();
    let mut current = Document { first_line: 1, text: String::new() };
    for (index, line) in text.lines().enumerate() {
        let number = index as u64 + 1;
        if is_marker(line, "---") {
            documents.push(std::mem::replace(&mut current, Document { first_line: number, text: String::new() }));
            current.text.push_str("   ");
            current.text.push_str(&line[3..]);
        } else if is_marker(line, "...") {
            documents.push(std::mem::replace(&mut current, Document { first_line: number + 1, text: String::new() }));
            continue;
        } else {
            current.text.push_str(line);
        }
        current.text.push('\n');
    }
    documents.push(current);
    documents.retain(|document| {
        document.text.lines().any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
    });
    documents
}

fn yaml_error(origin: DocumentOrigin<'_>, error: &serde_saphyr::Error) -> ConfigError {
    let (line, message) = describe_yaml_error(error);
    origin.error(line.max(1), message)
}

fn load_document(text: &str, origin: DocumentOrigin<'_>, sources: &SourceShapes) -> Result<Loaded, Vec<ConfigError>> {
    let header: raw::ObjectHeader =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|error| vec![yaml_error(origin, &error)])?;
    let (Some(api_version), Some(kind)) = (header.api_version, header.kind) else {
        if text.trim() == "null" || text.trim() == "~" {
            return Ok(Loaded::Empty);
        }
        return Err(vec![origin.error(1, "not a Kubernetes object: `apiVersion` and `kind` are required".into())]);
    };
    // `group/version`; without a `/`, the whole is read as the group, so that a policy that
    // lost its version is refused by the compiler rather than skipped.
    let group = api_version.split('/').next().unwrap_or_default();
    if group == PORTCULLIS_GROUP {
        return match kind.value.as_str() {
            // Compiled before the policies that read it.
            "DataSource" => Ok(Loaded::Empty),
            unknown => Err(vec![
                origin.error(kind.referenced.line(), unknown_kind(unknown, PORTCULLIS_GROUP, &PORTCULLIS_KINDS)),
            ]),
        };
    }
    if group != ISTIO_SECURITY_GROUP {
        let reason = "not an Istio security policy";
        return Ok(Loaded::Skipped { kind: format!("{api_version}/{}", kind.value), reason });
    }
    match kind.value.as_str() {
        "AuthorizationPolicy" => {
            let document: raw::AuthorizationPolicy = serde_saphyr::from_str_with_options(text, yaml_options())
                .map_err(|error| vec![yaml_error(origin, &error)])?;
            Ok(match compile::compile_authorization_policy(document, origin, sources)? {
                CompiledPolicy::Enforced(policy) => Loaded::Policy(policy),
                CompiledPolicy::Custom(id) => Loaded::Custom(id),
            })
        }
        "RequestAuthentication" => {
            let document: raw::RequestAuthentication = serde_saphyr::from_str_with_options(text, yaml_options())
                .map_err(|error| vec![yaml_error(origin, &error)])?;
            compile::compile_request_authentication(document, origin).map(Loaded::Authn)
        }
        "PeerAuthentication" => {
            let reason = "mutual TLS is enforced by the mesh's proxies, not evaluated here";
            Ok(Loaded::Skipped { kind: format!("{api_version}/{}", kind.value), reason })
        }
        unknown => {
            // A misspelled kind must not disable the policy it was meant to be.
            Err(vec![
                origin
                    .error(kind.referenced.line(), unknown_kind(unknown, ISTIO_SECURITY_GROUP, &ISTIO_SECURITY_KINDS)),
            ])
        }
    }
}

/// The message for a kind its group does not have, with the nearest known one.
fn unknown_kind(unknown: &str, group: &str, known: &[&'static str]) -> String {
    format!(
        "unknown kind `{unknown}` of `{group}`; known kinds: {}; did you mean `{}`?",
        known.join(", "),
        closest_kind(unknown, known)
    )
}

/// The known kind nearest to `kind` by edit distance, letter case ignored; the first in name
/// order on a tie.
fn closest_kind(kind: &str, known_kinds: &[&'static str]) -> &'static str {
    let kind = kind.to_ascii_lowercase();
    let mut closest = known_kinds.first().copied().unwrap_or_default();
    let mut closest_distance = usize::MAX;
    for &known in known_kinds {
        let distance = edit_distance(&kind, &known.to_ascii_lowercase());
        if distance < closest_distance {
            (closest, closest_distance) = (known, distance);
        }
    }
    closest
}

/// Levenshtein distance in bytes; only short ASCII names (kinds, variables) are compared.
#[expect(clippy::indexing_slicing, reason = "the rows have `b.len() + 1` cells and `j < b.len()`")]
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_byte) in a.bytes().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, b_byte) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_byte != *b_byte);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_file_lines() {
        let text = "# header\n---\na: 1\n---   # second\nb: 2\n...\n---\n# only a comment\n";
        let documents = split_documents(text);
        let lines: Vec<u64> = documents.iter().map(|document| document.first_line).collect();
        assert_eq!(lines, [2, 4]);
        assert_eq!(documents[0].text, "   \na: 1\n");
        assert_eq!(documents[1].text, "      # second\nb: 2\n");
    }

    #[test]
    fn a_stream_without_markers_is_one_document() {
        let documents = split_documents("a: 1\nb: 2\n");
        assert_eq!(documents, [Document { first_line: 1, text: "a: 1\nb: 2\n".into() }]);
    }

    #[test]
    fn the_closest_kind_is_found_whatever_the_letter_case() {
        assert_eq!(closest_kind("AuthorisationPolicy", &ISTIO_SECURITY_KINDS), "AuthorizationPolicy");
        assert_eq!(closest_kind("requestauthentication", &ISTIO_SECURITY_KINDS), "RequestAuthentication");
        assert_eq!(closest_kind("PeerAuth", &ISTIO_SECURITY_KINDS), "PeerAuthentication");
        assert_eq!(closest_kind("Datasource", &PORTCULLIS_KINDS), "DataSource");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_symlink_to_a_regular_file_is_read_and_one_to_a_device_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("real.yaml"), "a: 1\n").expect("write");
        std::os::unix::fs::symlink("real.yaml", dir.path().join("link.yaml")).expect("symlink");
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).expect("symlink");
        assert_eq!(read_regular_file(&dir.path().join("link.yaml")), Ok(b"a: 1\n".to_vec()));
        let refused = read_regular_file(&dir.path().join("zero.yaml"));
        assert_eq!(refused, Err("not a regular file (character device)".into()));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("x.yaml");
        let without_fifo = fingerprint(&[dir.path().to_path_buf()]);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
        assert!(made.success());
        assert_eq!(read_regular_file(&fifo), Err("not a regular file (fifo)".into()));
        assert_ne!(fingerprint(&[dir.path().to_path_buf()]), without_fifo, "the poller sees the fifo, unread");
    }

    #[test]
    fn markers_need_column_zero_and_a_separator() {
        let documents = split_documents("a: |\n  ---\n---x: 1\n");
        assert_eq!(documents.len(), 1);
    }
}
