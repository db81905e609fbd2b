//! What every feed shares: turning documents into records (skipping and counting the ones refused), replacing or changing the live table within the source's limits, reading the authorization file, reconnect backoff, and splitting a stream into lines; never logs a record's content or a secret.

use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::store::FeedContext;
use super::{Definition, Feed, Store};
use crate::core::data::{Change, Record, Table};
use crate::outbound::Outbound;
use crate::telemetry::Metrics;

/// The longest line a streamed feed accepts (a CouchDB change with its document, an NDJSON
/// document); a longer one ends the connection as failed.
pub(super) const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The smallest body cap of a whole-table read (an HTTP source, a CouchDB first load); it is four
/// times the source's byte limit when that is more.
const MIN_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How many refused documents of one update are named in the log; the rest are counted.
const REFUSALS_NAMED: usize = 5;

/// One feed's run for one source: what it publishes to, and under which run number.
#[derive(Debug, Clone)]
pub(super) struct FeedRun {
    pub(super) name: Arc<str>,
    pub(super) shape: Arc<crate::core::data::Shape>,
    pub(super) declared_at: Arc<str>,
    run: u64,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl FeedRun {
    pub(super) fn new(definition: &Definition, run: u64, store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            name: definition.name.clone(),
            shape: definition.shape.clone(),
            declared_at: definition.declared_at.clone(),
            run,
            store,
            metrics,
        }
    }

    /// Runs the feed until its task is cancelled.
    pub(super) async fn run(self, feed: Feed, context: FeedContext) {
        match feed {
            Feed::File { path } => super::file::follow(self, path, context.file_poll_interval).await,
            Feed::Http { url, interval, authorization_file } => {
                let outbound = self.whole_table_client(&context.outbound);
                super::http::follow(self, outbound, url, interval, authorization_file).await;
            }
            Feed::CouchDb { url, authorization_file } => {
                let outbound = self.whole_table_client(&context.outbound);
                super::couchdb::follow(self, outbound, url, authorization_file).await;
            }
            Feed::NdJson { url, authorization_file } => {
                super::ndjson::follow(self, context.outbound, url, authorization_file).await;
            }
        }
    }

    /// The HTTP client with a body cap fit for a whole table of this source.
    fn whole_table_client(&self, outbound: &Outbound) -> Outbound {
        outbound.with_max_bytes(self.shape.limits.bytes.saturating_mul(4).max(MIN_BODY_BYTES))
    }

