//! `drmguard`: find and remove backdoors in deep regression models.

/// Prints a line to stdout, returning an error (not panicking like `println!`) when stdout is
/// closed, e.g. when the output is piped into `head`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drmguard::device::DeviceKind;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "drmguard", version, about = "Find and remove backdoors in deep regression models")]
struct Cli {
    /// Compute device: cpu (burn's flex backend), or cuda / wgpu when built with those features.
    #[arg(long, global = true, default_value = "cpu")]
    device: DeviceKind,
    /// Log more (-v: debug, -vv: trace). RUST_LOG overrides this.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or inspect datasets.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Train a regression model on built-in or user data.
    Train(commands::train::TrainArgs),
    /// Evaluate a trained model on held-out data (and, for a backdoored model, on poisoned data).
    Eval(commands::eval::EvalArgs),
    /// Show what drmguard understands of a model file (network, shapes, feature layer, input
    /// transform, outputs) and what it still needs; for bare PyTorch weights, a card to fill in.
    Inspect(commands::inspect::InspectArgs),
    /// Write a poisoned copy of a dataset in the user format, for evaluating other tools.
    Poison(commands::poison::PoisonArgs),
    /// Decide whether a model is backdoored (DRMGuard; a baseline: nc, featurere, abs; or one
    /// more signal: noise, agnostic), with a JSON and Markdown report.
    Scan(commands::scan::ScanArgs),
    /// Remove a backdoor: DRMGuard's unlearning (reverse-engineer the trigger, then fine-tune on
    /// reversed images with true labels), or a baseline: ft, fp, anp, nc.
    Mitigate(commands::mitigate::MitigateArgs),
    /// The whole story on built-in gaze data: train (or reuse) a benign and a backdoored model,
    /// scan both, repair the backdoored one, print a table.
    Demo(commands::demo::DemoArgs),
    /// The benchmark: train benign and backdoored models per task and attack, run every detector
    /// and mitigator, and write the paper's tables with time (resumable from a cache).
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn,drmguard=info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Data(cmd) => commands::data::run(cmd).map(|()| None),
        Command::Train(args) => commands::train::run(args, cli.device).map(|()| None),
        Command::Eval(args) => commands::eval::run(args, cli.device).map(|()| None),
        Command::Inspect(args) => commands::inspect::run(args, cli.device).map(|()| None),
        Command::Poison(args) => commands::poison::run(args, cli.device).map(|()| None),
        Command::Scan(args) => commands::scan::run(args, cli.device),
        Command::Mitigate(args) => commands::mitigate::run(args, cli.device).map(|()| None),
        Command::Demo(args) => commands::demo::run(args, cli.device).map(|()| None),
        Command::Bench(args) => commands::bench::run(args, cli.device).map(|()| None),
    };
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
