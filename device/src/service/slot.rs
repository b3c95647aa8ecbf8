//! The latest-frame slot between capture and inference: it holds at most one frame. A new frame
//! replaces a stale one (which is dropped and counted), so a slow model never builds a queue and
//! always sees the newest frame. In lossless mode (file batches, the demo) capture instead waits
//! until the slot is free.

use image::RgbImage;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// A frame on its way to inference.
#[derive(Debug, Clone)]
pub struct Frame {
    /// 0-based capture index.
    pub index: u64,
    /// Wall-clock capture time.
    pub captured_at: SystemTime,
    /// Monotonic capture time (end of capture + decode).
    pub captured: Instant,
    /// Time spent reading and decoding it.
    pub capture_time: Duration,
    pub image: RgbImage,
    /// Where it came from (file path), when known.
    pub label: Option<String>,
}

/// Counts kept by the slot itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// Frames put into the slot.
    pub put: u64,
    /// Frames taken by inference.
    pub taken: u64,
    /// Frames replaced before inference took them, or left behind at close.
    pub dropped: u64,
    /// The most frames ever waiting at once (`put - taken - dropped`); 1 by design.
    pub max_pending: u64,
}

#[derive(Default)]
struct State {
    frame: Option<Frame>,
    closed: bool,
    stats: SlotStats,
}

/// A one-frame mailbox with blocking take.
#[derive(Default)]
pub struct FrameSlot {
    state: Mutex<State>,
    changed: Condvar,
}

impl FrameSlot {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_put(state: &mut State) {
        state.stats.put += 1;
        let s = state.stats;
        state.stats.max_pending = s.max_pending.max(s.put - s.taken - s.dropped);
    }

    /// Put a frame, replacing (and returning) a stale one. Returns the frame back as `Err` when
    /// the slot is closed.
    pub fn put(&self, frame: Frame) -> Result<Option<Frame>, Frame> {
        let mut st = self.lock();
        if st.closed {
            return Err(frame);
        }
        let stale = st.frame.replace(frame);
        if stale.is_some() {
            st.stats.dropped += 1;
        }
        Self::record_put(&mut st);
        drop(st);
        self.changed.notify_all();
        Ok(stale)
    }

    /// Lossless put: wait until the slot is empty (or closed, or `stop` is set). Returns the frame
    /// back when it was not delivered.
    pub fn put_wait(&self, frame: Frame, stop: &AtomicBool) -> Result<(), Frame> {
        let mut st = self.lock();
        while st.frame.is_some() && !st.closed && !stop.load(Ordering::SeqCst) {
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if st.closed || stop.load(Ordering::SeqCst) {
            return Err(frame);
        }
        st.frame = Some(frame);
        Self::record_put(&mut st);
        drop(st);
        self.changed.notify_all();
        Ok(())
    }

    /// Take the frame, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if let Some(f) = st.frame.take() {
                st.stats.taken += 1;
                drop(st);
                self.changed.notify_all();
                return Some(f);
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                return None;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Close the slot: later puts are refused, a frame still waiting is dropped (and counted).
    /// Returns whether a frame was dropped.
    pub fn close(&self) -> bool {
        let mut st = self.lock();
        st.closed = true;
        let dropped = st.frame.take().is_some();
        if dropped {
            st.stats.dropped += 1;
        }
        drop(st);
        self.changed.notify_all();
        dropped
    }

    /// Whether a frame is waiting.
    pub fn is_full(&self) -> bool {
        self.lock().frame.is_some()
    }

    pub fn stats(&self) -> SlotStats {
        self.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(index: u64) -> Frame {
        Frame {
            index,
            captured_at: SystemTime::now(),
            captured: Instant::now(),
            capture_time: Duration::ZERO,
            image: RgbImage::new(2, 2),
            label: None,
        }
    }

    #[test]
    fn newest_frame_wins_and_stale_ones_are_counted() {
        let slot = FrameSlot::new();
        assert!(slot.put(frame(0)).unwrap().is_none());
        assert_eq!(slot.put(frame(1)).unwrap().unwrap().index, 0);
        assert_eq!(slot.put(frame(2)).unwrap().unwrap().index, 1);
        assert_eq!(slot.take(Duration::ZERO).unwrap().index, 2);
        assert!(slot.take(Duration::from_millis(10)).is_none());
        slot.put(frame(3)).unwrap();
        assert!(slot.close());
        assert!(slot.put(frame(4)).is_err());
        let s = slot.stats();
        assert_eq!(
            s,
            SlotStats {
                put: 4,
                taken: 1,
                dropped: 3,
                max_pending: 1
            }
        );
        assert_eq!(s.taken + s.dropped, s.put);
    }

    #[test]
    fn lossless_put_waits_for_the_consumer() {
        let slot = std::sync::Arc::new(FrameSlot::new());
        let stop = AtomicBool::new(false);
        let consumer = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 20 {
                    if let Some(f) = slot.take(Duration::from_secs(5)) {
                        got.push(f.index);
                    }
                }
                got
            })
        };
        for i in 0..20 {
            slot.put_wait(frame(i), &stop).unwrap();
        }
        assert_eq!(consumer.join().unwrap(), (0..20).collect::<Vec<_>>());
        assert_eq!(slot.stats().dropped, 0);
        stop.store(true, Ordering::SeqCst);
        slot.put(frame(99)).unwrap();
        assert!(slot.put_wait(frame(100), &stop).is_err());
    }
}
