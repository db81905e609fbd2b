//! Request authentication as Istio's RequestAuthentication defines it: where tokens are found, which rule verifies them (with keys and `now` given), what reaches the service; pure.

use std::sync::Arc;
use std::time::Duration;

use super::identity::{ClaimPaths, Identity, IdentitySource, KeyOrigin, Proof, Verifier};
use super::jwt::{self, JwtError, KeySet, Lifetime, ParsedToken};
use super::policy::PolicyId;
use super::request::HttpRequest;
use super::workload::LabelSelector;

/// Where a rule looks for tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header whose value starts with `prefix`.
    Header {
        /// The header's name, lower-case (`fromHeaders[].name`).
        name: Box<str>,
        /// What precedes the token in the value (`fromHeaders[].prefix`; empty when not given).
        prefix: Box<str>,
    },
    /// A query parameter.
    Param(Box<str>),
    /// A cookie.
    Cookie(Box<str>),
}

impl TokenLocation {
    /// `Authorization: Bearer <token>`, then `?access_token=<token>`: used when a rule names none.
    pub fn defaults() -> Box<[TokenLocation]> {
        Box::new([
            TokenLocation::Header { name: "authorization".into(), prefix: "Bearer ".into() },
            TokenLocation::Param("access_token".into()),
        ])
    }

    /// Every token the request carries here, one per value of a repeated header: a second
    /// copy must not hide behind the first.
    fn find_all<'r>(&self, http: &HttpRequest<'r>, mut found: impl FnMut(&'r str)) {
        let keep = |token: &'r str| {
            let token = token.trim();
            if !token.is_empty() {
                found(token);
            }
        };
        match self {
            // Different tokens in several values of one header are refused, as Envoy refuses
            // two `Authorization` headers (joined into one value no token parses as): a later
            // value is offered whole, prefix and all, which never verifies.
            Self::Header { name, prefix } => {
                let mut first: Option<&str> = None;
                for value in http.header_values(name) {
                    let Some(token) = value.strip_prefix(&**prefix).map(str::trim).filter(|token| !token.is_empty())
                    else {
                        continue;
                    };
                    match first {
                        Some(first) if first != token => found(value),
                        _ => {
                            first = Some(token);
                            found(token);
                        }
                    }
                }
            }
            Self::Param(name) => {
                let query = http.path.split_once('?').map(|(_, query)| query.split('#').next().unwrap_or_default());
                let pairs = query.into_iter().flat_map(|query| query.split('&'));
                pairs.filter_map(|pair| pair.strip_prefix(&**name)?.strip_prefix('=')).for_each(keep);
            }
            Self::Cookie(name) => {
                let pairs = http.header_values("cookie").flat_map(|cookies| cookies.split(';'));
                pairs.filter_map(|pair| pair.trim().strip_prefix(&**name)?.strip_prefix('=')).for_each(keep);
            }
        }
    }
}

/// Whether a request is a CORS preflight as Envoy's jwt_authn filter tells one (`OPTIONS` with
/// `Origin` and `Access-Control-Request-Method`): Istio has the filter bypass it, so no token it
/// carries is read, verified or removed.
pub fn is_cors_preflight(http: &HttpRequest<'_>) -> bool {
    let is_sent = |name: &str| http.header_values(name).any(|value| !value.is_empty());
    http.method == "OPTIONS" && is_sent("origin") && is_sent("access-control-request-method")
}

/// Where a rule's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Fetched from `jwks_uri`, or found by OIDC discovery from the issuer when absent;
    /// `timeout` bounds each fetch when the rule sets one.
    Remote {
        /// The name the key store files the fetched keys under, which `/readyz`, logs and
        /// metrics show: the issuer, or for a rule without one `* (jwksUri URL)`, the URL
        /// without userinfo or query.
        filed_under: Arc<str>,
        /// The rule's `jwksUri`; `None` means OIDC discovery from the issuer.
        jwks_uri: Option<Box<str>>,
        /// The rule's `timeout` for a fetch; `None` leaves the server's default.
        timeout: Option<Duration>,
    },
    /// `jwks` written in the policy.
    Inline(Arc<KeySet>),
}

