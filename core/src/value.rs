//! Value expressions of the policy grammar (path parameters, headers, the caller's principal and claims, data lookups), compiled once and evaluated per check without parsing; pure, never fetches.
//!
//! An expression yields a set of values, or cannot be evaluated: a parameter the matched path
//! did not bind, claims without a caller, a source not loaded, a missing record. A predicate
//! that reads one then evaluates to "cannot evaluate", which fails an ALLOW rule and makes a
//! DENY rule match. A claim or field that exists but offers no values is the empty set.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use super::data::{Lookup, Shape};
use super::matcher::{PathTemplate, StringMatch};
use super::policy::Attributes;

/// The most records one expression reads, nested lookups included: a key with more values
/// than that (a long claim list used as a key) makes the expression unevaluable, so that one
/// check never turns into a scan of a table.
pub const MAX_LOOKUPS: usize = 32;

/// One compiled value expression, or the reading of a condition key it is compared with.
#[derive(Debug, Clone)]
pub enum Expr {
    /// `request.path.params[NAME]`: the segment the first of `templates` (the rule's `paths`
    /// templates that declare the name, in order) that matches the path binds.
    PathParam {
        /// The parameter's name.
        name: Box<str>,
        /// The templates that declare it.
        templates: Box<[PathTemplate]>,
    },
    /// `request.headers[NAME]`: every value of the header, as the service will receive it.
    Header(Box<str>),
    /// `request.auth.principal`: the caller's `iss/sub`.
    Principal,
    /// `request.auth.claims[A][B]…` (and the keys `request.auth.audiences`, `[aud]`, and
    /// `request.auth.presenter`, `[azp]`): every value of a claim of the caller.
    Claim(Box<[Box<str>]>),
    /// The key `source.principal`: the peer's SPIFFE ID, `spiffe://` dropped.
    SourcePrincipal,
    /// The key `source.namespace`: the namespace in the peer's SPIFFE ID.
    SourceNamespace,
    /// The key `connection.sni`: the server name of the TLS handshake.
    Sni,
    /// `data.SOURCE[KEY].FIELD`: the field of the record of each value of the key.
    Lookup(Box<DataLookup>),
}

/// `data.SOURCE[KEY].FIELD`, its source's shape resolved when the policies were loaded.
#[derive(Debug, Clone)]
pub struct DataLookup {
    /// The source's name.
    pub source: Arc<str>,
    /// The shape the source's table must have been built with.
    pub shape: Arc<Shape>,
    /// The expression whose values are the records' keys.
    pub key: Expr,
    /// The field read, one the shape keeps.
    pub field: Box<str>,
}

/// One value of an expression, borrowed from the request, the caller or the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A text.
    Text(&'a str),
    /// A principal `issuer/subject`, kept in its two parts so that nothing is joined to compare.
    Principal(&'a str, &'a str),
}

impl<'a> Value<'a> {
    /// Exact, case-sensitive equality of the two texts.
    pub fn equals(&self, other: &Value<'_>) -> bool {
        match (*self, *other) {
            (Self::Text(a), Value::Text(b)) => a == b,
            (Self::Principal(issuer, subject), Value::Principal(other_issuer, other_subject)) => {
                issuer == other_issuer && subject == other_subject
            }
            (Self::Principal(issuer, subject), Value::Text(text)) => is_principal(text, issuer, subject),
            (Self::Text(text), Value::Principal(issuer, subject)) => is_principal(text, issuer, subject),
        }
    }

    /// The text; a principal is joined (only when used as a lookup key or against a pattern).
    pub fn text(&self) -> Cow<'a, str> {
        match *self {
            Self::Text(text) => Cow::Borrowed(text),
            Self::Principal(issuer, subject) => Cow::Owned(format!("{issuer}/{subject}")),
        }
    }
}

/// Whether `text` is `issuer/subject`.
fn is_principal(text: &str, issuer: &str, subject: &str) -> bool {
    text.strip_prefix(issuer).and_then(|rest| rest.strip_prefix('/')) == Some(subject)
}

