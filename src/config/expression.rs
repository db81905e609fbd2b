//! Reads the value expressions of the policy grammar (`request.path.params[NAME]`, `data.SOURCE[EXPR].FIELD`, ...) into the core's compiled form, checking every name they use; pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::core::data::Shape;
use crate::core::matcher::PathTemplate;
use crate::core::value::{DataLookup, Expr};

/// The data sources a policy set declares, by name, with the shape lookups read.
pub type SourceShapes = BTreeMap<Arc<str>, Arc<Shape>>;

/// What an expression may name where it stands.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'s> {
    /// The declared data sources.
    pub sources: &'s SourceShapes,
    /// The `paths` templates of the rule, in order: the parameters they declare are bound.
    pub templates: &'s [PathTemplate],
    /// The `notPaths` templates of the rule: a parameter they declare binds nothing.
    pub not_templates: &'s [PathTemplate],
    /// Whether data lookups are allowed (not in a user-data header's `caller`).
    pub lookups: bool,
}

const PARAMS: &str = "request.path.params";
const HEADERS: &str = "request.headers";
const CLAIMS: &str = "request.auth.claims";
const PRINCIPAL: &str = "request.auth.principal";
const DATA: &str = "data.";

/// The forms a value expression takes, for messages.
pub const FORMS: &str = "`request.path.params[NAME]`, `request.headers[NAME]`, `request.auth.principal`, `request.auth.claims[NAME]...` or `data.SOURCE[EXPR].FIELD`";

/// Whether a condition key is one the grammar computes (a path parameter or a data lookup)
/// rather than one of Istio's.
pub fn is_computed_key(key: &str) -> bool {
    key.starts_with(PARAMS) || key.starts_with(DATA) || key == "data"
}

/// Compiles one value expression.
pub fn parse(text: &str, scope: Scope<'_>) -> Result<Expr, String> {
    if text == "data" || text.starts_with(DATA) {
        return lookup(text, scope);
    }
    if text.starts_with(PARAMS) {
        let name = single_name(text, PARAMS)?;
        return parameter(name, scope);
    }
    if text.starts_with(HEADERS) {
        return Ok(Expr::Header(single_name(text, HEADERS)?.to_ascii_lowercase().into()));
    }
    if text == PRINCIPAL {
        return Ok(Expr::Principal);
    }
    if text.starts_with(CLAIMS) {
        return super::compile::bracketed(text, CLAIMS).map(Expr::Claim);
    }
    Err(format!("unknown value expression `{text}`; expected {FORMS}"))
}

/// The one name of `prefix[NAME]`.
fn single_name<'t>(text: &'t str, prefix: &str) -> Result<&'t str, String> {
    let bad = || format!("bad expression `{text}`: expected `{prefix}[NAME]`");
    let name = text.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('[')?.strip_suffix(']')).ok_or_else(bad)?;
    if name.is_empty() || name.contains(['[', ']']) { Err(bad()) } else { Ok(name) }
}

fn parameter(name: &str, scope: Scope<'_>) -> Result<Expr, String> {
    let declares = |template: &&PathTemplate| template.parameters().any(|declared| declared == name);
    let templates: Box<[PathTemplate]> = scope.templates.iter().filter(declares).cloned().collect();
    if !templates.is_empty() {
        return Ok(Expr::PathParam { name: name.into(), templates });
    }
    if scope.not_templates.iter().any(|template| declares(&template)) {
        return Err(format!("parameter `{name}` is only declared in `notPaths`, where it binds nothing"));
    }
    Err(format!("parameter `{name}` is not declared by a `paths` template of this rule (`/path/{{{name}}}`)"))
}

/// `data.SOURCE[EXPR].FIELD`, its key an expression of its own.
fn lookup(text: &str, scope: Scope<'_>) -> Result<Expr, String> {
    let form = |source: &str| format!("`data.{source}[EXPR].FIELD`");
    let rest = text.strip_prefix(DATA).unwrap_or_default();
    let (source, after_source) = rest.split_at(rest.find('[').unwrap_or(rest.len()));
    let is_name =
        |name: &str| !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_".contains(&byte));
    if !is_name(source) {
        return Err(format!("bad lookup `{text}`: expected {}", form("SOURCE")));
    }
    if !scope.lookups {
        return Err(format!(
            "`{text}` reads data; only the request (a header, the principal, a claim) may be read here"
        ));
    }
    let Some(close) = matching_bracket(after_source) else {
        return Err(format!("lookup `{text}` needs a key and a field: {}", form(source)));
    };
    let key_text = after_source.get(1..close).unwrap_or_default();
    let field = after_source.get(close + 1..).and_then(|after| after.strip_prefix('.')).unwrap_or_default();
    if field.is_empty() || field.contains(['[', ']']) {
        return Err(format!("lookup `{text}` must read one field: {}", form(source)));
    }
    let Some((name, shape)) = scope.sources.get_key_value(source) else {
        let declared: Vec<&str> = scope.sources.keys().map(|name| &**name).collect();
        let declared = if declared.is_empty() { "none".to_string() } else { declared.join(", ") };
        return Err(format!("unknown data source `{source}` (declared: {declared})"));
    };
    if !shape.fields.iter().any(|listed| **listed == *field) {
        let listed = shape.fields.join(", ");
        return Err(format!("data source `{source}` does not list field `{field}` in its `fields` ({listed})"));
    }
    if key_text.is_empty() {
        return Err(format!("lookup `{text}` has an empty key: {}", form(source)));
    }
    let key = parse(key_text, scope).map_err(|message| format!("in the key of `data.{source}[...]`: {message}"))?;
    Ok(Expr::Lookup(Box::new(DataLookup { source: name.clone(), shape: shape.clone(), key, field: field.into() })))
}

