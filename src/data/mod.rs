//! Data sources named in the policy files: what each reads from, and the live tables checks read; the feeds that keep them current are its submodules.

mod couchdb;
mod feed;
mod file;
mod http;
mod ndjson;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::core::data::{Data, Shape};

pub use store::{FeedContext, NotLoaded};

/// The `data` block of the settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    /// `/readyz` waits this long at most for a declared source's first load, counted from when
    /// it was declared (start-up, or the reload that added it).
    pub ready_timeout_secs: u64,
}

impl Default for DataSettings {
    fn default() -> Self {
        Self { ready_timeout_secs: 30 }
    }
}

/// One `DataSource` document, compiled: its name, what it keeps, and where it reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// `metadata.name`, as lookups name it (`data.users[...]`).
    pub name: Arc<str>,
    /// The key, the fields kept, the user-data header's fields, the limits.
    pub shape: Arc<Shape>,
    /// Where the records come from.
    pub feed: Feed,
    /// `file:line` of the document, for messages about the source.
    pub declared_at: Arc<str>,
}

/// Where a source reads its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// A JSON file (an array of documents, or one document a line), watched like the policies.
    File {
        /// The file.
        path: PathBuf,
    },
    /// A URL answering a JSON array of documents (or one a line), polled with `If-None-Match`.
    Http {
        /// The URL.
        url: String,
        /// How long between two polls.
        interval: Duration,
        /// A file holding the `Authorization` header value to send; never in the policy file.
        authorization_file: Option<PathBuf>,
    },
    /// A CouchDB database, followed through its continuous `_changes` feed with documents.
    CouchDb {
        /// The database's URL (`http://couch:5984/users`).
        url: String,
        /// A file holding the `Authorization` header value to send.
        authorization_file: Option<PathBuf>,
    },
    /// A stream of newline-delimited JSON documents over HTTP, one change a line.
    NdJson {
        /// The URL.
        url: String,
        /// A file holding the `Authorization` header value to send.
        authorization_file: Option<PathBuf>,
    },
}

/// Every source's current table, as the next check reads it, and the feeds that keep them
/// current ([`Store::reconcile`]).
#[derive(Debug, Default)]
pub struct Store {
    data: ArcSwap<Data>,
    /// The declared sources and how their feeds fare, by name; publishing takes this lock too,
    /// so a feed stopped here can no longer publish.
    sources: std::sync::Mutex<std::collections::HashMap<Arc<str>, store::Source>>,
    /// Numbers each feed started, so that a stopped one's late table is refused.
    started: std::sync::atomic::AtomicU64,
}

impl Store {
    /// The data a check reads: one atomic load, never waiting for a feed.
    pub fn current(&self) -> arc_swap::Guard<Arc<Data>> {
        self.data.load()
    }
}

/// A store holding `data` from the start, as offline checks and tests give it.
impl From<Data> for Store {
    fn from(data: Data) -> Self {
        Self { data: ArcSwap::from_pointee(data), ..Self::default() }
    }
}
