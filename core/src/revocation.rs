//! The revocation list: tokens revoked by `jti`, login sessions by `sid`, and whatever a subject holds that was issued before a time, each entry kept until the tokens it covers would have expired; names held only as digests, lookups a few hash probes, `now` an input. Pure: no I/O, no clock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use aws_lc_rs::digest::{Context, SHA256};
use serde_json::{Map, Value};

use super::authn::Authentication;
use super::identity::Identity;
use super::jwt::JwtError;

/// What an entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// One token, by its issuer and `jti`.
    TokenId,
    /// Every token of one login session at the provider, by its issuer and `sid`.
    Session,
    /// Every token of one subject (issuer and `sub`) issued before a time.
    Subject,
}

impl EntryKind {
    /// The claim the kind matches: `jti`, `sid` or `sub`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenId => "jti",
            Self::Session => "sid",
            Self::Subject => "sub",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "jti" => Some(Self::TokenId),
            "sid" => Some(Self::Session),
            "sub" => Some(Self::Subject),
            _ => None,
        }
    }
}

/// The first 128 bits of the SHA-256 of an issuer, a claim's name and its value: the list holds
/// no name in clear, and the same value under another claim or issuer digests apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameDigest([u8; 16]);

impl NameDigest {
    /// The digest of `value`, given by `issuer` as the claim `kind` names.
    pub fn of(kind: EntryKind, issuer: &str, value: &str) -> Self {
        let mut context = Context::new(&SHA256);
        for part in [issuer, kind.as_str(), value] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part.as_bytes());
        }
        let mut bytes = [0; 16];
        for (slot, byte) in bytes.iter_mut().zip(context.finish().as_ref()) {
            *slot = *byte;
        }
        Self(bytes)
    }

    /// The digest as 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The digest 32 hex digits spell.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0; 16];
        for (slot, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *slot = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl Hash for NameDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0; 8];
        first.copy_from_slice(self.0.get(..8).unwrap_or(&[0; 8]));
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Hashes a [`NameDigest`] by its first 64 bits: already uniform, and no random seed is needed.
#[derive(Debug, Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 ^= value;
    }
}

type DigestMap<V> = HashMap<NameDigest, V, BuildHasherDefault<DigestHasher>>;

/// What a verified identity can be revoked by: the digests of its token's `jti` and `sid` and of
/// its subject, and its `iat`. Computed once, when the token is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RevocationNames {
    jti: Option<NameDigest>,
    sid: Option<NameDigest>,
    subject: Option<NameDigest>,
    /// `iat`, whole seconds; absent, the token counts as issued at 0 (before any time).
    issued_at: Option<u64>,
}

impl RevocationNames {
    /// Names no entry can match: an API key's identity (an API key is revoked by removing it
    /// from its key file).
    pub const NONE: Self = Self { jti: None, sid: None, subject: None, issued_at: None };

    /// The names of a token from `issuer` with these verified `claims`.
    pub fn of(issuer: &str, claims: &Map<String, Value>) -> Self {
        let digest = |kind: EntryKind| {
            let value = claims.get(kind.as_str()).and_then(Value::as_str).filter(|value| !value.is_empty());
            value.map(|value| NameDigest::of(kind, issuer, value))
        };
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "clamped to u64 by `as`")]
        let issued_at = claims.get("iat").and_then(Value::as_f64).filter(|iat| iat.is_finite()).map(|iat| iat as u64);
        Self {
            jti: digest(EntryKind::TokenId),
            sid: digest(EntryKind::Session),
            subject: digest(EntryKind::Subject),
            issued_at,
        }
    }
}

/// One revocation: what it names, and until when it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What the entry names.
    pub kind: EntryKind,
    /// The digest of the issuer and the name.
    pub name: NameDigest,
    /// For a subject: tokens issued before this (`iat` < `before`, seconds since the epoch) are
    /// revoked. 0 for the other kinds.
    pub before: u64,
    /// Seconds since the epoch: from then on the entry no longer holds and is dropped.
    pub expires_at: u64,
}