/// The index of the `]` that closes the `[` that `text` starts with.
fn matching_bracket(text: &str) -> Option<usize> {
    if !text.starts_with('[') {
        return None;
    }
    let mut depth = 0usize;
    for (at, byte) in text.bytes().enumerate() {
        match byte {
            b'[' => depth += 1,
            b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::data::Limits;

    fn sources() -> SourceShapes {
        let shape = |fields: &[&str]| {
            Arc::new(Shape {
                key: "_id".into(),
                fields: fields.iter().map(|&field| Box::from(field)).collect(),
                header: None,
                limits: Limits { records: 10, bytes: 1000 },
            })
        };
        [("users".into(), shape(&["account", "apps", "profile.team"])), ("apps".into(), shape(&["account", "owner"]))]
            .into_iter()
            .collect()
    }

    fn compiled(text: &str, lookups: bool) -> Result<String, String> {
        let sources = sources();
        let templates = [PathTemplate::parse("/apps/{app_id}").unwrap()];
        let not_templates = [PathTemplate::parse("/apps/{hidden}/x").unwrap()];
        let scope = Scope { sources: &sources, templates: &templates, not_templates: &not_templates, lookups };
        parse(text, scope).map(|expression| expression.to_string())
    }

    #[test]
    fn each_form_compiles_to_itself() {
        for text in [
            "request.path.params[app_id]",
            "request.headers[x-team]",
            "request.auth.principal",
            "request.auth.claims[sub]",
            "request.auth.claims[realm_access][roles]",
            "data.users[request.auth.claims[sub]].apps",
            "data.users[request.auth.claims[sub]].profile.team",
            "data.users[data.apps[request.path.params[app_id]].owner].account",
        ] {
            assert_eq!(compiled(text, true).as_deref(), Ok(text));
        }
        assert_eq!(compiled("request.headers[X-Team]", true).as_deref(), Ok("request.headers[x-team]"));
    }

    #[test]
    fn every_misuse_is_refused_with_what_is_wrong() {
        let table: &[(&str, &str)] = &[
            ("request.path.params[nope]", "parameter `nope` is not declared by a `paths` template of this rule"),
            ("request.path.params[hidden]", "parameter `hidden` is only declared in `notPaths`"),
            ("request.path.params[]", "bad expression `request.path.params[]`"),
            ("request.path.params", "bad expression"),
            ("request.headers[a][b]", "bad expression"),
            ("request.auth.claims", "bad key `request.auth.claims`"),
            ("request.method", "unknown value expression `request.method`"),
            ("data", "bad lookup `data`"),
            ("data.users", "lookup `data.users` needs a key and a field"),
            ("data.users[request.auth.claims[sub]]", "must read one field"),
            ("data.users[request.auth.claims[sub]].", "must read one field"),
            ("data.users[request.auth.claims[sub].apps", "needs a key and a field"),
            ("data.users[].apps", "has an empty key"),
            ("data.teams[request.auth.claims[sub]].apps", "unknown data source `teams` (declared: apps, users)"),
            ("data.users[request.auth.claims[sub]].secret", "data source `users` does not list field `secret`"),
            ("data.users[request.auth.claims[sub]].apps[0]", "must read one field"),
            ("data.users[data.apps[request.auth.claims[sub]]].apps", "in the key of `data.users[...]`: lookup"),
            ("data.users[request.method].apps", "in the key of `data.users[...]`: unknown value expression"),
        ];
        for &(text, message) in table {
            let error = compiled(text, true).expect_err(text);
            assert!(error.contains(message), "`{text}`: {error}");
        }
        let error = compiled("data.users[request.auth.claims[sub]].apps", false).expect_err("no lookups");
        assert!(error.contains("reads data"), "{error}");
    }
}
