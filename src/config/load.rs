//! Reads policy files and directories, splits multi-document YAML, and compiles every AuthorizationPolicy in them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::compile::{self, CompiledPolicy, DocumentOrigin};
use super::raw;
use super::{ConfigError, describe_yaml_error, yaml_options};
use crate::core::authn::AuthnPolicy;
use crate::core::policy::{Policy, PolicyId};

/// Files larger than this are refused rather than parsed.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// The policies found under the configured paths.
#[derive(Debug, Default)]
pub struct LoadedPolicies {
    pub policies: Vec<Policy>,
    pub authn: Vec<AuthnPolicy>,
    /// CUSTOM policies: accepted, not evaluated.
    pub custom: Vec<PolicyId>,
    /// Documents of other kinds, skipped: `file:line` and their kind.
    pub skipped: Vec<(String, String)>,
    pub files: usize,
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
    let mut seen = BTreeMap::new();
    for file in &files {
        loaded.files += 1;
        let label = file.display().to_string();
        match read_text(file) {
            Ok(text) => load_text(&label, &text, &mut loaded, &mut seen, &mut errors),
            Err(message) => errors.push(ConfigError { file: label.into(), line: 0, message }),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        Err(errors)
    }
}

/// A digest of the policy files under `paths`: their names and contents, and any error in
/// reading them. It changes when a file is added, removed, edited, or swapped behind a
/// symlink, as Kubernetes updates a mounted ConfigMap.
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
        match std::fs::read(file) {
            Ok(bytes) => {
                digest.update(&(bytes.len() as u64).to_le_bytes());
                digest.update(&bytes);
            }
            Err(error) => digest.update(error.to_string().as_bytes()),
        }
    }
    let mut out = [0; 32];
    out.copy_from_slice(digest.finish().as_ref());
    out
}

/// Loads policies from YAML text, as if read from a file named `label`.
pub fn load_policy_text(label: &str, text: &str) -> Result<LoadedPolicies, Vec<ConfigError>> {
    let mut loaded = LoadedPolicies { files: 1, ..LoadedPolicies::default() };
    let mut errors = Vec::new();
    load_text(label, text, &mut loaded, &mut BTreeMap::new(), &mut errors);
    if errors.is_empty() { Ok(loaded) } else { Err(errors) }
}

/// Compiles every document of one file's text into `loaded`; `seen` finds duplicate names.
fn load_text(
    label: &str,
    text: &str,
    loaded: &mut LoadedPolicies,
    seen: &mut BTreeMap<PolicyId, String>,
    errors: &mut Vec<ConfigError>,
) {
    let mut seen_authn = BTreeMap::new();
    for document in split_documents(text) {
        let origin = DocumentOrigin { file: label, first_line: document.first_line };
        let here = format!("{label}:{}", document.first_line);
        match load_document(&document.text, origin) {
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
            Ok(Loaded::Skipped(kind)) => loaded.skipped.push((here, kind)),
            Ok(Loaded::Empty) => {}
            Err(mut found) => errors.append(&mut found),
        }
    }
}

enum Loaded {
    Policy(Policy),
    Authn(AuthnPolicy),
    Custom(PolicyId),
    Skipped(String),
    Empty,
}

fn read_text(file: &Path) -> Result<String, String> {
    let size = std::fs::metadata(file).map_err(|error| format!("cannot read: {error}"))?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!("file is {size} bytes, over the limit of {MAX_FILE_BYTES}"));
    }
    let bytes = std::fs::read(file).map_err(|error| format!("cannot read: {error}"))?;
    String::from_utf8(bytes).map_err(|_| "file is not UTF-8".into())
}

/// A file, or the YAML files under a directory in name order. Entries whose names start with
/// `.` are skipped: Kubernetes keeps a ConfigMap's real files under `..data` and `..TIMESTAMP`.
fn collect_files(path: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<ConfigError>) {
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

fn load_document(text: &str, origin: DocumentOrigin<'_>) -> Result<Loaded, Vec<ConfigError>> {
    let header: raw::ObjectHeader =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|error| vec![yaml_error(origin, &error)])?;
    let (Some(api_version), Some(kind)) = (header.api_version, header.kind) else {
        if text.trim() == "null" || text.trim() == "~" {
            return Ok(Loaded::Empty);
        }
        return Err(vec![origin.error(1, "not a Kubernetes object: `apiVersion` and `kind` are required".into())]);
    };
    let is_istio_security = api_version.starts_with("security.istio.io/");
    if is_istio_security && kind == "RequestAuthentication" {
        let document: raw::RequestAuthentication = serde_saphyr::from_str_with_options(text, yaml_options())
            .map_err(|error| vec![yaml_error(origin, &error)])?;
        return compile::compile_request_authentication(document, origin).map(Loaded::Authn);
    }
    if !(is_istio_security && kind == "AuthorizationPolicy") {
        return Ok(Loaded::Skipped(format!("{api_version}/{kind}")));
    }
    let document: raw::AuthorizationPolicy =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|error| vec![yaml_error(origin, &error)])?;
    Ok(match compile::compile_authorization_policy(document, origin)? {
        CompiledPolicy::Enforced(policy) => Loaded::Policy(policy),
        CompiledPolicy::Custom(id) => Loaded::Custom(id),
    })
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
    fn markers_need_column_zero_and_a_separator() {
        let documents = split_documents("a: |\n  ---\n---x: 1\n");
        assert_eq!(documents.len(), 1);
    }
}
