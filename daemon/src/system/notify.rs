//! systemd's notify protocol (`Type=notify`): READY, STATUS, WATCHDOG, RELOADING, STOPPING.
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd).

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;

use super::SystemError;

fn send(label: &'static str, states: &[NotifyState]) -> Result<(), SystemError> {
    sd_notify::notify(false, states).map_err(|source| SystemError::Notify {
        state: label,
        source,
    })
}

/// `READY=1`: only once the TPM, the replica and the listeners are up (SPEC §10).
pub fn ready() -> Result<(), SystemError> {
    send("READY=1", &[NotifyState::Ready])
}

/// `STATUS=…`: one line shown by `systemctl status`.
pub fn status(text: &str) -> Result<(), SystemError> {
    send("STATUS", &[NotifyState::Status(text)])
}

/// `WATCHDOG=1`: "still healthy"; systemd restarts the service when these stop.
pub fn watchdog() -> Result<(), SystemError> {
    send("WATCHDOG=1", &[NotifyState::Watchdog])
}

/// `RELOADING=1` while a SIGHUP reload runs; follow with [`ready`].
pub fn reloading() -> Result<(), SystemError> {
    send("RELOADING=1", &[NotifyState::Reloading])
}

/// `STOPPING=1` when a shutdown starts draining.
pub fn stopping() -> Result<(), SystemError> {
    send("STOPPING=1", &[NotifyState::Stopping])
}

/// How often to ping: half of `WATCHDOG_USEC`, if systemd set a watchdog for this process
/// (`WATCHDOG_PID` must be ours). `None` means no watchdog is wanted.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) {
        interval_from_usec(usec)
    } else {
        None
    }
}

/// Half of the watchdog timeout, so one late ping does not get us killed.
pub fn interval_from_usec(usec: u64) -> Option<Duration> {
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Every `interval`, runs `health` and sends `WATCHDOG=1` only if it says healthy, so a hung or
/// broken migd is restarted by systemd rather than kept alive by a timer. A health check that
/// does not answer within `interval` counts as failed. Runs until dropped (spawn it, abort it at
/// shutdown); health changes are logged once each way and shown in `STATUS=`.
pub async fn watchdog_loop<F, Fut>(interval: Duration, health: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy = true;
    loop {
        ticker.tick().await;
        let healthy = tokio::time::timeout(interval, health())
            .await
            .unwrap_or(false);
        if healthy {
            if !was_healthy {
                crate::system::journal::event!(
                    info,
                    HEALTH_RECOVERED,
                    "health check passes again; resuming watchdog pings"
                );
                let _ = status("serving");
            }
            if let Err(e) = watchdog() {
                tracing::warn!("{}", crate::error::Chain(&e));
            }
        } else if was_healthy {
            crate::system::journal::event!(
                error,
                HEALTH_FAILING,
                "health check failed; withholding watchdog pings (systemd will restart migd \
                 if this persists)"
            );
            let _ = status("unhealthy: health check failing");
        }
        was_healthy = healthy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_half_the_timeout() {
        assert_eq!(
            interval_from_usec(30_000_000),
            Some(Duration::from_secs(15))
        );
        assert_eq!(interval_from_usec(0), None);
        assert_eq!(interval_from_usec(1), Some(Duration::from_millis(1)));
    }
}
