//! # mce-device
//!
//! What runs on the edge board. Today: `segment` (one query from a few support exemplars) and
//! `bench` (per-stage latency as JSON). The exemplar registry and the camera service come with their
//! own issue.
//!
//! Data flow of `segment`: image + mask files → [`mce_core::inference::Segmenter::exemplar`] (backbone
//! features) → class encoding → per query: backbone once, MCE head per class → mask PNG and overlay
//! ([`overlay`]).

pub mod bench;
pub mod model;
pub mod overlay;
pub mod segment;

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "mce-device",
    version,
    about = "Few-shot segmentation on the device"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Segment one query image from support exemplars (image + mask).
    Segment(segment::SegmentArgs),
    /// Measure per-stage latency of the presets and write JSON.
    Bench(bench::BenchArgs),
}

/// Run a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Segment(a) => segment::run(&a),
        Command::Bench(a) => bench::run(&a),
    }
}
