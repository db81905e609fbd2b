//! The CouchDB feed: a first load from the normal `_changes` feed with documents, then the continuous feed from its `last_seq`; each batch of changes that arrives together is one update; a dropped feed resumes from the last `seq` after a backoff, and reads again from 0 only when the server refuses that `seq`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::feed::{Backoff, FeedRun, Refusals, authorization, request_headers, sequence_text, take_lines, with_query};
use crate::core::data::{Change, Record};
use crate::outbound::{Outbound, OutboundError, redact_url};

/// The heartbeat asked of the continuous feed: an empty line this often when nothing changes.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A continuous feed silent for this long (no change, no heartbeat) is taken as dropped.
const SILENCE_BOUND: Duration = Duration::from_secs(30);

/// The longest the first load's request may take.
const LOAD_BOUND: Duration = Duration::from_secs(300);

/// The longest one continuous request lasts; it is then resumed from its last `seq`.
const STREAM_BOUND: Duration = Duration::from_secs(24 * 3600);

/// Why a feed stopped.
enum Stop {
    /// The server refused the `seq` (400): read again from 0.
    SequenceGone,
    /// The connection failed or ended.
    Dropped(String),
}

/// The feed's state: the last `seq` applied and each document's key by `_id` (a key may be
/// another field), to remove a deleted document's record.
struct Follower {
    feed: FeedRun,
    outbound: Outbound,
    database: String,
    authorization_file: Option<PathBuf>,
    since: Option<String>,
    keys: HashMap<Box<str>, Arc<str>>,
}

