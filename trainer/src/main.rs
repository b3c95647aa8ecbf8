//! `mce-train`: command line of the trainer: `check-data`, `train`, `eval`, `baselines`.
//!
//! Exit status: 0 = done and no problem found, 1 = the check found problems, 2 = error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mce_train::data::{check_data, CheckOptions, DatasetArgs};

/// Attention maps and feature caches are large and short-lived; glibc returns every allocation over
/// 32 MB to the OS and pays page faults on the next one. mimalloc, told to keep freed memory
/// ([`mce_core::alloc`]), reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "mce-train",
    version,
    about = "Episodic meta-training and evaluation of MCE"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scan a dataset and report counts per class and fold, unreadable files, image/label size
    /// mismatches and classes with too few images.
    CheckData(CheckDataArgs),
    /// Meta-train the MCE head on a dataset's training classes of one fold.
    Train(Box<mce_train::train::cli::TrainArgs>),
    /// Evaluate a checkpoint on a fold's test episodes (several seeds, original resolution).
    Eval(mce_train::eval::EvalArgs),
    /// Training-free baselines (all foreground, prototype cosine, nearest neighbour) on the same
    /// episodes, their parameters chosen on the fold's training classes.
    Baselines(mce_train::baselines::BaselinesArgs),
}

#[derive(Debug, Args)]
struct CheckDataArgs {
    #[command(flatten)]
    data: DatasetArgs,
    /// Check only this fold (default: all).
    #[arg(long)]
    fold: Option<usize>,
    /// Number of folds (default: the dataset's, 4 for the benchmarks).
    #[arg(long)]
    folds: Option<usize>,
    /// Shots K: each class needs K + 1 images.
    #[arg(long, default_value_t = 1)]
    shots: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Read only image headers instead of decoding every image.
    #[arg(long)]
    headers_only: bool,
}

fn check_data_cmd(a: &CheckDataArgs) -> anyhow::Result<ExitCode> {
    let dataset = a.data.open()?;
    let report = check_data(
        dataset.as_ref(),
        &CheckOptions {
            fold: a.fold,
            n_folds: a.folds,
            shots: a.shots,
            decode_images: !a.headers_only,
        },
    )?;
    print!("{report}");
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    mce_core::alloc::retain_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::CheckData(a) => check_data_cmd(a),
        Command::Train(a) => mce_train::train::cli::run(a).map(|()| ExitCode::SUCCESS),
        Command::Eval(a) => mce_train::eval::run(a),
        Command::Baselines(a) => mce_train::baselines::run(a),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}
