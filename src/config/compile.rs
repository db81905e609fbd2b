//! Turns raw AuthorizationPolicy YAML into checked core policies, reporting every problem with `file:line`; pure.

use std::sync::Arc;

use serde_saphyr::Spanned;

use super::ConfigError;
use super::expression::{self, Scope, SourceShapes};
use super::raw;
use crate::core::authn::{AuthnPolicy, ClaimHeader, JwtRule, KeySource, TokenLocation};
use crate::core::jwt::KeySet;
use crate::core::matcher::{IpMatch, PathMatch, PathTemplate, StringMatch};
use crate::core::policy::{
    Action, Conjunction, Policy, PolicyId, Predicate, RequestPrincipalMatch, Rule, ServiceAccount, Test,
};
use crate::core::value::Expr;
use crate::core::workload::LabelSelector;
use crate::outbound::redact_url;

/// API versions whose AuthorizationPolicy schema this compiler reads.
pub const API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Where a document starts, so that locations inside it can be reported in its file.
#[derive(Debug, Clone, Copy)]
pub struct DocumentOrigin<'a> {
    /// The policy file.
    pub file: &'a str,
    /// The file line (1-based) of the document's first line.
    pub first_line: u64,
}

impl DocumentOrigin<'_> {
    /// The file line of a line inside the document.
    pub fn file_line(&self, document_line: u64) -> u64 {
        self.first_line + document_line.saturating_sub(1)
    }

    /// A problem at a line inside the document.
    pub fn error(&self, document_line: u64, message: String) -> ConfigError {
        ConfigError { file: self.file.into(), line: self.file_line(document_line), message }
    }
}

/// What a valid AuthorizationPolicy document becomes.
#[derive(Debug)]
pub enum CompiledPolicy {
    /// An ALLOW, DENY or AUDIT policy to enforce.
    Enforced(Policy),
    /// A CUSTOM policy: it routes traffic to this server and is not evaluated here.
    Custom(PolicyId),
}

/// Compiles one document, collecting every problem rather than stopping at the first; data
/// lookups may name the `sources` the whole set declares.
pub fn compile_authorization_policy(
    document: raw::AuthorizationPolicy,
    origin: DocumentOrigin<'_>,
    sources: &SourceShapes,
) -> Result<CompiledPolicy, Vec<ConfigError>> {
    let (id, mut compiler) =
        Compiler::start("authorization policy", &document.api_version, &document.metadata, origin, sources);
    let namespace = id.namespace.clone();
    let (action, selector, rules) = match document.spec {
        Some(spec) => compiler.spec(spec, &namespace),
        None => (Some(Action::Allow), LabelSelector::default(), Box::default()),
    };
    let dry_run = compiler.dry_run(&document.metadata.value, action);
    if !compiler.errors.is_empty() {
        return Err(compiler.errors);
    }
    Ok(match action {
        Some(action) => CompiledPolicy::Enforced(Policy { id: Arc::new(id), action, dry_run, selector, rules }),
        None => CompiledPolicy::Custom(id),
    })
}

/// Claims always matched word by word, as Envoy splits them.
const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

/// Compiles one RequestAuthentication document, collecting every problem.
pub fn compile_request_authentication(
    document: raw::RequestAuthentication,
    origin: DocumentOrigin<'_>,
) -> Result<AuthnPolicy, Vec<ConfigError>> {
    let no_sources = SourceShapes::new();
    let (id, mut compiler) =
        Compiler::start("request authentication", &document.api_version, &document.metadata, origin, &no_sources);
    if let Some(value) = document.metadata.value.annotations.get(DRY_RUN_ANNOTATION) {
        let message = "only an AuthorizationPolicy supports this annotation; remove it".into();
        compiler.report(value.referenced.line(), &format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"), message);
    }
    let (selector, rules) = match document.spec {
        Some(spec) => {
            let spec = spec.value;
            for target in [&spec.target_ref, &spec.target_refs].into_iter().flatten() {
                let message = "`targetRef` and `targetRefs` are not supported yet; use `selector`".into();
                compiler.report(target.referenced.line(), "spec", message);
            }
            let selector = spec.selector.map(|selector| compiler.selector(selector)).unwrap_or_default();
            let rules: Vec<Arc<JwtRule>> = spec
                .jwt_rules
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .filter_map(|(index, rule)| compiler.jwt_rule(&format!("spec.jwtRules[{index}]"), rule))
                .collect();
            (selector, rules)
        }
        None => (LabelSelector::default(), Vec::new()),
    };
    for (index, rule) in rules.iter().enumerate() {
        if let Some(issuer) = &rule.issuer
            && rules.iter().take(index).any(|earlier| earlier.issuer.as_ref() == Some(issuer))
        {
            let line = document.metadata.referenced.line();
            compiler.report(line, "spec.jwtRules", format!("issuer `{issuer}` appears in two rules"));
        }
    }
    if compiler.errors.is_empty() {
        Ok(AuthnPolicy { id: Arc::new(id), selector, rules: rules.into() })
    } else {
        Err(compiler.errors)
    }
}

/// A header name as HTTP allows it (RFC 9110 token), in lower case.
pub(super) fn header_name(name: &str) -> Result<Arc<str>, String> {
    let is_token =
        !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte));
    if is_token { Ok(Arc::from(name.to_ascii_lowercase())) } else { Err(format!("invalid header name `{name}`")) }
}