    /// The changes `documents` make, in order: a put for each document that becomes a record;
    /// the others are skipped, logged with their key (never their content) and counted.
    pub(super) fn puts<'d>(&self, documents: impl IntoIterator<Item = &'d Value>) -> Vec<Change> {
        let mut refusals = Refusals::default();
        let changes = documents.into_iter().filter_map(|document| self.put(document, &mut refusals)).collect();
        self.report(refusals);
        changes
    }

    /// The change one document makes, or `None` when it is refused (noted in `refusals`).
    pub(super) fn put(&self, document: &Value, refusals: &mut Refusals) -> Option<Change> {
        match Record::from_document(&self.shape, document) {
            Ok((key, record)) => Some(Change::Put(key, Arc::new(record))),
            Err(error) => {
                refusals.note(Record::key_of(&self.shape, document), error.to_string());
                None
            }
        }
    }

    /// Logs and counts the documents refused in one update.
    pub(super) fn report(&self, refusals: Refusals) {
        if refusals.count == 0 {
            return;
        }
        for (key, error) in &refusals.named {
            let key = key.as_deref().unwrap_or("(none)");
            tracing::warn!(source = %self.name, declared_at = %self.declared_at, key, %error, "Data source document refused; skipped");
        }
        if refusals.count > refusals.named.len() {
            tracing::warn!(source = %self.name, declared_at = %self.declared_at, refused = refusals.count, "Data source documents refused; skipped (the first ones named above)");
        }
        self.metrics.record_data_updates(
            &self.name,
            "record_refused",
            u64::try_from(refusals.count).unwrap_or(u64::MAX),
        );
    }

    /// Makes `changes`, applied to an empty table, the live table: a whole new load.
    pub(super) fn replace(&self, changes: Vec<Change>) -> bool {
        self.publish(&Table::new(self.shape.clone()), changes, Refused::KeepLastGood)
    }

    /// Applies `changes` to the live table (an empty one when none is live yet).
    pub(super) fn apply(&self, changes: Vec<Change>) -> bool {
        if changes.is_empty() {
            self.current();
            return true;
        }
        let live = self.store.table(&self.name).filter(|table| *table.shape() == self.shape);
        match live {
            Some(table) => self.publish(&table, changes, Refused::ForgetTouchedKeys),
            None => self.publish(&Table::new(self.shape.clone()), changes, Refused::ForgetTouchedKeys),
        }
    }

    fn publish(&self, base: &Table, changes: Vec<Change>, refused: Refused) -> bool {
        let touched: Vec<Arc<str>> = match refused {
            Refused::KeepLastGood => Vec::new(),
            Refused::ForgetTouchedKeys => changes.iter().map(|change| change.key().clone()).collect(),
        };
        match base.apply(changes) {
            Ok(table) => {
                let (records, bytes) = (table.records(), table.bytes());
                if !self.store.publish(&self.name, self.run, table) {
                    return false;
                }
                self.metrics.record_data_table(&self.name, records, bytes);
                self.metrics.record_data_updates(&self.name, "applied", 1);
                true
            }
            Err(over) => {
                tracing::error!(
                    source = %self.name,
                    declared_at = %self.declared_at,
                    records = over.records,
                    bytes = over.bytes,
                    limit_records = over.limits.records,
                    limit_bytes = over.limits.bytes,
                    "Data source update refused: {over}; the last good table stays (raise `spec.limits`)"
                );
                self.metrics.record_data_updates(&self.name, "refused_over_limit", 1);
                self.store.mark_failed(&self.name, self.run, format!("update refused: {over}"));
                if !touched.is_empty() {
                    // A refused change must not leave the record it replaced or removed in force:
                    // the keys it touched have no record until a later change fits.
                    let forgotten = base.apply(touched.into_iter().map(Change::Remove));
                    if let Ok(table) = forgotten {
                        let (records, bytes) = (table.records(), table.bytes());
                        if self.store.publish(&self.name, self.run, table) {
                            self.metrics.record_data_table(&self.name, records, bytes);
                        }
                    }
                }
                false
            }
        }
    }

    /// Notes that the source is current without a change (a 304, a heartbeat, an unchanged file).
    pub(super) fn current(&self) {
        self.store.mark_current(&self.name, self.run);
    }

    /// Logs and counts a failed update; the live table stays. `error` must hold no secret.
    pub(super) fn failed(&self, error: &str) {
        tracing::warn!(source = %self.name, declared_at = %self.declared_at, %error, "Data source update failed; the last good table stays");
        self.metrics.record_data_updates(&self.name, "failed", 1);
        self.store.mark_failed(&self.name, self.run, error.to_string());
    }
}

/// What a change over the limits leaves in force.
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// A whole new load refused: the last good table stays.
    KeepLastGood,
    /// Changes to a live table refused: the records they touched are dropped (checks that read
    /// them are refused), the rest stays.
    ForgetTouchedKeys,
}

/// The documents refused in one update: how many, and the first ones' keys and reasons.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    count: usize,
    named: Vec<(Option<Arc<str>>, String)>,
}

impl Refusals {
    pub(super) fn note(&mut self, key: Option<Arc<str>>, error: String) {
        self.count += 1;
        if self.named.len() < REFUSALS_NAMED {
            self.named.push((key, error));
        }
    }
}

/// The documents of a whole-table body: a JSON array, or one JSON document a line (blank lines
/// skipped). A line that is not JSON fails the whole body, so a file caught half-written never
/// replaces a table.
pub(super) fn documents(text: &str) -> Result<Vec<Value>, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map_err(|error| format!("not a JSON array: {error}"));
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str(line).map_err(|error| format!("line {}: not a JSON document: {error}", number + 1))
        })
        .collect()
}

/// The `Authorization` header a feed sends: the file's content without its final line break,
/// read again at each connection so that a rotated secret is picked up. Errors name the file,
/// never its content.
pub(super) async fn authorization(file: Option<&Path>) -> Result<Option<String>, String> {
    let Some(file) = file else { return Ok(None) };
    let owned = file.to_path_buf();
    let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(owned))
        .await
        .map_err(|error| error.to_string())
        .and_then(|read| read.map_err(|error| error.to_string()))
        .map_err(|error| format!("cannot read the authorization file `{}`: {error}", file.display()))?;
    let value = text.trim_end_matches(['\r', '\n']);
    if value.is_empty() || value.chars().any(|c| c.is_control()) {
        return Err(format!("the authorization file `{}` must hold one header value on one line", file.display()));
    }
    Ok(Some(value.to_string()))
}

