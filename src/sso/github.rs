//! The GitHub login (OAuth 2.0, not OpenID Connect): the authorization URL (`state` and PKCE S256, no nonce), the code exchanged for an access token, the person read from the REST API (user, primary verified email, organizations, teams), the organization and team restrictions, and the claims a session keeps; fetches through [`crate::outbound`], never logs a code, token or secret.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use super::oidc::pkce_challenge;
use super::providers::{GithubConfig, ProviderConfig};
use crate::core::id_token::SessionClaims;
use crate::outbound::{Outbound, OutboundError};

/// The REST API version asked for.
const API_VERSION: &str = "2022-11-28";

/// The query of the organizations, teams and emails: 100 entries, the most a page holds;
/// further pages are not read.
const FIRST_PAGE: &str = "?per_page=100";

/// Why a GitHub login failed at GitHub.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The token endpoint could not be asked.
    #[error("code exchange: {0}")]
    Exchange(OutboundError),
    /// The token endpoint refused the code (GitHub answers 200 with an `error`).
    #[error("code exchange: refused: `{0}`")]
    Refused(String),
    /// An API call failed.
    #[error("{call}: {source}")]
    Api {
        /// `user`, `user/emails`, `user/orgs` or `user/teams`.
        call: &'static str,
        /// The failure.
        source: OutboundError,
    },
    /// The user API's answer has no numeric `id` or no `login`.
    #[error("user: the answer has no numeric `id` or no `login`")]
    NoUser,
}

/// The access token of one login; `Debug` never shows it.
pub struct AccessToken(Box<str>);

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// What the REST API said of the person, as it answered.
#[derive(Debug, Clone, Default)]
pub struct GithubProfile {
    /// `GET /user`.
    pub user: Value,
    /// `GET /user/emails`.
    pub emails: Value,
    /// `GET /user/orgs`.
    pub orgs: Value,
    /// `GET /user/teams`.
    pub teams: Value,
}

/// Why a person GitHub vouched for may not log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GithubRefusal {
    /// Not a member of any organization of `allowed_orgs`.
    #[error("your GitHub account is not a member of an organization allowed to sign in here")]
    NotInAllowedOrg,
    /// Not a member of any team of `allowed_teams`.
    #[error("your GitHub account is not a member of a team allowed to sign in here")]
    NotInAllowedTeam,
}

/// Talks to one GitHub (or GitHub Enterprise Server).
#[derive(Debug)]
pub struct GithubClient {
    outbound: Outbound,
    timeout: Duration,
}

/// The URL that sends the browser to GitHub's authorization page, back to `redirect_url`, with
/// `state` and the S256 challenge of `code_verifier`.
pub fn authorization_url(
    config: &ProviderConfig,
    github: &GithubConfig,
    redirect_url: &str,
    state: &str,
    code_verifier: &str,
) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", &config.client_id)
        .append_pair("redirect_uri", redirect_url)
        .append_pair("scope", &config.scopes.join(" "))
        .append_pair("state", state)
        .append_pair("code_challenge", &pkce_challenge(code_verifier))
        .append_pair("code_challenge_method", "S256")
        .append_pair("allow_signup", "false")
        .finish();
    format!("{}/login/oauth/authorize?{query}", github.base_url)
}

impl GithubClient {
    /// A client fetching through `outbound`, each request bounded by `timeout`.
    pub fn new(outbound: Outbound, timeout: Duration) -> Self {
        Self { outbound, timeout }
    }

    /// Exchanges `code` (with the login's PKCE verifier) for an access token.
    pub async fn exchange(
        &self,
        config: &ProviderConfig,
        github: &GithubConfig,
        redirect_url: &str,
        code: &str,
        code_verifier: &str,
    ) -> Result<AccessToken, GithubError> {
        let url = format!("{}/login/oauth/access_token", github.base_url);
        let form = [
            ("client_id", &*config.client_id),
            ("client_secret", config.client_secret.expose()),
            ("code", code),
            ("redirect_uri", redirect_url),
            ("code_verifier", code_verifier),
        ];
        let answer =
            self.outbound.post_form_json(&url, &form, None, self.timeout).await.map_err(GithubError::Exchange)?;
        match answer.get("access_token").and_then(Value::as_str).filter(|token| !token.is_empty()) {
            Some(token) => Ok(AccessToken(token.into())),
            None => {
                let error = answer.get("error").and_then(Value::as_str).unwrap_or("no access_token");
                // GitHub's error codes are short words; anything else is not repeated.
                let shown = if error.len() <= 64 && error.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    error
                } else {
                    "unreadable error"
                };
                Err(GithubError::Refused(shown.into()))
            }
        }
    }

    /// The person the access token belongs to: user, emails, organizations and teams.
    pub async fn profile(&self, github: &GithubConfig, token: &AccessToken) -> Result<GithubProfile, GithubError> {
        let authorization = format!("Bearer {}", token.0);
        let headers = [
            ("authorization", authorization.as_str()),
            ("accept", "application/vnd.github+json"),
            ("x-github-api-version", API_VERSION),
        ];
        let get = |call: &'static str, query: &'static str| {
            let url = format!("{}/{call}{query}", github.api_url);
            let headers = &headers;
            async move {
                self.outbound
                    .get_json_with_headers(&url, headers, self.timeout)
                    .await
                    .map_err(|source| GithubError::Api { call, source })
            }
        };
        let (user, emails, orgs, teams) = tokio::try_join!(
            get("user", ""),
            get("user/emails", FIRST_PAGE),
            get("user/orgs", FIRST_PAGE),
            get("user/teams", FIRST_PAGE)
        )?;
        Ok(GithubProfile { user, emails, orgs, teams })
    }
}