struct Compiler<'a> {
    origin: DocumentOrigin<'a>,
    /// The data sources lookups may name.
    sources: &'a SourceShapes,
    /// ``authorization policy `ns/name` ``, the start of every message.
    context: String,
    errors: Vec<ConfigError>,
}

/// A policy's action, or `None` for CUSTOM.
type CompiledSpec = (Option<Action>, LabelSelector, Box<[Rule]>);

impl<'a> Compiler<'a> {
    /// The policy's `namespace/name` and a compiler for it, with the checks every kind shares:
    /// a supported `apiVersion` and a name.
    fn start(
        kind: &str,
        api_version: &Spanned<String>,
        metadata: &Spanned<raw::Metadata>,
        origin: DocumentOrigin<'a>,
        sources: &'a SourceShapes,
    ) -> (PolicyId, Self) {
        let name = metadata.value.name.as_ref().map_or("", |name| name.value.as_str());
        let namespace = metadata.value.namespace.as_ref().map_or("", |namespace| namespace.value.as_str());
        let id = PolicyId { namespace: namespace.into(), name: name.into() };
        let mut compiler = Compiler { origin, sources, context: format!("{kind} `{id}`"), errors: Vec::new() };
        if !API_VERSIONS.contains(&api_version.value.as_str()) {
            let message = format!("unsupported apiVersion `{}`", api_version.value);
            compiler.report(api_version.referenced.line(), "apiVersion", message);
        }
        if name.is_empty() {
            compiler.report(metadata.referenced.line(), "metadata.name", "a name is required".into());
        }
        (id, compiler)
    }

    fn report(&mut self, line: u64, field: &str, message: String) {
        let error = self.origin.error(line, format!("{}: {field}: {message}", self.context));
        self.errors.push(error);
    }

    /// The `istio.io/dry-run` annotation, read as Istio does: a boolean as Go's
    /// `strconv.ParseBool` spells it, on an ALLOW or DENY policy only (`action` is `None` for
    /// CUSTOM).
    fn dry_run(&mut self, metadata: &raw::Metadata, action: Option<Action>) -> bool {
        let Some(value) = metadata.annotations.get(DRY_RUN_ANNOTATION) else {
            return false;
        };
        let field = format!("metadata.annotations[{DRY_RUN_ANNOTATION}]");
        let (line, text) = (value.referenced.line(), value.value.as_str());
        let unsupported = match action {
            Some(Action::Allow | Action::Deny) => None,
            Some(Action::Audit) => Some("AUDIT"),
            None => Some("CUSTOM"),
        };
        if let Some(action) = unsupported {
            let message = format!("dry-run is only supported with action ALLOW or DENY, not {action}");
            self.report(line, &field, message);
            return false;
        }
        match text {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            other => {
                self.report(line, &field, format!("must be a boolean such as `true` or `false`, not `{other}`"));
                false
            }
        }
    }

