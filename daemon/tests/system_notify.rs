#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! sd_notify against a real datagram socket standing in for systemd: READY=1, then WATCHDOG=1
//! only while the health check passes. One test in this binary: it sets process environment.
#![forbid(unsafe_code)]

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mig::system::notify;

/// Every datagram received within `window`.
fn drain(sock: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return out
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn pings(msgs: &[String]) -> usize {
    msgs.iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "sd-notify reads only the process environment; this test stays alone in its own binary"
)]
fn ready_then_watchdog_pings_only_while_healthy() {
    // Without NOTIFY_SOCKET every call is a no-op that succeeds.
    std::env::remove_var("NOTIFY_SOCKET");
    notify::ready().unwrap();
    notify::watchdog().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    std::env::set_var("NOTIFY_SOCKET", &path);

    // The watchdog interval is half of WATCHDOG_USEC, and only for our own pid.
    std::env::set_var("WATCHDOG_USEC", "200000");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    assert_eq!(
        notify::watchdog_interval(),
        Some(Duration::from_millis(100))
    );
    std::env::set_var("WATCHDOG_PID", "1");
    assert_eq!(notify::watchdog_interval(), None);
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    assert_eq!(notify::watchdog_interval(), None);

    notify::ready().unwrap();
    notify::status("serving").unwrap();
    let first = drain(&systemd, Duration::from_millis(200));
    assert_eq!(
        first,
        vec!["READY=1\n".to_string(), "STATUS=serving\n".to_string()]
    );

    let healthy = Arc::new(AtomicBool::new(true));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let flag = healthy.clone();
    let task = rt.spawn(notify::watchdog_loop(
        Duration::from_millis(50),
        move || {
            let flag = flag.clone();
            async move { flag.load(Ordering::SeqCst) }
        },
    ));

    let while_healthy = drain(&systemd, Duration::from_millis(500));
    let n = pings(&while_healthy);
    assert!(
        n >= 5,
        "expected periodic WATCHDOG=1 while healthy, got {while_healthy:?}"
    );

    healthy.store(false, Ordering::SeqCst);
    // One ping may already be on its way.
    let _ = drain(&systemd, Duration::from_millis(150));
    let while_sick = drain(&systemd, Duration::from_millis(400));
    assert_eq!(
        pings(&while_sick),
        0,
        "pinged while unhealthy: {while_sick:?}"
    );

    healthy.store(true, Ordering::SeqCst);
    let recovered = drain(&systemd, Duration::from_millis(400));
    assert!(
        pings(&recovered) >= 3,
        "pings did not resume: {recovered:?}"
    );
    assert!(
        recovered.iter().any(|m| m == "STATUS=serving\n"),
        "{recovered:?}"
    );

    task.abort();
    notify::stopping().unwrap();
    let last = drain(&systemd, Duration::from_millis(200));
    assert!(last.iter().any(|m| m == "STOPPING=1\n"), "{last:?}");
}
