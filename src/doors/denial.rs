//! A denial's wire form, the same for every door: the HTTP status, Envoy's body and the challenge header a refused request gets (a login offered included). Never decides.

use crate::core::decision::{Challenge, Verdict};
use crate::core::jwt::JwtError;
use crate::core::{Decision, Reason};

/// Envoy's RBAC filter's body for a request its policies refuse.
const ACCESS_DENIED: &str = "RBAC: access denied";

/// The header that tells a client that is not a browser navigation where to log in.
pub const LOGIN_URL_HEADER: &str = "x-portcullis-login-url";

/// The body of a login offered with a 401.
const LOGIN_REQUIRED: &str = "login required";

/// How the proxy in front treats a redirect in the answer to its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// Passed on to the browser: Envoy and Istio (gRPC or HTTP), Traefik, Caddy.
    Passed,
    /// Not understood: nginx `auth_request` passes on 401 and 403 only and answers a 302 with
    /// a 500 of its own; its recipe turns a 401 with `location` into the redirect.
    Refused,
}

/// What the client of a denied request is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 400, 401 or 403, or 302 for a browser navigation sent to log in: nginx `auth_request`
    /// passes 401 and 403 on and answers any other status with a 500 of its own (see
    /// [`Denial::behind`]).
    pub status: u16,
    /// In Envoy's wording.
    pub body: &'static str,
    /// The `www-authenticate` header of a refused token, when its challenge can be written; the
    /// login URL, in `location` for a browser navigation (also behind nginx, in its 401), else
    /// in [`LOGIN_URL_HEADER`].
    pub challenge: Option<(&'static str, String)>,
}

impl Denial {
    /// How `decision` is refused, behind a proxy that passes redirects on; `None` for an allow.
    pub fn of(decision: &Decision) -> Option<Self> {
        match (decision.verdict(), &decision.challenge) {
            (Verdict::Allow, _) => None,
            (Verdict::Deny(_), Some(Challenge::Login { url, navigation })) => Some(Self::login(url, *navigation)),
            (Verdict::Deny(reason), _) => {
                let (status, body) = match reason {
                    Reason::InvalidPath => (400, "Bad Request"),
                    Reason::InvalidToken => (401, JwtError::VerificationFails.message()),
                    Reason::AudienceNotAllowed => (403, JwtError::AudienceNotAllowed.message()),
                    _ => (403, ACCESS_DENIED),
                };
                Some(Self { status, body, challenge: None })
            }
            (Verdict::RefuseToken { error, challenge }, _) => Some(Self {
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

    /// The denial as a proxy treating redirects as `redirects` does is sent it: where redirects
    /// are refused, a navigation's login redirect becomes a 401 that keeps its `location`, so
    /// that the proxy's recipe can still tell it from a script's 401 and redirect it.
    pub fn behind(self, redirects: Redirects) -> Self {
        match (redirects, self.status) {
            (Redirects::Refused, 302) => Self { status: 401, body: LOGIN_REQUIRED, ..self },
            _ => self,
        }
    }

    /// A login offered: a browser navigation is sent to `url` (302), anything else is told where
    /// it is (401 and the login URL in a header), so that a script can react instead of following.
    fn login(url: &str, navigation: bool) -> Self {
        let (status, body, header) =
            if navigation { (302, "", "location") } else { (401, LOGIN_REQUIRED, LOGIN_URL_HEADER) };
        Self { status, body, challenge: Some((header, url.to_string())) }
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

    fn login(navigation: bool) -> Decision {
        let mut decision = Decision::new(Reason::NoAllowMatch, None);
        decision.challenge =
            Some(Challenge::Login { url: "https://auth.example/oauth2/start?rd=x".into(), navigation });
        decision
    }

    #[test]
    fn a_login_sends_a_navigation_there_and_tells_anything_else_where_it_is() {
        let url = "https://auth.example/oauth2/start?rd=x".to_string();
        let sent = Denial { status: 302, body: "", challenge: Some(("location", url.clone())) };
        let told = Denial { status: 401, body: "login required", challenge: Some((LOGIN_URL_HEADER, url)) };
        assert_eq!(Denial::of(&login(true)), Some(sent.clone()));
        assert_eq!(Denial::of(&login(false)), Some(told.clone()));
        assert_eq!(Denial::refusing(&login(true)).behind(Redirects::Passed), sent.clone());
        assert_eq!(Denial::status_of(&login(true)), 302);
        let navigation_behind_nginx = Denial { status: 401, body: "login required", ..sent };
        assert_eq!(Denial::refusing(&login(true)).behind(Redirects::Refused), navigation_behind_nginx);
        assert_eq!(Denial::refusing(&login(false)).behind(Redirects::Refused), told);
    }

    #[test]
    fn a_proxy_that_refuses_redirects_gets_every_other_denial_unchanged() {
        let refused = Decision::refused_token(JwtError::Expired, Challenge::bearer("https", "jobs", "/"));
        for decision in [Decision::new(Reason::NoAllowMatch, None), Decision::new(Reason::InvalidPath, None), refused] {
            let denial = Denial::refusing(&decision);
            assert_eq!(denial.clone().behind(Redirects::Refused), denial, "{:?}", decision.reason);
        }
    }

    #[test]
    fn a_refused_token_whose_url_cannot_be_a_header_is_refused_without_a_challenge() {
        let denial = Denial::of(&Decision::refused_token(JwtError::Expired, Challenge::bearer("", "a\nb", "/")));
        assert_eq!(denial, Some(Denial { status: 401, body: "Jwt is expired", challenge: None }));
    }
}
