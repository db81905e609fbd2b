//! The server's background tasks, named and owned: each can be cancelled by name, and shutdown cancels them all and waits for them within a bound; no task is spawned detached.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The owner of background tasks. A task is cancelled at its next `.await`: its future is
/// dropped, so what it holds (a fetch under way, a lock) is released.
#[derive(Debug, Default)]
pub struct Tasks {
    /// Cancelled once, at shutdown; every task's own token is a child of it.
    shutdown: CancellationToken,
    running: Mutex<Vec<Running>>,
    /// The runtime tasks run on: the one current when the owner was made, whichever runtime
    /// spawns them (a check on a per-core runtime that starts a key fetch, say).
    runtime: Option<tokio::runtime::Handle>,
}

#[derive(Debug)]
struct Running {
    name: Arc<str>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

impl Tasks {
    /// No task yet; tasks run on the current runtime (or, outside any, on their spawner's).
    pub fn new() -> Self {
        Self { runtime: tokio::runtime::Handle::try_current().ok(), ..Self::default() }
    }

    /// Runs `task` in the background under `name`; its output arrives on the receiver, which
    /// the caller may drop. A task spawned once shutdown has begun is cancelled at once.
    pub fn spawn<T: Send + 'static>(
        &self,
        name: impl Into<Arc<str>>,
        task: impl Future<Output = T> + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (sender, receiver) = oneshot::channel();
        let cancel = self.shutdown.child_token();
        let cancelled = cancel.clone();
        let task = async move {
            tokio::select! {
                biased;
                () = cancelled.cancelled() => {}
                output = task => {
                    let _ = sender.send(output);
                }
            }
        };
        let handle = match &self.runtime {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        };
        if let Ok(mut running) = self.running.lock() {
            running.retain(|task| !task.handle.is_finished());
            running.push(Running { name: name.into(), cancel, handle });
        }
        receiver
    }

    /// [`Self::spawn`], after cancelling every task of the same name: one task per name.
    pub fn spawn_unique(&self, name: impl Into<Arc<str>>, task: impl Future<Output = ()> + Send + 'static) {
        let name = name.into();
        self.cancel(&name);
        drop(self.spawn(name, task));
    }

    /// Cancels every task named `name`.
    pub fn cancel(&self, name: &str) {
        if let Ok(running) = self.running.lock() {
            for task in running.iter().filter(|task| &*task.name == name) {
                task.cancel.cancel();
            }
        }
    }

    /// The names of the tasks still running, sorted.
    pub fn running(&self) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = self
            .running
            .lock()
            .map(|running| {
                running
                    .iter()
                    .filter(|task| !task.handle.is_finished() && !task.cancel.is_cancelled())
                    .map(|task| task.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Cancels every task, and those spawned later, and waits for them to end, at most `bound`.
    /// Returns the names of the tasks that had not ended by then.
    pub async fn shutdown(&self, bound: Duration) -> Vec<Arc<str>> {
        self.shutdown.cancel();
        let tasks = self.running.lock().map(|mut running| std::mem::take(&mut *running)).unwrap_or_default();
        let (names, mut handles): (Vec<Arc<str>>, Vec<JoinHandle<()>>) =
            tasks.into_iter().map(|task| (task.name, task.handle)).unzip();
        let joined = tokio::time::timeout(bound, async {
            for handle in handles.iter_mut() {
                let _ = handle.await;
            }
        })
        .await;
        if joined.is_ok() {
            return Vec::new();
        }
        names.into_iter().zip(handles).filter(|(_, handle)| !handle.is_finished()).map(|(name, _)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Sets its flag when dropped: a cancelled task's future is dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A task that waits forever, holding a flag that says when it was dropped.
    fn pending_forever() -> (Arc<AtomicBool>, impl Future<Output = ()> + Send + 'static) {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        (dropped, async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        })
    }

    #[tokio::test]
    async fn a_task_gives_its_output_to_the_receiver() {
        let tasks = Tasks::new();
        assert_eq!(tasks.spawn("answer", async { 42 }).await.ok(), Some(42));
    }

    #[tokio::test]
    async fn a_task_spawned_under_a_taken_name_replaces_the_one_running() {
        let tasks = Tasks::new();
        let (first_dropped, first) = pending_forever();
        tasks.spawn_unique("refresh", first);
        let (second_dropped, second) = pending_forever();
        tasks.spawn_unique("refresh", second);
        // A hang guard only: cancellation takes effect at the task's next poll.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !first_dropped.load(Ordering::SeqCst) {
            assert!(tokio::time::Instant::now() < deadline, "the first task was never cancelled");
            tokio::task::yield_now().await;
        }
        assert!(!second_dropped.load(Ordering::SeqCst), "the second one runs");
        assert_eq!(tasks.running(), vec![Arc::<str>::from("refresh")]);
    }

    #[tokio::test]
    async fn shutdown_cancels_and_joins_every_task_and_cancels_later_ones_at_once() {
        let tasks = Tasks::new();
        let (dropped, task) = pending_forever();
        let output = tasks.spawn("forever", task);
        assert!(tasks.shutdown(Duration::from_secs(20)).await.is_empty(), "every task ended");
        assert!(dropped.load(Ordering::SeqCst), "its future was dropped");
        assert!(output.await.is_err(), "a cancelled task gives no output");
        let (late_dropped, late) = pending_forever();
        let late_output = tasks.spawn("late", late);
        assert!(late_output.await.is_err(), "a task spawned after shutdown never runs to its end");
        assert!(late_dropped.load(Ordering::SeqCst));
        assert!(tasks.running().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_names_the_tasks_that_did_not_end_within_the_bound() {
        let tasks = Tasks::new();
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = std::sync::mpsc::channel::<()>();
        // Blocks its thread, so it never reaches an `.await` where it could be cancelled.
        drop(tasks.spawn("stuck", async move {
            let _ = started.send(());
            let _ = stuck.recv();
        }));
        has_started.recv().expect("the task starts");
        let left = tasks.shutdown(Duration::from_millis(50)).await;
        assert_eq!(left, vec![Arc::<str>::from("stuck")]);
        drop(release);
    }
}
