//! The outcome of a check — verdict, reason, the policy that decided, headers to add or strip, the challenge of a refused token; pure, and in no wire format (each door writes its own).

use std::fmt;
use std::sync::Arc;

use super::identity::Identity;
use super::jwt::JwtError;
use super::policy::PolicyId;

/// Why a request was allowed or denied. The set is closed so metrics labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No ALLOW or DENY policy applies to the workload.
    NoPolicies,
    /// An ALLOW policy matched.
    AllowedByPolicy,
    /// A DENY policy matched.
    DeniedByPolicy,
    /// ALLOW policies apply to the workload and none matched.
    NoAllowMatch,
    /// The path cannot be normalized safely.
    InvalidPath,
    /// The request's token was refused (401).
    InvalidToken,
    /// The token's audience is not one the rule allows (403).
    AudienceNotAllowed,
    /// The proxy sent a check without request attributes.
    MalformedRequest,
    /// The check failed inside the server; it fails closed.
    InternalError,
    /// No source names the request's workload and the set has namespace-scoped policies.
    UnknownWorkload,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 10] = [
        Self::NoPolicies,
        Self::AllowedByPolicy,
        Self::DeniedByPolicy,
        Self::NoAllowMatch,
        Self::InvalidPath,
        Self::InvalidToken,
        Self::AudienceNotAllowed,
        Self::MalformedRequest,
        Self::InternalError,
        Self::UnknownWorkload,
    ];

    /// The reason's name in metrics, logs and `portcullis check`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPolicies => "no_policies",
            Self::AllowedByPolicy => "allowed_by_policy",
            Self::DeniedByPolicy => "denied_by_policy",
            Self::NoAllowMatch => "no_allow_match",
            Self::InvalidPath => "invalid_path",
            Self::InvalidToken => "invalid_token",
            Self::AudienceNotAllowed => "audience_not_allowed",
            Self::MalformedRequest => "malformed_request",
            Self::InternalError => "internal_error",
            Self::UnknownWorkload => "unknown_workload",
        }
    }

    /// Whether a decision for this reason lets the request through.
    pub fn is_allow(self) -> bool {
        matches!(self, Self::NoPolicies | Self::AllowedByPolicy)
    }

    /// The reason a refused token gets: its audience, or anything else about it.
    pub fn for_refused_token(error: JwtError) -> Self {
        if error == JwtError::AudienceNotAllowed { Self::AudienceNotAllowed } else { Self::InvalidToken }
    }
}

/// What a refused client is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// A bearer token (RFC 6750): `realm` is the URL the request was for (scheme, host,
    /// path), `error` the RFC 6750 error code.
    Bearer {
        /// The URL the request was for.
        realm: Box<str>,
        /// The RFC 6750 error code.
        error: &'static str,
    },
    /// A browser login: `url` starts it and brings the browser back to the request's URL. A
    /// browser navigation (`navigation`) is sent there; anything else is told where it is.
    Login {
        /// The login's start URL.
        url: Box<str>,
        /// Whether the request is sent there (a browser navigation, or any request of a site set to
        /// `redirect_always`) or told where it is.
        navigation: bool,
    },
}

impl Challenge {
    /// The bearer challenge for a request: Envoy's jwt_authn filter sends it for every refused
    /// token but a missing one. `None` when the URL holds a control character, which no header
    /// may carry.
    pub fn bearer(scheme: &str, host: &str, path: &str) -> Option<Self> {
        let scheme = if scheme.is_empty() { "http" } else { scheme };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let realm = format!("{scheme}://{host}{path}");
        let is_printable = realm.bytes().all(|byte| byte >= 0x20 && byte != 0x7f);
        is_printable.then(|| Self::Bearer { realm: realm.into(), error: "invalid_token" })
    }
}

/// What a decision tells the proxy, in no wire format: each door writes it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'d> {
    /// Let the request through, with the decision's header and query changes.
    Allow,
    /// Refuse the request, for this reason.
    Deny(Reason),
    /// Refuse the request's token for `error`, challenging the client when the request's URL
    /// can be written in a header.
    RefuseToken {
        /// Why the token was refused.
        error: JwtError,
        /// The challenge, when the URL can be a header.
        challenge: Option<&'d Challenge>,
    },
}

/// The policy and rule that decided, shown as Istio names it: `ns[NS]-policy[NAME]-rule[N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMatch {
    /// The policy.
    pub policy: Arc<PolicyId>,
    /// The rule, from 0.
    pub rule: usize,
}

impl fmt::Display for PolicyMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns[{}]-policy[{}]-rule[{}]", self.policy.namespace, self.policy.name, self.rule)
    }
}

