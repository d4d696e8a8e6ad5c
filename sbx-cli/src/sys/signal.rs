//! Waiting for signals (blocked, then taken one at a time), as sbx and the sandbox's first
//! process forward them.

use nix::sys::signal::{SigSet, Signal};

/// The next signal of `set` (which the caller has blocked), with whether a process sent it
/// (kill, sigqueue, tgkill) rather than the kernel (a terminal's ^C, a child's exit).
pub fn wait(set: &SigSet) -> (Signal, bool) {
    loop {
        let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: sigwaitinfo writes a whole siginfo_t into `info` when it returns a signal.
        let signo = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
        if signo < 0 {
            continue; // EINTR
        }
        // SAFETY: written by the successful call above.
        let code = unsafe { info.assume_init() }.si_code;
        let sent = matches!(code, libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL);
        if let Ok(signal) = Signal::try_from(signo) {
            return (signal, sent);
        }
    }
}
