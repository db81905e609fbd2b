//! The identity providers a browser login may use (`sso.providers`, or the one provider written at the top of `sso`): their settings, their checked form, and which of them apply to a site; reads each client secret from its file or variable, never from the settings, and never shows it.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{ClientSecret, Site, is_web_url, read_secret_file};

/// The name of the provider written at the top of `sso` (the single-provider form).
pub const DEFAULT_PROVIDER_NAME: &str = "default";

/// Google's issuer, found by discovery.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// GitHub's web site: where a browser authorizes, and the issuer of GitHub identities.
pub const GITHUB_BASE_URL: &str = "https://github.com";

/// GitHub's REST API.
pub const GITHUB_API_URL: &str = "https://api.github.com";

/// How portcullis talks to a provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenID Connect provider (Keycloak, Dex, Okta, Entra ID...), found by discovery.
    #[default]
    Oidc,
    /// Google: OpenID Connect at `https://accounts.google.com`, with hosted-domain restriction.
    Google,
    /// GitHub (or GitHub Enterprise Server): OAuth 2.0 and its REST API, not OpenID Connect.
    Github,
}

/// One entry of `sso.providers`, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// The provider's name, in URLs (`start?provider=NAME`) and in its sessions.
    pub name: String,
    /// How portcullis talks to it.
    pub kind: ProviderKind,
    /// What the chooser page calls it; unset, its name.
    pub display_name: Option<String>,
    /// The issuer (`oidc`: required; `google`: `https://accounts.google.com` unless set).
    pub issuer: Option<String>,
    /// The client portcullis is registered as at the provider.
    pub client_id: String,
    /// A file holding the client secret (trailing whitespace ignored).
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// The scopes asked for; unset, `openid email profile` (OIDC, Google) or
    /// `read:user user:email read:org` (GitHub).
    pub scopes: Option<Vec<String>>,
    /// The hosts this provider is offered on and its sessions count on; unset, every site.
    pub sites: Vec<String>,
    /// Google only: the Google Workspace domains (`hd` claim) whose accounts may log in.
    pub hosted_domains: Vec<String>,
    /// GitHub only: where GitHub (Enterprise Server) is.
    pub github: Option<GithubSettings>,
    /// GitHub only: a person must be a member of one of these organizations (logins).
    pub allowed_orgs: Vec<String>,
    /// GitHub only: a person must be a member of one of these teams (`org/team-slug`).
    pub allowed_teams: Vec<String>,
}

/// The `github` block of a GitHub provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubSettings {
    /// The web site: authorization at `{base_url}/login/oauth/authorize`, tokens at
    /// `{base_url}/login/oauth/access_token`; also the issuer of its identities.
    pub base_url: String,
    /// The REST API (`https://HOST/api/v3` for GitHub Enterprise Server).
    pub api_url: String,
}

impl Default for GithubSettings {
    fn default() -> Self {
        Self { base_url: GITHUB_BASE_URL.into(), api_url: GITHUB_API_URL.into() }
    }
}

/// One provider, checked.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Its name.
    pub name: Box<str>,
    /// What the chooser page calls it.
    pub display_name: Box<str>,
    /// The client id at the provider.
    pub client_id: Box<str>,
    /// The client secret, from its file or variable.
    pub client_secret: ClientSecret,
    /// The scopes asked for (`openid` first for OpenID Connect).
    pub scopes: Box<[Box<str>]>,
    /// The hosts it applies to; empty, every site.
    pub sites: Box<[Site]>,
    /// How it is talked to.
    pub protocol: Protocol,
}

/// How a provider is talked to, with what that way needs.
#[derive(Debug, Clone)]
pub enum Protocol {
    /// OpenID Connect (`oidc` and `google`).
    Oidc(OidcRules),
    /// GitHub's OAuth 2.0 and REST API.
    Github(GithubConfig),
}

/// An OpenID Connect provider and what its ID tokens must say beyond the standard checks.
#[derive(Debug, Clone)]
pub struct OidcRules {
    /// The issuer, without a trailing slash.
    pub issuer: Box<str>,
    /// Google's `hd` must be one of these (lower case); empty, any.
    pub hosted_domains: Box<[Box<str>]>,
    /// `email_verified` must be `true` (Google).
    pub require_verified_email: bool,
}

/// A GitHub provider, checked.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// The web site, without a trailing slash; the issuer of its identities.
    pub base_url: Box<str>,
    /// The REST API, without a trailing slash.
    pub api_url: Box<str>,
    /// Organizations (lower case) one of which a person must belong to; empty, any.
    pub allowed_orgs: Box<[Box<str>]>,
    /// Teams (`org/team-slug`, lower case) one of which a person must belong to; empty, any.
    pub allowed_teams: Box<[Box<str>]>,
}

