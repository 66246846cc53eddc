//! migd: the MIG appliance daemon. All the work is in `mig::service`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

// Requests allocate and free many short-lived buffers (rows, JSON, 100+ KB bodies) across
// runtime threads; glibc's allocator spent about a third of migd's CPU on that under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "migd", version, about = "MIG appliance daemon")]
struct Args {
    /// The config file.
    #[arg(long, default_value = mig::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

/// tpm2-tss prints its own warnings to stderr unless told not to; it reads only the environment.
#[allow(
    clippy::disallowed_methods,
    reason = "runs at the start of main, before any thread exists to read the environment"
)]
fn quiet_tss_logs() {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
}

fn main() -> ExitCode {
    let huge_pages = mig::system::disable_huge_pages();
    quiet_tss_logs();
    init_logging();
    if let Err(error) = huge_pages {
        tracing::warn!(error = %mig::error::Chain(&error), "transparent huge pages stay on; migd will use more memory");
    }
    let args = Args::parse();
    mig::journal_event!(
        info,
        STARTED,
        version = env!("CARGO_PKG_VERSION"),
        config = %args.config.display(),
        "migd starting"
    );
    match mig::service::run(&args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = mig::error::Chain(&error).to_string();
            mig::journal_event!(error, START_FAILED, "migd stopped: {message}");
            eprintln!("migd: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to journald's native socket when systemd runs migd (structured fields, MESSAGE_ID),
/// as text on stderr otherwise.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_env("MIG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journal = mig::system::journal::socket_from_env()
        .and_then(|path| mig::system::journal::JournalLayer::new(path).ok());
    match journal {
        Some(journal) => tracing_subscriber::registry()
            .with(filter)
            .with(journal)
            .init(),
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}
