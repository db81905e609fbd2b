//! The file feed: reads a JSON file (an array, or one document a line) into a new table, and reads it again whenever its modification time or length changes, polled like the policy files; never follows a FIFO or device.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::feed::{FeedRun, documents};

/// The longest a read of the file may take; a stuck read is abandoned and counted as failed.
const READ_BOUND: Duration = Duration::from_secs(30);

/// What tells one version of the file from the next: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

/// Loads the file, then polls it every `interval` (never when zero) and loads it again on change.
pub(super) async fn follow(feed: FeedRun, path: PathBuf, interval: Duration) {
    let mut last: Option<Stamp> = None;
    loop {
        let now = stamp(&path).await;
        if last.as_ref() == Some(&now) {
            feed.current();
        } else {
            last = Some(now);
            load(&feed, &path).await;
        }
        if interval.is_zero() {
            return std::future::pending().await;
        }
        tokio::time::sleep(interval).await;
    }
}

async fn stamp(path: &Path) -> Stamp {
    let path = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || std::fs::metadata(path));
    let metadata = tokio::time::timeout(READ_BOUND, read).await.ok()?.ok()?.ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

async fn load(feed: &FeedRun, path: &Path) {
    let owned = path.to_path_buf();
    match tokio::time::timeout(READ_BOUND, tokio::task::spawn_blocking(move || read(&owned))).await {
        Ok(Ok(Ok(documents))) => {
            let changes = feed.puts(&documents);
            feed.replace(changes);
        }
        Ok(Ok(Err(error))) => feed.failed(&format!("`{}`: {error}", path.display())),
        Ok(Err(error)) => feed.failed(&format!("`{}`: the read failed: {error}", path.display())),
        Err(_) => feed.failed(&format!("`{}`: read timed out after {} s", path.display(), READ_BOUND.as_secs())),
    }
}

/// The file's documents; on a blocking thread.
fn read(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot read: {error}"))?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read: {error}"))?;
    documents(&text)
}
