//! `mce-calib`: int8 calibration, quantization and the quantization report (see `mce_calib::cli`).

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "mce-calib",
    version,
    about = "Int8 calibration and quantization of MCE models"
)]
struct Cli {
    #[command(subcommand)]
    command: mce_calib::cli::Command,
}

fn main() -> ExitCode {
    mce_core::alloc::retain_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match mce_calib::cli::run(&Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
