use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use anchor_pdp::clock::{Clock, SystemClock};
use anchor_pdp::config::{Cli, Command, ConfigCommand, LogFormat, PolicyCommand, TokenCommand};
use anchor_pdp::policy::{self, PolicyHandle};
use anchor_pdp::policy_suite;

fn main() -> ExitCode {
    // Before anything else (it sets environment variables): --config's settings, which the
    // command line and the environment then override.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let applied = match anchor_pdp::config_file::apply(&args) {
        Ok(applied) => applied,
        Err(e) => {
            eprintln!("anchor-pdp: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        // The policy tools print their own results; keep the server's logs out of them.
        Command::Policy(_)
        | Command::Token(_)
        | Command::Backup(_)
        | Command::Restore(_)
        | Command::Config(_) => "warn",
    };
    // RUST_LOG wins; else --log-level (which a SIGHUP may change); else the command's default.
    let from_env = EnvFilter::try_from_default_env().ok();
    let reloadable = from_env.is_none();
    let log_level = match &cli.command {
        Command::Serve(args) => args.log_level.clone(),
        _ => None,
    };
    let filter = match (from_env, log_level) {
        (Some(filter), _) => filter,
        (None, Some(level)) => match EnvFilter::try_new(&level) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("anchor-pdp: --log-level {level:?}: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => EnvFilter::new(default_level),
    };
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(filter);
    if reloadable {
        anchor_pdp::telemetry::set_log_filter_reload(Box::new(move |directives: &str| {
            let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
            filter_handle.reload(filter).map_err(|e| e.to_string())
        }));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("anchor-pdp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces over OTLP when asked for: built on the runtime, where its gRPC channel runs.
    let otlp_endpoint = match &cli.command {
        Command::Serve(args) => args.otlp_endpoint.clone(),
        _ => None,
    };
    let traces = match otlp_endpoint {
        Some(endpoint) => {
            let _runtime = runtime.enter();
            match anchor_pdp::telemetry::otlp(&endpoint) {
                Ok(traces) => Some(traces),
                Err(e) => {
                    eprintln!("anchor-pdp: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    let (text, json) = match cli.log_format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true),
            ),
        ),
    };
    let otlp = traces
        .as_ref()
        .map(|(_, tracer)| tracing_opentelemetry::layer().with_tracer(tracer.clone()));
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otlp)
        .init();
    let exit = run(cli.command, &runtime, applied.as_ref());
    if let Some((provider, _)) = traces {
        // What is still queued goes out before the process ends.
        if let Err(e) = provider.shutdown() {
            eprintln!("anchor-pdp: traces not all sent: {e}");
        }
    }
    exit
}

fn run(
    command: Command,
    runtime: &tokio::runtime::Runtime,
    applied: Option<&anchor_pdp::config_file::Applied>,
) -> ExitCode {
    match command {
        Command::Serve(args) => {
            match runtime.block_on(anchor_pdp::server::run(*args, Arc::new(SystemClock))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once, as a log event: the log is stderr, and a shipper reads it as such.
                    tracing::error!("anchor-pdp cannot start: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(ConfigCommand::Show(_)) => match anchor_pdp::config_file::show(applied) {
            Ok(shown) => {
                print!("{shown}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("anchor-pdp: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Policy(PolicyCommand::Validate { dir }) => validate(&dir),
        Command::Policy(PolicyCommand::Export { dir, mut with }) => {
            // `--with labels --with labels` asks for one pack.
            with.sort_by_key(|pack| pack.name);
            with.dedup_by_key(|pack| pack.name);
            match policy::builtin::export(&dir, &with) {
                Ok(files) => {
                    for file in files {
                        println!("{}", file.display());
                    }
                    println!(
                        "built-in policy set written to {}; serve it with --policies {}",
                        dir.display(),
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("anchor-pdp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token(TokenCommand::Hash) => {
            let mut token = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut token) {
                eprintln!("anchor-pdp: cannot read the token: {e}");
                return ExitCode::FAILURE;
            }
            let token = token.trim_end_matches(['\r', '\n']);
            if let Err(e) = anchor_pdp::api::auth::check_token(token) {
                eprintln!("anchor-pdp: {e}");
                return ExitCode::FAILURE;
            }
            println!("{}", anchor_pdp::api::auth::hash_token(token));
            ExitCode::SUCCESS
        }
        Command::Backup(args) => report(runtime.block_on(anchor_pdp::backup::backup_to(&args))),
        Command::Restore(args) => {
            report(runtime.block_on(anchor_pdp::backup::restore_from(&args.from, &args.target)))
        }
        Command::Policy(PolicyCommand::Test { dir, junit }) => {
            runtime.block_on(test(&dir, junit.as_deref()))
        }
    }
}

/// A tool's summary on stdout, or its error on stderr and a failing exit.
fn report(outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("anchor-pdp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(dir: &Path) -> ExitCode {
    match policy::load(dir) {
        Ok(bundle) => {
            let mut rules: Vec<_> = bundle.rules().collect();
            rules.sort_by_key(|r| r.order);
            let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
            println!(
                "{}: valid, {} rules ({}), version {}",
                dir.display(),
                rules.len(),
                ids.join(" "),
                bundle.version()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            for problem in &error.problems {
                println!("{problem}");
            }
            eprintln!(
                "{}: invalid ({} problem{})",
                dir.display(),
                error.problems.len(),
                if error.problems.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

async fn test(dir: &Path, junit: Option<&Path>) -> ExitCode {
    let handle = match PolicyHandle::load(dir, SystemClock.now_ms()) {
        Ok(handle) => Arc::new(handle),
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let files = match policy_suite::suites(dir) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("anchor-pdp: no test suites: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = policy_suite::run(handle.clone(), &files, |result| match &result.failure {
        None => println!("PASS {} :: {}", result.suite, result.case),
        Some(why) => println!("FAIL {} :: {}: {why}", result.suite, result.case),
    })
    .await;
    let never_broken = report.rules_never_broken(&handle.current());
    if !never_broken.is_empty() {
        println!(
            "note: no case expects these rules broken: {}",
            never_broken.join(" ")
        );
    }
    if let Some(path) = junit
        && let Err(e) = std::fs::write(path, report.junit_xml())
    {
        eprintln!("anchor-pdp: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    println!("{} passed, {} failed", report.passed(), report.failed());
    if report.failed() == 0 && !report.results.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
