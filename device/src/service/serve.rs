//! `mce-device serve`: the camera segmentation service.
//!
//! Startup order: parse and open the source (bad URLs, missing or empty folders fail here; a
//! missing camera does not, it is retried), load the model, load the registry's classes (an
//! unknown `--classes` name fails here), bind the HTTP port, start the pipeline, `READY=1`.
//! SIGHUP reloads the classes; SIGTERM / SIGINT finish the frame in flight and exit 0.

use super::access::Access;
use super::http::{self, AppState};
use super::http_server::{self, HttpLimits};
use super::notify::Notifier;
use super::pipeline::{Pipeline, PipelineOptions};
use super::registry_classes::RegistryClasses;
use super::source::SourceSpec;
use super::worker::{Engine, Render};
use crate::model::ModelArgs;
use crate::registry::cli::RegistryDir;
use crate::signals::Deferred;
use anyhow::{Context, Result};
use candle_core::Device;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Frame source: v4l2:///dev/videoN[?width=640&height=480&fps=15&format=mjpg|yuyv],
    /// file:///dir/[?loop=true&fps=10], file:///image.jpg, or a plain path; built with the
    /// gstreamer feature also csi://N[?width=1280&height=720&fps=30], rtsp://host/path and
    /// file:///clip.mp4|mkv|avi|mov|webm[?loop=true].
    #[arg(long, default_value = "v4l2:///dev/video0")]
    pub source: String,
    /// Segment only these registered classes (comma-separated). Default: all of them.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub classes: Option<Vec<String>>,
    #[command(flatten)]
    pub registry: RegistryDir,
    /// Address of the HTTP API. Port 0 picks a free port; the bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub http: SocketAddr,
    /// Also answer requests for this Host name (repeatable; `*`: any). Default: the loopback
    /// names and the bound address, so that a web page cannot reach the camera by DNS rebinding.
    #[arg(long, value_name = "NAME")]
    pub allow_host: Vec<String>,
    /// Require `Authorization: Bearer <token>` (or `?token=`) on every route but /healthz, the
    /// token read from this file. Required when --http is not a loopback address.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Seconds a client has to send a request head; idle keep-alive connections close after it.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub http_timeout: f64,
    /// HTTP connections served at once; more are closed on arrival.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,
    /// Never drop frames: capture waits for inference (for file sources processed as a batch).
    #[arg(long)]
    pub lossless: bool,
    /// JPEG quality of the overlay (1-100).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// Leave the legend (class colours, names, areas) out of the overlay images.
    #[arg(long)]
    pub no_legend: bool,
}

/// Run the service until SIGTERM / SIGINT. `signals` stay blocked (pending) until the handlers
/// are installed.
pub fn run(args: &ServeArgs, signals: Deferred) -> Result<()> {
    let spec = SourceSpec::parse(&args.source)?;
    let source = spec.open()?;
    let access = Arc::new(Access::new(
        args.http,
        &args.allow_host,
        args.token_file.as_deref(),
    )?);
    let segmenter = args.model.load(&Device::Cpu)?;
    let trained = segmenter.trained;
    let classes = RegistryClasses {
        dir: args.registry.path(),
        filter: args.classes.clone(),
    };
    let engine = Engine::new(segmenter, Box::new(classes))?;
    let options = PipelineOptions {
        lossless: args.lossless,
        render: Render {
            jpeg_quality: args.jpeg_quality,
            legend: !args.no_legend,
        },
        ..PipelineOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mce-http")
        .build()
        .context("starting the async runtime")?;
    if !(args.http_timeout > 0.0 && args.http_timeout.is_finite()) {
        anyhow::bail!("--http-timeout must be a positive number of seconds");
    }
    let limits = HttpLimits {
        header_timeout: Duration::from_secs_f64(args.http_timeout),
        max_connections: args.max_connections as usize,
    };
    let http = HttpSetup {
        addr: args.http,
        access,
        limits,
    };
    runtime.block_on(serve(http, source, engine, options, signals))?;
    if !trained {
        crate::model::warn_untrained();
    }
    Ok(())
}

/// Where and how the HTTP API is served.
struct HttpSetup {
    addr: SocketAddr,
    access: Arc<Access>,
    limits: HttpLimits,
}

async fn serve(
    http: HttpSetup,
    source: Box<dyn super::source::FrameSource>,
    engine: Engine,
    options: PipelineOptions,
    signals: Deferred,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // Signals sent while the model loaded are delivered now, to these handlers.
    signals.release();
    let addr = http.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let n_classes = engine.classes.len();
    let trained = engine.segmenter.trained;
    let notifier = Arc::new(Notifier::from_env());
    let pipeline = Pipeline::start(source, engine, options, notifier.clone())
        .context("starting the pipeline threads")?;
    let state = AppState {
        shared: pipeline.shared().clone(),
        latest: pipeline.latest(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = http::router(state, http.access);
    let mut server = tokio::spawn(http_server::serve(listener, app, http.limits, stop_rx));
    println!("listening on http://{local}");
    let _ = std::io::stdout().flush();
    let source = pipeline.shared().source_status().description;
    tracing::info!(
        "serving {n_classes} class(es) from {source} on http://{local}{}",
        if trained { "" } else { " (UNTRAINED head)" }
    );
    notifier.ready_with_status(&format!(
        "serving {n_classes} class(es) from {source} on http://{local}"
    ));

    let signame = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the classes before the next frame");
                pipeline.request_reload();
            }
            r = &mut server => {
                let reason = match r {
                    Ok(()) => "stopped".to_string(),
                    Err(e) => e.to_string(),
                };
                notifier.stopping();
                let _ = tokio::task::spawn_blocking(move || pipeline.shutdown()).await;
                anyhow::bail!("the HTTP server ended unexpectedly: {reason}");
            }
        }
    };
    tracing::info!("{signame} received: finishing the frame in flight, then stopping");
    notifier.stopping();
    let report = tokio::task::spawn_blocking(move || pipeline.shutdown())
        .await
        .context("joining the pipeline")?;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("HTTP server task: {e}"),
        Err(_) => tracing::warn!("HTTP connections still open after 5 s; closing them"),
    }
    tracing::info!(
        "clean shutdown: {} frames captured, {} processed, {} dropped, {} corrupt, {} failed",
        report.captured,
        report.processed,
        report.dropped,
        report.corrupt,
        report.inference_errors
    );
    Ok(())
}
