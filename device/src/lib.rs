//! # mce-device
//!
//! What runs on the edge board: an operator registers a few exemplars of an object, and the service
//! segments that object in every camera frame from then on.
//!
//! ```text
//! register: image + mask ─▶ validate ─▶ backbone features ─▶ registry (atomic files + index.json)
//! serve:    source (v4l2 / file) ─▶ latest-frame slot (stale frames dropped) ─▶ inference worker
//!           (backbone once per frame, MCE head per class, cached exemplar features from the
//!           registry) ─▶ overlay + legend + results ─▶ HTTP (/ /healthz /metrics /classes
//!           /frame.jpg /stream.mjpg /results)
//! ```
//!
//! Modules: [`registry`] (crash-safe exemplar store), [`service`] (sources, pipeline, HTTP, systemd
//! notify, `demo`), [`segment`] (one-shot CLI), [`bench`](mod@bench) (latency JSON), [`model`] (which model a
//! command loads: float checkpoint, int8 artifact, or untrained head), [`overlay`] (drawing).

pub mod bench;
pub mod model;
pub mod overlay;
pub mod registry;
pub mod segment;
pub mod service;
pub mod signals;

/// The worked example at the end of `mce-device --help`.
const EXAMPLE: &str = "\
Example: teach it a class from one photo and its mask, then segment camera frames
  mce-device demo                                   # bundled exemplars and frames, no camera
  mce-device register mug --image mug.jpg --mask mug_mask.png
  mce-device list
  mce-device segment --support mug.jpg:mug_mask.png --query desk.jpg --out desk_mug.png
  mce-device serve --source v4l2:///dev/video0 --http 127.0.0.1:8080
  curl -s 127.0.0.1:8080/healthz; open http://127.0.0.1:8080/ in a browser

The registry lives in $STATE_DIRECTORY, /var/lib/mce as root, else ~/.local/share/mce
(--registry DIR to choose).
Each command has its own --help.";

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "mce-device",
    version,
    about = "Few-shot segmentation on the device",
    after_help = EXAMPLE
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
    /// Register a class's exemplars (image + mask) in the registry, with their features.
    Register(registry::cli::RegisterArgs),
    /// List the registered classes.
    List(registry::cli::ListArgs),
    /// Show one class's exemplars.
    Show(registry::cli::ShowArgs),
    /// Remove a class, or one of its exemplars (--exemplar N).
    Remove(registry::cli::RemoveArgs),
    /// Run the camera segmentation service (HTTP API, systemd notify).
    Serve(service::serve::ServeArgs),
    /// Register bundled exemplars of unseen classes and run the service pipeline on bundled frames.
    Demo(service::demo::DemoArgs),
}

/// Run a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    run_deferred(cli, signals::Deferred::nothing())
}

/// [`run`] for `main`: `signals` (from [`signals::defer`], its first instruction) are released
/// at once, except by `serve`, which releases them when its handlers are installed.
pub fn run_deferred(cli: Cli, signals: signals::Deferred) -> anyhow::Result<()> {
    if let Command::Serve(a) = &cli.command {
        return service::serve::run(a, signals);
    }
    signals.release();
    match cli.command {
        Command::Segment(a) => segment::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Register(a) => registry::cli::run_register(&a),
        Command::List(a) => registry::cli::run_list(&a),
        Command::Show(a) => registry::cli::run_show(&a),
        Command::Remove(a) => registry::cli::run_remove(&a),
        Command::Serve(_) => unreachable!("served above"),
        Command::Demo(a) => service::demo::run(&a),
    }
}
