//! SIGHUP → reload, SIGTERM/SIGINT → shutdown, as one async stream of events.

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::SystemError;

/// What a signal asks migd to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGHUP: reload certificates, CRLs and partners; keep serving.
    Reload,
    /// SIGTERM or SIGINT: drain in-flight requests, then exit.
    Shutdown,
}

/// The installed handlers. Install once, early: a signal before installation keeps its default
/// action (SIGHUP and SIGTERM would kill the process).
#[derive(Debug)]
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers; needs a running tokio runtime.
    pub fn install() -> Result<Signals, SystemError> {
        let make = |kind, name| {
            signal(kind).map_err(|source| SystemError::Signal {
                signal: name,
                source,
            })
        };
        Ok(Signals {
            hup: make(SignalKind::hangup(), "SIGHUP")?,
            term: make(SignalKind::terminate(), "SIGTERM")?,
            int: make(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// The next event. Signals of one kind that arrive together are delivered once.
    pub async fn recv(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.hup.recv() => SignalEvent::Reload,
            _ = self.term.recv() => SignalEvent::Shutdown,
            _ = self.int.recv() => SignalEvent::Shutdown,
        }
    }

    /// Calls `reload` on every SIGHUP and returns at the first SIGTERM/SIGINT.
    pub async fn run_until_shutdown(mut self, mut reload: impl FnMut()) {
        loop {
            match self.recv().await {
                SignalEvent::Reload => reload(),
                SignalEvent::Shutdown => return,
            }
        }
    }
}