impl ProviderConfig {
    /// The issuer of the identities its logins give: the OIDC issuer, or GitHub's `base_url`.
    pub fn issuer(&self) -> &str {
        match &self.protocol {
            Protocol::Oidc(rules) => &rules.issuer,
            Protocol::Github(github) => &github.base_url,
        }
    }

    /// The OpenID Connect rules, for a provider that speaks it.
    pub fn oidc(&self) -> Option<&OidcRules> {
        match &self.protocol {
            Protocol::Oidc(rules) => Some(rules),
            Protocol::Github(_) => None,
        }
    }

    /// Whether it is offered to, and its sessions count on, `host` (a `Host`, port or not).
    pub fn applies_to(&self, host: &str) -> bool {
        self.sites.is_empty() || self.sites.iter().any(|site| site.admits(host))
    }
}

/// The providers of one `sso` block, in the order written.
#[derive(Debug, Clone)]
pub struct Providers(Box<[Arc<ProviderConfig>]>);

impl Providers {
    /// Every provider.
    pub fn all(&self) -> &[Arc<ProviderConfig>] {
        &self.0
    }

    /// The provider named `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<ProviderConfig>> {
        self.0.iter().find(|provider| *provider.name == *name)
    }

    /// The providers offered to a login ending on `host`.
    pub fn applying_to<'p>(&'p self, host: &'p str) -> impl Iterator<Item = &'p Arc<ProviderConfig>> + 'p {
        self.0.iter().filter(move |provider| provider.applies_to(host))
    }

    /// The issuers whose keys the logins need: every OpenID Connect provider's.
    pub fn oidc_issuers(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|provider| provider.oidc().map(|rules| &*rules.issuer))
    }
}

/// A problem with one provider: its key and what is wrong; `index` is `None` for the provider
/// written at the top of `sso`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderProblem {
    /// The entry of `sso.providers` (from 0), or `None` for the single-provider form.
    pub index: Option<usize>,
    /// The key within the provider.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ProviderSettings {
    /// The provider written at the top of `sso`: an `oidc` provider named `default`.
    pub fn single(
        issuer: &str,
        client_id: &str,
        client_secret_file: Option<&PathBuf>,
        client_secret_env: Option<&String>,
        scopes: &[String],
    ) -> Self {
        Self {
            name: DEFAULT_PROVIDER_NAME.into(),
            issuer: Some(issuer.into()),
            client_id: client_id.into(),
            client_secret_file: client_secret_file.cloned(),
            client_secret_env: client_secret_env.cloned(),
            scopes: Some(scopes.to_vec()),
            ..Self::default()
        }
    }

    /// Checks this provider and reads its client secret; every problem goes to `problem`.
    fn compile(
        &self,
        variable: &impl Fn(&str) -> Option<String>,
        problem: &mut impl FnMut(&'static str, String),
    ) -> Option<ProviderConfig> {
        let mut complete = true;
        let mut fail = |key: &'static str, message: String| {
            complete = false;
            problem(key, message);
        };
        if !is_provider_name(&self.name) {
            fail("name", format!("`{}` is not a name: 1 to 64 of a-z, 0-9, `-` and `_`", self.name));
        }
        let is_github = self.kind == ProviderKind::Github;
        let is_google = self.kind == ProviderKind::Google;
        let protocol = if is_github {
            let github = self.github.clone().unwrap_or_default();
            let base_url = github.base_url.trim_end_matches('/');
            let api_url = github.api_url.trim_end_matches('/');
            if !is_web_url(base_url) {
                fail("github.base_url", format!("`{}` is not an http(s) URL", github.base_url));
            }
            if !is_web_url(api_url) {
                fail("github.api_url", format!("`{}` is not an http(s) URL", github.api_url));
            }
            Protocol::Github(GithubConfig {
                base_url: base_url.into(),
                api_url: api_url.into(),
                allowed_orgs: lower_case(&self.allowed_orgs),
                allowed_teams: lower_case(&self.allowed_teams),
            })
        } else {
            let written = match (&self.issuer, is_google) {
                (Some(issuer), _) => issuer.as_str(),
                (None, true) => GOOGLE_ISSUER,
                (None, false) => "",
            };
            let issuer = written.trim_end_matches('/');
            if !is_web_url(issuer) {
                fail("issuer", format!("`{written}` is not an http(s) URL"));
            }
            let hosted_domains = lower_case(&self.hosted_domains);
            if hosted_domains.iter().any(|domain| domain.is_empty() || domain.contains(['@', '/', ' '])) {
                fail("hosted_domains", "each entry is a domain name such as `example.com`".into());
            }
            Protocol::Oidc(OidcRules { issuer: issuer.into(), hosted_domains, require_verified_email: is_google })
        };
        if self.client_id.is_empty() {
            fail("client_id", "is required".into());
        }
        let secret = match (&self.client_secret_file, &self.client_secret_env) {
            (Some(file), None) => read_secret_file(file).map_err(|message| fail("client_secret_file", message)).ok(),
            (None, Some(name)) => {
                let value = variable(name).filter(|value| !value.is_empty());
                if value.is_none() {
                    fail("client_secret_env", format!("environment variable `{name}` is unset or empty"));
                }
                value
            }
            _ => {
                fail("client_secret_file", "set exactly one of `client_secret_file` and `client_secret_env`".into());
                None
            }
        };
        let sites: Vec<Site> = self
            .sites
            .iter()
            .filter_map(|entry| {
                Site::parse(entry).or_else(|| {
                    fail("sites", format!("`{entry}` is not a host name or `.parent` domain"));
                    None
                })
            })
            .collect();
        if !is_google && !self.hosted_domains.is_empty() {
            fail("hosted_domains", "applies to `kind: google` only".into());
        }
        for (key, set) in [
            ("allowed_orgs", !self.allowed_orgs.is_empty()),
            ("allowed_teams", !self.allowed_teams.is_empty()),
            ("github", self.github.is_some()),
        ] {
            if set && !is_github {
                fail(key, "applies to `kind: github` only".into());
            }
        }
        if is_github && self.issuer.is_some() {
            fail("issuer", "a GitHub provider's issuer is its `github.base_url`".into());
        }
        for team in &self.allowed_teams {
            if team.split_once('/').is_none_or(|(org, slug)| org.is_empty() || slug.is_empty() || slug.contains('/')) {
                fail("allowed_teams", format!("`{team}` is not `org/team-slug`"));
            }
        }
        let scopes = match (&self.scopes, is_github) {
            (Some(scopes), true) => scopes.iter().map(|scope| scope.as_str().into()).collect(),
            (None, true) => ["read:user", "user:email", "read:org"].map(Box::from).into(),
            (written, false) => {
                let default = ["openid", "email", "profile"].map(String::from);
                let written = written.as_deref().unwrap_or(&default);
                let mut scopes: Vec<Box<str>> = vec!["openid".into()];
                scopes.extend(written.iter().filter(|scope| *scope != "openid").map(|scope| scope.as_str().into()));
                scopes.into()
            }
        };
        let secret = secret.filter(|_| complete)?;
        Some(ProviderConfig {
            name: self.name.as_str().into(),
            display_name: self.display_name.as_deref().unwrap_or(&self.name).into(),
            client_id: self.client_id.as_str().into(),
            client_secret: ClientSecret::new(secret),
            scopes,
            sites: sites.into(),
            protocol,
        })
    }
}

