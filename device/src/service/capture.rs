//! The capture loop: pull frames from a [`FrameSource`] on a thread of its own and put them into
//! the latest-frame slot. Corrupt frames are skipped and counted; an unavailable camera or frame
//! file (EMFILE, EIO, a vanished file) is retried with exponential back-off ([`Backoff`]) and
//! never counted as corrupt; a finished source leaves the service serving its last result.
//! Recorded sources without a pace wait for the consumer instead of decoding frames nobody sees.

use super::metrics::stage;
use super::slot::Frame;
use super::source::{ErrorKind, FrameSource};
use super::state::{Shared, SourceState};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Exponential back-off: `initial`, doubled per failure, capped at `max`; reset on success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    /// 0.5 s, 1 s, 2 s, ... up to 30 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

/// Sleep up to `d`, waking early when the pipeline stops. Returns false when stopped.
fn sleep_unless_stopped(shared: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if shared.stopping() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Run until the source ends, fails for good, or the pipeline stops.
pub fn run(
    mut source: Box<dyn FrameSource>,
    shared: Arc<Shared>,
    lossless: bool,
    mut backoff: Backoff,
) {
    let mut index = 0u64;
    let mut last_start: Option<Instant> = None;
    let mut reconnecting = false;
    let wait_for_consumer = lossless || (source.is_recorded() && source.frame_interval().is_none());
    shared.set_source_state(SourceState::Starting, None);
    loop {
        if shared.stopping() {
            break;
        }
        if let (Some(interval), Some(last)) = (source.frame_interval(), last_start) {
            let due = last + interval;
            if !sleep_unless_stopped(&shared, due.saturating_duration_since(Instant::now())) {
                break;
            }
        }
        let start = Instant::now();
        last_start = Some(start);
        match source.next_frame() {
            Ok(Some(captured)) => {
                let capture_time = start.elapsed();
                if reconnecting || index == 0 {
                    tracing::info!(source = %source.describe(), "source is streaming");
                    reconnecting = false;
                }
                backoff.reset();
                shared.set_source_state(SourceState::Streaming, None);
                shared.frame_arrived();
                shared.metrics.frames_in.inc();
                shared.metrics.observe(stage::CAPTURE, capture_time);
                let frame = Frame {
                    index,
                    captured_at: SystemTime::now(),
                    captured: Instant::now(),
                    capture_time,
                    image: captured.image,
                    label: captured.label,
                };
                index += 1;
                let delivered = if wait_for_consumer {
                    shared.slot.put_wait(frame, shared.stop_flag()).is_ok()
                } else {
                    match shared.slot.put(frame) {
                        Ok(stale) => {
                            if stale.is_some() {
                                shared.metrics.frames_dropped.inc();
                            }
                            true
                        }
                        Err(_) => false,
                    }
                };
                if !delivered {
                    // The slot closed under us: the frame never reached inference.
                    shared.metrics.frames_dropped.inc();
                    break;
                }
            }
            Ok(None) => {
                tracing::info!(source = %source.describe(), frames = index, "source finished");
                shared.set_source_state(SourceState::Finished, None);
                return;
            }
            Err(e) => match e.kind() {
                ErrorKind::Skip => {
                    tracing::warn!("skipping frame: {e}");
                    shared.metrics.frames_corrupt.inc();
                }
                ErrorKind::Retry => {
                    let delay = backoff.next_delay();
                    shared.metrics.source_errors.inc();
                    tracing::error!("{e}; retrying in {:.1} s", delay.as_secs_f64());
                    shared.set_source_state(SourceState::Reconnecting, Some(e.to_string()));
                    reconnecting = true;
                    last_start = None;
                    if !sleep_unless_stopped(&shared, delay) {
                        break;
                    }
                }
                ErrorKind::Fatal => {
                    tracing::error!("source failed: {e}");
                    shared.set_source_state(SourceState::Failed, Some(e.to_string()));
                    return;
                }
            },
        }
    }
    shared.set_source_state(SourceState::Stopped, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
