//! The data sources' feeds over real sockets and files: the HTTP feed's ETag and 304, the NDJSON stream resumed from its `_seq` or read anew, the file feed's reloads, limits and refusals, and the store's reconcile.

#![expect(clippy::expect_used, clippy::unwrap_used, reason = "test set-up: a failure fails the test")]

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::core::data::{Limits, Shape};
use portcullis::data::{Definition, Feed, FeedContext, Store};
use portcullis::outbound::{Outbound, OutboundLimits};
use portcullis::tasks::Tasks;
use portcullis::telemetry::Metrics;
use support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A shape keyed by `_id`, keeping `apps`, with `records` records at most.
fn shape(records: usize) -> Arc<Shape> {
    Arc::new(Shape {
        key: "_id".into(),
        fields: Box::from([Box::from("apps")]),
        header: None,
        limits: Limits { records, bytes: 1 << 20 },
    })
}

fn definition(name: &str, feed: Feed, records: usize) -> Definition {
    Definition { name: name.into(), shape: shape(records), feed, declared_at: "data.yaml:1".into() }
}

/// A store, and what its feeds run with: a 50 ms file poll.
fn store() -> (Arc<Store>, FeedContext) {
    let limits = OutboundLimits { timeout: Duration::from_secs(5), max_bytes: 1 << 20, allow_link_local: false };
    let context = FeedContext {
        tasks: Arc::new(Tasks::new()),
        outbound: Outbound::new(limits).expect("client"),
        metrics: Arc::new(Metrics::new()),
        file_poll_interval: Duration::from_millis(50),
    };
    (Arc::new(Store::default()), context)
}

/// The source's records, when it has a table.
fn records(store: &Store, source: &str) -> Option<usize> {
    store.current().table(source).map(|table| table.records())
}

/// The value of one sample of the metrics, as text.
fn sample(context: &FeedContext, sample: &str) -> Option<String> {
    let text = context.metrics.encode();
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ').map(ToString::to_string))
}

/// Each request's head, as the test server received it.
type Heads = Arc<Mutex<Vec<String>>>;

/// A tiny HTTP/1.1 server on loopback: records each request's head and hands the connection to
/// `answer`.
async fn serve<F, A>(answer: F) -> (String, Heads)
where
    F: Fn(String, TcpStream) -> A + Send + Sync + 'static,
    A: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let heads = Heads::default();
    let seen = heads.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (answer, seen) = (answer.clone(), seen.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                seen.lock().unwrap().push(head.clone());
                answer(head, stream).await;
            });
        }
    });
    (base, heads)
}

fn heads_with(heads: &Heads, part: &str) -> usize {
    heads.lock().unwrap().iter().filter(|head| head.to_ascii_lowercase().contains(&part.to_ascii_lowercase())).count()
}