/// Checks every provider (`index` `None`: the single-provider form, one entry), reporting every
/// problem; also two providers with one name.
pub fn compile_providers(
    entries: &[ProviderSettings],
    single_form: bool,
    variable: &impl Fn(&str) -> Option<String>,
    problem: &mut impl FnMut(ProviderProblem),
) -> Option<Providers> {
    let mut providers = Vec::new();
    let mut complete = true;
    for (index, entry) in entries.iter().enumerate() {
        let index = (!single_form).then_some(index);
        let mut report = |key, message| {
            complete = false;
            problem(ProviderProblem { index, key, message });
        };
        if entries.iter().take(index.unwrap_or(0)).any(|earlier| earlier.name == entry.name) {
            report("name", format!("`{}` names another provider too", entry.name));
        }
        if let Some(provider) = entry.compile(variable, &mut report) {
            providers.push(Arc::new(provider));
        }
    }
    complete.then(|| Providers(providers.into()))
}

/// 1 to 64 of `a-z`, `0-9`, `-`, `_`: safe in a URL, a cookie and a log line as it is.
fn is_provider_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn lower_case(entries: &[String]) -> Box<[Box<str>]> {
    entries.iter().map(|entry| entry.trim().to_ascii_lowercase().into()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sso::config::{SsoSettings, SsoSettingsError};

    /// An `sso` block with `providers` (YAML) and a client secret file every entry may name.
    fn compile(providers: &str) -> Result<crate::sso::config::SsoConfig, Vec<SsoSettingsError>> {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let yaml = format!(
            "redirect_url: https://auth.example.com/oauth2/callback\nsites: [.example.com]\nproviders:\n{}",
            providers.replace("SECRET_FILE", &secret.display().to_string())
        );
        let block: SsoSettings = serde_saphyr::from_str(&yaml).unwrap();
        block.compile(|name| (name == "GOOGLE_SECRET").then(|| "from-env".into()))
    }

    fn keys(errors: &[SsoSettingsError]) -> Vec<String> {
        errors.iter().map(|error| format!("{}{}", error.within, error.key)).collect()
    }

    #[test]
    fn every_kind_of_provider_compiles_with_its_defaults() {
        let config = compile(
            "- {name: staff, issuer: https://kc.example.com/realms/staff/, client_id: p, client_secret_file: SECRET_FILE}\n\
             - {name: google, kind: google, client_id: g, client_secret_env: GOOGLE_SECRET, hosted_domains: [Corp.Example]}\n\
             - {name: github, kind: github, display_name: GitHub, client_id: h, client_secret_file: SECRET_FILE,\n   \
                allowed_orgs: [ACME], allowed_teams: [acme/Platform], sites: [wiki.example.com]}\n",
        )
        .unwrap();
        let [staff, google, github] = config.providers.all() else { panic!("three providers") };
        assert_eq!((staff.issuer(), &*staff.display_name), ("https://kc.example.com/realms/staff", "staff"));
        assert_eq!(staff.scopes.iter().map(|scope| &**scope).collect::<Vec<_>>(), ["openid", "email", "profile"]);
        assert!(staff.applies_to("anything.example.com"), "no sites: every site");
        let Protocol::Oidc(rules) = &google.protocol else { panic!("google speaks OIDC") };
        assert_eq!(&*rules.issuer, GOOGLE_ISSUER);
        assert_eq!(&*rules.hosted_domains, [Box::from("corp.example")]);
        assert!(rules.require_verified_email && !staff.oidc().unwrap().require_verified_email);
        assert_eq!(google.client_secret.expose(), "from-env");
        let Protocol::Github(settings) = &github.protocol else { panic!("github") };
        assert_eq!((github.issuer(), &*settings.api_url), (GITHUB_BASE_URL, GITHUB_API_URL));
        assert_eq!(&*settings.allowed_teams, [Box::from("acme/platform")]);
        assert_eq!(github.scopes.join(" "), "read:user user:email read:org");
        assert!(github.applies_to("wiki.example.com:443") && !github.applies_to("grafana.example.com"));
        let issuers: Vec<&str> = config.providers.oidc_issuers().collect();
        assert_eq!(issuers, ["https://kc.example.com/realms/staff", GOOGLE_ISSUER], "GitHub has no keys to fetch");
    }

    #[test]
    fn the_single_provider_form_and_providers_at_once_is_an_error_naming_providers() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let both = SsoSettings {
            issuer: "https://idp.example.com".into(),
            redirect_url: "https://auth.example.com/oauth2/callback".into(),
            sites: vec![".example.com".into()],
            providers: vec![ProviderSettings {
                name: "github".into(),
                kind: ProviderKind::Github,
                client_id: "h".into(),
                client_secret_file: Some(secret),
                ..ProviderSettings::default()
            }],
            ..SsoSettings::default()
        };
        let errors = both.compile(|_| None).unwrap_err();
        assert_eq!(keys(&errors), ["providers"]);
        assert!(errors[0].to_string().starts_with("sso.providers: set either `providers` or"), "{errors:?}");
    }

    #[test]
    fn every_problem_of_every_provider_is_reported_by_its_entry_and_key() {
        let errors = compile(
            "- {name: Bad Name, client_id: '', client_secret_file: SECRET_FILE, issuer: ftp://x}\n\
             - {name: gh, kind: github, client_id: h, client_secret_file: SECRET_FILE, hosted_domains: [a.example],\n   \
                allowed_teams: [no-slash], github: {base_url: 'github.example.com'}}\n\
             - {name: gh, client_id: o, client_secret_file: SECRET_FILE, issuer: https://o.example, allowed_orgs: [acme],\n   \
                sites: ['bad site']}\n\
             - {name: google, kind: google, client_id: g, client_secret_env: UNSET}\n",
        )
        .unwrap_err();
        assert_eq!(
            keys(&errors),
            [
                "providers[0].name",
                "providers[0].issuer",
                "providers[0].client_id",
                "providers[1].github.base_url",
                "providers[1].hosted_domains",
                "providers[1].allowed_teams",
                "providers[2].name",
                "providers[2].sites",
                "providers[2].allowed_orgs",
                "providers[3].client_secret_env",
            ],
            "{errors:#?}"
        );
        let shown = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        assert!(shown.contains("sso.providers[2].name: `gh` names another provider too"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_bad_provider_fails_the_settings_naming_the_file_and_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portcullis.yaml");
        std::fs::write(
            &file,
            "http_mode: traefik\nsso:\n  redirect_url: https://auth.example.com/oauth2/callback\n  sites: [a.example.com]\n  \
             providers:\n  - {name: github, kind: github, client_id: h}\n",
        )
        .unwrap();
        let error = crate::settings::Settings::load(Some(&file), crate::settings::Overrides::default()).unwrap_err();
        let expected =
            format!("config file `{}`: sso.providers[0].client_secret_file: set exactly one of", file.display());
        assert!(error.to_string().contains(&expected), "{error}");
    }
}
