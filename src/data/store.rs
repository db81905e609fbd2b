//! The store's bookkeeping: which feeds run for which declared sources, starting, restarting and stopping them as the policy files change, and publishing their tables atomically.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::feed::FeedRun;
use super::{Definition, Feed, Store};
use crate::core::data::{Data, Table};
use crate::outbound::Outbound;
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// What the feeds need beside their definition: where they run, the HTTP client, the metrics,
/// and how often a file is polled.
#[derive(Debug, Clone)]
pub struct FeedContext {
    /// The owner of the feed tasks; shutdown ends them.
    pub tasks: Arc<Tasks>,
    /// The one HTTP client.
    pub outbound: Outbound,
    /// Where updates are counted.
    pub metrics: Arc<Metrics>,
    /// How often a file source's modification time and length are read (`reload_poll_interval_ms`;
    /// zero reads the file once).
    pub file_poll_interval: Duration,
}

/// One declared source: its definition, the feed that runs for it, and how that feed fares.
#[derive(Debug)]
pub(super) struct Source {
    definition: Definition,
    /// The number of the feed running for it; a table from another is refused.
    run: u64,
    /// When it was declared, or restarted without its table.
    declared: Instant,
    /// Whether a table of its current shape is live.
    loaded: bool,
    /// When it was last known current: a load, a change, a 304, a heartbeat.
    current_at: Option<Instant>,
    /// Why its last update failed, when it did (no secret: URLs redacted, no file content).
    failure: Option<String>,
}

/// A declared source without a table yet, as `/readyz` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLoaded {
    /// The source's name.
    pub name: Arc<str>,
    /// `file:line` of its `DataSource` document.
    pub declared_at: Arc<str>,
    /// How long since it was declared.
    pub waited: Duration,
    /// Why its last attempt failed, when one did.
    pub failure: Option<String>,
}

/// The name of a source's feed task.
fn task_name(source: &str) -> String {
    format!("data source {source}")
}

impl Store {
    /// Brings the running feeds in line with `definitions`: starts a feed for each new source,
    /// stops the feed of each source no longer declared and drops its table, restarts the feed
    /// of each changed one (its table kept while the new feed loads when its shape is the same,
    /// dropped otherwise), and leaves unchanged ones running with their data.
    pub fn reconcile(self: &Arc<Self>, definitions: &[Definition], context: &FeedContext) {
        let Ok(mut sources) = self.sources.lock() else { return };
        let removed: Vec<Arc<str>> = sources
            .keys()
            .filter(|name| !definitions.iter().any(|definition| definition.name == **name))
            .cloned()
            .collect();
        for name in removed {
            context.tasks.cancel(&task_name(&name));
            sources.remove(&name);
            self.data.rcu(|data| data.without(&name));
            context.metrics.forget_data_source(&name);
            tracing::info!(source = %name, "Data source no longer declared: its feed stopped and its table dropped");
        }
        for definition in definitions {
            let run = self.started.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            match sources.get_mut(&definition.name) {
                Some(source) if source.definition == *definition => continue,
                Some(source) => {
                    if source.definition.shape != definition.shape {
                        self.data.rcu(|data| data.without(&definition.name));
                        (source.loaded, source.declared, source.current_at) = (false, now, None);
                    }
                    source.definition = definition.clone();
                    source.run = run;
                    tracing::info!(source = %definition.name, declared_at = %definition.declared_at, feed = %describe(&definition.feed), "Data source changed: restarting its feed");
                }
                None => {
                    context.metrics.record_data_source(&definition.name);
                    sources.insert(
                        definition.name.clone(),
                        Source {
                            definition: definition.clone(),
                            run,
                            declared: now,
                            loaded: false,
                            current_at: None,
                            failure: None,
                        },
                    );
                    tracing::info!(source = %definition.name, declared_at = %definition.declared_at, feed = %describe(&definition.feed), "Data source declared: starting its feed");
                }
            }
            let feed = FeedRun::new(definition, run, self.clone(), context.metrics.clone());
            context.tasks.spawn_unique(task_name(&definition.name), feed.run(definition.feed.clone(), context.clone()));
        }
    }

    /// The declared sources that have no table yet, by name.
    pub fn not_loaded(&self) -> Vec<NotLoaded> {
        let Ok(sources) = self.sources.lock() else { return Vec::new() };
        let mut pending: Vec<NotLoaded> = sources
            .values()
            .filter(|source| !source.loaded)
            .map(|source| NotLoaded {
                name: source.definition.name.clone(),
                declared_at: source.definition.declared_at.clone(),
                waited: source.declared.elapsed(),
                failure: source.failure.clone(),
            })
            .collect();
        pending.sort_by(|a, b| a.name.cmp(&b.name));
        pending
    }

    /// Seconds since each source was last known current; since it was declared when never.
    pub fn ages(&self) -> Vec<(Arc<str>, f64)> {
        let Ok(sources) = self.sources.lock() else { return Vec::new() };
        sources
            .values()
            .map(|source| {
                let since = source.current_at.unwrap_or(source.declared);
                (source.definition.name.clone(), since.elapsed().as_secs_f64())
            })
            .collect()
    }

    /// Makes `table` the source's live table, when feed `run` is still the source's: one atomic
    /// swap, seen by the next check. Returns whether it was published.
    pub(super) fn publish(&self, name: &Arc<str>, run: u64, table: Table) -> bool {
        let table = Arc::new(table);
        self.with_source(name, run, |store, source| {
            store.data.rcu(|data: &Arc<Data>| data.with_table(name.clone(), table.clone()));
            source.loaded = true;
            source.current_at = Some(Instant::now());
            source.failure = None;
        })
        .is_some()
    }

    /// The source's live table, when it has one.
    pub(super) fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.data.load().table(name).cloned()
    }

    /// Notes that feed `run` found its source current without a change (a 304, a heartbeat).
    pub(super) fn mark_current(&self, name: &Arc<str>, run: u64) {
        let _ = self.with_source(name, run, |_, source| {
            source.current_at = Some(Instant::now());
            source.failure = None;
        });
    }

    /// Notes why feed `run` could not update its source.
    pub(super) fn mark_failed(&self, name: &Arc<str>, run: u64, failure: String) {
        let _ = self.with_source(name, run, |_, source| source.failure = Some(failure));
    }

    fn with_source<T>(&self, name: &str, run: u64, change: impl FnOnce(&Self, &mut Source) -> T) -> Option<T> {
        let mut sources = self.sources.lock().ok()?;
        let source = sources.get_mut(name).filter(|source| source.run == run)?;
        Some(change(self, source))
    }
}

/// What a feed reads, for a log line: its kind and where, URLs without userinfo or query.
pub(super) fn describe(feed: &Feed) -> String {
    match feed {
        Feed::File { path } => format!("file {}", path.display()),
        Feed::Http { url, .. } => format!("http {}", crate::outbound::redact_url(url)),
        Feed::CouchDb { url, .. } => format!("couchdb {}", crate::outbound::redact_url(url)),
        Feed::NdJson { url, .. } => format!("ndjson {}", crate::outbound::redact_url(url)),
    }
}