/// Follows the database at `url` until cancelled.
pub(super) async fn follow(feed: FeedRun, outbound: Outbound, url: String, authorization_file: Option<PathBuf>) {
    let database = url.trim_end_matches('/').to_string();
    let mut follower = Follower { feed, outbound, database, authorization_file, since: None, keys: HashMap::new() };
    let mut backoff = Backoff::default();
    loop {
        if follower.since.is_none() {
            if let Err(error) = follower.load().await {
                follower.feed.failed(&error);
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
            backoff.reset();
        }
        match follower.continuous(&mut backoff).await {
            Stop::SequenceGone => {
                tracing::warn!(source = %follower.feed.name, database = %redact_url(&follower.database), since = follower.since.as_deref().unwrap_or_default(), "The database no longer knows the last seq: reading it again from 0");
                follower.since = None;
            }
            Stop::Dropped(error) => {
                let since = follower.since.as_deref().unwrap_or_default();
                follower.feed.failed(&format!("changes feed dropped: {error}; resuming from seq {since}"));
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

impl Follower {
    /// The first load: every document from `since=0`, as one new table.
    async fn load(&mut self) -> Result<(), String> {
        let url = format!("{}/_changes?include_docs=true&since=0", self.database);
        let authorization = authorization(self.authorization_file.as_deref()).await?;
        let headers = request_headers(authorization.as_deref());
        let answer =
            self.outbound.get_json_with_headers(&url, &headers, LOAD_BOUND).await.map_err(|e| e.to_string())?;
        let results = answer
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("`{}`: the answer has no `results` array", redact_url(&url)))?;
        let last_seq = answer
            .get("last_seq")
            .and_then(sequence_text)
            .ok_or_else(|| format!("`{}`: the answer has no `last_seq`", redact_url(&url)))?;
        self.keys.clear();
        let mut refusals = Refusals::default();
        let mut changes = Vec::new();
        for result in results {
            self.change(result, &mut refusals, &mut changes);
        }
        self.feed.report(refusals);
        // A first load refused (over the limits) is read again later, never followed from its
        // `last_seq` onto a table that lacks it.
        if !self.feed.replace(changes) {
            return Err("the first load was not published".into());
        }
        self.since = Some(last_seq);
        Ok(())
    }

    /// Follows the continuous feed from `since`, applying each batch, until it stops.
    async fn continuous(&mut self, backoff: &mut Backoff) -> Stop {
        let since = self.since.clone().unwrap_or_default();
        let url =
            format!("{}/_changes?feed=continuous&include_docs=true&heartbeat={}", self.database, HEARTBEAT.as_millis());
        let url = with_query(&url, "since", &since);
        let authorization = match authorization(self.authorization_file.as_deref()).await {
            Ok(authorization) => authorization,
            Err(error) => return Stop::Dropped(error),
        };
        let headers = request_headers(authorization.as_deref());
        let mut stream = match self.outbound.open_stream(&url, &headers, STREAM_BOUND).await {
            Ok(stream) => stream,
            Err(OutboundError::Status { status: 400, .. }) => return Stop::SequenceGone,
            Err(error) => return Stop::Dropped(error.to_string()),
        };
        let mut buffer = Vec::new();
        loop {
            match tokio::time::timeout(SILENCE_BOUND, stream.read_into(&mut buffer)).await {
                Err(_) => {
                    return Stop::Dropped(format!("no change and no heartbeat for {} s", SILENCE_BOUND.as_secs()));
                }
                Ok(Err(error)) => return Stop::Dropped(error.to_string()),
                Ok(Ok(false)) => return Stop::Dropped("the server ended the feed".into()),
                Ok(Ok(true)) => {}
            }
            backoff.reset();
            let lines = match take_lines(&mut buffer) {
                Ok(lines) => lines,
                Err(error) => return Stop::Dropped(error),
            };
            if let Err(error) = self.batch(&lines) {
                return Stop::Dropped(error);
            }
        }
    }

    /// Applies the changes of the lines that arrived together, as one update; an empty line is a
    /// heartbeat.
    fn batch(&mut self, lines: &[Vec<u8>]) -> Result<(), String> {
        let mut changes = Vec::new();
        let mut refusals = Refusals::default();
        let mut last_seq = None;
        for line in lines.iter().filter(|line| !line.iter().all(u8::is_ascii_whitespace)) {
            let change: Value =
                serde_json::from_slice(line).map_err(|error| format!("a change that is not JSON: {error}"))?;
            if let Some(seq) = change.get("last_seq").and_then(sequence_text) {
                last_seq = Some(seq);
                continue;
            }
            self.change(&change, &mut refusals, &mut changes);
            last_seq = change.get("seq").and_then(sequence_text).or(last_seq);
        }
        self.feed.report(refusals);
        // Changes over the limits are refused and logged; the seq moves on so that the same
        // batch is not read again forever (raising the limits restarts the feed from 0).
        self.feed.apply(changes);
        if let Some(seq) = last_seq {
            self.since = Some(seq);
        }
        Ok(())
    }

    /// Adds the changes one `_changes` result makes to `changes`, keeping the `_id` to key map
    /// current; design documents make none.
    fn change(&mut self, result: &Value, refusals: &mut Refusals, changes: &mut Vec<Change>) {
        let Some(id) = result.get("id").and_then(Value::as_str) else { return };
        if id.starts_with("_design/") {
            return;
        }
        let deleted = result.get("deleted").and_then(Value::as_bool).unwrap_or(false);
        // The document's old record no longer stands, unless it is put again under the same key.
        let previous = self.keys.remove(id);
        let put = match result.get("doc").filter(|_| !deleted) {
            None => None,
            Some(document) => match Record::from_document(&self.feed.shape, document) {
                Ok((key, record)) => Some((key, record)),
                Err(error) => {
                    refusals.note(Record::key_of(&self.feed.shape, document), error.to_string());
                    None
                }
            },
        };
        if let Some(old) = previous.filter(|old| put.as_ref().is_none_or(|(key, _)| key != old)) {
            changes.push(Change::Remove(old));
        }
        if let Some((key, record)) = put {
            self.keys.insert(id.into(), key.clone());
            changes.push(Change::Put(key, Arc::new(record)));
        }
    }
}
