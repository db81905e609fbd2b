//! The HTTP feed: GETs a URL answering the whole table (a JSON array, or one document a line) every interval, with `If-None-Match` of the last `ETag`; a 304 keeps the table, a 200 replaces it.

use std::path::PathBuf;
use std::time::Duration;

use super::feed::{FeedRun, authorization, documents, request_headers};
use crate::outbound::{Conditional, Outbound, redact_url};

/// The longest one poll may take.
const REQUEST_BOUND: Duration = Duration::from_secs(60);

/// Polls `url` every `interval` until cancelled.
pub(super) async fn follow(
    feed: FeedRun,
    outbound: Outbound,
    url: String,
    interval: Duration,
    authorization_file: Option<PathBuf>,
) {
    let mut etag: Option<String> = None;
    loop {
        match poll(&outbound, &url, etag.as_deref(), authorization_file.as_deref()).await {
            Ok(Conditional::NotModified) => feed.current(),
            Ok(Conditional::Body { etag: new_etag, body }) => {
                let parsed = String::from_utf8(body)
                    .map_err(|_| "the body is not UTF-8".to_string())
                    .and_then(|text| documents(&text));
                match parsed {
                    Ok(documents) => {
                        let changes = feed.puts(&documents);
                        // The ETag is kept only with its table, so a refused body is read again.
                        etag = if feed.replace(changes) { new_etag } else { None };
                    }
                    Err(error) => feed.failed(&format!("`{}`: {error}", redact_url(&url))),
                }
            }
            Err(error) => feed.failed(&error),
        }
        tokio::time::sleep(interval).await;
    }
}

async fn poll(
    outbound: &Outbound,
    url: &str,
    etag: Option<&str>,
    authorization_file: Option<&std::path::Path>,
) -> Result<Conditional, String> {
    let authorization = authorization(authorization_file).await?;
    let headers = request_headers(authorization.as_deref());
    outbound.get_if_none_match(url, &headers, etag, REQUEST_BOUND).await.map_err(|error| error.to_string())
}
