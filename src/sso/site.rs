//! One entry of `sso.sites` as written (a host, or a host with its options) and how such a site asks its anonymous visitors to log in; never matches hosts or writes answers.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// How a site answers an anonymous request the policies refuse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnonymousAnswer {
    /// A browser navigation is sent to the login (302); any other request gets 401 with the
    /// login URL.
    #[default]
    Login,
    /// Every request is sent to the login (302), a script's and a form post's included.
    RedirectAlways,
    /// Every request gets 401 with the login URL, a browser navigation's included: a site that
    /// serves only an API.
    Unauthorized,
}

impl AnonymousAnswer {
    /// Whether a request is answered with the redirect to the login rather than with 401;
    /// `is_browser_navigation` says whether it is one.
    pub fn redirects(self, is_browser_navigation: bool) -> bool {
        match self {
            Self::Login => is_browser_navigation,
            Self::RedirectAlways => true,
            Self::Unauthorized => false,
        }
    }
}

/// One entry of `sso.sites`: `grafana.example.com`, `.example.com`, or
/// `{host: .example.com, anonymous: unauthorized}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SiteEntry {
    /// A host, answered as `anonymous: login`.
    Host(String),
    /// A host with its options.
    WithOptions(SiteOptions),
}

/// The mapping form of a `sites` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteOptions {
    /// `grafana.example.com`, or `.example.com` for the domain and every subdomain.
    pub host: String,
    /// How the site asks its anonymous visitors to log in.
    #[serde(default)]
    pub anonymous: AnonymousAnswer,
}

impl SiteEntry {
    /// The host as written.
    pub fn host(&self) -> &str {
        match self {
            Self::Host(host) => host,
            Self::WithOptions(options) => &options.host,
        }
    }

    /// How the site asks its anonymous visitors to log in.
    pub fn anonymous(&self) -> AnonymousAnswer {
        match self {
            Self::Host(_) => AnonymousAnswer::default(),
            Self::WithOptions(options) => options.anonymous,
        }
    }
}

impl From<&str> for SiteEntry {
    fn from(host: &str) -> Self {
        Self::Host(host.into())
    }
}

/// A string or a mapping; the mapping's own errors (an unknown key, an unknown `anonymous`
/// value) keep the position the YAML reader gives them.
impl<'de> Deserialize<'de> for SiteEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = SiteEntry;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a host name, or a mapping with `host` and `anonymous`")
            }

            fn visit_str<E: de::Error>(self, host: &str) -> Result<SiteEntry, E> {
                Ok(SiteEntry::Host(host.into()))
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<SiteEntry, M::Error> {
                SiteOptions::deserialize(de::value::MapAccessDeserializer::new(map)).map(SiteEntry::WithOptions)
            }
        }

        deserializer.deserialize_any(EntryVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_login_answer_tells_navigations_from_scripts() {
        let answers = [AnonymousAnswer::Login, AnonymousAnswer::RedirectAlways, AnonymousAnswer::Unauthorized];
        let redirects: Vec<(bool, bool)> =
            answers.iter().map(|answer| (answer.redirects(true), answer.redirects(false))).collect();
        assert_eq!(redirects, [(true, false), (true, true), (false, false)]);
    }

    #[test]
    fn a_site_is_a_host_or_a_mapping_whose_answer_defaults_to_login() {
        let entries: Vec<SiteEntry> = serde_saphyr::from_str(
            "- grafana.example.com\n- {host: .api.example.com, anonymous: unauthorized}\n- host: .example.com\n",
        )
        .unwrap();
        let read: Vec<(&str, AnonymousAnswer)> =
            entries.iter().map(|entry| (entry.host(), entry.anonymous())).collect();
        assert_eq!(
            read,
            [
                ("grafana.example.com", AnonymousAnswer::Login),
                (".api.example.com", AnonymousAnswer::Unauthorized),
                (".example.com", AnonymousAnswer::Login)
            ]
        );
    }
}