impl Entry {
    /// The token `jti` of `issuer`, until `expires_at`.
    pub fn token(issuer: &str, jti: &str, expires_at: u64) -> Self {
        let name = NameDigest::of(EntryKind::TokenId, issuer, jti);
        Self { kind: EntryKind::TokenId, name, before: 0, expires_at }
    }

    /// Every token of the provider session `sid` of `issuer`, until `expires_at`.
    pub fn session(issuer: &str, sid: &str, expires_at: u64) -> Self {
        let name = NameDigest::of(EntryKind::Session, issuer, sid);
        Self { kind: EntryKind::Session, name, before: 0, expires_at }
    }

    /// Every token of `sub` at `issuer` issued before `before`, until `expires_at`.
    pub fn subject_before(issuer: &str, sub: &str, before: u64, expires_at: u64) -> Self {
        let name = NameDigest::of(EntryKind::Subject, issuer, sub);
        Self { kind: EntryKind::Subject, name, before, expires_at }
    }

    /// The entry as one text, without its expiry: `jti:HEX`, `sid:HEX`, `sub:HEX:BEFORE`.
    pub fn to_member(&self) -> String {
        match self.kind {
            EntryKind::Subject => format!("sub:{}:{}", self.name.to_hex(), self.before),
            kind => format!("{}:{}", kind.as_str(), self.name.to_hex()),
        }
    }

    /// The entry [`Entry::to_member`] wrote, expiring at `expires_at`.
    pub fn from_member(member: &str, expires_at: u64) -> Option<Self> {
        let mut parts = member.split(':');
        let kind = EntryKind::from_name(parts.next()?)?;
        let name = NameDigest::from_hex(parts.next()?)?;
        let before = match kind {
            EntryKind::Subject => parts.next()?.parse().ok()?,
            EntryKind::TokenId | EntryKind::Session => 0,
        };
        parts.next().is_none().then_some(Self { kind, name, before, expires_at })
    }
}

/// What adding an entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addition {
    /// The entry is new in the list.
    Added,
    /// An entry for the same name was there; it now holds as long, and covers as much, as both.
    Merged,
    /// The entry had expired already: nothing to do.
    Expired,
    /// The list was full: the entry is in, and the entry that would have expired first is out.
    AddedEvicting(Entry),
}

/// How far a subject's entry reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SubjectBefore {
    before: u64,
    expires_at: u64,
}

/// Every revocation in force, at most `max_entries` of them.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    tokens: DigestMap<u64>,
    sessions: DigestMap<u64>,
    subjects: DigestMap<SubjectBefore>,
    max_entries: usize,
}

impl RevocationList {
    /// An empty list holding at most `max_entries` entries (at least one).
    pub fn new(max_entries: usize) -> Self {
        Self { max_entries: max_entries.max(1), ..Self::default() }
    }