    fn spec(&mut self, spec: Spanned<raw::AuthorizationPolicySpec>, namespace: &str) -> CompiledSpec {
        let spec_line = spec.referenced.line();
        let spec = spec.value;
        for target in [&spec.target_ref, &spec.target_refs].into_iter().flatten() {
            let message = "`targetRef` and `targetRefs` are not supported yet; use `selector`".into();
            self.report(target.referenced.line(), "spec", message);
        }
        let action = match spec.action.as_ref().map(|action| (action.value.as_str(), action.referenced.line())) {
            None | Some(("ALLOW", _)) => Some(Action::Allow),
            Some(("DENY", _)) => Some(Action::Deny),
            Some(("AUDIT", _)) => Some(Action::Audit),
            Some(("CUSTOM", _)) => None,
            Some((other, line)) => {
                self.report(
                    line,
                    "spec.action",
                    format!("unknown action `{other}`; expected ALLOW, DENY, AUDIT or CUSTOM"),
                );
                Some(Action::Allow)
            }
        };
        match (&spec.provider, action) {
            (Some(provider), Some(_)) => {
                self.report(
                    provider.referenced.line(),
                    "spec.provider",
                    "`provider` must only be set with action CUSTOM".into(),
                );
            }
            (None, None) => self.report(spec_line, "spec.provider", "action CUSTOM requires a `provider`".into()),
            (Some(provider), None) if provider.value.name.as_deref().unwrap_or_default().is_empty() => {
                self.report(provider.referenced.line(), "spec.provider.name", "a provider name is required".into());
            }
            _ => {}
        }
        let rules = spec.rules.unwrap_or_default();
        if action == Some(Action::Deny) && rules.is_empty() {
            self.report(spec_line, "spec.rules", "a DENY policy needs at least one rule".into());
        }
        if action.is_none() {
            self.custom_rules(spec_line, &rules);
        }
        let selector = spec.selector.map(|selector| self.selector(selector)).unwrap_or_default();
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| self.rule(&format!("spec.rules[{index}]"), rule, namespace))
            .collect();
        (action, selector, rules)
    }

    /// What Istio refuses in a CUSTOM policy's rules: none at all (it would never be
    /// triggered), and any field or condition on the peer's or the token's identity.
    fn custom_rules(&mut self, spec_line: u64, rules: &[Spanned<raw::Rule>]) {
        if rules.is_empty() {
            let message = "a CUSTOM policy without rules is never triggered; add an empty rule `{}` to send every request to the provider";
            self.report(spec_line, "spec.rules", message.into());
        }
        let unsupported = |field: &str| format!("`{field}` is not supported with action CUSTOM");
        for (index, rule) in rules.iter().enumerate() {
            for (from_index, from) in rule.value.from.iter().flatten().enumerate() {
                let Some(source) = &from.value.source else { continue };
                let fields = [
                    ("principals", &source.value.principals),
                    ("notPrincipals", &source.value.not_principals),
                    ("requestPrincipals", &source.value.request_principals),
                    ("notRequestPrincipals", &source.value.not_request_principals),
                    ("namespaces", &source.value.namespaces),
                    ("notNamespaces", &source.value.not_namespaces),
                    ("serviceAccounts", &source.value.service_accounts),
                    ("notServiceAccounts", &source.value.not_service_accounts),
                ];
                for (name, values) in fields {
                    if let Some(values) = values.as_ref().filter(|values| !values.is_empty()) {
                        let line = values.first().map_or(source.referenced.line(), |value| value.referenced.line());
                        let field = format!("spec.rules[{index}].from[{from_index}].source.{name}");
                        self.report(line, &field, unsupported(name));
                    }
                }
            }
            for (when_index, condition) in rule.value.when.iter().flatten().enumerate() {
                let Some(key) = &condition.value.key else { continue };
                let is_identity =
                    matches!(key.value.as_str(), "source.namespace" | "source.serviceAccount" | "source.principal")
                        || key.value.starts_with("request.auth.");
                if is_identity {
                    let field = format!("spec.rules[{index}].when[{when_index}].key");
                    self.report(key.referenced.line(), &field, unsupported(&key.value));
                }
            }
        }
    }

    fn jwt_rule(&mut self, field: &str, rule: Spanned<raw::JwtRule>) -> Option<Arc<JwtRule>> {
        let line = rule.referenced.line();
        let rule = rule.value;
        let before = self.errors.len();
        let issuer = rule.issuer.as_ref().map(|issuer| issuer.value.clone()).filter(|issuer| !issuer.is_empty());
        // Istio's webhook (`validateJwtRule`) takes a rule with `jwksUri` and no issuer, whose
        // tokens may name any `iss`; without both it refuses the rule.
        if issuer.is_none() && rule.jwks_uri.is_none() {
            let message =
                "an issuer or a `jwksUri` is required, as in Istio (\"issuer or jwksUri must be non-empty string\")";
            self.report(line, &format!("{field}.issuer"), message.into());
        }
        if let (Some(jwks), Some(_)) = (&rule.jwks, &rule.jwks_uri) {
            let message = "only one of `jwks` or `jwksUri` can be set".into();
            self.report(jwks.referenced.line(), &format!("{field}.jwks"), message);
        }
        for (list, name) in [(&rule.audiences, "audiences"), (&rule.space_delimited_claims, "spaceDelimitedClaims")] {
            for (index, value) in list.iter().flatten().enumerate() {
                if value.value.is_empty() {
                    let entry_field = format!("{field}.{name}[{index}]");
                    self.report(value.referenced.line(), &entry_field, "empty value not allowed".into());
                }
            }
        }
        let timeout = rule.timeout.as_ref().and_then(|timeout| {
            let parsed = parse_duration(&timeout.value);
            if parsed.is_none() {
                let message = format!("invalid duration `{}`", timeout.value);
                self.report(timeout.referenced.line(), &format!("{field}.timeout"), message);
            }
            parsed
        });
        let keys = match (&rule.jwks, &rule.jwks_uri) {
            (Some(jwks), _) => match KeySet::from_jwks_json(&jwks.value) {
                Ok(keys) if keys.is_empty() => {
                    self.report(
                        jwks.referenced.line(),
                        &format!("{field}.jwks"),
                        format!("no usable key: {}", keys.skipped.join("; ")),
                    );
                    KeySource::Inline(Arc::new(keys))
                }
                Ok(keys) => KeySource::Inline(Arc::new(keys)),
                Err(message) => {
                    self.report(jwks.referenced.line(), &format!("{field}.jwks"), message);
                    KeySource::Inline(Arc::default())
                }
            },
            (None, Some(uri)) => {
                if !(uri.value.starts_with("https://") || uri.value.starts_with("http://")) {
                    self.report(
                        uri.referenced.line(),
                        &format!("{field}.jwksUri"),
                        format!("`{}` is not an http(s) URL", uri.value),
                    );
                }
                let filed_under = match &issuer {
                    Some(issuer) => issuer.as_str().into(),
                    None => format!("* (jwksUri {})", redact_url(&uri.value)).into(),
                };
                KeySource::Remote { filed_under, jwks_uri: Some(uri.value.as_str().into()), timeout }
            }
            (None, None) => {
                let issuer = issuer.as_deref().unwrap_or_default();
                if !(issuer.is_empty() || issuer.starts_with("https://") || issuer.starts_with("http://")) {
                    let message = format!(
                        "issuer `{issuer}` is not a URL, so its keys cannot be discovered; set `jwksUri` or `jwks`"
                    );
                    self.report(line, &format!("{field}.jwksUri"), message);
                }
                KeySource::Remote { filed_under: issuer.into(), jwks_uri: None, timeout }
            }
        };
        let mut locations = Vec::new();
        for (index, header) in rule.from_headers.unwrap_or_default().into_iter().enumerate() {
            let entry_field = format!("{field}.fromHeaders[{index}].name");
            match header.value.name.as_deref().map(header_name) {
                Some(Ok(name)) => locations.push(TokenLocation::Header {
                    name: (*name).into(),
                    prefix: header.value.prefix.unwrap_or_default().into(),
                }),
                Some(Err(message)) => self.report(header.referenced.line(), &entry_field, message),
                None => self.report(header.referenced.line(), &entry_field, "a header name is required".into()),
            }
        }
        for (list, make) in [
            (rule.from_params, TokenLocation::Param as fn(Box<str>) -> TokenLocation),
            (rule.from_cookies, TokenLocation::Cookie),
        ] {
            for value in list.unwrap_or_default() {
                if value.value.is_empty() {
                    self.report(value.referenced.line(), field, "empty token location".into());
                } else {
                    locations.push(make(value.value.into()));
                }
            }
        }
        let locations = if locations.is_empty() { TokenLocation::defaults() } else { locations.into() };
        let output_payload_to_header = rule.output_payload_to_header.and_then(|header| {
            header_name(&header.value)
                .map_err(|message| {
                    self.report(header.referenced.line(), &format!("{field}.outputPayloadToHeader"), message)
                })
                .ok()
        });
        let mut output_claim_to_headers = Vec::new();
        for (index, output) in rule.output_claim_to_headers.unwrap_or_default().into_iter().enumerate() {
            let entry_field = format!("{field}.outputClaimToHeaders[{index}]");
            let (header, claim) = (output.value.header.unwrap_or_default(), output.value.claim.unwrap_or_default());
            match header_name(&header) {
                Ok(header) if !claim.is_empty() => {
                    let claim = claim.split('.').map(Into::into).collect();
                    output_claim_to_headers.push(ClaimHeader { header, claim });
                }
                Ok(_) => self.report(output.referenced.line(), &entry_field, "a claim is required".into()),
                Err(message) => self.report(output.referenced.line(), &entry_field, message),
            }
        }
        let mut space_delimited_claims: Vec<Box<str>> =
            SPACE_DELIMITED_CLAIMS.iter().map(|&claim| claim.into()).collect();
        space_delimited_claims
            .extend(rule.space_delimited_claims.unwrap_or_default().into_iter().map(|claim| claim.value.into()));
        let audiences = rule.audiences.unwrap_or_default().into_iter().map(|audience| audience.value.into()).collect();
        (self.errors.len() == before).then(|| {
            let rule = JwtRule {
                issuer: issuer.map(Into::into),
                audiences,
                keys,
                locations,
                output_payload_to_header,
                output_claim_to_headers: output_claim_to_headers.into(),
                forward_original_token: rule.forward_original_token.unwrap_or(false),
                space_delimited_claims: space_delimited_claims.into(),
                verifier: Arc::default(),
            };
            // Keeping no claims until a snapshot says which its policies read.
            Arc::new(rule.keeping(&Arc::default()))
        })
    }

    fn selector(&mut self, selector: Spanned<raw::WorkloadSelector>) -> LabelSelector {
        for key in selector.value.match_labels.keys().filter(|key| key.is_empty()) {
            self.report(selector.referenced.line(), "spec.selector.matchLabels", format!("empty label key `{key}`"));
        }
        for (key, value) in &selector.value.match_labels {
            if key.contains('*') || value.contains('*') {
                let message = format!("wildcard is not supported in selector: `{key}={value}`");
                self.report(selector.referenced.line(), "spec.selector.matchLabels", message);
            }
        }
        LabelSelector::new(selector.value.match_labels.into_iter().map(|(key, value)| (key.into(), value.into())))
    }

    fn rule(&mut self, field: &str, rule: Spanned<raw::Rule>, namespace: &str) -> Rule {
        let line = rule.referenced.line();
        let rule = rule.value;
        let from = self.alternatives(field, "from", "source", line, rule.from, |this, field, from| {
            from.value.source.map(|source| this.source(field, source, namespace))
        });
        let to = self.alternatives(field, "to", "operation", line, rule.to, |this, field, to| {
            to.value.operation.map(|operation| this.operation(field, operation))
        });
        // The templates whose `{name}` parameters the rule's conditions may read.
        let (mut templates, mut not_templates) = (Vec::new(), Vec::new());
        for predicate in to.iter().flat_map(|all| all.0.iter()) {
            if let Test::Path(patterns) = &predicate.test {
                let list: &mut Vec<PathTemplate> = if predicate.negated { &mut not_templates } else { &mut templates };
                list.extend(patterns.iter().filter_map(PathMatch::template).cloned());
            }
        }
        let scope =
            Scope { sources: self.sources, templates: &templates, not_templates: &not_templates, lookups: true };
        let when = rule
            .when
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(index, condition)| {
                self.condition(&format!("{field}.when[{index}]"), condition, namespace, scope)
            })
            .flatten()
            .collect();
        Rule { from, to, when: Conjunction(when) }
    }

    /// `from` or `to`: a list that must not be empty, of entries that must name their `inner`;
    /// `compile` gives `None` for a missing inner and `Some(None)` for one it reported.
    fn alternatives<T>(
        &mut self,
        field: &str,
        list_name: &str,
        inner: &str,
        line: u64,
        list: Option<Vec<Spanned<T>>>,
        mut compile: impl FnMut(&mut Self, &str, Spanned<T>) -> Option<Option<Conjunction>>,
    ) -> Box<[Conjunction]> {
        let Some(list) = list else {
            return Box::default();
        };
        if list.is_empty() {
            self.report(line, &format!("{field}.{list_name}"), "must not be empty".into());
        }
        let mut compiled = Vec::with_capacity(list.len());
        for (index, entry) in list.into_iter().enumerate() {
            let entry_line = entry.referenced.line();
            let entry_field = format!("{field}.{list_name}[{index}].{inner}");
            match compile(self, &entry_field, entry) {
                Some(Some(conjunction)) => compiled.push(conjunction),
                Some(None) => {}
                None => self.report(entry_line, &entry_field, "must be set".into()),
            }
        }
        compiled.into()
    }

    fn source(&mut self, field: &str, source: Spanned<raw::Source>, namespace: &str) -> Option<Conjunction> {
        let line = source.referenced.line();
        let source = source.value;
        let names_principal_or_namespace =
            [&source.principals, &source.not_principals, &source.namespaces, &source.not_namespaces]
                .iter()
                .any(|values| values.is_some());
        if names_principal_or_namespace && (source.service_accounts.is_some() || source.not_service_accounts.is_some())
        {
            self.report(line, field, "`serviceAccounts` cannot be combined with `principals` or `namespaces`".into());
        }
        let fields: [(&str, Option<raw::Values>, bool, FieldKind); 12] = [
            ("principals", source.principals, false, FieldKind::Principal),
            ("notPrincipals", source.not_principals, true, FieldKind::Principal),
            ("requestPrincipals", source.request_principals, false, FieldKind::RequestPrincipal),
            ("notRequestPrincipals", source.not_request_principals, true, FieldKind::RequestPrincipal),
            ("namespaces", source.namespaces, false, FieldKind::Namespace),
            ("notNamespaces", source.not_namespaces, true, FieldKind::Namespace),
            ("serviceAccounts", source.service_accounts, false, FieldKind::ServiceAccount),
            ("notServiceAccounts", source.not_service_accounts, true, FieldKind::ServiceAccount),
            ("ipBlocks", source.ip_blocks, false, FieldKind::SourceIp),
            ("notIpBlocks", source.not_ip_blocks, true, FieldKind::SourceIp),
            ("remoteIpBlocks", source.remote_ip_blocks, false, FieldKind::RemoteIp),
            ("notRemoteIpBlocks", source.not_remote_ip_blocks, true, FieldKind::RemoteIp),
        ];
        self.fields(field, line, fields, namespace)
    }

    /// The predicates of a source's or operation's fields; a source or operation without any
    /// field is an error, as in Istio.
    fn fields<const N: usize>(
        &mut self,
        field: &str,
        line: u64,
        fields: [(&str, Option<raw::Values>, bool, FieldKind); N],
        namespace: &str,
    ) -> Option<Conjunction> {
        if fields.iter().all(|(_, values, _, _)| values.is_none()) {
            self.report(line, field, "must not be empty".into());
            return None;
        }
        let before = self.errors.len();
        let mut predicates = Vec::new();
        for (name, values, negated, kind) in fields {
            if let Some(values) = values {
                let field = format!("{field}.{name}");
                predicates.extend(self.predicate(&field, line, values, negated, kind, namespace));
            }
        }
        (self.errors.len() == before).then(|| Conjunction(predicates.into()))
    }

    fn operation(&mut self, field: &str, operation: Spanned<raw::Operation>) -> Option<Conjunction> {
        let line = operation.referenced.line();
        let operation = operation.value;
        let fields: [(&str, Option<raw::Values>, bool, FieldKind); 8] = [
            ("hosts", operation.hosts, false, FieldKind::Host),
            ("notHosts", operation.not_hosts, true, FieldKind::Host),
            ("ports", operation.ports, false, FieldKind::DestinationPort),
            ("notPorts", operation.not_ports, true, FieldKind::DestinationPort),
            ("methods", operation.methods, false, FieldKind::Method),
            ("notMethods", operation.not_methods, true, FieldKind::Method),
            ("paths", operation.paths, false, FieldKind::Path),
            ("notPaths", operation.not_paths, true, FieldKind::Path),
        ];
        self.fields(field, line, fields, "")
    }

    /// One `when` entry: `key` with any of `values`, `notValues`, `valuesFrom` and
    /// `notValuesFrom` (each given must hold). `scope` is what its expressions may name.
    fn condition(
        &mut self,
        field: &str,
        condition: Spanned<raw::Condition>,
        namespace: &str,
        scope: Scope<'_>,
    ) -> Option<Vec<Predicate>> {
        let line = condition.referenced.line();
        let condition = condition.value;
        let Some(key) = condition.key else {
            self.report(line, &format!("{field}.key"), "a key is required".into());
            return None;
        };
        let (key_line, key_field) = (key.referenced.line(), format!("{field}.key"));
        let reading = if expression::is_computed_key(&key.value) {
            expression::parse(&key.value, scope).map(KeyReading::Computed)
        } else {
            FieldKind::from_condition_key(&key.value).map(KeyReading::Istio)
        };
        let reading = match reading {
            Ok(reading) => reading,
            Err(message) => {
                self.report(key_line, &key_field, message);
                return None;
            }
        };
        let lists = [&condition.values, &condition.not_values, &condition.values_from, &condition.not_values_from];
        if lists.iter().all(|list| list.is_none()) {
            self.report(line, field, "`values`, `notValues`, `valuesFrom` or `notValuesFrom` must be set".into());
            return None;
        }
        let mut predicates = Vec::new();
        for (name, values, negated) in [("values", condition.values, false), ("notValues", condition.not_values, true)]
        {
            let Some(values) = values else { continue };
            let field = format!("{field}.{name}");
            match &reading {
                KeyReading::Istio(kind) => {
                    predicates.extend(self.predicate(&field, line, values, negated, kind.clone(), namespace));
                }
                KeyReading::Computed(key) => predicates.extend(self.computed(&field, line, values, negated, key)),
            }
        }
        let from_lists =
            [("valuesFrom", condition.values_from, false), ("notValuesFrom", condition.not_values_from, true)];
        for (name, values, negated) in from_lists {
            let Some(values) = values else { continue };
            let key = match &reading {
                KeyReading::Computed(key) => key.clone(),
                KeyReading::Istio(kind) => match kind.as_expression() {
                    Some(key) => key,
                    None => {
                        let message = format!(
                            "`{}` is not compared as text, so `{name}` cannot be used with it; use `values`",
                            key.value
                        );
                        self.report(key_line, &key_field, message);
                        continue;
                    }
                },
            };
            predicates.extend(self.values_from(&format!("{field}.{name}"), line, values, negated, key, scope));
        }
        Some(predicates)
    }

    /// A computed key's `values` or `notValues`: Istio's patterns, matched against its values.
    fn computed(
        &mut self,
        field: &str,
        line: u64,
        values: raw::Values,
        negated: bool,
        key: &Expr,
    ) -> Option<Predicate> {
        if values.is_empty() {
            self.report(line, field, "must not be empty".into());
            return None;
        }
        let before = self.errors.len();
        for (index, value) in values.iter().enumerate().filter(|(_, value)| value.value.is_empty()) {
            self.report(value.referenced.line(), &format!("{field}[{index}]"), "empty value not allowed".into());
        }
        let patterns = values.iter().map(|value| StringMatch::parse(&value.value)).collect();
        (self.errors.len() == before)
            .then(|| Predicate { test: Test::Computed { key: key.clone(), values: patterns }, negated })
    }

    /// `valuesFrom` or `notValuesFrom`: value expressions, each checked where it stands.
    fn values_from(
        &mut self,
        field: &str,
        line: u64,
        values: raw::Values,
        negated: bool,
        key: Expr,
        scope: Scope<'_>,
    ) -> Option<Predicate> {
        if values.is_empty() {
            self.report(line, field, "must not be empty".into());
            return None;
        }
        let before = self.errors.len();
        let mut from = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            match expression::parse(&value.value, scope) {
                Ok(expression) => from.push(expression),
                Err(message) => self.report(value.referenced.line(), &format!("{field}[{index}]"), message),
            }
        }
        (self.errors.len() == before).then(|| Predicate { test: Test::ValuesFrom { key, from: from.into() }, negated })
    }

    /// Compiles one list of values into a predicate; reports each bad value at its own line.
    fn predicate(
        &mut self,
        field: &str,
        line: u64,
        values: raw::Values,
        negated: bool,
        kind: FieldKind,
        namespace: &str,
    ) -> Option<Predicate> {
        if values.is_empty() {
            self.report(line, field, "must not be empty".into());
            return None;
        }
        if matches!(kind, FieldKind::ServiceAccount) && values.len() > MAX_SERVICE_ACCOUNTS {
            self.report(line, field, format!("may not have more than {MAX_SERVICE_ACCOUNTS} values"));
            return None;
        }
        let before = self.errors.len();
        for (index, value) in values.iter().enumerate() {
            let checked = if value.value.is_empty() {
                Err("empty value not allowed".into())
            } else {
                kind.check(&value.value, namespace)
            };
            if let Err(message) = checked {
                self.report(value.referenced.line(), &format!("{field}[{index}]"), message);
            }
        }
        if self.errors.len() != before {
            return None;
        }
        let texts: Vec<&str> = values.iter().map(|value| value.value.as_str()).collect();
        let test = kind.into_test(&texts, namespace);
        Some(Predicate { test, negated })
    }
}

