//! The admin endpoints of the revocation list, `POST /revocations` and `GET /revocations`: the admin token checked by digest in constant time, the request read into an entry, the answer as a status and a JSON body; never logs the token or a name it revokes, never writes a wire format.

use serde::Deserialize;
use serde_json::json;

use super::{Revocations, Source, unix_now};
use crate::core::revocation::Entry;

/// Entries `GET /revocations` lists when no `limit` is given.
const DEFAULT_LIMIT: usize = 100;
/// The most entries one `GET /revocations` lists.
const MAX_LIMIT: usize = 1_000;

/// An answer of the admin endpoints: status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub json: String,
}

fn answer(status: u16, json: serde_json::Value) -> AdminAnswer {
    AdminAnswer { status, json: json.to_string() }
}

fn refused(status: u16, message: &str) -> AdminAnswer {
    answer(status, json!({ "error": message }))
}

/// A name given, and not empty.
fn nonempty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|value| !value.is_empty())
}

/// The body of `POST /revocations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationRequest {
    issuer: String,
    jti: Option<String>,
    sid: Option<String>,
    sub: Option<String>,
    /// With `sub`: tokens issued before this (seconds since the epoch) are revoked; unset, every
    /// token issued until now.
    before: Option<u64>,
    /// When the entry ends (seconds since the epoch); unset, `max_token_lifetime_secs` from now.
    expires_at: Option<u64>,
}

impl Revocations {
    /// Whether `authorization` (the header's value) carries the admin token; false when none is
    /// configured.
    pub fn admits_admin(&self, authorization: Option<&str>) -> bool {
        let presented = authorization.and_then(|value| {
            value.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, token)| token)
        });
        match (&self.config.admin_token, presented) {
            (Some(digest), Some(token)) => digest.admits(token.trim()),
            _ => false,
        }
    }

    /// `POST /revocations`: adds the entry `body` describes; 200 with its id, its end and whether
    /// every replica has it (`shared`), 400 naming what is wrong with the body.
    pub async fn admin_add(&self, body: &[u8]) -> AdminAnswer {
        let request: RevocationRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(error) => return refused(400, &format!("invalid body: {error}")),
        };
        let entry = match self.entry_for(&request, unix_now()) {
            Ok(entry) => entry,
            Err(message) => return refused(400, message),
        };
        let shared = self.add(entry, Source::Admin).await;
        tracing::info!(kind = entry.kind.as_str(), shared, "Added a revocation from the admin endpoint");
        answer(200, json!({ "id": entry.to_member(), "expires_at": entry.expires_at, "shared": shared }))
    }

    /// The entry a request describes, as of `now`.
    fn entry_for(&self, request: &RevocationRequest, now: u64) -> Result<Entry, &'static str> {
        if request.issuer.is_empty() {
            return Err("`issuer` is required");
        }
        let expires_at = request.expires_at.unwrap_or(now.saturating_add(self.config.max_token_lifetime_secs));
        if expires_at <= now {
            return Err("`expires_at` is past");
        }
        let issuer = request.issuer.as_str();
        match (nonempty(&request.jti), nonempty(&request.sid), nonempty(&request.sub), request.before) {
            (Some(jti), None, None, None) => Ok(Entry::token(issuer, jti, expires_at)),
            (None, Some(sid), None, None) => Ok(Entry::session(issuer, sid, expires_at)),
            (None, None, Some(sub), before) => {
                Ok(Entry::subject_before(issuer, sub, before.unwrap_or(now.saturating_add(1)), expires_at))
            }
            (None, None, None, _) => Err("name one of `jti`, `sid` and `sub`"),
            (_, _, None, Some(_)) => Err("`before` goes with `sub` only"),
            _ => Err("name only one of `jti`, `sid` and `sub`"),
        }
    }

    /// `GET /revocations[?limit=N]`: how many entries are in force and up to `limit` of them
    /// (100 by default, 1,000 at most), those ending last first, each by its digest.
    pub fn admin_list(&self, query: &str) -> AdminAnswer {
        let limit = form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "limit")
            .map(|(_, value)| value.parse::<usize>());
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(Ok(limit)) => limit.min(MAX_LIMIT),
            Some(Err(_)) => return refused(400, "`limit` is not a number"),
        };
        let (total, entries) = self.entries(limit);
        let entries: Vec<serde_json::Value> = entries
            .iter()
            .map(
                |entry| json!({ "id": entry.to_member(), "kind": entry.kind.as_str(), "expires_at": entry.expires_at }),
            )
            .collect();
        answer(200, json!({ "total": total, "entries": entries, "age_seconds": self.age_seconds() }))
    }
}