/// An issuer whose keys are fetched, as the key fetcher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteIssuer {
    /// The name the fetched keys are filed under and looked up by: the issuer, or for a rule
    /// without one the name [`KeySource::Remote`] gives.
    pub issuer: Arc<str>,
    /// Where the JWKS is; `None` means OIDC discovery from the issuer.
    pub jwks_uri: Option<Box<str>>,
    /// The bound on each fetch; `None` leaves the server's default.
    pub timeout: Option<Duration>,
}

/// One header filled from a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// The header the claim's value is written to.
    pub header: Arc<str>,
    /// The claim's path; `a.b` in the policy reaches nested objects.
    pub claim: Box<[Box<str>]>,
}

/// One compiled `jwtRules` entry.
#[derive(Debug, Clone)]
pub struct JwtRule {
    /// `issuer`: the `iss` a token must carry for this rule to verify it. `None` (a rule with
    /// `jwksUri` and no issuer, as Istio allows): a token of any `iss` signed by the rule's
    /// keys, as Envoy's provider without issuer checks none.
    pub issuer: Option<Arc<str>>,
    /// Empty: any audience.
    pub audiences: Box<[Box<str>]>,
    /// Where the keys that verify the rule's tokens come from.
    pub keys: KeySource,
    /// `fromHeaders`, `fromParams` and `fromCookies`, or [`TokenLocation::defaults`] when none is given.
    pub locations: Box<[TokenLocation]>,
    /// `outputPayloadToHeader`: the header that receives the verified token's payload, base64url as sent.
    pub output_payload_to_header: Option<Arc<str>>,
    /// `outputClaimToHeaders`: headers filled from the verified token's claims.
    pub output_claim_to_headers: Box<[ClaimHeader]>,
    /// `forwardOriginalToken`: when false, the token's header or query parameter is removed
    /// before the request reaches the service.
    pub forward_original_token: bool,
    /// Claims matched word by word: `scope`, `permission` and the rule's `spaceDelimitedClaims`.
    pub space_delimited_claims: Arc<[Box<str>]>,
    /// What the identities this rule verifies share, the claims their policy set reads
    /// among it; [`JwtRule::keeping`] makes it.
    pub verifier: Arc<Verifier>,
}

impl JwtRule {
    /// The claim paths the rule itself reads: its output headers' claims, and `aud` when it
    /// names audiences.
    pub fn claim_paths(&self) -> impl Iterator<Item = Box<[Box<str>]>> + '_ {
        let audience = (!self.audiences.is_empty()).then(|| Box::from([Box::from("aud")]));
        self.output_claim_to_headers.iter().map(|output| output.claim.clone()).chain(audience)
    }

    /// The rule, keeping the claims `kept` names in the identities it verifies.
    pub fn keeping(&self, kept: &Arc<ClaimPaths>) -> Self {
        let verifier = Verifier {
            issuer: self.issuer.clone(),
            keys: KeyOrigin::of(&self.keys),
            kept: kept.clone(),
            space_delimited: self.space_delimited_claims.clone(),
        };
        Self { verifier: Arc::new(verifier), ..self.clone() }
    }
}

/// One compiled RequestAuthentication.
#[derive(Debug, Clone)]
pub struct AuthnPolicy {
    /// Which RequestAuthentication this is.
    pub id: Arc<PolicyId>,
    /// `spec.selector`: the workloads of the namespace it applies to.
    pub selector: LabelSelector,
    /// `spec.jwtRules`: a token is verified by the rule of its issuer, or by a rule without issuer.
    pub rules: Box<[Arc<JwtRule>]>,
}

/// The keys fetched for remote issuers, as the check sees them now.
pub trait KeyLookup: Sync {
    /// The last good keys filed under `issuer` ([`RemoteIssuer::issuer`]); `None` when they
    /// were never fetched.
    fn key_set(&self, issuer: &str) -> Option<Arc<KeySet>>;
}

impl KeyOrigin {
    fn of(source: &KeySource) -> Self {
        match source {
            KeySource::Inline(keys) => Self::Inline(keys.clone()),
            KeySource::Remote { .. } => Self::Remote,
        }
    }
}

/// Everything authentication needs from outside the policy set: fetched keys, the time and limits.
pub struct AuthnContext<'c> {
    /// The remote issuers' keys as last fetched.
    pub keys: &'c dyn KeyLookup,
    /// Seconds since the epoch.
    pub now: u64,
    /// The tolerance, in seconds, on a token's `exp` and `nbf`.
    pub clock_skew_secs: u64,
    /// Longer tokens are refused unread.
    pub max_token_bytes: usize,
}