/// Why an expression cannot be evaluated; names come from the expression, never the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unevaluable<'e> {
    /// The check is for a TCP connection: no path, headers or caller.
    NotHttp,
    /// Claims or the principal are read and the request has no verified caller.
    NoCaller,
    /// No `paths` template of the rule that declares the parameter matches the path.
    Unbound(&'e str),
    /// The header came joined with commas: its values cannot be told apart.
    AmbiguousHeader(&'e str),
    /// The source has not loaded (or loaded under another shape).
    NotLoaded(&'e str),
    /// The source has no record for a key the lookup reads.
    MissingRecord(&'e str),
    /// The lookup's key expression offers no value: there is no record to read.
    NoKey(&'e str),
    /// The expression would read more than [`MAX_LOOKUPS`] records.
    TooManyLookups,
}

impl fmt::Display for Unevaluable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotHttp => f.write_str("the check is for a TCP connection"),
            Self::NoCaller => f.write_str("the request has no verified caller"),
            Self::Unbound(name) => {
                write!(f, "parameter `{name}` is not bound: no `paths` template of the rule that declares it matches")
            }
            Self::AmbiguousHeader(name) => write!(f, "the `{name}` header's values came joined with commas"),
            Self::NotLoaded(source) => write!(f, "data source `{source}` is not loaded"),
            Self::MissingRecord(source) => write!(f, "data source `{source}` has no record for a key the lookup reads"),
            Self::NoKey(source) => write!(f, "the key of the lookup into data source `{source}` has no value"),
            Self::TooManyLookups => write!(f, "the expression would read more than {MAX_LOOKUPS} records"),
        }
    }
}

impl Expr {
    /// Calls `visit` with each of its values (a value may come more than once); stops at the
    /// first thing that cannot be evaluated.
    pub fn visit<'a, 'e>(
        &'e self,
        attributes: &Attributes<'a>,
        visit: &mut dyn FnMut(Value<'a>),
    ) -> Result<(), Unevaluable<'e>> {
        self.visit_within(attributes, &Cell::new(MAX_LOOKUPS), visit)
    }

    fn visit_within<'a, 'e>(
        &'e self,
        attributes: &Attributes<'a>,
        budget: &Cell<usize>,
        visit: &mut dyn FnMut(Value<'a>),
    ) -> Result<(), Unevaluable<'e>> {
        let http = attributes.request.http.as_ref().ok_or(Unevaluable::NotHttp);
        match self {
            Self::PathParam { name, templates } => {
                http?;
                let bound = templates.iter().find_map(|template| template.parameter(name, attributes.path));
                visit(Value::Text(bound.ok_or(Unevaluable::Unbound(name))?));
            }
            Self::Header(name) => {
                let headers = attributes.headers.ok_or(Unevaluable::NotHttp)?;
                if headers.is_ambiguous(name) {
                    return Err(Unevaluable::AmbiguousHeader(name));
                }
                headers.each_value(name, |value| visit(Value::Text(value)));
            }
            Self::Principal => {
                http?;
                let caller = attributes.identity.ok_or(Unevaluable::NoCaller)?;
                visit(Value::Principal(caller.issuer(), caller.subject()));
            }
            Self::Claim(path) => {
                http?;
                let caller = attributes.identity.ok_or(Unevaluable::NoCaller)?;
                caller.claim_values(path).for_each(|value| visit(Value::Text(value)));
            }
            Self::SourcePrincipal => attributes.source.into_iter().for_each(|id| visit(Value::Text(id.principal))),
            Self::SourceNamespace => {
                attributes.source.and_then(|id| id.namespace).into_iter().for_each(|ns| visit(Value::Text(ns)));
            }
            Self::Sni => {
                Some(attributes.request.sni).filter(|sni| !sni.is_empty()).into_iter().for_each(|sni| {
                    visit(Value::Text(sni));
                });
            }
            Self::Lookup(lookup) => lookup.visit(attributes, budget, visit)?,
        }
        Ok(())
    }

    /// Every claim path it reads, nested keys included, for the claims identities keep.
    pub fn claim_paths(&self, out: &mut Vec<Box<[Box<str>]>>) {
        match self {
            Self::Claim(path) => out.push(path.clone()),
            Self::Lookup(lookup) => lookup.key.claim_paths(out),
            Self::PathParam { .. }
            | Self::Header(_)
            | Self::Principal
            | Self::SourcePrincipal
            | Self::SourceNamespace
            | Self::Sni => {}
        }
    }
}

impl DataLookup {
    fn visit<'a, 'e>(
        &'e self,
        attributes: &Attributes<'a>,
        budget: &Cell<usize>,
        visit: &mut dyn FnMut(Value<'a>),
    ) -> Result<(), Unevaluable<'e>> {
        let data = attributes.data;
        let mut failed = None;
        let mut keys = 0usize;
        self.key.visit_within(attributes, budget, &mut |key| {
            if failed.is_some() {
                return;
            }
            keys += 1;
            let Some(left) = budget.get().checked_sub(1) else {
                failed = Some(Unevaluable::TooManyLookups);
                return;
            };
            budget.set(left);
            match data.lookup(&self.source, &self.shape, &key.text()) {
                Lookup::NotLoaded => failed = Some(Unevaluable::NotLoaded(&self.source)),
                Lookup::Missing => failed = Some(Unevaluable::MissingRecord(&self.source)),
                Lookup::Found(record, shape) => {
                    let values = record.field(shape, &self.field).into_iter().flat_map(|field| field.values());
                    values.for_each(|value| visit(Value::Text(value)));
                }
            }
        })?;
        match failed {
            Some(reason) => Err(reason),
            None if keys > 0 => Ok(()),
            // No key, no record; tell a source that has not loaded apart.
            None if data.table(&self.source).is_none() => Err(Unevaluable::NotLoaded(&self.source)),
            None => Err(Unevaluable::NoKey(&self.source)),
        }
    }
}

/// The values of one side of a comparison, gathered without allocating for zero or one value.
#[derive(Debug, Default)]
enum Gathered<'a> {
    #[default]
    None,
    One(Value<'a>),
    Many(Vec<Value<'a>>),
}

impl<'a> Gathered<'a> {
    fn push(&mut self, value: Value<'a>) {
        *self = match std::mem::take(self) {
            Self::None => Self::One(value),
            Self::One(first) => Self::Many(vec![first, value]),
            Self::Many(mut values) => {
                values.push(value);
                Self::Many(values)
            }
        };
    }

    fn iter(&self) -> impl Iterator<Item = &Value<'a>> {
        let (one, many): (Option<&Value<'a>>, &[Value<'a>]) = match self {
            Self::None => (None, &[]),
            Self::One(value) => (Some(value), &[]),
            Self::Many(values) => (None, values),
        };
        one.into_iter().chain(many)
    }
}

