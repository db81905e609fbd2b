//! The `portcullis` command line: `serve`, `validate`, `check` and `test`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use portcullis::policy_tests::{self, TestOutcome};
use portcullis::settings::{LogFormat, Overrides, Settings};
use portcullis::{app, cli, telemetry};

#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about = "Envoy ext_authz server with Istio AuthorizationPolicy semantics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Check policy files; print every problem as `file:line: message`; exit 1 when any.
    Validate(PolicyArgs),
    /// Decide one request described in a YAML or JSON file; exit 0 allow, 1 deny, 2 error.
    Check {
        #[command(flatten)]
        policies: PolicyArgs,
        /// The request file.
        #[arg(long)]
        request: PathBuf,
        /// Add why: the workload judged, the policies that applied, each rule's first miss.
        #[arg(long)]
        explain: bool,
    },
    /// Run policy test files (cases: request, token claims, expected decision); exit 0 when all
    /// pass, 1 when one fails, 2 on a broken file.
    Test {
        #[command(flatten)]
        policies: PolicyArgs,
        /// The test files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct PolicyArgs {
    /// Settings file (workloads table, root namespace, path options).
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// A policy file or a directory read recursively; repeatable.
    #[arg(long = "policies", value_name = "PATH", env = "PORTCULLIS_POLICIES", value_delimiter = ',')]
    policies: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    policies: PolicyArgs,
    /// ext_authz gRPC address [default: 0.0.0.0:9001]
    #[arg(long, env = "PORTCULLIS_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// HTTP forward-auth address [default: 0.0.0.0:8000]
    #[arg(long, env = "PORTCULLIS_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Admin address for /healthz, /readyz, /metrics [default: 0.0.0.0:9090]
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Log format [default: text]
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `portcullis=debug` [default: info]
    #[arg(long, env = "PORTCULLIS_LOG_LEVEL")]
    log_level: Option<String>,
    /// Print the effective settings (JSON, which is also YAML) and exit.
    #[arg(long)]
    print_config: bool,
}

fn settings(policies: PolicyArgs, overrides: Overrides) -> Result<Settings, String> {
    let overrides = Overrides { policies: policies.policies, ..overrides };
    Settings::load(policies.config.as_deref(), overrides).map_err(|error| error.to_string())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Validate(policies) => match settings(policies, Overrides::default()).map(|s| cli::validate(&s)) {
            Ok(Ok(true)) => ExitCode::SUCCESS,
            Ok(Ok(false)) => ExitCode::from(1),
            Ok(Err(error)) => fail(&error.to_string(), 1),
            Err(error) => fail(&error, 1),
        },
        Command::Check { policies, request, explain } => {
            match settings(policies, Overrides::default()).and_then(|s| cli::check(&s, &request, explain)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(error) => fail(&error, 2),
            }
        }
        Command::Test { policies, files } => match settings(policies, Overrides::default()) {
            Ok(settings) => match policy_tests::run(&settings, &files) {
                TestOutcome::Passed => ExitCode::SUCCESS,
                TestOutcome::Failed => ExitCode::from(1),
                TestOutcome::Broken => ExitCode::from(2),
            },
            Err(error) => fail(&error, 2),
        },
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("portcullis: {message}");
    ExitCode::from(code)
}

fn serve(args: ServeArgs) -> ExitCode {
    let ServeArgs { policies, grpc_listen, http_listen, admin_listen, log_format, log_level, print_config } = args;
    let overrides = Overrides { grpc_listen, http_listen, admin_listen, policies: Vec::new(), log_format, log_level };
    let settings = match settings(policies, overrides) {
        Ok(settings) => settings,
        Err(error) => return fail(&error, 1),
    };
    if print_config {
        return match serde_json::to_string_pretty(&settings) {
            // A closed pipe (`| head`) is not an error worth a panic.
            Ok(text) => {
                let _ = writeln!(std::io::stdout(), "{text}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error.to_string(), 1),
        };
    }
    telemetry::init_logging(settings.log_format, &settings.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the runtime: {error}"), 1),
    };
    match runtime.block_on(app::serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error.to_string(), 1),
    }
}