    /// How many entries the list holds, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.sessions.len() + self.subjects.len()
    }

    /// Whether the list holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an entry in force at `now` revokes the identity with these `names`: its `jti`, its
    /// `sid`, or its subject with an `iat` before the entry's time (no `iat`: before any time).
    /// At most three hash probes.
    pub fn revokes(&self, names: &RevocationNames, now: u64) -> bool {
        let holds = |expires_at: u64| expires_at > now;
        let by_token = names.jti.and_then(|jti| self.tokens.get(&jti)).is_some_and(|end| holds(*end));
        let by_session = names.sid.and_then(|sid| self.sessions.get(&sid)).is_some_and(|end| holds(*end));
        let by_subject = names
            .subject
            .and_then(|subject| self.subjects.get(&subject))
            .is_some_and(|entry| holds(entry.expires_at) && names.issued_at.unwrap_or(0) < entry.before);
        by_token || by_session || by_subject
    }

    /// Whether an entry in force at `now` revokes `identity` (see [`RevocationList::revokes`]).
    pub fn revokes_identity(&self, identity: &Identity, now: u64) -> bool {
        !self.is_empty() && self.revokes(identity.revocation_names(), now)
    }

    /// `authentication`, unless it is a token's identity an entry revokes at `now`: then the
    /// token is refused as revoked. A session's identity is left to the caller (a revoked
    /// session is no session: its browser is asked to log in again).
    pub fn screen<'r>(&self, authentication: Authentication<'r>, now: u64) -> Authentication<'r> {
        match &authentication {
            Authentication::Verified { identity, .. } | Authentication::Introspected { identity }
                if self.revokes_identity(identity, now) =>
            {
                Authentication::Failed { error: JwtError::Revoked }
            }
            _ => authentication,
        }
    }

    /// Adds `entry` as of `now` (call [`RevocationList::purge_expired`] first, once for a
    /// batch). Full, the list keeps the new entry and drops the one that would have expired
    /// first: refusing a revocation would leave in force a token someone asked to stop.
    pub fn add(&mut self, entry: Entry, now: u64) -> Addition {
        if entry.expires_at <= now {
            return Addition::Expired;
        }
        let merged = match entry.kind {
            EntryKind::TokenId => merge_expiry(&mut self.tokens, entry),
            EntryKind::Session => merge_expiry(&mut self.sessions, entry),
            EntryKind::Subject => match self.subjects.get_mut(&entry.name) {
                Some(held) => {
                    held.before = held.before.max(entry.before);
                    held.expires_at = held.expires_at.max(entry.expires_at);
                    true
                }
                None => false,
            },
        };
        if merged {
            return Addition::Merged;
        }
        let evicted = if self.len() >= self.max_entries { self.evict_soonest() } else { None };
        match entry.kind {
            EntryKind::TokenId => drop(self.tokens.insert(entry.name, entry.expires_at)),
            EntryKind::Session => drop(self.sessions.insert(entry.name, entry.expires_at)),
            EntryKind::Subject => drop(
                self.subjects.insert(entry.name, SubjectBefore { before: entry.before, expires_at: entry.expires_at }),
            ),
        }
        evicted.map_or(Addition::Added, Addition::AddedEvicting)
    }

    /// Drops every entry no longer in force at `now`; how many were dropped.
    pub fn purge_expired(&mut self, now: u64) -> usize {
        let before = self.len();
        self.tokens.retain(|_, end| *end > now);
        self.sessions.retain(|_, end| *end > now);
        self.subjects.retain(|_, entry| entry.expires_at > now);
        before - self.len()
    }

    /// Every entry, in no order.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let tokens = self.tokens.iter().map(|(name, end)| Entry {
            kind: EntryKind::TokenId,
            name: *name,
            before: 0,
            expires_at: *end,
        });
        let sessions = self.sessions.iter().map(|(name, end)| Entry {
            kind: EntryKind::Session,
            name: *name,
            before: 0,
            expires_at: *end,
        });
        let subjects = self.subjects.iter().map(|(name, entry)| Entry {
            kind: EntryKind::Subject,
            name: *name,
            before: entry.before,
            expires_at: entry.expires_at,
        });
        tokens.chain(sessions).chain(subjects)
    }

    /// Removes the entry that would expire first, and returns it.
    fn evict_soonest(&mut self) -> Option<Entry> {
        let soonest = self.entries().min_by_key(|entry| entry.expires_at)?;
        match soonest.kind {
            EntryKind::TokenId => drop(self.tokens.remove(&soonest.name)),
            EntryKind::Session => drop(self.sessions.remove(&soonest.name)),
            EntryKind::Subject => drop(self.subjects.remove(&soonest.name)),
        }
        Some(soonest)
    }
}

