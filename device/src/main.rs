use clap::Parser;

/// Large tensors (attention maps are tens of MB) are allocated and freed every frame; glibc returns
/// them to the OS each time and the next frame pays the page faults again. mimalloc, told to keep
/// freed memory ([`mce_core::alloc`]), reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mce_core::alloc::retain_freed_memory();
    // First: TERM / INT / HUP stay pending until someone handles them (see `signals`).
    let signals = mce_device::signals::defer();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match mce_device::run_deferred(mce_device::Cli::parse(), signals) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