/// A port as Istio reads it: decimal digits only (no sign), at most 65535.
fn port(value: &str) -> Result<u16, String> {
    let is_digits = !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit());
    is_digits.then(|| value.parse::<u16>().ok()).flatten().ok_or_else(|| format!("invalid port `{value}`"))
}

/// The most values a `serviceAccounts` list or `source.serviceAccount` condition may hold, and
/// the longest value, as Istio's validation says.
const MAX_SERVICE_ACCOUNTS: usize = 16;
const MAX_SERVICE_ACCOUNT_LENGTH: usize = 320;

/// `name` (in the policy's namespace) or `namespace/name`; no wildcard.
fn service_account(value: &str, policy_namespace: &str) -> Result<ServiceAccount, String> {
    if value.contains('*') {
        return Err(format!("wildcard not allowed in service account `{value}`"));
    }
    if value.len() > MAX_SERVICE_ACCOUNT_LENGTH {
        return Err(format!("service account longer than {MAX_SERVICE_ACCOUNT_LENGTH} characters"));
    }
    let (namespace, name) = value.split_once('/').unwrap_or((policy_namespace, value));
    if name.is_empty() || namespace.is_empty() || name.contains('/') {
        return Err(format!("invalid service account `{value}`; expected `name` or `namespace/name`"));
    }
    Ok(ServiceAccount { namespace: namespace.into(), name: name.into() })
}

