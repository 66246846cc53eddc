#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Real signals sent to this process: SIGHUP reloads, SIGTERM and SIGINT shut down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mig::system::{SignalEvent, Signals};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[tokio::test]
async fn sighup_reloads_and_sigterm_or_sigint_shut_down() {
    let mut signals = Signals::install().unwrap();
    let me = Pid::this();
    kill(me, Signal::SIGHUP).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), signals.recv())
        .await
        .unwrap();
    assert_eq!(ev, SignalEvent::Reload);
    kill(me, Signal::SIGTERM).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), signals.recv())
        .await
        .unwrap();
    assert_eq!(ev, SignalEvent::Shutdown);
    kill(me, Signal::SIGINT).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), signals.recv())
        .await
        .unwrap();
    assert_eq!(ev, SignalEvent::Shutdown);

    // run_until_shutdown: two reloads, then a stop.
    let reloads = Arc::new(AtomicUsize::new(0));
    let counter = reloads.clone();
    let task = tokio::spawn(signals.run_until_shutdown(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    for _ in 0..2 {
        kill(me, Signal::SIGHUP).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill(me, Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reloads.load(Ordering::SeqCst), 2);
}
