//! Where the check doors run: tokio's multi-thread runtime, or one current-thread runtime per core, each accepting on its own `SO_REUSEPORT` listeners; the admin door and background tasks stay on the main runtime, and nothing here decides.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Deserializer, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{oneshot, watch};

use crate::doors::grpc;
use crate::doors::listener::{self, ConnectionSlots};
use crate::engine::Engine;
use crate::settings::ConnectionLimits;
use crate::telemetry::Door;

/// The backlog of each listener: the standard library's and tokio's for `TcpListener::bind`.
const LISTEN_BACKLOG: i32 = 128;

/// How the check doors are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeMode {
    /// `per_core` with one thread, `multi_thread` with more: with one thread both have one
    /// listener per door and the same shutdown, and a current-thread runtime costs less per check.
    Auto,
    /// One tokio multi-thread runtime with `threads` workers, one listener per door: a
    /// connection's requests may be answered on any core.
    MultiThread,
    /// `threads` OS threads, each a tokio current-thread runtime with its own listener per door
    /// on the same address (`SO_REUSEPORT`): the kernel spreads connections over them, and a
    /// connection stays on its thread.
    PerCore,
}

impl RuntimeMode {
    /// The mode as the settings spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::MultiThread => "multi_thread",
            Self::PerCore => "per_core",
        }
    }
}

/// The mode the check doors run in once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chosen {
    MultiThread,
    PerCore,
}

impl Chosen {
    fn as_str(self) -> &'static str {
        match self {
            Self::MultiThread => RuntimeMode::MultiThread.as_str(),
            Self::PerCore => RuntimeMode::PerCore.as_str(),
        }
    }
}

/// The `runtime` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// `auto` (the default), `multi_thread` or `per_core`.
    pub mode: RuntimeMode,
    /// Worker threads (`multi_thread`) or runtimes (`per_core`); unset, the CPUs this process
    /// may use ([`std::thread::available_parallelism`]: the affinity mask and, on Linux, the
    /// cgroup CPU quota).
    #[serde(deserialize_with = "at_least_one_thread", skip_serializing_if = "Option::is_none")]
    pub threads: Option<NonZeroUsize>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self { mode: RuntimeMode::Auto, threads: None }
    }
}

/// `threads`, refusing 0 with a message of its own (the caller adds the file and line).
fn at_least_one_thread<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<NonZeroUsize>, D::Error> {
    Option::<usize>::deserialize(deserializer)?
        .map(|threads| {
            NonZeroUsize::new(threads).ok_or_else(|| serde::de::Error::custom("runtime.threads must be at least 1"))
        })
        .transpose()
}

impl RuntimeSettings {
    /// The threads to run: the setting, else the CPUs this process may use (1 when unknown).
    pub fn threads(&self) -> NonZeroUsize {
        self.threads.unwrap_or_else(available_cpus)
    }

    /// The mode the check doors run in: the setting, `auto` resolved by [`Self::threads`].
    fn chosen(&self) -> Chosen {
        match self.mode {
            RuntimeMode::Auto if self.threads().get() == 1 => Chosen::PerCore,
            RuntimeMode::Auto | RuntimeMode::MultiThread => Chosen::MultiThread,
            RuntimeMode::PerCore => Chosen::PerCore,
        }
    }

    /// Why [`Self::chosen`] is what it is, for the start-up log.
    fn why(&self) -> &'static str {
        match (self.mode, self.chosen()) {
            (RuntimeMode::Auto, Chosen::PerCore) => "auto: one thread, so a current-thread runtime",
            (RuntimeMode::Auto, Chosen::MultiThread) => "auto: several threads, so tokio's multi-thread runtime",
            (RuntimeMode::MultiThread | RuntimeMode::PerCore, _) => "set by runtime.mode",
        }
    }

    /// The runtime `main` runs the server on: in `multi_thread` mode the one that also serves
    /// checks; in `per_core` mode a current-thread one for the admin door, reloads and the other
    /// background tasks, the checks having runtimes of their own.
    pub fn main_runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match self.chosen() {
            Chosen::MultiThread => {
                tokio::runtime::Builder::new_multi_thread().worker_threads(self.threads().get()).enable_all().build()
            }
            Chosen::PerCore => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        }
    }

    /// Listeners per check door: one, or one per runtime.
    fn listeners(&self) -> usize {
        match self.chosen() {
            Chosen::MultiThread => 1,
            Chosen::PerCore => self.threads().get(),
        }
    }
}

