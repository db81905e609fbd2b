//! The policy YAML exactly as Istio defines it: a serde mirror with source locations, checked for unknown fields; no semantics.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

/// A list of strings from the YAML, each with its location.
pub type Values = Vec<Spanned<String>>;

/// Just enough of any Kubernetes object to tell what it is.
#[derive(Debug, Deserialize)]
pub struct ObjectHeader {
    #[serde(rename = "apiVersion")]
    pub api_version: Option<String>,
    pub kind: Option<Spanned<String>>,
}

/// Kubernetes `metadata`: only the fields policies use are read, the rest of ObjectMeta is
/// accepted as exported by `kubectl get -o yaml`.
#[derive(Debug, Deserialize)]
pub struct Metadata {
    pub name: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub annotations: BTreeMap<String, Spanned<String>>,
}

/// One Istio resource: its kind's header and `metadata`, and its `spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource<Spec> {
    pub api_version: Spanned<String>,
    pub kind: String,
    pub metadata: Spanned<Metadata>,
    pub spec: Option<Spanned<Spec>>,
    /// Written by the cluster, ignored here.
    pub status: Option<IgnoredAny>,
}

/// `security.istio.io/v1` (or `v1beta1`) `AuthorizationPolicy`.
pub type AuthorizationPolicy = Resource<AuthorizationPolicySpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub selector: Option<Spanned<WorkloadSelector>>,
    pub target_ref: Option<Spanned<IgnoredAny>>,
    pub target_refs: Option<Spanned<IgnoredAny>>,
    pub action: Option<Spanned<String>>,
    pub provider: Option<Spanned<ExtensionProvider>>,
    pub rules: Option<Vec<Spanned<Rule>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub from: Option<Vec<Spanned<From>>>,
    pub to: Option<Vec<Spanned<To>>>,
    pub when: Option<Vec<Spanned<Condition>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    pub source: Option<Spanned<Source>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    pub operation: Option<Spanned<Operation>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    pub principals: Option<Values>,
    pub not_principals: Option<Values>,
    pub request_principals: Option<Values>,
    pub not_request_principals: Option<Values>,
    pub namespaces: Option<Values>,
    pub not_namespaces: Option<Values>,
    pub service_accounts: Option<Values>,
    pub not_service_accounts: Option<Values>,
    pub ip_blocks: Option<Values>,
    pub not_ip_blocks: Option<Values>,
    pub remote_ip_blocks: Option<Values>,
    pub not_remote_ip_blocks: Option<Values>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    pub hosts: Option<Values>,
    pub not_hosts: Option<Values>,
    pub ports: Option<Values>,
    pub not_ports: Option<Values>,
    pub methods: Option<Values>,
    pub not_methods: Option<Values>,
    pub paths: Option<Values>,
    pub not_paths: Option<Values>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: Option<Spanned<String>>,
    pub values: Option<Values>,
    pub not_values: Option<Values>,
    /// portcullis: value expressions whose values' union the key must be among.
    pub values_from: Option<Values>,
    /// portcullis: value expressions whose values' union the key must not be among.
    pub not_values_from: Option<Values>,
}

/// `security.istio.io/v1` (or `v1beta1`) `RequestAuthentication`.
pub type RequestAuthentication = Resource<RequestAuthenticationSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    pub selector: Option<Spanned<WorkloadSelector>>,
    pub target_ref: Option<Spanned<IgnoredAny>>,
    pub target_refs: Option<Spanned<IgnoredAny>>,
    pub jwt_rules: Option<Vec<Spanned<JwtRule>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    pub issuer: Option<Spanned<String>>,
    pub audiences: Option<Values>,
    /// Istio's schema also takes the field's protobuf name, `jwks_uri`.
    #[serde(alias = "jwks_uri")]
    pub jwks_uri: Option<Spanned<String>>,
    pub jwks: Option<Spanned<String>>,
    pub from_headers: Option<Vec<Spanned<JwtHeader>>>,
    pub from_params: Option<Values>,
    pub from_cookies: Option<Values>,
    pub output_payload_to_header: Option<Spanned<String>>,
    pub output_claim_to_headers: Option<Vec<Spanned<ClaimToHeader>>>,
    pub forward_original_token: Option<bool>,
    /// A duration such as `5s`; bounds the key fetch for this issuer.
    pub timeout: Option<Spanned<String>>,
    pub space_delimited_claims: Option<Values>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    pub name: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: Option<String>,
    pub claim: Option<String>,
}

/// `portcullis.dev/v1alpha1` `DataSource`: a live table of records lookups read.
pub type DataSource = Resource<DataSourceSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataSourceSpec {
    pub key: Option<Spanned<String>>,
    pub fields: Option<Values>,
    pub couchdb: Option<Spanned<FeedSpec>>,
    pub file: Option<Spanned<FileFeedSpec>>,
    pub http: Option<Spanned<FeedSpec>>,
    pub ndjson: Option<Spanned<FeedSpec>>,
    pub limits: Option<Spanned<DataLimits>>,
    pub user_header: Option<Spanned<UserHeader>>,
}

/// A feed over HTTP: `couchdb`, `http` (which alone takes `interval`) or `ndjson`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FeedSpec {
    pub url: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub authorization_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFeedSpec {
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataLimits {
    pub records: Option<Spanned<u64>>,
    pub bytes: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserHeader {
    pub name: Option<Spanned<String>>,
    pub caller: Option<Spanned<String>>,
    pub fields: Option<Values>,
    pub max_bytes: Option<Spanned<u64>>,
}
