//! The NDJSON feed: a long-lived HTTP stream of JSON documents, one a line; `"_deleted": true` removes the line's key. A stream whose lines carry `_seq` is resumed with `?since=<last _seq>`; any other stream is read anew, and its records replace the table once it has been quiet for a moment.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::feed::{Backoff, FeedRun, Refusals, authorization, request_headers, sequence_text, take_lines, with_query};
use crate::core::data::{Change, Record};
use crate::outbound::{BodyStream, Outbound, OutboundError};

/// How long a stream read anew must be quiet (no line) before its records replace the table;
/// the end of the stream counts as quiet too.
pub const QUIET: Duration = Duration::from_millis(500);

/// The longest one connection lasts; it is then opened again (resumed when lines carry `_seq`).
const STREAM_BOUND: Duration = Duration::from_secs(24 * 3600);

/// Follows the stream at `url` until cancelled.
pub(super) async fn follow(feed: FeedRun, outbound: Outbound, url: String, authorization_file: Option<PathBuf>) {
    let outbound = outbound.with_max_bytes(super::feed::MAX_LINE_BYTES);
    let mut since: Option<String> = None;
    let mut backoff = Backoff::default();
    loop {
        let error = match connect(&outbound, &url, since.as_deref(), authorization_file.as_deref()).await {
            Ok(stream) => read(&feed, stream, &mut since, &mut backoff).await,
            Err(Refused::Since) => {
                tracing::warn!(source = %feed.name, "The stream refused the last `_seq`: reading it anew");
                since = None;
                continue;
            }
            Err(Refused::Other(error)) => error,
        };
        feed.failed(&format!("stream dropped: {error}"));
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Why a connection was not opened.
enum Refused {
    /// A 400 to a request with `since`: the server no longer knows that `_seq`.
    Since,
    /// Anything else, said without a secret.
    Other(String),
}

async fn connect(
    outbound: &Outbound,
    url: &str,
    since: Option<&str>,
    authorization_file: Option<&std::path::Path>,
) -> Result<BodyStream, Refused> {
    let authorization = authorization(authorization_file).await.map_err(Refused::Other)?;
    let headers = request_headers(authorization.as_deref());
    let url = match since {
        Some(since) => with_query(url, "since", since),
        None => url.to_string(),
    };
    outbound.open_stream(&url, &headers, STREAM_BOUND).await.map_err(|error| match error {
        OutboundError::Status { status: 400, .. } if since.is_some() => Refused::Since,
        other => Refused::Other(other.to_string()),
    })
}

/// Reads one connection until it ends; returns why. Read anew (no `since`), its records are
/// gathered until the stream is quiet, then replace the table; after that, or when resumed,
/// each batch of lines is one update.
async fn read(feed: &FeedRun, mut stream: BodyStream, since: &mut Option<String>, backoff: &mut Backoff) -> String {
    let mut gathering: Option<Vec<Change>> = since.is_none().then(Vec::new);
    let mut buffer = Vec::new();
    loop {
        let read = match &gathering {
            Some(_) => match tokio::time::timeout(QUIET, stream.read_into(&mut buffer)).await {
                Ok(read) => read,
                Err(_quiet) => {
                    if let Some(changes) = gathering.take()
                        && !feed.replace(changes)
                    {
                        // Never followed onto a table that lacks the stream's start.
                        *since = None;
                        return "the stream's records were not published".into();
                    }
                    continue;
                }
            },
            None => stream.read_into(&mut buffer).await,
        };
        match read {
            Ok(true) => backoff.reset(),
            Ok(false) => {
                if let Some(changes) = gathering.take() {
                    feed.replace(changes);
                }
                return "the server ended the stream".into();
            }
            Err(error) => return error.to_string(),
        }
        let lines = match take_lines(&mut buffer) {
            Ok(lines) => lines,
            Err(error) => return error,
        };
        let changes = match changes(feed, &lines, since) {
            Ok(changes) => changes,
            Err(error) => return error,
        };
        match gathering.as_mut() {
            Some(gathered) => gathered.extend(changes),
            None => {
                feed.apply(changes);
            }
        }
    }
}

/// The changes of lines that arrived together; notes the last `_seq` in `since`.
fn changes(feed: &FeedRun, lines: &[Vec<u8>], since: &mut Option<String>) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    let mut refusals = Refusals::default();
    for line in lines.iter().filter(|line| !line.iter().all(u8::is_ascii_whitespace)) {
        let document: Value =
            serde_json::from_slice(line).map_err(|error| format!("a line that is not JSON: {error}"))?;
        if let Some(seq) = document.get("_seq").and_then(sequence_text) {
            *since = Some(seq);
        }
        if document.get("_deleted").and_then(Value::as_bool) == Some(true) {
            match Record::key_of(&feed.shape, &document) {
                Some(key) => changes.push(Change::Remove(key)),
                None => refusals.note(None, "a deletion without a key".into()),
            }
        } else {
            changes.extend(feed.put(&document, &mut refusals));
        }
    }
    feed.report(refusals);
    Ok(changes)
}