/// The CPUs this process may use, 1 when that cannot be known.
pub fn available_cpus() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// A check door's address cannot be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({door}): {source}")]
pub struct BindError {
    /// The door's name.
    pub door: &'static str,
    /// The address asked for.
    pub address: SocketAddr,
    /// Why the bind failed.
    pub source: std::io::Error,
}

/// The check doors' listeners, bound before any door serves: for each runtime, its gRPC
/// listener and, when the HTTP door is on, its HTTP one.
#[derive(Debug)]
pub struct CheckListeners {
    settings: RuntimeSettings,
    runtimes: Vec<RuntimeListeners>,
}

/// What one runtime accepts on.
#[derive(Debug)]
struct RuntimeListeners {
    grpc: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
}

/// Binds the gRPC door on `grpc` and, when given, the HTTP door on `http`: one listener each,
/// or in `per_core` mode one per runtime on the same address (`SO_REUSEPORT`). With port 0 the
/// first listener picks the port and the others bind that port.
pub fn bind(
    settings: RuntimeSettings,
    grpc: SocketAddr,
    http: Option<SocketAddr>,
) -> Result<CheckListeners, BindError> {
    let count = settings.listeners();
    let grpc = bind_door("grpc", grpc, count)?;
    let http = match http {
        Some(address) => bind_door("http", address, count)?.into_iter().map(Some).collect(),
        None => std::iter::repeat_with(|| None).take(count).collect::<Vec<_>>(),
    };
    let runtimes = grpc.into_iter().zip(http).map(|(grpc, http)| RuntimeListeners { grpc, http }).collect();
    Ok(CheckListeners { settings, runtimes })
}

/// `count` listeners on `address`, sharing it when more than one.
fn bind_door(door: &'static str, address: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, BindError> {
    let failed = |address| move |source| BindError { door, address, source };
    let first = listen(address, count > 1).map_err(failed(address))?;
    let bound = first.local_addr().map_err(failed(address))?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(listen(bound, true).map_err(failed(bound))?);
    }
    tracing::info!(door = %door, address = %bound, listeners = count, "Listening");
    Ok(listeners)
}

/// A non-blocking listener on `address`, with `SO_REUSEADDR` as tokio sets it, and
/// `SO_REUSEPORT` when `shared`.
fn listen(address: SocketAddr, shared: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// What every runtime serves the check doors with.
#[derive(Clone)]
pub struct CheckDoors {
    /// Decides the checks of both doors.
    pub engine: Arc<Engine>,
    /// The gRPC health statuses, served beside Check.
    pub health: tonic_health::server::HealthReporter,
    /// The HTTP door's router, when the door is on.
    pub http: Option<Router>,
    /// The HTTP door's connection bounds; `max_connections` holds over all its listeners.
    pub limits: ConnectionLimits,
}

/// The check doors being served.
#[derive(Debug)]
pub struct Serving {
    /// One per runtime: its doors' outcome once they drained.
    drains: Vec<oneshot::Receiver<Result<(), String>>>,
}

impl Serving {
    /// Waits until every runtime's doors have drained (shutdown turned true, in-flight checks
    /// answered); the first failure, naming its runtime and door.
    pub async fn drained(self) -> Result<(), String> {
        let mut outcome = Ok(());
        for (index, drain) in self.drains.into_iter().enumerate() {
            let drained = drain.await.unwrap_or_else(|_| Err("its thread ended without draining".into()));
            if let Err(message) = drained
                && outcome.is_ok()
            {
                outcome = Err(format!("runtime {index}: {message}"));
            }
        }
        outcome
    }
}

/// Serves the check doors on `listeners` until `shutdown` turns true: on tasks of the current
/// (multi-thread) runtime, or on one thread and current-thread runtime per listener set.
pub fn serve(
    doors: &CheckDoors,
    listeners: CheckListeners,
    shutdown: &watch::Receiver<bool>,
) -> std::io::Result<Serving> {
    let CheckListeners { settings, runtimes } = listeners;
    let slots = ConnectionSlots::new(doors.limits);
    let mode = settings.chosen();
    tracing::info!(
        mode = mode.as_str(),
        why = settings.why(),
        threads = settings.threads().get(),
        available_cpus = available_cpus().get(),
        "Serving checks"
    );
    let mut drains = Vec::with_capacity(runtimes.len());
    for (index, listeners) in runtimes.into_iter().enumerate() {
        let (finished, drain) = oneshot::channel();
        let (doors, slots, shutdown) = (doors.clone(), slots.clone(), shutdown.clone());
        match mode {
            Chosen::MultiThread => {
                tokio::spawn(async move {
                    let _ = finished.send(serve_runtime(index, doors, listeners, slots, shutdown).await);
                });
            }
            Chosen::PerCore => {
                std::thread::Builder::new().name(format!("checks-{index}")).spawn(move || {
                    let served = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime.block_on(serve_runtime(index, doors, listeners, slots, shutdown)),
                        Err(error) => Err(format!("cannot start its runtime: {error}")),
                    };
                    let _ = finished.send(served);
                })?;
            }
        }
        drains.push(drain);
    }
    Ok(Serving { drains })
}