/// A lookup with no keys: inline JWKS still work.
pub struct NoRemoteKeys;

impl KeyLookup for NoRemoteKeys {
    fn key_set(&self, _issuer: &str) -> Option<Arc<KeySet>> {
        None
    }
}

/// The outcome of authentication.
#[derive(Debug, Clone)]
pub enum Authentication<'r> {
    /// No token: not an error; policies decide.
    Anonymous,
    /// A token verified: policies read its identity, and the rule's outputs apply.
    Verified {
        /// Who the token says the caller is, proven by its signature.
        identity: Arc<Identity>,
        /// The rule that verified the token.
        rule: Arc<JwtRule>,
        /// Where the token was found, so that it can be removed when not forwarded.
        location: TokenLocation,
        /// The token as sent.
        token: &'r str,
    },
    /// The token was refused.
    Failed {
        /// Why it was refused.
        error: JwtError,
    },
    /// No token, but a browser login's session: its identity comes from the ID token verified
    /// at login ([`crate::id_token`]).
    Session {
        /// Who logged in, as the ID token said.
        identity: Arc<Identity>,
    },
    /// An API key found in the configured key files ([`crate::api_key`]).
    ApiKey {
        /// The bot account the key stands for.
        identity: Arc<Identity>,
    },
    /// An opaque token its provider's introspection endpoint answered active
    /// ([`crate::introspection`]).
    Introspected {
        /// The caller the answer names.
        identity: Arc<Identity>,
    },
}

impl Authentication<'_> {
    /// The caller, whatever the credential: `Ok(None)` without one, `Err` when it was refused.
    pub fn caller(&self) -> Result<Option<&Arc<Identity>>, JwtError> {
        match self {
            Authentication::Failed { error } => Err(*error),
            Authentication::Anonymous => Ok(None),
            Authentication::Verified { identity, .. }
            | Authentication::Session { identity }
            | Authentication::ApiKey { identity }
            | Authentication::Introspected { identity } => Ok(Some(identity)),
        }
    }
}

fn failed(error: JwtError) -> Authentication<'static> {
    Authentication::Failed { error }
}

/// One token a request carries in one rule's location, not verified: what one verification takes.
#[derive(Debug, Clone)]
pub struct Credential<'p> {
    token: &'p str,
    rule: &'p Arc<JwtRule>,
    location: &'p TokenLocation,
}

/// Every token a request carries in the applicable rules' locations, found but not verified.
/// Grouped by rule in Istio's order (by issuer, rules without one first; rules of one issuer in
/// the order given), each rule's tokens in the order Envoy verifies them (the last found first).
#[derive(Debug, Clone)]
pub struct Credentials<'p> {
    found: Vec<Credential<'p>>,
}

/// Finds the request's tokens in the rules' locations: `None` when it carries none.
pub fn find_credentials<'p>(rules: &[&'p Arc<JwtRule>], http: &HttpRequest<'p>) -> Option<Credentials<'p>> {
    let mut found = Vec::new();
    for &rule in rules {
        let first_of_rule = found.len();
        for location in rule.locations.iter() {
            location.find_all(http, |token| found.push(Credential { token, rule, location }));
        }
        if let Some(of_rule) = found.get_mut(first_of_rule..) {
            of_rule.reverse();
        }
    }
    // Stable: a rule's tokens stay together, and rules of one issuer keep their order.
    found.sort_by(|a, b| a.rule.issuer.cmp(&b.rule.issuer));
    (!found.is_empty()).then_some(Credentials { found })
}

impl<'p> Credentials<'p> {
    /// These tokens but `token`, which is read as another credential; `None` when none is left.
    pub fn without(mut self, token: &str) -> Option<Self> {
        self.found.retain(|credential| credential.token != token);
        (!self.found.is_empty()).then_some(self)
    }

    /// The verification of these tokens, to be driven by the caller.
    pub fn resolution(&self) -> Resolution<'_, 'p> {
        Resolution { found: &self.found, next: 0, verified: None, first_refusal: None, last_refusal: None }
    }

    /// The authentication these tokens give, each verified by `verify` when Istio's requirement asks.
    pub fn authenticate_with(
        &self,
        mut verify: impl FnMut(&Credential<'p>) -> Authentication<'p>,
    ) -> Authentication<'p> {
        let mut resolution = self.resolution();
        while let Some(credential) = resolution.pending() {
            resolution.record(verify(credential));
        }
        resolution.finish()
    }