/// What the dry-run policies would have decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunOutcome {
    /// Whether they would have let the request through.
    pub would_allow: bool,
    /// The dry-run policy that would have decided, if one would.
    pub policy: Option<PolicyMatch>,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Why the request is allowed or denied.
    pub reason: Reason,
    /// The enforced policy that decided, if one did.
    pub policy: Option<PolicyMatch>,
    /// The first AUDIT policy that matched; it never changes the verdict.
    pub audit: Option<PolicyMatch>,
    /// The verdict of `istio.io/dry-run` policies, when any apply.
    pub dry_run: Option<DryRunOutcome>,
    /// Headers to set on the request on its way to the service (allow only).
    pub headers_to_set: Vec<(Arc<str>, String)>,
    /// Headers to strip from the request on its way to the service (allow only).
    pub headers_to_remove: Vec<Arc<str>>,
    /// Query parameters to strip (allow only): a token sent as a parameter.
    pub query_parameters_to_remove: Vec<Box<str>>,
    /// Why a token was refused, when one was.
    pub jwt_error: Option<JwtError>,
    /// What the client is asked for: a token, when its token was refused; a browser login, when
    /// it came anonymously to a login site and was refused.
    pub challenge: Option<Challenge>,
    /// The verified caller, for logs and reports.
    pub identity: Option<Arc<Identity>>,
    /// No source named the request's workload, whatever the verdict: counted and logged.
    pub unidentified_workload: bool,
}

impl Decision {
    /// A decision for `reason`, by `policy`, with nothing else to say.
    pub fn new(reason: Reason, policy: Option<PolicyMatch>) -> Self {
        Self {
            reason,
            policy,
            audit: None,
            dry_run: None,
            headers_to_set: Vec::new(),
            headers_to_remove: Vec::new(),
            query_parameters_to_remove: Vec::new(),
            jwt_error: None,
            challenge: None,
            identity: None,
            unidentified_workload: false,
        }
    }

    /// Whether the request is let through (dry runs aside).
    pub fn is_allow(&self) -> bool {
        self.reason.is_allow()
    }

    /// A refused token: 401, or 403 for its audience; the client challenged as `challenge` says.
    pub fn refused_token(error: JwtError, challenge: Option<Challenge>) -> Self {
        let mut decision = Self::new(Reason::for_refused_token(error), None);
        decision.jwt_error = Some(error);
        decision.challenge = challenge;
        decision
    }

    /// What the decision tells the proxy.
    pub fn verdict(&self) -> Verdict<'_> {
        match (self.reason, self.jwt_error) {
            (reason, _) if reason.is_allow() => Verdict::Allow,
            (Reason::InvalidToken | Reason::AudienceNotAllowed, Some(error)) => {
                Verdict::RefuseToken { error, challenge: self.challenge.as_ref() }
            }
            (reason, _) => Verdict::Deny(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_matches_display_in_istio_form() {
        let id = Arc::new(PolicyId { namespace: "jobs".into(), name: "allow-read".into() });
        assert_eq!(PolicyMatch { policy: id, rule: 2 }.to_string(), "ns[jobs]-policy[allow-read]-rule[2]");
    }

    #[test]
    fn a_refused_token_is_challenged_whatever_its_error_and_an_audience_is_its_own_reason() {
        let challenge = Challenge::bearer("https", "jobs.example", "/api/jobs?page=2");
        let expected = Challenge::Bearer { realm: "https://jobs.example/api/jobs".into(), error: "invalid_token" };
        assert_eq!(challenge.as_ref(), Some(&expected));
        for (error, reason) in
            [(JwtError::AudienceNotAllowed, Reason::AudienceNotAllowed), (JwtError::Expired, Reason::InvalidToken)]
        {
            let decision = Decision::refused_token(error, challenge.clone());
            assert_eq!(decision.reason, reason, "{error:?}");
            assert_eq!(decision.verdict(), Verdict::RefuseToken { error, challenge: Some(&expected) }, "{error:?}");
        }
    }

    #[test]
    fn a_url_with_a_control_character_gets_no_challenge() {
        for (scheme, host, path) in [("https", "jobs\r\n.example", "/"), ("", "jobs", "/a\u{7f}b")] {
            assert_eq!(Challenge::bearer(scheme, host, path), None, "{host}{path}");
        }
        assert_eq!(
            Challenge::bearer("", "jobs", "/a#frag"),
            Some(Challenge::Bearer { realm: "http://jobs/a".into(), error: "invalid_token" })
        );
    }

    #[test]
    fn verdicts_follow_the_reason() {
        for reason in Reason::ALL {
            let decision = Decision::new(reason, None);
            assert_eq!(decision.verdict() == Verdict::Allow, reason.is_allow(), "{reason:?}");
        }
        assert_eq!(Decision::new(Reason::InvalidPath, None).verdict(), Verdict::Deny(Reason::InvalidPath));
    }
}