/// One runtime's doors, until they drained.
async fn serve_runtime(
    index: usize,
    doors: CheckDoors,
    listeners: RuntimeListeners,
    slots: ConnectionSlots,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let CheckDoors { engine, health, http, limits } = doors;
    let metrics = engine.metrics().clone();
    let adopt = |door: &str, listener| {
        tokio::net::TcpListener::from_std(listener).map_err(|error| format!("{door}: cannot listen: {error}"))
    };
    let grpc_listener = adopt("grpc", listeners.grpc)?;
    let http_listener = listeners.http.map(|listener| adopt("http", listener)).transpose()?;
    let grpc =
        grpc::serve(grpc_listener, engine, &health, metrics.connections_accepted(Door::Grpc, index), shutdown.clone());
    let http = async {
        if let (Some(listener), Some(router)) = (http_listener, http) {
            let accepted = Some(metrics.connections_accepted(Door::Http, index));
            listener::serve(listener, router, limits, slots, accepted, shutdown).await;
        }
    };
    let (grpc, ()) = tokio::join!(grpc, http);
    grpc.map_err(|error| format!("grpc: {error}"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::settings::{Overrides, Settings, SettingsError};

    fn load(yaml: &str) -> Result<Settings, SettingsError> {
        let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
        file.write_all(yaml.as_bytes()).expect("the settings are written");
        Settings::load(Some(file.path()), Overrides::default())
    }

    #[test]
    fn the_default_is_auto_and_a_threads_setting_replaces_the_cpu_count() {
        let settings = load("log_level: info\n").expect("valid");
        assert_eq!(settings.runtime.mode, RuntimeMode::Auto);
        assert_eq!(settings.runtime.threads(), std::thread::available_parallelism().expect("known here"));
        let settings = load("runtime:\n  mode: multi_thread\n  threads: 3\n").expect("valid");
        assert_eq!(settings.runtime, RuntimeSettings { mode: RuntimeMode::MultiThread, threads: NonZeroUsize::new(3) });
        assert_eq!(settings.runtime.listeners(), 1, "multi_thread mode has one listener per door");
        let per_core = RuntimeSettings { mode: RuntimeMode::PerCore, ..settings.runtime };
        assert_eq!(per_core.listeners(), 3);
    }

    #[test]
    fn auto_is_a_runtime_per_core_on_one_thread_and_the_multi_thread_runtime_on_more() {
        let auto = |threads| RuntimeSettings { mode: RuntimeMode::Auto, threads: NonZeroUsize::new(threads) };
        assert_eq!(auto(1).chosen(), Chosen::PerCore);
        assert_eq!(auto(1).listeners(), 1, "one thread, one listener per door: no SO_REUSEPORT");
        assert!(auto(1).why().contains("auto"), "{}", auto(1).why());
        assert_eq!(auto(2).chosen(), Chosen::MultiThread);
        assert_eq!(auto(2).listeners(), 1);
        assert!(auto(2).why().contains("auto"), "{}", auto(2).why());
        let set = RuntimeSettings { mode: RuntimeMode::PerCore, threads: NonZeroUsize::new(1) };
        assert_eq!((set.chosen(), set.why()), (Chosen::PerCore, "set by runtime.mode"));
        let set = RuntimeSettings { mode: RuntimeMode::MultiThread, threads: NonZeroUsize::new(1) };
        assert_eq!(set.chosen(), Chosen::MultiThread, "a mode set is kept, whatever the threads");
        let settings = load("runtime:\n  mode: auto\n  threads: 1\n").expect("valid");
        assert_eq!(settings.runtime, auto(1));
    }

    #[test]
    fn zero_threads_are_refused_with_the_settings_files_line() {
        let error = load("log_level: info\nruntime:\n  mode: per_core\n  threads: 0\n").expect_err("refused");
        let SettingsError::Parse { line, message, .. } = &error else { panic!("not a parse error: {error}") };
        assert!(message.contains("runtime.threads must be at least 1"), "{message}");
        assert!((3..=4).contains(line), "line {line}: {error}");
    }

    #[test]
    fn an_unknown_mode_or_key_is_refused_with_its_line() {
        for yaml in ["runtime:\n  mode: per_thread\n", "runtime:\n  workers: 2\n"] {
            let error = load(yaml).expect_err("refused");
            assert!(matches!(error, SettingsError::Parse { line: 2, .. }), "{yaml}: {error:?}");
        }
    }

    #[test]
    fn the_runtime_variable_is_read_as_yaml_and_zero_threads_name_it() {
        let variables = |value: &str| [("PORTCULLIS_RUNTIME".to_string(), value.to_string())].into_iter();
        let settings = Settings::default().with_environment(variables("{mode: per_core, threads: 2}")).expect("valid");
        assert_eq!(settings.runtime, RuntimeSettings { mode: RuntimeMode::PerCore, threads: NonZeroUsize::new(2) });
        let error = Settings::default().with_environment(variables("{threads: 0}")).expect_err("refused");
        assert!(error.to_string().contains("PORTCULLIS_RUNTIME"), "{error}");
        assert!(error.to_string().contains("at least 1"), "{error}");
    }

    #[test]
    fn per_core_listeners_share_one_address_and_port_zero_is_picked_once() {
        let settings = RuntimeSettings { mode: RuntimeMode::PerCore, threads: NonZeroUsize::new(3) };
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let listeners = bind(settings, any_port, Some(any_port)).expect("bound");
        assert_eq!(listeners.runtimes.len(), 3);
        let addresses = |door: fn(&RuntimeListeners) -> Option<&std::net::TcpListener>| {
            listeners.runtimes.iter().filter_map(door).map(|listener| listener.local_addr().expect("bound")).collect()
        };
        let grpc: Vec<SocketAddr> = addresses(|runtime| Some(&runtime.grpc));
        let http: Vec<SocketAddr> = addresses(|runtime| runtime.http.as_ref());
        assert!(grpc[0].port() != 0 && grpc.iter().all(|address| *address == grpc[0]), "{grpc:?}");
        assert!(http.len() == 3 && http.iter().all(|address| *address == http[0]) && http[0] != grpc[0], "{http:?}");
        // Without `SO_REUSEPORT` (multi_thread mode) the address is the listener's alone.
        let alone = RuntimeSettings { mode: RuntimeMode::MultiThread, threads: NonZeroUsize::new(3) };
        let first = bind(alone, any_port, None).expect("bound");
        let taken = first.runtimes[0].grpc.local_addr().expect("bound");
        assert!(bind(alone, taken, None).is_err(), "a second listener on {taken} is refused");
    }
}