/// Whether some value of `key` matches one of `patterns` (Istio's patterns, on computed keys).
pub fn key_matches<'e>(
    key: &'e Expr,
    patterns: &[StringMatch],
    attributes: &Attributes<'_>,
) -> Result<bool, Unevaluable<'e>> {
    let mut matched = false;
    key.visit(attributes, &mut |value| {
        matched = matched || patterns.iter().any(|pattern| pattern.matches(&value.text()));
    })?;
    Ok(matched)
}

/// Whether some value of `key` equals some value of one of `from` (`valuesFrom`: the union of
/// their values). Every expression is evaluated whole, so the answer never depends on the
/// order: one that cannot be evaluated makes the comparison unevaluable.
pub fn key_in<'e>(key: &'e Expr, from: &'e [Expr], attributes: &Attributes<'_>) -> Result<bool, Unevaluable<'e>> {
    let mut keys = Gathered::None;
    key.visit(attributes, &mut |value| keys.push(value))?;
    let mut matched = false;
    for expression in from {
        expression.visit(attributes, &mut |value| {
            matched = matched || keys.iter().any(|key| key.equals(&value));
        })?;
    }
    Ok(matched)
}

/// Expressions as a policy writes them.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PathParam { name, .. } => write!(f, "request.path.params[{name}]"),
            Self::Header(name) => write!(f, "request.headers[{name}]"),
            Self::Principal => f.write_str("request.auth.principal"),
            Self::Claim(path) => {
                f.write_str("request.auth.claims")?;
                path.iter().try_for_each(|name| write!(f, "[{name}]"))
            }
            Self::SourcePrincipal => f.write_str("source.principal"),
            Self::SourceNamespace => f.write_str("source.namespace"),
            Self::Sni => f.write_str("connection.sni"),
            Self::Lookup(lookup) => write!(f, "data.{}[{}].{}", lookup.source, lookup.key, lookup.field),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value as Json, json};

    use super::*;
    use crate::data::{Change, Data, Limits, Record, Table};
    use crate::identity::{ClaimPaths, Identity};
    use crate::request::{HeaderView, HttpRequest, Request};

    fn shape(fields: &[&str]) -> Arc<Shape> {
        Arc::new(Shape {
            key: "_id".into(),
            fields: fields.iter().map(|&field| Box::from(field)).collect(),
            header: None,
            limits: Limits { records: 100, bytes: 1 << 20 },
        })
    }

    fn table(shape: &Arc<Shape>, documents: &[Json]) -> Arc<Table> {
        let changes = documents.iter().map(|document| {
            let (key, record) = Record::from_document(shape, document).unwrap();
            Change::Put(key, Arc::new(record))
        });
        Arc::new(Table::new(shape.clone()).apply(changes.collect::<Vec<_>>()).unwrap())
    }

    fn users() -> Arc<Shape> {
        shape(&["account", "apps", "role"])
    }

    fn apps() -> Arc<Shape> {
        shape(&["account", "owner"])
    }

    fn data() -> Data {
        let users = table(
            &users(),
            &[
                json!({"_id": "ana", "account": "acme", "apps": ["a1", "a2"], "role": "admin"}),
                json!({"_id": "bo", "account": "globex", "apps": []}),
                json!({"_id": "https://idp/cy", "account": "initech", "apps": ["a9"]}),
            ],
        );
        let many: Vec<Json> = (0..40).map(|n| json!({"_id": format!("m{n}"), "account": "acme"})).collect();
        let apps = table(
            &apps(),
            &[
                json!({"_id": "a1", "account": "acme", "owner": "ana"}),
                json!({"_id": "a2", "account": "acme", "owner": "nobody"}),
                json!({"_id": "a3", "account": "globex"}),
            ]
            .into_iter()
            .chain(many)
            .collect::<Vec<_>>(),
        );
        Data::default().with_table("users".into(), users).with_table("apps".into(), apps)
    }

    fn lookup(source: &str, shape: Arc<Shape>, key: Expr, field: &str) -> Expr {
        Expr::Lookup(Box::new(DataLookup { source: source.into(), shape, key, field: field.into() }))
    }

    fn param(name: &str, templates: &[&str]) -> Expr {
        let templates = templates.iter().map(|template| PathTemplate::parse(template).unwrap()).collect();
        Expr::PathParam { name: name.into(), templates }
    }

    fn claim(name: &str) -> Expr {
        Expr::Claim(Box::new([Box::from(name)]))
    }

    /// What each expression yields, evaluated for one request.
    struct Scene {
        request: Request<'static>,
        identity: Option<Identity>,
        data: Data,
        path: &'static str,
    }

    impl Scene {
        fn new(path: &'static str, claims: Option<Json>) -> Self {
            let http = HttpRequest {
                method: "GET",
                path,
                headers: vec![("x-app", "a1"), ("x-app", "a3")],
                ..HttpRequest::default()
            };
            let identity = claims.map(|claims| {
                let Json::Object(claims): Json = claims else { unreachable!() };
                let claims: Map<String, Json> = claims;
                let kept =
                    ClaimPaths::new(["sub", "apps", "groups", "empty"].map(|name| Box::from([Box::from(name)])), false);
                Identity::for_tests(&claims, &Arc::new(kept), Arc::from(Vec::new()))
            });
            Self { request: Request { http: Some(http), ..Request::default() }, identity, data: data(), path }
        }

        fn values(&self, expression: &Expr) -> Result<Vec<String>, String> {
            let attributes = Attributes {
                request: &self.request,
                source: None,
                remote_ip: None,
                path: self.path,
                headers: self.request.http.as_ref().map(HeaderView::as_sent),
                identity: self.identity.as_ref(),
                data: &self.data,
            };
            let mut values = Vec::new();
            expression
                .visit(&attributes, &mut |value| values.push(value.text().into_owned()))
                .map_err(|reason| reason.to_string())?;
            Ok(values)
        }
    }

    /// A path, the caller's claims, an expression, and its values or why it has none.
    type Row = (&'static str, Option<Json>, Expr, Result<Vec<String>, String>);

    #[test]
    fn each_form_yields_its_values_or_says_why_it_cannot() {
        let ana = Some(json!({"iss": "https://idp", "sub": "ana", "apps": ["a1", "a3"], "empty": []}));
        let caller_apps = lookup("users", users(), claim("sub"), "apps");
        let app_account = lookup("apps", apps(), param("app_id", &["/apps/{app_id}"]), "account");
        let owner_account =
            lookup("users", users(), lookup("apps", apps(), param("app_id", &["/apps/{app_id}"]), "owner"), "account");
        let ok = |values: &[&str]| Ok(values.iter().map(|value| value.to_string()).collect::<Vec<_>>());
        let table: Vec<Row> = vec![
            ("/apps/a1", None, param("app_id", &["/x/{app_id}", "/apps/{app_id}"]), ok(&["a1"])),
            (
                "/apps/a1/",
                None,
                param("app_id", &["/apps/{app_id}"]),
                Err("parameter `app_id` is not bound: no `paths` template of the rule that declares it matches".into()),
            ),
            ("/", None, Expr::Header("x-app".into()), ok(&["a1", "a3"])),
            ("/", None, Expr::Header("x-none".into()), ok(&[])),
            ("/", ana.clone(), Expr::Principal, ok(&["https://idp/ana"])),
            ("/", None, Expr::Principal, Err("the request has no verified caller".into())),
            ("/", ana.clone(), claim("apps"), ok(&["a1", "a3"])),
            ("/", ana.clone(), claim("empty"), ok(&[])),
            ("/", ana.clone(), claim("groups"), ok(&[])),
            ("/", None, claim("sub"), Err("the request has no verified caller".into())),
            ("/", ana.clone(), caller_apps.clone(), ok(&["a1", "a2"])),
            ("/", Some(json!({"sub": "bo"})), caller_apps.clone(), ok(&[])),
            (
                "/",
                Some(json!({"sub": "zed"})),
                caller_apps.clone(),
                Err("data source `users` has no record for a key the lookup reads".into()),
            ),
            (
                "/",
                ana.clone(),
                lookup("users", users(), claim("groups"), "apps"),
                Err("the key of the lookup into data source `users` has no value".into()),
            ),
            (
                "/",
                ana.clone(),
                lookup("users", users(), Expr::Principal, "account"),
                Err("data source `users` has no record for a key the lookup reads".into()),
            ),
            (
                "/",
                Some(json!({"iss": "https://idp", "sub": "cy"})),
                lookup("users", users(), Expr::Principal, "account"),
                ok(&["initech"]),
            ),
            ("/apps/a1", None, app_account.clone(), ok(&["acme"])),
            ("/apps/a3", None, lookup("apps", apps(), param("app_id", &["/apps/{app_id}"]), "owner"), ok(&[])),
            ("/apps/a1", None, owner_account.clone(), ok(&["acme"])),
            (
                "/apps/a2",
                None,
                owner_account,
                Err("data source `users` has no record for a key the lookup reads".into()),
            ),
            (
                "/apps/a1",
                None,
                lookup("apps", apps(), Expr::Header("x-app".into()), "account"),
                ok(&["acme", "globex"]),
            ),
            (
                "/apps/a1",
                None,
                lookup("teams", users(), claim("sub"), "account"),
                Err("the request has no verified caller".into()),
            ),
            (
                "/apps/a1",
                ana.clone(),
                lookup("teams", users(), claim("sub"), "account"),
                Err("data source `teams` is not loaded".into()),
            ),
            (
                "/apps/a1",
                ana.clone(),
                lookup("apps", users(), claim("sub"), "account"),
                Err("data source `apps` is not loaded".into()),
            ),
            (
                "/",
                ana.clone(),
                lookup("teams", users(), claim("groups"), "account"),
                Err("data source `teams` is not loaded".into()),
            ),
        ];
        for (path, claims, expression, expected) in table {
            let scene = Scene::new(path, claims.clone());
            assert_eq!(scene.values(&expression), expected, "{expression} on {path} as {claims:?}");
        }
    }

    #[test]
    fn a_key_with_more_values_than_the_lookup_budget_cannot_be_evaluated() {
        let many: Vec<String> = (0..40).map(|n| format!("m{n}")).collect();
        let mut scene = Scene::new("/", None);
        let headers: Vec<(&'static str, &'static str)> =
            many.into_iter().map(|key| ("x-app", &*Box::leak(key.into_boxed_str()))).collect();
        scene.request.http.as_mut().unwrap().headers = headers.clone();
        let expression = lookup("apps", apps(), Expr::Header("x-app".into()), "account");
        assert_eq!(
            scene.values(&expression),
            Err(format!("the expression would read more than {MAX_LOOKUPS} records"))
        );
        scene.request.http.as_mut().unwrap().headers = headers.into_iter().take(MAX_LOOKUPS).collect();
        assert_eq!(scene.values(&expression).map(|values| values.len()), Ok(MAX_LOOKUPS));
    }

    #[test]
    fn a_comparison_is_exact_over_the_union_and_unevaluable_when_any_side_is() {
        let scene = Scene::new("/apps/a1", Some(json!({"iss": "https://idp", "sub": "ana", "apps": ["a2"]})));
        let attributes = Attributes {
            request: &scene.request,
            source: None,
            remote_ip: None,
            path: scene.path,
            headers: scene.request.http.as_ref().map(HeaderView::as_sent),
            identity: scene.identity.as_ref(),
            data: &scene.data,
        };
        let app = param("app_id", &["/apps/{app_id}"]);
        let caller_apps = lookup("users", users(), claim("sub"), "apps");
        assert_eq!(key_in(&app, std::slice::from_ref(&caller_apps), &attributes), Ok(true));
        assert_eq!(key_in(&app, &[claim("apps")], &attributes), Ok(false));
        assert_eq!(key_in(&app, &[claim("apps"), caller_apps.clone()], &attributes), Ok(true));
        let missing = lookup("users", users(), Expr::Header("x-app".into()), "apps");
        assert_eq!(
            key_in(&app, &[caller_apps, missing.clone()], &attributes),
            Err(Unevaluable::MissingRecord("users"))
        );
        assert_eq!(key_in(&claim("apps"), &[Expr::Principal], &attributes), Ok(false));
        assert_eq!(key_in(&Expr::Principal, &[lookup("apps", apps(), app.clone(), "owner")], &attributes), Ok(false));
        let prefix = [StringMatch::Prefix("a".into())];
        assert_eq!(key_matches(&app, &prefix, &attributes), Ok(true));
        assert_eq!(
            key_matches(&lookup("apps", apps(), app, "account"), &[StringMatch::Exact("ACME".into())], &attributes),
            Ok(false)
        );
        assert!(Value::Principal("https://idp", "ana").equals(&Value::Text("https://idp/ana")));
        assert!(!Value::Text("https://idp/ana").equals(&Value::Principal("https://idp/", "ana")));
    }

    #[test]
    fn expressions_display_as_written_and_report_the_claims_they_read() {
        let nested = lookup("users", users(), lookup("apps", apps(), claim("app"), "owner"), "account");
        assert_eq!(nested.to_string(), "data.users[data.apps[request.auth.claims[app]].owner].account");
        let mut paths = Vec::new();
        nested.claim_paths(&mut paths);
        assert_eq!(paths, [Box::from([Box::from("app")])]);
    }
}