/// The claims of a GitHub session, when the person may log in: subject the numeric user id
/// (a login can be renamed), `login` (also as `preferred_username`, for the identity headers),
/// `name`, `email` (the primary email, only when verified), `orgs` (logins, lower case) and
/// `teams` (`org/team-slug`, lower case); `Ok(Err(..))` when the restrictions refuse them.
pub fn session_claims(
    github: &GithubConfig,
    profile: &GithubProfile,
) -> Result<Result<SessionClaims, GithubRefusal>, GithubError> {
    let id = profile.user.get("id").and_then(Value::as_u64).ok_or(GithubError::NoUser)?;
    let login = profile.user.get("login").and_then(Value::as_str).filter(|login| !login.is_empty());
    let login = login.ok_or(GithubError::NoUser)?;
    let entries = |value: &Value| value.as_array().cloned().unwrap_or_default();
    let orgs: Vec<String> = entries(&profile.orgs)
        .iter()
        .filter_map(|org| org.get("login").and_then(Value::as_str))
        .map(str::to_ascii_lowercase)
        .collect();
    let teams: Vec<String> = entries(&profile.teams)
        .iter()
        .filter_map(|team| {
            let org = team.get("organization")?.get("login")?.as_str()?;
            let slug = team.get("slug")?.as_str()?;
            Some(format!("{org}/{slug}").to_ascii_lowercase())
        })
        .collect();
    let is_allowed = |allowed: &[Box<str>], held: &[String]| {
        allowed.is_empty() || held.iter().any(|name| allowed.iter().any(|allowed| **allowed == **name))
    };
    if !is_allowed(&github.allowed_orgs, &orgs) {
        return Ok(Err(GithubRefusal::NotInAllowedOrg));
    }
    if !is_allowed(&github.allowed_teams, &teams) {
        return Ok(Err(GithubRefusal::NotInAllowedTeam));
    }
    let email = entries(&profile.emails).into_iter().find_map(|entry| {
        let is_primary = entry.get("primary").and_then(Value::as_bool) == Some(true);
        let is_verified = entry.get("verified").and_then(Value::as_bool) == Some(true);
        entry.get("email").and_then(Value::as_str).filter(|_| is_primary && is_verified).map(str::to_string)
    });
    let mut claims = Map::new();
    claims.insert("login".into(), login.into());
    claims.insert("preferred_username".into(), login.into());
    if let Some(name) = profile.user.get("name").and_then(Value::as_str) {
        claims.insert("name".into(), name.into());
    }
    if let Some(email) = email {
        claims.insert("email".into(), email.into());
        claims.insert("email_verified".into(), true.into());
    }
    claims.insert("orgs".into(), orgs.into());
    claims.insert("teams".into(), teams.into());
    SessionClaims::from_user_api(&github.base_url, &id.to_string(), claims).map(Ok).map_err(|_| GithubError::NoUser)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn github(allowed_orgs: &[&str], allowed_teams: &[&str]) -> GithubConfig {
        GithubConfig {
            base_url: "https://github.com".into(),
            api_url: "https://api.github.com".into(),
            allowed_orgs: allowed_orgs.iter().map(|org| Box::from(*org)).collect(),
            allowed_teams: allowed_teams.iter().map(|team| Box::from(*team)).collect(),
        }
    }

    /// Octocat as GitHub's API documentation shows the four answers.
    fn octocat() -> GithubProfile {
        GithubProfile {
            user: json!({"login": "Octocat", "id": 583231, "name": "The Octocat", "email": "public@example.com"}),
            emails: json!([
                {"email": "old@example.com", "primary": false, "verified": true, "visibility": null},
                {"email": "octocat@github.com", "primary": true, "verified": true, "visibility": "private"}
            ]),
            orgs: json!([{"login": "GitHub", "id": 1}, {"login": "octo-org", "id": 2}]),
            teams: json!([{"slug": "Justice-League", "organization": {"login": "GitHub"}}]),
        }
    }

    #[test]
    fn a_github_identity_is_its_numeric_id_with_login_name_primary_verified_email_orgs_and_teams() {
        let claims = session_claims(&github(&[], &[]), &octocat()).unwrap().unwrap();
        assert_eq!((claims.issuer(), claims.subject()), ("https://github.com", "583231"));
        assert_eq!(
            serde_json::Value::Object(claims.claims().clone()),
            json!({
                "iss": "https://github.com", "sub": "583231", "login": "Octocat", "preferred_username": "Octocat",
                "name": "The Octocat", "email": "octocat@github.com", "email_verified": true,
                "orgs": ["github", "octo-org"], "teams": ["github/justice-league"]
            })
        );
    }

    #[test]
    fn an_unverified_primary_email_is_no_email_and_an_answer_without_id_is_no_user() {
        let mut profile = octocat();
        profile.emails = json!([{"email": "octocat@github.com", "primary": true, "verified": false}]);
        let claims = session_claims(&github(&[], &[]), &profile).unwrap().unwrap();
        assert!(claims.claim_text("email").is_none() && claims.claims().get("email_verified").is_none());
        profile.user = json!({"login": "Octocat", "id": "583231"});
        assert!(matches!(session_claims(&github(&[], &[]), &profile), Err(GithubError::NoUser)));
        profile.user = json!({"id": 1, "login": ""});
        assert!(matches!(session_claims(&github(&[], &[]), &profile), Err(GithubError::NoUser)));
    }

    #[test]
    fn allowed_orgs_and_teams_each_must_be_met_case_insensitively() {
        let profile = octocat();
        for (orgs, teams, expected) in [
            (&["octo-org"][..], &[][..], Ok(())),
            (&["other"], &[], Err(GithubRefusal::NotInAllowedOrg)),
            (&[], &["github/justice-league"], Ok(())),
            (&[], &["octo-org/justice-league"], Err(GithubRefusal::NotInAllowedTeam)),
            (&["github"], &["github/other"], Err(GithubRefusal::NotInAllowedTeam)),
            (&["other"], &["github/justice-league"], Err(GithubRefusal::NotInAllowedOrg)),
        ] {
            let admitted = session_claims(&github(orgs, teams), &profile).unwrap().map(|_| ());
            assert_eq!(admitted, expected, "{orgs:?} {teams:?}");
        }
        let mut no_orgs = profile.clone();
        no_orgs.orgs = json!({"message": "Not Found"});
        assert_eq!(
            session_claims(&github(&["github"], &[]), &no_orgs).unwrap().map(|_| ()),
            Err(GithubRefusal::NotInAllowedOrg),
            "an answer that is no list holds no organization"
        );
    }

    #[test]
    fn the_authorization_url_asks_github_with_state_and_pkce_and_no_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let settings = crate::sso::providers::ProviderSettings {
            name: "github".into(),
            kind: crate::sso::providers::ProviderKind::Github,
            client_id: "Iv1.abc".into(),
            client_secret_file: Some(secret.clone()),
            ..Default::default()
        };
        let block = crate::sso::config::SsoSettings {
            providers: vec![settings],
            redirect_url: "https://auth.example.com/oauth2/callback".into(),
            sites: vec![".example.com".into()],
            ..Default::default()
        };
        let config = block.compile(|_| None).unwrap();
        let provider = config.providers.all().first().unwrap();
        let url = authorization_url(
            provider,
            &github(&[], &[]),
            &config.redirect_url,
            "st",
            "dBjftJeZ4CVP-mJ92K27uTMVZpL1ckl1hhkvIr9SpJs",
        );
        assert_eq!(
            url,
            "https://github.com/login/oauth/authorize?client_id=Iv1.abc\
             &redirect_uri=https%3A%2F%2Fauth.example.com%2Foauth2%2Fcallback&scope=read%3Auser+user%3Aemail+read%3Aorg\
             &state=st&code_challenge=W6sW9C8A5hrhGZuemd0hex4ogmWFU39zh0gzOjvZo7s&code_challenge_method=S256&allow_signup=false"
        );
    }

    #[test]
    fn the_access_token_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", AccessToken("gho_secret".into())), "AccessToken([redacted])");
    }
}
