//! The verified caller behind a request: issuer, subject and claims of a checked token; pure.

use std::sync::Arc;

use serde_json::{Map, Value};

/// A caller proven by a verified token. Only token verification in the core constructs one, so
/// policies can never be handed an unverified principal.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    issuer: Box<str>,
    subject: Box<str>,
    claims: Map<String, Value>,
    /// Top-level claims whose string value is a space-separated list (`scope`, ...).
    space_delimited: Arc<[Box<str>]>,
}

impl Identity {
    /// Wraps the claims of a token whose signature, issuer and lifetime were checked.
    pub(crate) fn from_verified_claims(claims: Map<String, Value>, space_delimited: Arc<[Box<str>]>) -> Self {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default().into();
        Self { issuer: text("iss"), subject: text("sub"), claims, space_delimited }
    }

    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The strings a claim offers to a matcher. A space-delimited claim (`scope`,
    /// `permission`, a rule's `spaceDelimitedClaims`) given as one string offers each word.
    pub fn claim_values<'s, S: AsRef<str>>(&'s self, path: &[S]) -> Box<dyn Iterator<Item = &'s str> + 's> {
        let Some(value) = self.claim(path) else { return Box::new(std::iter::empty()) };
        let is_space_delimited =
            matches!(path, [name] if self.space_delimited.iter().any(|claim| **claim == *name.as_ref()));
        match value {
            Value::String(text) if is_space_delimited => Box::new(text.split(' ').filter(|word| !word.is_empty())),
            other => Box::new(claim_strings(other)),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// A claim by its path of names: `["realm_access", "roles"]` reaches nested objects.
    pub fn claim<S: AsRef<str>>(&self, path: &[S]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        rest.iter().try_fold(self.claims.get(first.as_ref())?, |value, name| value.get(name.as_ref()))
    }
}

/// The strings a claim offers to a matcher: a string itself, or the strings of a list. Numbers,
/// booleans and objects offer none, as in Istio.
pub fn claim_strings(value: &Value) -> impl Iterator<Item = &str> {
    let (single, list) = match value {
        Value::String(text) => (Some(text.as_str()), None),
        Value::Array(items) => (None, Some(items.iter().filter_map(Value::as_str))),
        _ => (None, None),
    };
    single.into_iter().chain(list.into_iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(claims: Value) -> Identity {
        let Value::Object(map) = claims else { unreachable!("claims are an object") };
        Identity::from_verified_claims(map, Arc::from(vec![Box::from("scope")]))
    }

    #[test]
    fn claims_are_reached_by_nested_paths() {
        let id = identity(
            json!({"iss": "https://kc/realms/jobs", "sub": "u1", "realm_access": {"roles": ["admin", "user"]}}),
        );
        assert_eq!(id.issuer(), "https://kc/realms/jobs");
        assert_eq!(id.subject(), "u1");
        let roles = id.claim(&["realm_access", "roles"]).expect("roles");
        assert_eq!(claim_strings(roles).collect::<Vec<_>>(), ["admin", "user"]);
        assert_eq!(id.claim(&["realm_access", "missing"]), None);
        assert_eq!(id.claim(&["sub", "deeper"]), None);
    }

    #[test]
    fn space_delimited_claims_offer_each_word() {
        let id = identity(json!({"scope": "openid  profile email", "other": "a b"}));
        assert_eq!(id.claim_values(&["scope"]).collect::<Vec<_>>(), ["openid", "profile", "email"]);
        assert_eq!(id.claim_values(&["other"]).collect::<Vec<_>>(), ["a b"]);
        assert_eq!(id.claim_values(&["missing"]).count(), 0);
    }

    #[test]
    fn only_strings_offer_values_to_matchers() {
        let table = [
            (json!("a"), vec!["a"]),
            (json!(["a", 1, true, "b", ["c"]]), vec!["a", "b"]),
            (json!(7), vec![]),
            (json!(true), vec![]),
            (json!({"a": "b"}), vec![]),
            (json!(null), vec![]),
        ];
        for (value, expected) in table {
            assert_eq!(claim_strings(&value).collect::<Vec<_>>(), expected, "{value}");
        }
    }
}