    /// Verifies the tokens with the keys `context` has now; nothing remembered, nothing fetched.
    pub fn authenticate(&self, context: &AuthnContext<'_>) -> Authentication<'p> {
        self.authenticate_with(|credential| credential.authenticate(context))
    }
}

/// Istio's requirement over a request's tokens, verified one at a time. Istio asks Envoy for
/// "any one rule verifies, or else every rule's tokens are missing or verify": a rule verifies
/// when it finds tokens in its locations and every one of them verifies under it. The first rule
/// that verifies is the caller; when none does and a token was found, the request is refused
/// with Envoy's error: the first rule's refusal, unless that is `UnknownIssuer` and another
/// rule refused for another reason (the last such one then).
#[derive(Debug)]
pub struct Resolution<'c, 'p> {
    found: &'c [Credential<'p>],
    /// The next token to verify; `found.len()` once decided.
    next: usize,
    /// The latest token verified under the rule being verified, while every one so far has.
    verified: Option<Authentication<'p>>,
    first_refusal: Option<JwtError>,
    /// The last refusal for another reason than `UnknownIssuer`.
    last_refusal: Option<JwtError>,
}

impl<'c, 'p> Resolution<'c, 'p> {
    /// The token to verify next; `None` once decided.
    pub fn pending(&self) -> Option<&'c Credential<'p>> {
        self.found.get(self.next)
    }

    /// What became of the pending token.
    pub fn record(&mut self, outcome: Authentication<'p>) {
        let Some(current) = self.found.get(self.next) else { return };
        let rule_end = self
            .found
            .iter()
            .skip(self.next)
            .position(|other| !Arc::ptr_eq(other.rule, current.rule))
            .map_or(self.found.len(), |offset| self.next + offset);
        match outcome {
            Authentication::Verified { .. } => {
                self.verified = Some(outcome);
                self.next += 1;
                // Every token of the rule verified: the rule is satisfied, and with it Istio's requirement.
                if self.next == rule_end {
                    self.next = self.found.len();
                }
            }
            // Anonymous or a session is no outcome of a token's verification: never allowed on doubt.
            Authentication::Anonymous
            | Authentication::Session { .. }
            | Authentication::ApiKey { .. }
            | Authentication::Introspected { .. }
            | Authentication::Failed { .. } => {
                let error = match outcome {
                    Authentication::Failed { error } => error,
                    _ => JwtError::VerificationFails,
                };
                self.first_refusal.get_or_insert(error);
                if error != JwtError::UnknownIssuer {
                    self.last_refusal = Some(error);
                }
                self.verified = None;
                self.next = rule_end;
            }
        }
    }

    /// The authentication: the caller of the first rule whose tokens all verified, else the refusal.
    pub fn finish(self) -> Authentication<'p> {
        if self.next < self.found.len() {
            // Not driven to its end: never allowed on doubt.
            return failed(JwtError::VerificationFails);
        }
        match (self.verified, self.first_refusal) {
            (Some(verified), _) => verified,
            (None, None) => Authentication::Anonymous,
            (None, Some(JwtError::UnknownIssuer)) => failed(self.last_refusal.unwrap_or(JwtError::UnknownIssuer)),
            (None, Some(error)) => failed(error),
        }
    }
}

