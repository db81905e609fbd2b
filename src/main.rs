//! The `portcullis` command line: `serve`, `validate`, `check` and `test`; parsing only, the work is in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
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
    /// A policy file or a directory read recursively; repeatable (`PORTCULLIS_POLICIES`,
    /// comma-separated) [default: policies]
    #[arg(long = "policies", value_name = "PATH", value_delimiter = ',')]
    policies: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    policies: PolicyArgs,
    // These flags have no clap `env`: their `PORTCULLIS_*` variables are read with the other
    // settings, so that an invalid value is reported with the variable's name.
    /// ext_authz gRPC address (`PORTCULLIS_GRPC_LISTEN`) [default: 0.0.0.0:9001]
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP forward-auth address, served only with `http_mode` set (`PORTCULLIS_HTTP_LISTEN`)
    /// [default: 0.0.0.0:8000]
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Admin address for /healthz, /readyz, /metrics (`PORTCULLIS_ADMIN_LISTEN`)
    /// [default: 127.0.0.1:9090]
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Log format (`PORTCULLIS_LOG_FORMAT`) [default: text]
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `portcullis=debug` (`PORTCULLIS_LOG_LEVEL`) [default: info]
    #[arg(long)]
    log_level: Option<String>,
    /// Print the effective settings (JSON, which is also YAML) and exit.
    #[arg(long)]
    print_config: bool,
}

fn settings(policies: PolicyArgs, overrides: Overrides) -> Result<Settings, String> {
    let overrides = Overrides { policies: policies.policies, ..overrides };
    Settings::load(policies.config.as_deref(), overrides).map_err(|error| error.to_string())
}

/// The settings and their defaults, listed under `serve --help`.
fn settings_help() -> String {
    let mut help = String::from(
        "Settings (--config FILE, or PORTCULLIS_<KEY> variables; flags win over variables, variables over the file) and their defaults:\n",
    );
    if let Ok(serde_json::Value::Object(defaults)) = serde_json::to_value(Settings::default()) {
        for (key, value) in defaults {
            let shown = if value.is_null() { "unset".to_string() } else { value.to_string() };
            help.push_str(&format!("  {key}: {shown}\n"));
        }
    }
    help
}

fn parse_command_line() -> Cli {
    let command = Cli::command().mut_subcommand("serve", |serve| serve.after_long_help(settings_help()));
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// Warns of `PORTCULLIS_*` variables that name no setting; `log` writes one warning.
fn warn_of_unknown_variables(log: impl Fn(&str, Option<&str>)) {
    for (variable, closest) in Settings::unknown_environment_variables(std::env::vars()) {
        log(&variable, closest.as_deref());
    }
}

fn eprint_unknown_variable(variable: &str, closest: Option<&str>) {
    match closest {
        Some(closest) => {
            eprintln!("portcullis: warning: unknown variable `{variable}` ignored; did you mean `{closest}`?")
        }
        None => eprintln!("portcullis: warning: unknown variable `{variable}` ignored"),
    }
}

fn main() -> ExitCode {
    let command = parse_command_line().command;
    // The server logs them once its logging is set up.
    if !matches!(command, Command::Serve(ServeArgs { print_config: false, .. })) {
        warn_of_unknown_variables(eprint_unknown_variable);
    }
    match command {
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
    warn_of_unknown_variables(|variable, closest| {
        tracing::warn!(variable, closest, "Unknown PORTCULLIS_ variable; ignored");
    });
    let runtime = match settings.runtime.main_runtime() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the runtime: {error}"), 1),
    };
    match runtime.block_on(app::serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error.to_string(), 1),
    }
}