/// How a condition reads its key: as one of Istio's, or computed by an expression.
enum KeyReading {
    Istio(FieldKind),
    Computed(Expr),
}

/// What a rule field or condition key reads.
#[derive(Debug, Clone)]
enum FieldKind {
    Principal,
    RequestPrincipal,
    Namespace,
    ServiceAccount,
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    Sni,
    Host,
    Method,
    Path,
    Header(Box<str>),
    Audience,
    Presenter,
    Claim(Box<[Box<str>]>),
}

impl FieldKind {
    /// Checks one value of this field.
    fn check(&self, value: &str, policy_namespace: &str) -> Result<(), String> {
        match self {
            Self::ServiceAccount => service_account(value, policy_namespace).map(drop),
            Self::SourceIp | Self::RemoteIp | Self::DestinationIp => IpMatch::parse(value).map(drop),
            Self::DestinationPort => port(value).map(drop),
            Self::Path => PathMatch::parse(value).map(drop),
            _ => Ok(()),
        }
    }

    /// Builds the test from values that passed [`FieldKind::check`].
    fn into_test(self, values: &[&str], policy_namespace: &str) -> Test {
        fn all<T>(values: &[&str], parse: impl Fn(&str) -> Result<T, String>) -> Box<[T]> {
            values.iter().filter_map(|value| parse(value).ok()).collect()
        }
        let strings = || values.iter().map(|value| StringMatch::parse(value)).collect::<Box<[_]>>();
        match self {
            Self::Principal => Test::SourcePrincipal(strings()),
            Self::Namespace => {
                Test::SourceNamespace(values.iter().map(|value| StringMatch::parse_glob(value)).collect())
            }
            Self::Sni => Test::Sni(strings()),
            Self::Host => Test::Host(strings()),
            Self::Method => Test::Method(strings()),
            Self::Presenter => Test::Presenter(strings()),
            Self::Audience => Test::Audience(strings()),
            Self::Header(name) => Test::Header { name, values: strings() },
            Self::Claim(path) => Test::Claim { path, values: strings() },
            Self::RequestPrincipal => {
                Test::RequestPrincipal(values.iter().map(|value| RequestPrincipalMatch::parse(value)).collect())
            }
            Self::ServiceAccount => {
                Test::SourceServiceAccount(all(values, |value| service_account(value, policy_namespace)))
            }
            Self::SourceIp => Test::SourceIp(all(values, IpMatch::parse)),
            Self::RemoteIp => Test::RemoteIp(all(values, IpMatch::parse)),
            Self::DestinationIp => Test::DestinationIp(all(values, IpMatch::parse)),
            Self::DestinationPort => Test::DestinationPort(all(values, port)),
            Self::Path => Test::Path(all(values, PathMatch::parse)),
        }
    }