/// The headers of a feed's request: `Accept: application/json`, and `Authorization` when given.
pub(super) fn request_headers(authorization: Option<&str>) -> Vec<(&'static str, &str)> {
    let mut headers = vec![("accept", "application/json")];
    headers.extend(authorization.map(|value| ("authorization", value)));
    headers
}

/// Exponential backoff between reconnections, from 100 ms to 30 s, each wait drawn between half
/// and all of its step so that replicas do not reconnect in step.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    attempt: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MOST: Duration = Duration::from_secs(30);

    /// The next wait.
    pub(super) fn next(&mut self) -> Duration {
        let step = Self::FIRST.saturating_mul(1 << self.attempt.min(16)).min(Self::MOST);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = RandomState::new().hash_one(self.attempt) % 1000;
        step / 2 + step.mul_f64(jitter as f64 / 2000.0)
    }

    /// Back to the first step, after a connection that worked.
    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The complete lines at the start of `buffer` (without their line break), removed from it; the
/// incomplete tail stays. Fails when the tail is longer than [`MAX_LINE_BYTES`].
pub(super) fn take_lines(buffer: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
    let mut lines = Vec::new();
    while let Some(end) = buffer.iter().position(|&byte| byte == b'\n') {
        let mut line: Vec<u8> = buffer.drain(..=end).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        lines.push(line);
    }
    if buffer.len() > MAX_LINE_BYTES {
        return Err(format!("a line longer than {MAX_LINE_BYTES} bytes"));
    }
    Ok(lines)
}

/// A sequence value (CouchDB's `seq`, NDJSON's `_seq`) as the text a `since` parameter takes.
pub(super) fn sequence_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// `url` with `?name=value` (or `&name=value`) added, the value form-encoded.
pub(super) fn with_query(url: &str, name: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{url}{separator}{name}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_a_json_array_or_one_document_a_line_and_a_broken_line_fails_it_whole() {
        assert_eq!(documents(r#" [{"_id":"a"},{"_id":"b"}]"#).map(|d| d.len()), Ok(2));
        assert_eq!(documents("{\"_id\":\"a\"}\n\n{\"_id\":\"b\"}\n").map(|d| d.len()), Ok(2));
        let broken = documents("{\"_id\":\"a\"}\n{\"_id\":").unwrap_err();
        assert!(broken.starts_with("line 2: not a JSON document"), "{broken}");
    }

    #[test]
    fn lines_are_taken_whole_and_the_tail_waits_for_its_end() {
        let mut buffer = b"{\"a\":1}\r\n\n{\"b\"".to_vec();
        let lines = take_lines(&mut buffer).unwrap();
        assert_eq!(lines, vec![b"{\"a\":1}".to_vec(), Vec::new()]);
        assert_eq!(buffer, b"{\"b\"".to_vec());
    }

    #[test]
    fn the_backoff_grows_from_a_tenth_of_a_second_to_at_most_thirty_seconds_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
        let waits: Vec<Duration> = (0..20).map(|_| backoff.next()).collect();
        assert!(waits.iter().all(|wait| *wait <= Duration::from_secs(30)));
        assert!(waits.last().is_some_and(|wait| *wait >= Duration::from_secs(15)));
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(100));
    }

    #[test]
    fn a_since_value_is_form_encoded_and_added_to_the_query() {
        assert_eq!(
            with_query("http://c/db/_changes?feed=x", "since", "12-g1AA=="),
            "http://c/db/_changes?feed=x&since=12-g1AA%3D%3D"
        );
        assert_eq!(with_query("http://c/stream", "since", "7"), "http://c/stream?since=7");
    }

    #[tokio::test]
    async fn an_authorization_file_error_names_the_file_and_never_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "Bearer s3cret\n").unwrap();
        assert_eq!(authorization(Some(&file)).await, Ok(Some("Bearer s3cret".into())));
        std::fs::write(&file, "Bearer s3cret\nsecond line\n").unwrap();
        let error = authorization(Some(&file)).await.unwrap_err();
        assert!(error.contains("token") && !error.contains("s3cret"), "{error}");
        let missing = authorization(Some(&dir.path().join("absent"))).await.unwrap_err();
        assert!(missing.starts_with("cannot read the authorization file"), "{missing}");
    }
}
