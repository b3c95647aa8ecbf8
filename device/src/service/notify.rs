//! systemd notifications (`Type=notify`) through the `sd-notify` crate: `READY=1` once serving,
//! `WATCHDOG=1` at half of `WATCHDOG_USEC` from the inference loop while it is healthy,
//! `RELOADING=1` around a registry reload and `STOPPING=1` on shutdown. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call is a no-op.

use sd_notify::NotifyState;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sends state changes to the service manager.
#[derive(Debug)]
pub struct Notifier {
    /// Half the watchdog timeout, when systemd asked for a watchdog.
    interval: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

impl Notifier {
    /// Read `WATCHDOG_USEC` / `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        let interval = sd_notify::watchdog_enabled().map(|d| d / 2);
        if let Some(i) = interval {
            tracing::info!(
                "systemd watchdog enabled: pinging every {:.1} s",
                i.as_secs_f64()
            );
        }
        Self::with_interval(interval)
    }

    /// A notifier with an explicit watchdog interval (`None`: no watchdog).
    pub fn with_interval(interval: Option<Duration>) -> Self {
        Self {
            interval,
            last_ping: Mutex::new(None),
        }
    }

    /// The watchdog ping interval, if any.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.interval
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!("sd_notify failed: {e}");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready_with_status(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `READY=1` (also ends a reload).
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// `RELOADING=1` with the monotonic timestamp systemd wants with it.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    }

    /// `WATCHDOG=1`, at most once per interval. Returns whether a ping was sent.
    pub fn watchdog(&self) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        let mut last = self.last_ping.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < interval) {
            return false;
        }
        *last = Some(now);
        drop(last);
        self.send(&[NotifyState::Watchdog]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_at_most_once_per_interval() {
        let n = Notifier::with_interval(Some(Duration::from_millis(80)));
        assert!(n.watchdog());
        assert!(!n.watchdog());
        std::thread::sleep(Duration::from_millis(100));
        assert!(n.watchdog());
        assert!(!Notifier::with_interval(None).watchdog());
    }
}