impl<'p> Credential<'p> {
    /// The token, as sent.
    pub fn token(&self) -> &'p str {
        self.token
    }

    /// The rule that reads the token here.
    pub fn rule(&self) -> &'p Arc<JwtRule> {
        self.rule
    }

    /// The rule's keys: its inline set, or its last good fetched keys from `keys`.
    pub fn key_set(&self, keys: &dyn KeyLookup) -> Option<Arc<KeySet>> {
        key_set(self.rule, keys)
    }

    /// The authentication an identity remembered for this token gives under this credential's
    /// rule, its lifetime and audience judged again; `None` when it does not count and the
    /// token must be verified: a rule of the same issuer name but other keys (another
    /// namespace's inline JWKS) verifies the token itself, a policy set that reads other claims
    /// reads it again, and a key swapped behind its `kid` (a stolen one replaced) vouches for
    /// nothing it signed before.
    pub fn recalled(&self, cached: Arc<Identity>, context: &AuthnContext<'_>) -> Option<Authentication<'p>> {
        let rule = self.rule;
        if rule.issuer.as_deref().is_some_and(|issuer| cached.issuer() != issuer) {
            return Some(failed(JwtError::UnknownIssuer));
        }
        let still_vouched = cached.is_vouched_for_by(&rule.verifier)
            && key_set(rule, context.keys).is_some_and(|keys| cached.is_vouched_for_by_keys(&keys));
        if !still_vouched {
            return None;
        }
        if let Err(error) = cached.check_lifetime(context.now, context.clock_skew_secs) {
            return Some(failed(error));
        }
        if !rule.audiences.is_empty() && !cached.has_audience(&rule.audiences) {
            return Some(failed(JwtError::AudienceNotAllowed));
        }
        Some(Authentication::Verified {
            identity: cached,
            rule: rule.clone(),
            location: self.location.clone(),
            token: self.token,
        })
    }

    /// Reads the token without verifying it: its header and claims; refused when the rule has
    /// an issuer and the token's is another.
    pub fn read(&self, max_token_bytes: usize) -> Result<UnverifiedToken<'p>, JwtError> {
        let kept = &self.rule.verifier.kept;
        // `sid` too: a revocation may name the token's login session.
        let parsed = jwt::parse(self.token, max_token_bytes, &|name: &str| name == "sid" || kept.reads_claim(name))?;
        if let Some(issuer) = &self.rule.issuer
            && parsed.issuer() != Some(&**issuer)
        {
            return Err(JwtError::UnknownIssuer);
        }
        Ok(UnverifiedToken { parsed, rule: self.rule, location: self.location, token: self.token })
    }

    /// Reads and verifies the token with the keys `context` has now; nothing remembered, nothing fetched.
    pub fn authenticate(&self, context: &AuthnContext<'_>) -> Authentication<'p> {
        match self.read(context.max_token_bytes) {
            Ok(token) => token.verify(token.key_set(context.keys).as_deref(), context),
            Err(error) => failed(error),
        }
    }
}

/// A token read, and the rule of its issuer, before any check of its signature.
#[derive(Debug)]
pub struct UnverifiedToken<'p> {
    parsed: ParsedToken<'p>,
    rule: &'p Arc<JwtRule>,
    location: &'p TokenLocation,
    token: &'p str,
}

impl<'p> UnverifiedToken<'p> {
    /// The name the key store files the rule's fetched keys under (its issuer, or for a rule
    /// without one `* (jwksUri URL)`); empty for inline keys, which are never fetched.
    pub fn keys_name(&self) -> &str {
        match &self.rule.keys {
            KeySource::Remote { filed_under, .. } => filed_under,
            KeySource::Inline(_) => "",
        }
    }

    /// The rule that read the token.
    pub fn rule(&self) -> &'p Arc<JwtRule> {
        self.rule
    }

    /// The `kid` of the token's header.
    pub fn kid(&self) -> Option<&str> {
        self.parsed.kid.as_deref()
    }

    /// Whether the issuer's keys are fetched, so that a fetch may bring the ones missing.
    pub fn has_fetched_keys(&self) -> bool {
        matches!(self.rule.keys, KeySource::Remote { .. })
    }

    /// The rule's keys: its inline set, or its last good fetched keys from `keys`.
    pub fn key_set(&self, keys: &dyn KeyLookup) -> Option<Arc<KeySet>> {
        key_set(self.rule, keys)
    }

    /// The token's `exp` and `nbf`, as [`UnverifiedToken::verify`] checks them.
    pub fn lifetime(&self) -> Result<Lifetime, JwtError> {
        Lifetime::of(&self.parsed.claims)
    }

    /// Whether `keys` hold a key for the token's `kid` and `alg`.
    pub fn has_key_in(&self, keys: &KeySet) -> bool {
        jwt::has_key_for(&self.parsed, keys)
    }

    /// Verifies the token with `keys` (`None`: its issuer has none) at `context.now`: signature,
    /// lifetime, audience. The identity it returns is built here only.
    pub fn verify(&self, keys: Option<&KeySet>, context: &AuthnContext<'_>) -> Authentication<'p> {
        let rule = self.rule;
        let Some(keys) = keys else { return failed(JwtError::JwksFetchFailed) };
        let key = match jwt::verify_signature(&self.parsed, keys) {
            Ok(key) => key,
            Err(error) => return failed(error),
        };
        let claims = &self.parsed.claims;
        let lifetime = match Lifetime::of(claims).and_then(|lifetime| {
            lifetime.check(context.now, context.clock_skew_secs)?;
            Ok(lifetime)
        }) {
            Ok(lifetime) => lifetime,
            Err(error) => return failed(error),
        };
        if !rule.audiences.is_empty() && !jwt::audience_allowed(claims, &rule.audiences) {
            return failed(JwtError::AudienceNotAllowed);
        }
        let proof = Proof { lifetime, kid: key.kid.clone(), key: key.fingerprint, source: IdentitySource::Jwt };
        let identity = Arc::new(Identity::from_verified_claims(claims, &rule.verifier, proof));
        Authentication::Verified { identity, rule: rule.clone(), location: self.location.clone(), token: self.token }
    }
}