    /// The key read as text, for `valuesFrom`; `None` for addresses, ports and service accounts.
    fn as_expression(&self) -> Option<Expr> {
        let claim = |name: &str| Expr::Claim(Box::from([Box::from(name)]));
        Some(match self {
            Self::Principal => Expr::SourcePrincipal,
            Self::Namespace => Expr::SourceNamespace,
            Self::Sni => Expr::Sni,
            Self::Header(name) => Expr::Header(name.clone()),
            Self::RequestPrincipal => Expr::Principal,
            Self::Audience => claim("aud"),
            Self::Presenter => claim("azp"),
            Self::Claim(path) => Expr::Claim(path.clone()),
            Self::ServiceAccount
            | Self::SourceIp
            | Self::RemoteIp
            | Self::DestinationIp
            | Self::DestinationPort
            | Self::Host
            | Self::Method
            | Self::Path => return None,
        })
    }

    /// Reads a `when` key as Istio's validation does.
    fn from_condition_key(key: &str) -> Result<Self, String> {
        Ok(match key {
            "source.ip" => Self::SourceIp,
            "remote.ip" => Self::RemoteIp,
            "source.namespace" => Self::Namespace,
            "source.principal" => Self::Principal,
            "source.serviceAccount" => Self::ServiceAccount,
            "request.auth.principal" => Self::RequestPrincipal,
            "request.auth.audiences" => Self::Audience,
            "request.auth.presenter" => Self::Presenter,
            "destination.ip" => Self::DestinationIp,
            "destination.port" => Self::DestinationPort,
            "connection.sni" => Self::Sni,
            "destination.namespace" => {
                return Err(format!("`{key}` is replaced by metadata.namespace"));
            }
            "destination.name" | "destination.user" => {
                return Err(format!("`{key}` was removed after v1alpha1"));
            }
            _ if key.starts_with("request.headers") => {
                let name = bracketed(key, "request.headers")?;
                let [name] = &*name else {
                    return Err(format!("bad key `{key}`: expected `request.headers[NAME]`"));
                };
                Self::Header(name.to_ascii_lowercase().into())
            }
            _ if key.starts_with("request.auth.claims") => Self::Claim(bracketed(key, "request.auth.claims")?),
            _ if key.starts_with("destination.labels") => {
                return Err(format!("`{key}` is replaced by the workload selector"));
            }
            _ if key.starts_with("experimental.envoy.filters.") => {
                return Err(format!("`{key}` is not supported"));
            }
            _ => return Err(format!("unknown key `{key}`")),
        })
    }
}

/// The names in `prefix[a][b]…`; each must be non-empty.
pub(super) fn bracketed(key: &str, prefix: &str) -> Result<Box<[Box<str>]>, String> {
    let bad = || format!("bad key `{key}`: expected `{prefix}[NAME]`");
    let mut rest = key.strip_prefix(prefix).ok_or_else(bad)?;
    let mut names = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let end = inner.find(']').ok_or_else(bad)?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return Err(bad());
        }
        names.push(name.into());
        rest = &inner[end + 1..];
    }
    if names.is_empty() {
        return Err(bad());
    }
    Ok(names.into())
}

/// A protobuf-style duration: `1.5s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let (number, unit_secs) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(seconds) = text.strip_suffix('s') {
        (seconds, 1.0)
    } else if let Some(minutes) = text.strip_suffix('m') {
        (minutes, 60.0)
    } else {
        return None;
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| std::time::Duration::from_secs_f64(value * unit_secs))
}
