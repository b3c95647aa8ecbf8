//! Signals that arrive before the service can handle them.
//!
//! `serve` installs its SIGTERM / SIGINT / SIGHUP handlers only once the model is loaded, seconds
//! after the process started. A signal in between would take the default action and end the
//! process with status 128+N, which `Restart=on-failure` counts as a clean exit (a SIGHUP meant
//! as "reload" would leave the service stopped for good). So `main` calls [`defer`] as its first
//! instruction: the three signals are blocked (kept pending, not lost) on the main thread and on
//! every thread it starts. Commands other than `serve` [`Deferred::release`] them at once (their
//! default actions apply as before); `serve` releases them right after its handlers exist, and a
//! pending signal is then delivered to those handlers.

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

/// The signals the service handles.
const DEFERRED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Proof that the deferred signals are blocked on this thread; release them with
/// [`Deferred::release`]. Dropping it releases them too.
#[derive(Debug)]
pub struct Deferred {
    set: SigSet,
    released: bool,
}

/// Block SIGTERM, SIGINT and SIGHUP on the calling thread (and the threads it spawns from now on).
pub fn defer() -> Deferred {
    let mut set = SigSet::empty();
    for s in DEFERRED {
        set.add(s);
    }
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        // Cannot happen with valid arguments; carry on with the default actions.
        eprintln!("warning: cannot block signals until the service handles them: {e}");
    }
    Deferred {
        set,
        released: false,
    }
}

impl Deferred {
    /// Nothing blocked (for callers that never called [`defer`]); releasing it does nothing.
    pub fn nothing() -> Deferred {
        Deferred {
            set: SigSet::empty(),
            released: true,
        }
    }

    /// Unblock the signals on the calling thread: pending ones are delivered now (to the handlers
    /// installed by then, or with their default action).
    pub fn release(mut self) {
        self.unblock();
    }

    fn unblock(&mut self) {
        if !self.released {
            self.released = true;
            let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&self.set), None);
        }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.unblock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::raise;

    #[test]
    fn a_signal_sent_while_deferred_waits_for_release() {
        // On a thread of its own, so the test harness's threads keep their masks.
        std::thread::spawn(|| {
            let deferred = defer();
            // To this thread. Unblocked, SIGHUP's default action would end the test process.
            raise(Signal::SIGHUP).unwrap();
            let mut hup = SigSet::empty();
            hup.add(Signal::SIGHUP);
            // It was kept pending: sigwait takes it at once (as a handler would on release).
            assert_eq!(hup.wait().unwrap(), Signal::SIGHUP);
            deferred.release();
            assert!(!SigSet::thread_get_mask().unwrap().contains(Signal::SIGHUP));
        })
        .join()
        .unwrap();
    }
}