/// Extends the expiry of the entry `map` holds for `entry`'s name, when it holds one.
fn merge_expiry(map: &mut DigestMap<u64>, entry: Entry) -> bool {
    match map.get_mut(&entry.name) {
        Some(end) => {
            *end = (*end).max(entry.expires_at);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://idp.example/realms/jobs";
    const NOW: u64 = 1_800_000_000;

    fn names(claims: Value) -> RevocationNames {
        match claims {
            Value::Object(claims) => RevocationNames::of(ISSUER, &claims),
            _ => RevocationNames::NONE,
        }
    }

    fn list(entries: &[Entry]) -> RevocationList {
        let mut list = RevocationList::new(100);
        for entry in entries {
            list.add(*entry, NOW);
        }
        list
    }

    #[test]
    fn each_entry_kind_revokes_exactly_the_tokens_it_names_while_it_holds() {
        let token = json!({"sub": "alice", "jti": "j-1", "sid": "s-1", "iat": NOW - 100});
        let end = NOW + 600;
        let rows: Vec<(&str, Entry, Value, u64, bool)> = vec![
            ("its jti", Entry::token(ISSUER, "j-1", end), token.clone(), NOW, true),
            ("another jti", Entry::token(ISSUER, "j-2", end), token.clone(), NOW, false),
            ("its jti at another issuer", Entry::token("https://other", "j-1", end), token.clone(), NOW, false),
            ("its sid given as jti", Entry::token(ISSUER, "s-1", end), token.clone(), NOW, false),
            ("its sid", Entry::session(ISSUER, "s-1", end), token.clone(), NOW, true),
            ("another sid", Entry::session(ISSUER, "s-2", end), token.clone(), NOW, false),
            ("its subject, issued before", Entry::subject_before(ISSUER, "alice", NOW, end), token.clone(), NOW, true),
            (
                "its subject, issued at the time",
                Entry::subject_before(ISSUER, "alice", NOW - 100, end),
                token.clone(),
                NOW,
                false,
            ),
            (
                "its subject, issued after",
                Entry::subject_before(ISSUER, "alice", NOW - 101, end),
                token.clone(),
                NOW,
                false,
            ),
            (
                "its subject, no iat",
                Entry::subject_before(ISSUER, "alice", NOW - 1000, end),
                json!({"sub": "alice"}),
                NOW,
                true,
            ),
            (
                "its subject, a fractional iat",
                Entry::subject_before(ISSUER, "alice", NOW - 99, end),
                json!({"sub": "alice", "iat": (NOW - 100) as f64 + 0.9}),
                NOW,
                true,
            ),
            ("another subject", Entry::subject_before(ISSUER, "bob", NOW, end), token.clone(), NOW, false),
            ("its jti, a second before its end", Entry::token(ISSUER, "j-1", end), token.clone(), end - 1, true),
            ("its jti, at its end", Entry::token(ISSUER, "j-1", end), token.clone(), end, false),
            ("its sid, at its end", Entry::session(ISSUER, "s-1", end), token.clone(), end, false),
            ("its subject, at its end", Entry::subject_before(ISSUER, "alice", NOW, end), token.clone(), end, false),
            ("a token without jti", Entry::token(ISSUER, "", end), json!({"sub": "alice", "jti": ""}), NOW, false),
        ];
        for (case, entry, claims, now, revoked) in rows {
            assert_eq!(list(&[entry]).revokes(&names(claims), now), revoked, "{case}");
        }
    }

    #[test]
    fn names_that_no_entry_can_match_are_never_revoked() {
        let list = list(&[Entry::subject_before(ISSUER, "", NOW, NOW + 10), Entry::token(ISSUER, "j", NOW + 10)]);
        assert!(!list.revokes(&RevocationNames::NONE, NOW), "an API key's identity");
        assert!(!list.revokes(&names(json!({"sub": ""})), NOW), "an empty subject names nobody");
        assert!(!RevocationList::new(1).revokes(&names(json!({"sub": "alice", "jti": "j"})), NOW));
    }

    #[test]
    fn entries_for_the_same_name_merge_to_cover_as_much_and_as_long_as_both() {
        let mut list = RevocationList::new(10);
        assert_eq!(list.add(Entry::token(ISSUER, "j", NOW + 10), NOW), Addition::Added);
        assert_eq!(list.add(Entry::token(ISSUER, "j", NOW + 50), NOW), Addition::Merged);
        assert_eq!(list.add(Entry::token(ISSUER, "j", NOW + 20), NOW), Addition::Merged);
        let jti = names(json!({"jti": "j"}));
        assert!(list.revokes(&jti, NOW + 49) && !list.revokes(&jti, NOW + 50), "the later end holds");
        list.add(Entry::subject_before(ISSUER, "alice", NOW - 10, NOW + 100), NOW);
        list.add(Entry::subject_before(ISSUER, "alice", NOW - 50, NOW + 200), NOW);
        let issued = |iat: u64| names(json!({"sub": "alice", "iat": iat}));
        assert!(list.revokes(&issued(NOW - 11), NOW + 150), "the later time and the later end");
        assert!(!list.revokes(&issued(NOW - 10), NOW));
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn expired_entries_are_refused_and_dropped() {
        let mut list = RevocationList::new(10);
        assert_eq!(list.add(Entry::token(ISSUER, "old", NOW), NOW), Addition::Expired);
        list.add(Entry::token(ISSUER, "a", NOW + 5), NOW);
        list.add(Entry::session(ISSUER, "b", NOW + 10), NOW);
        list.add(Entry::subject_before(ISSUER, "c", NOW, NOW + 15), NOW);
        assert_eq!(list.purge_expired(NOW + 10), 2);
        assert_eq!(list.len(), 1);
        let mut full = RevocationList::new(1);
        full.add(Entry::token(ISSUER, "a", NOW + 5), NOW);
        let added = full.add(Entry::token(ISSUER, "d", NOW + 100), NOW + 20);
        assert_eq!(added, Addition::AddedEvicting(Entry::token(ISSUER, "a", NOW + 5)), "an expired entry goes first");
    }

    #[test]
    fn a_full_list_keeps_the_new_entry_and_drops_the_one_ending_first() {
        let mut list = RevocationList::new(2);
        list.add(Entry::token(ISSUER, "late", NOW + 100), NOW);
        list.add(Entry::session(ISSUER, "soon", NOW + 10), NOW);
        let added = list.add(Entry::subject_before(ISSUER, "alice", NOW, NOW + 50), NOW);
        assert_eq!(added, Addition::AddedEvicting(Entry::session(ISSUER, "soon", NOW + 10)));
        assert_eq!(list.len(), 2);
        assert!(list.revokes(&names(json!({"sub": "alice", "iat": 1})), NOW));
        assert!(list.revokes(&names(json!({"jti": "late"})), NOW));
        assert!(!list.revokes(&names(json!({"sid": "soon"})), NOW));
        assert_eq!(list.add(Entry::token(ISSUER, "late", NOW + 200), NOW), Addition::Merged, "no eviction to merge");
    }

    #[test]
    fn entries_round_trip_through_their_text() {
        let rows = [
            Entry::token(ISSUER, "j", NOW),
            Entry::session(ISSUER, "s", NOW),
            Entry::subject_before(ISSUER, "alice", NOW - 5, NOW),
        ];
        for entry in rows {
            assert_eq!(Entry::from_member(&entry.to_member(), entry.expires_at), Some(entry), "{entry:?}");
        }
        let hex = NameDigest::of(EntryKind::TokenId, ISSUER, "j").to_hex();
        for bad in [
            String::new(),
            "jti".into(),
            format!("aud:{hex}"),
            format!("jti:{hex}:5"),
            format!("sub:{hex}"),
            format!("sub:{hex}:x"),
            "jti:zz".into(),
            format!("jti:{}", &hex[..30]),
            format!("jti:{}é", &hex[..30]),
        ] {
            assert_eq!(Entry::from_member(&bad, NOW), None, "{bad}");
        }
    }

    #[test]
    fn digests_tell_apart_kinds_issuers_and_where_the_parts_split() {
        let digests = [
            NameDigest::of(EntryKind::TokenId, ISSUER, "x"),
            NameDigest::of(EntryKind::Session, ISSUER, "x"),
            NameDigest::of(EntryKind::TokenId, "https://other", "x"),
            NameDigest::of(EntryKind::TokenId, "a", "bc"),
            NameDigest::of(EntryKind::TokenId, "ab", "c"),
        ];
        for (i, a) in digests.iter().enumerate() {
            for b in digests.iter().skip(i + 1) {
                assert_ne!(a, b);
            }
        }
    }
}