#[tokio::test]
async fn the_http_feed_sends_the_last_etag_keeps_its_table_on_304_and_replaces_it_on_200() {
    let version = Arc::new(Mutex::new(1));
    let current = version.clone();
    let (base, heads) = serve(move |head, mut stream| {
        let version = *current.lock().unwrap();
        async move {
            let etag = format!("\"v{version}\"");
            let response = if head.contains(&format!("if-none-match: {etag}")) {
                format!("HTTP/1.1 304 Not Modified\r\netag: {etag}\r\nconnection: close\r\n\r\n")
            } else {
                let body = (0..=version).map(|n| format!(r#"{{"_id":"user{n}","apps":["a{n}"]}}"#)).collect::<Vec<_>>();
                let body = format!("[{}]", body.join(","));
                format!(
                    "HTTP/1.1 200 OK\r\netag: {etag}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = stream.write_all(response.as_bytes()).await;
        }
    })
    .await;
    let secrets = tempfile::tempdir().unwrap();
    let authorization_file = secrets.path().join("authorization");
    std::fs::write(&authorization_file, "Bearer s3cret-token\n").unwrap();
    let (store, context) = store();
    let feed = Feed::Http {
        url: format!("{base}/users.json"),
        interval: Duration::from_millis(50),
        authorization_file: Some(authorization_file),
    };
    store.reconcile(&[definition("users", feed, 100)], &context);
    eventually("the first body is loaded", async || records(&store, "users") == Some(2)).await;
    eventually("a poll sends the ETag and gets a 304", async || heads_with(&heads, "if-none-match: \"v1\"") >= 2).await;
    assert_eq!(records(&store, "users"), Some(2), "a 304 keeps the table");
    assert_eq!(
        sample(&context, r#"portcullis_data_updates_total{source="users",result="applied"}"#).as_deref(),
        Some("1")
    );
    assert!(heads_with(&heads, "authorization: bearer s3cret-token") >= 1, "the authorization file's value is sent");
    *version.lock().unwrap() = 2;
    eventually("a changed body replaces the table", async || records(&store, "users") == Some(3)).await;
    assert_eq!(sample(&context, r#"portcullis_data_records{source="users"}"#).as_deref(), Some("3"));
    context.tasks.shutdown(Duration::from_secs(10)).await;
}

/// Writes `head`, then each line the test sends, until it sends `None` or the client leaves.
async fn write_lines(stream: &mut TcpStream, lines: &mut mpsc::UnboundedReceiver<Option<String>>, head: &str) {
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    while let Some(Some(line)) = lines.recv().await {
        if stream.write_all(format!("{line}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// An NDJSON stream server: each connection writes the lines the test sends, and ends when the
/// test sends `None`.
async fn stream_server() -> (String, Heads, mpsc::UnboundedSender<Option<String>>) {
    let (sender, receiver) = mpsc::unbounded_channel::<Option<String>>();
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let (base, heads) = serve(move |_head, mut stream| {
        let receiver = receiver.clone();
        async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";
            write_lines(&mut stream, &mut *receiver.lock().await, head).await;
        }
    })
    .await;
    (base, heads, sender)
}

#[tokio::test]
async fn an_ndjson_stream_with_seq_is_applied_line_by_line_and_resumed_from_its_last_seq() {
    let (base, heads, lines) = stream_server().await;
    let (store, context) = store();
    let feed = Feed::NdJson { url: format!("{base}/users/stream"), authorization_file: None };
    store.reconcile(&[definition("users", feed, 100)], &context);
    for line in
        [r#"{"_id":"ana","apps":["a1"],"_seq":1}"#, r#"{"_id":"bo","_seq":2}"#, r#"{"apps":["no key"],"_seq":3}"#]
    {
        lines.send(Some(line.into())).unwrap();
    }
    eventually("the stream's records are loaded once it is quiet", async || records(&store, "users") == Some(2)).await;
    assert_eq!(
        sample(&context, r#"portcullis_data_updates_total{source="users",result="record_refused"}"#).as_deref(),
        Some("1")
    );
    lines.send(Some(r#"{"_id":"ana","_deleted":true,"_seq":4}"#.into())).unwrap();
    eventually("a deletion removes its record", async || records(&store, "users") == Some(1)).await;
    lines.send(None).unwrap();
    eventually("the feed reconnects from the last _seq", async || {
        heads_with(&heads, "GET /users/stream?since=4 ") == 1
    })
    .await;
    lines.send(Some(r#"{"_id":"cy","_seq":5}"#.into())).unwrap();
    eventually("a resumed stream's line is applied on the table", async || records(&store, "users") == Some(2)).await;
    assert!(store.current().table("users").unwrap().get("bo").is_some(), "the records before the drop stay");
    context.tasks.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_change_over_the_limits_drops_the_record_it_touched_so_that_no_stale_record_stays_in_force() {
    let (base, _heads, lines) = stream_server().await;
    let (store, context) = store();
    let feed = Feed::NdJson { url: format!("{base}/users/stream"), authorization_file: None };
    let small = Shape { limits: Limits { records: 10, bytes: 400 }, ..(*shape(10)).clone() };
    let definition = Definition { shape: Arc::new(small), ..definition("users", feed, 10) };
    store.reconcile(&[definition], &context);
    for line in [r#"{"_id":"ana","apps":["a1"],"_seq":1}"#, r#"{"_id":"bo","apps":["b1"],"_seq":2}"#] {
        lines.send(Some(line.into())).unwrap();
    }
    eventually("the stream's records are loaded", async || records(&store, "users") == Some(2)).await;
    // ana's record changes to one that does not fit: the old one must not stay in force.
    lines.send(Some(format!(r#"{{"_id":"ana","apps":["{}"],"_seq":3}}"#, "x".repeat(400)))).unwrap();
    let over = r#"portcullis_data_updates_total{source="users",result="refused_over_limit"}"#;
    eventually("the change is refused", async || sample(&context, over).as_deref() == Some("1")).await;
    eventually("the record the refused change touched is dropped", async || {
        store.current().table("users").is_some_and(|table| table.get("ana").is_none())
    })
    .await;
    assert!(store.current().table("users").unwrap().get("bo").is_some(), "records the change did not touch stay");
    context.tasks.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn an_ndjson_stream_without_seq_is_read_anew_and_replaces_the_table_once_quiet() {
    let (base, heads, lines) = stream_server().await;
    let (store, context) = store();
    let feed = Feed::NdJson { url: format!("{base}/users/stream"), authorization_file: None };
    store.reconcile(&[definition("users", feed, 100)], &context);
    lines.send(Some(r#"{"_id":"ana"}"#.into())).unwrap();
    lines.send(Some(r#"{"_id":"bo"}"#.into())).unwrap();
    eventually("the first stream is loaded", async || records(&store, "users") == Some(2)).await;
    lines.send(None).unwrap();
    lines.send(Some(r#"{"_id":"cy"}"#.into())).unwrap();
    eventually("the second stream replaces the table", async || records(&store, "users") == Some(1)).await;
    assert!(store.current().table("users").unwrap().get("cy").is_some());
    assert!(heads.lock().unwrap().iter().all(|head| !head.contains("since=")), "no since without _seq");
    context.tasks.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn the_file_feed_loads_again_on_change_and_keeps_the_last_good_table_on_a_broken_or_oversized_file() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("users.json");
    support::replace_file(&path, r#"[{"_id":"ana","apps":["a1"]},{"_id":"bo"}]"#);
    let (store, context) = store();
    store.reconcile(&[definition("users", Feed::File { path: path.clone() }, 3)], &context);
    eventually("the array is loaded", async || records(&store, "users") == Some(2)).await;
    support::replace_file(&path, "{\"_id\":\"ana\"}\n{\"_id\":\"bo\"}\n{\"_id\":\"cy\"}\n");
    eventually("one document a line is loaded", async || records(&store, "users") == Some(3)).await;
    support::replace_file(&path, "{\"_id\":\"ana\"}\n{\"_id\":");
    let failed = r#"portcullis_data_updates_total{source="users",result="failed"}"#;
    eventually("a broken file is counted as failed", async || sample(&context, failed).as_deref() == Some("1")).await;
    support::replace_file(&path, r#"[{"_id":"a"},{"_id":"b"},{"_id":"c"},{"_id":"d"}]"#);
    let over = r#"portcullis_data_updates_total{source="users",result="refused_over_limit"}"#;
    eventually("a file over the limit is refused", async || sample(&context, over).as_deref() == Some("1")).await;
    assert_eq!(records(&store, "users"), Some(3), "the last good table stays");
    assert!(store.not_loaded().is_empty());
    context.tasks.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn reconcile_starts_new_sources_keeps_unchanged_ones_and_drops_removed_ones_with_their_series() {
    let dir = tempfile::tempdir().unwrap();
    let (users, apps) = (dir.path().join("users.json"), dir.path().join("apps.json"));
    support::replace_file(&users, r#"[{"_id":"ana"}]"#);
    let (store, context) = store();
    let users_source = definition("users", Feed::File { path: users.clone() }, 10);
    let apps_source = definition("apps", Feed::File { path: apps.clone() }, 10);
    store.reconcile(&[users_source.clone(), apps_source.clone()], &context);
    eventually("users is loaded", async || records(&store, "users") == Some(1)).await;
    let pending = store.not_loaded();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!((&*pending[0].name, &*pending[0].declared_at), ("apps", "data.yaml:1"));
    assert!(pending[0].failure.as_deref().is_some_and(|failure| failure.contains("cannot read")), "{pending:?}");
    let before = store.current().table("users").cloned().unwrap();
    store.reconcile(std::slice::from_ref(&users_source), &context);
    assert!(store.current().table("apps").is_none());
    assert!(store.not_loaded().is_empty(), "a removed source is no longer awaited");
    assert!(!context.metrics.encode().contains(r#"source="apps""#), "its series are gone");
    let after = store.current().table("users").cloned().unwrap();
    assert!(Arc::ptr_eq(&before, &after), "an unchanged source keeps its table");
    let wider = Definition { shape: shape(20), ..users_source };
    store.reconcile(&[wider], &context);
    assert!(store.current().table("users").is_none(), "a new shape drops the old table");
    eventually("the restarted feed loads it again", async || records(&store, "users") == Some(1)).await;
    context.tasks.shutdown(Duration::from_secs(10)).await;
}

/// A CouchDB-shaped server: `_changes` without `feed=continuous` answers the documents given,
/// the continuous feed writes the lines the test sends; `since=gone` is refused with a 400.
async fn couch_server(first: &'static str) -> (String, Heads, mpsc::UnboundedSender<Option<String>>) {
    let (sender, receiver) = mpsc::unbounded_channel::<Option<String>>();
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let (base, heads) = serve(move |head, mut stream| {
        let receiver = receiver.clone();
        async move {
            if head.contains("since=gone") {
                let body = r#"{"error":"invalid_since_seq"}"#;
                let answer = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                return;
            }
            if !head.contains("feed=continuous") {
                let answer =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{first}", first.len());
                let _ = stream.write_all(answer.as_bytes()).await;
                return;
            }
            write_lines(&mut stream, &mut *receiver.lock().await, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n").await;
        }
    })
    .await;
    (base, heads, sender)
}

#[tokio::test]
async fn the_couchdb_feed_loads_follows_changes_by_id_resumes_from_the_last_seq_and_rereads_only_a_gone_seq() {
    let first = r#"{"results":[
        {"seq":"1-a","id":"u1","changes":[],"doc":{"_id":"u1","email":"ana@x","apps":["a1"]}},
        {"seq":"2-a","id":"_design/views","changes":[],"doc":{"_id":"_design/views","email":"design"}},
        {"seq":"3-a","id":"u2","changes":[],"doc":{"_id":"u2","email":"bo@x"}}
    ],"last_seq":"3-a"}"#;
    let (base, heads, lines) = couch_server(first).await;
    let (store, context) = store();
    let by_email = Definition {
        shape: Arc::new(Shape { key: "email".into(), ..(*shape(100)).clone() }),
        ..definition("users", Feed::CouchDb { url: format!("{base}/users/"), authorization_file: None }, 100)
    };
    store.reconcile(&[by_email], &context);
    eventually("the first load", async || records(&store, "users") == Some(2)).await;
    eventually("the continuous feed from last_seq", async || {
        heads_with(&heads, "GET /users/_changes?feed=continuous&include_docs=true&heartbeat=10000&since=3-a ") == 1
    })
    .await;
    lines.send(Some(String::new())).unwrap();
    lines
        .send(Some(r#"{"seq":"4-a","id":"u1","deleted":true,"changes":[],"doc":{"_id":"u1","_deleted":true}}"#.into()))
        .unwrap();
    eventually("a deleted document's record is removed by its id", async || records(&store, "users") == Some(1)).await;
    assert!(store.current().table("users").unwrap().get("ana@x").is_none());
    lines.send(Some(r#"{"seq":"5-a","id":"u2","changes":[],"doc":{"_id":"u2","email":"bo@y"}}"#.into())).unwrap();
    eventually("a changed key replaces the old one", async || {
        store.current().table("users").is_some_and(|table| table.get("bo@y").is_some() && table.get("bo@x").is_none())
    })
    .await;
    lines.send(None).unwrap();
    eventually("the dropped feed resumes from the last seq", async || heads_with(&heads, "&since=5-a ") == 1).await;
    assert_eq!(heads_with(&heads, "since=0"), 1, "never read again from 0");
    lines.send(Some(r#"{"last_seq":"gone"}"#.into())).unwrap();
    lines.send(None).unwrap();
    eventually("a seq the server refuses is read again from 0", async || heads_with(&heads, "since=0") == 2).await;
    eventually("the reload replaces the table", async || records(&store, "users") == Some(2)).await;
    context.tasks.shutdown(Duration::from_secs(10)).await;
}