/// Finds the request's tokens in the rules' locations and verifies them with the keys `context`
/// has now: the whole of authentication for callers with inline or pre-fetched keys.
pub fn authenticate<'r>(
    rules: &[&'r Arc<JwtRule>],
    http: &HttpRequest<'r>,
    context: &AuthnContext<'_>,
) -> Authentication<'r> {
    find_credentials(rules, http).map_or(Authentication::Anonymous, |credentials| credentials.authenticate(context))
}

/// A rule's keys: its inline set, or its last good fetched keys (`None` before the first good
/// fetch).
fn key_set(rule: &JwtRule, keys: &dyn KeyLookup) -> Option<Arc<KeySet>> {
    match &rule.keys {
        KeySource::Inline(inline) => Some(inline.clone()),
        KeySource::Remote { filed_under, .. } => keys.key_set(filed_under),
    }
}

/// What authentication adds to an allowed request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// Headers to set on the request, name and value, replacing any the client sent.
    pub headers_to_set: Vec<(Arc<str>, String)>,
    /// Headers to strip from the request: a token not forwarded, and output headers left unset.
    pub headers_to_remove: Vec<Arc<str>>,
    /// Query parameters to strip from the request: a token not forwarded.
    pub query_parameters_to_remove: Vec<Box<str>>,
}

/// A header value may carry no control character but HTAB (RFC 9110 section 5.5): CR, LF or NUL
/// would split it, and any other one makes a proxy drop it and let the client's copy through.
fn is_safe_header_value(value: &str) -> bool {
    !value.bytes().any(|byte| (byte < 0x20 && byte != b'\t') || byte == 0x7f)
}

/// The headers to set and strip: the verified rule's outputs, the token itself unless
/// forwarded, and every output header of every applicable rule that was not set, so that a
/// client can never smuggle its own copy to the service.
pub fn outputs(rules: &[&Arc<JwtRule>], authentication: &Authentication<'_>) -> Outputs {
    let mut outputs = Outputs::default();
    if let Authentication::Verified { identity, rule, location, token } = authentication {
        if let Some(header) = &rule.output_payload_to_header {
            let payload = token.split('.').nth(1).unwrap_or_default();
            outputs.headers_to_set.push((header.clone(), payload.to_string()));
        }
        for ClaimHeader { header, claim } in rule.output_claim_to_headers.iter() {
            // An empty value makes no header, as in Envoy.
            let value = identity.header_value(claim).filter(|value| !value.is_empty() && is_safe_header_value(value));
            if let Some(value) = value {
                outputs.headers_to_set.push((header.clone(), value.to_string()));
            }
        }
        if !rule.forward_original_token {
            match location {
                TokenLocation::Header { name, .. } => outputs.headers_to_remove.push(Arc::from(&**name)),
                TokenLocation::Param(name) => outputs.query_parameters_to_remove.push(name.clone()),
                // Cookies are left in place, as Envoy does.
                TokenLocation::Cookie(_) => {}
            }
        }
    }
    for rule in rules {
        let claim_headers = rule.output_claim_to_headers.iter().map(|output| &output.header);
        for header in rule.output_payload_to_header.iter().chain(claim_headers) {
            let is_set = outputs.headers_to_set.iter().any(|(name, _)| name.eq_ignore_ascii_case(header));
            let is_listed = outputs.headers_to_remove.iter().any(|name| name.eq_ignore_ascii_case(header));
            if !is_set && !is_listed {
                outputs.headers_to_remove.push(header.clone());
            }
        }
    }
    outputs
}
