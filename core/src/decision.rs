//! The outcome of a check — verdict, reason, the policy that decided, headers to add or strip; pure.

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

    pub fn is_allow(self) -> bool {
        matches!(self, Self::NoPolicies | Self::AllowedByPolicy)
    }

    /// The HTTP status a proxy returns to the client.
    pub fn http_status(self) -> u16 {
        match self {
            Self::NoPolicies | Self::AllowedByPolicy => 200,
            Self::DeniedByPolicy
            | Self::NoAllowMatch
            | Self::MalformedRequest
            | Self::InternalError
            | Self::UnknownWorkload => 403,
            Self::InvalidPath => 400,
            Self::InvalidToken => 401,
            Self::AudienceNotAllowed => 403,
        }
    }

    /// The response body of a denial, in Envoy's wording.
    pub fn body(self) -> &'static str {
        match self {
            Self::NoPolicies | Self::AllowedByPolicy => "",
            Self::DeniedByPolicy
            | Self::NoAllowMatch
            | Self::MalformedRequest
            | Self::InternalError
            | Self::UnknownWorkload => "RBAC: access denied",
            Self::InvalidPath => "Bad Request",
            Self::InvalidToken => "Jwt verification fails",
            Self::AudienceNotAllowed => "Audiences in Jwt are not allowed",
        }
    }
}

/// The policy and rule that decided, shown as Istio names it: `ns[NS]-policy[NAME]-rule[N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMatch {
    pub policy: Arc<PolicyId>,
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
    pub would_allow: bool,
    pub policy: Option<PolicyMatch>,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
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
    /// Headers of the denial sent to the client (`www-authenticate` on a 401).
    pub response_headers: Vec<(Arc<str>, String)>,
    /// Why a token was refused, when one was.
    pub jwt_error: Option<JwtError>,
    /// An issuer whose keys lack the token's `kid`: worth a prompt refetch and a retry.
    pub stale_issuer: Option<Arc<str>>,
    /// The verified caller, for logs and reports.
    pub identity: Option<Arc<Identity>>,
    /// No source named the request's workload, whatever the verdict: counted and logged.
    pub unidentified_workload: bool,
}

impl Decision {
    pub fn new(reason: Reason, policy: Option<PolicyMatch>) -> Self {
        Self {
            reason,
            policy,
            audit: None,
            dry_run: None,
            headers_to_set: Vec::new(),
            headers_to_remove: Vec::new(),
            query_parameters_to_remove: Vec::new(),
            response_headers: Vec::new(),
            jwt_error: None,
            stale_issuer: None,
            identity: None,
            unidentified_workload: false,
        }
    }

    pub fn is_allow(&self) -> bool {
        self.reason.is_allow()
    }

    /// The status a proxy returns to the client.
    pub fn http_status(&self) -> u16 {
        self.reason.http_status()
    }

    /// The body of a denial, in Envoy's wording.
    pub fn body(&self) -> &'static str {
        self.jwt_error.map_or_else(|| self.reason.body(), JwtError::message)
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
    fn reasons_map_to_envoy_statuses_and_bodies() {
        for reason in Reason::ALL {
            let (status, body) = (reason.http_status(), reason.body());
            assert_eq!(reason.is_allow(), status == 200, "{reason:?}");
            assert_eq!(body.is_empty(), reason.is_allow(), "{reason:?}");
        }
        assert_eq!(Reason::DeniedByPolicy.body(), "RBAC: access denied");
        assert_eq!(Reason::NoAllowMatch.http_status(), 403);
    }
}
