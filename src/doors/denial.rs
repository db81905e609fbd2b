//! A denial's wire form, the same for every door: the HTTP status, Envoy's body and the challenge header a refused request gets. Never decides.

use crate::core::decision::{Challenge, Verdict};
use crate::core::jwt::JwtError;
use crate::core::{Decision, Reason};

/// Envoy's RBAC filter's body for a request its policies refuse.
const ACCESS_DENIED: &str = "RBAC: access denied";

/// The header that tells a client that is not a browser navigation where to log in.
pub const LOGIN_URL_HEADER: &str = "x-portcullis-login-url";

/// What the client of a denied request is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 400, 401 or 403: nginx `auth_request` passes 401 and 403 on and answers any other
    /// status with a 500 of its own.
    pub status: u16,
    /// In Envoy's wording.
    pub body: &'static str,
    /// The `www-authenticate` header of a refused token, when its challenge can be written.
    pub challenge: Option<(&'static str, String)>,
}

impl Denial {
    /// How `decision` is refused; `None` for an allow.
    pub fn of(decision: &Decision) -> Option<Self> {
        match decision.verdict() {
            Verdict::Allow => None,
            Verdict::Deny(reason) => {
                let (status, body) = match reason {
                    Reason::InvalidPath => (400, "Bad Request"),
                    Reason::InvalidToken => (401, JwtError::VerificationFails.message()),
                    Reason::AudienceNotAllowed => (403, JwtError::AudienceNotAllowed.message()),
                    _ => (403, ACCESS_DENIED),
                };
                Some(Self { status, body, challenge: None })
            }
            Verdict::RefuseToken { error, challenge } => Some(Self {
                // Envoy's jwt_authn filter answers a token of another audience with 403.
                status: if error == JwtError::AudienceNotAllowed { 403 } else { 401 },
                body: error.message(),
                challenge: challenge.map(www_authenticate),
            }),
        }
    }

    /// How a door refusing `decision` refuses it: an allow refused anyway (never sent by the
    /// engine) gets Envoy's RBAC denial.
    pub fn refusing(decision: &Decision) -> Self {
        Self::of(decision).unwrap_or(Self { status: 403, body: ACCESS_DENIED, challenge: None })
    }

    /// The status a proxy returns for `decision`: 200 for an allow.
    pub fn status_of(decision: &Decision) -> u16 {
        Self::of(decision).map_or(200, |denial| denial.status)
    }
}

/// A challenge as the `www-authenticate` header carries it.
fn www_authenticate(challenge: &Challenge) -> (&'static str, String) {
    match challenge {
        Challenge::Bearer { realm, error } => {
            ("www-authenticate", format!("Bearer realm=\"{realm}\", error=\"{error}\""))
        }
        Challenge::Login { url, .. } => (LOGIN_URL_HEADER, url.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_envoy_statuses_and_bodies() {
        for reason in Reason::ALL {
            let denial = Denial::of(&Decision::new(reason, None));
            assert_eq!(denial.is_none(), reason.is_allow(), "{reason:?}");
            assert!(denial.is_none_or(|denial| !denial.body.is_empty()), "{reason:?}");
        }
        let statuses = [
            (Reason::DeniedByPolicy, 403, "RBAC: access denied"),
            (Reason::NoAllowMatch, 403, "RBAC: access denied"),
            (Reason::InternalError, 403, "RBAC: access denied"),
            (Reason::InvalidPath, 400, "Bad Request"),
            (Reason::InvalidToken, 401, "Jwt verification fails"),
            (Reason::AudienceNotAllowed, 403, "Audiences in Jwt are not allowed"),
        ];
        for (reason, status, body) in statuses {
            let denial = Denial::of(&Decision::new(reason, None));
            assert_eq!(denial, Some(Denial { status, body, challenge: None }), "{reason:?}");
        }
        assert_eq!(Denial::status_of(&Decision::new(Reason::NoPolicies, None)), 200);
    }

    #[test]
    fn an_audience_refusal_carries_the_same_bearer_challenge_as_a_bad_token() {
        let challenge = Challenge::bearer("https", "jobs.example", "/api/jobs?page=2");
        let header =
            ("www-authenticate", r#"Bearer realm="https://jobs.example/api/jobs", error="invalid_token""#.into());
        for (error, status) in [(JwtError::AudienceNotAllowed, 403), (JwtError::Expired, 401)] {
            let denial = Denial::of(&Decision::refused_token(error, challenge.clone()));
            let expected = Denial { status, body: error.message(), challenge: Some(header.clone()) };
            assert_eq!(denial, Some(expected), "{error:?}");
        }
    }

    #[test]
    fn a_refused_token_whose_url_cannot_be_a_header_is_refused_without_a_challenge() {
        let denial = Denial::of(&Decision::refused_token(JwtError::Expired, Challenge::bearer("", "a\nb", "/")));
        assert_eq!(denial, Some(Denial { status: 401, body: "Jwt is expired", challenge: None }));
    }
}
