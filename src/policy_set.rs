//! The policy set the settings name: its files loaded and compiled into a snapshot, what it holds but does not evaluate, and its summary; shared by `serve`, reload and the offline commands; never swaps a live set (reload does).

use crate::config::ConfigError;
use crate::config::load::{LoadedPolicies, SkippedDocument, load_policies};
use crate::core::Snapshot;
use crate::settings::{Settings, SettingsError};

/// Why a policy set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicySetError {
    /// The policy files have problems: every one, located.
    #[error("{}", render_config_errors(.0))]
    Policies(Vec<ConfigError>),
    /// The settings the set is read with are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// Every problem of a policy set, one a line, then their count.
fn render_config_errors(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("{}\n{} problem(s) in the policy set", lines.join("\n"), errors.len())
}

/// Loads and compiles the policy set the settings name.
pub fn build_snapshot(settings: &Settings) -> Result<(Snapshot, LoadedPolicies), PolicySetError> {
    build_snapshot_with(settings, |_| {})
}

/// [`build_snapshot`], `prepare` changing the loaded policies first (`portcullis test` gives
/// issuers the keys its test file declares).
pub fn build_snapshot_with(
    settings: &Settings,
    prepare: impl FnOnce(&mut LoadedPolicies),
) -> Result<(Snapshot, LoadedPolicies), PolicySetError> {
    let mut loaded = load_policies(&settings.policies).map_err(PolicySetError::Policies)?;
    prepare(&mut loaded);
    let workloads = settings.workload_table()?;
    let policies = std::mem::take(&mut loaded.policies);
    let authn = std::mem::take(&mut loaded.authn);
    let sources = loaded.snapshot_data_sources();
    let options = settings.engine_options();
    let snapshot = Snapshot::with_data_sources(policies, authn, workloads, options, &settings.root_namespace, sources);
    if let Some(message) = snapshot.conflicting_key_sources() {
        let file = settings.policies.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(PolicySetError::Policies(vec![ConfigError { file: file.into(), line: 0, message }]));
    }
    Ok((snapshot, loaded))
}

/// Logs what a loaded set holds but does not evaluate: skipped documents and CUSTOM policies.
/// At start-up and on every reload, so a document that stops counting is never silent.
pub fn log_not_evaluated(loaded: &LoadedPolicies) {
    for skipped in &loaded.skipped {
        let SkippedDocument { location, kind, reason } = skipped;
        tracing::warn!(%location, %kind, %reason, "Skipped a document");
    }
    for id in &loaded.custom {
        tracing::info!(policy = %id, "CUSTOM policy routes traffic here; not evaluated");
    }
}

/// What a loaded policy set holds, counted the same way wherever it is reported (`validate`
/// prints it, `serve` logs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetSummary {
    /// Policy files read.
    pub files: usize,
    /// AuthorizationPolicies evaluated here: ALLOW, DENY and AUDIT ones.
    pub authorization_policies: usize,
    /// CUSTOM AuthorizationPolicies: accepted, not evaluated (they route traffic here).
    pub custom_policies: usize,
    /// RequestAuthentications.
    pub request_authentications: usize,
    /// DataSources: the live data lookups read.
    pub data_sources: usize,
}

impl SetSummary {
    /// Counts what `loaded` holds, and what of it `snapshot` evaluates.
    pub fn of(snapshot: &Snapshot, loaded: &LoadedPolicies) -> Self {
        Self {
            files: loaded.files,
            authorization_policies: snapshot.policy_count(),
            custom_policies: loaded.custom.len(),
            request_authentications: snapshot.authn_count(),
            data_sources: loaded.data_sources.len(),
        }
    }
}

impl std::fmt::Display for SetSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files: {} AuthorizationPolicies (and {} CUSTOM), {} RequestAuthentications, {} DataSources",
            self.files,
            self.authorization_policies,
            self.custom_policies,
            self.request_authentications,
            self.data_sources
        )
    }
}
