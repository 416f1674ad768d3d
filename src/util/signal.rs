//! Stopping on request: SIGINT and SIGTERM set a flag that long work (a training run, a store, a
//! download) reads between its steps, so that it stops cleanly — a checkpoint saved, a
//! temporary file removed — instead of dying mid-write.

/// The signal that asked the process to stop (SIGINT or SIGTERM), 0 while none has: a running
/// training run then saves a checkpoint after the current step and returns, so `timeout` or a
/// scheduler's kill loses at most one step. [`install_stop_handler`] connects it to the signals;
/// a second signal of the same kind, a second or more after the first, ends the process at once
/// (exit status 128 + signal).
pub fn stop_requested() -> Option<i32> {
    match stop_flag().load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
    }
}

fn stop_flag() -> &'static std::sync::Arc<std::sync::atomic::AtomicUsize> {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicUsize>> =
        std::sync::OnceLock::new();
    FLAG.get_or_init(Default::default)
}

/// Milliseconds of the monotonic clock (async-signal-safe: one `clock_gettime`).
fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Installs the SIGINT / SIGTERM handlers behind [`stop_requested`] (once per process).
///
/// A repeat of the same signal within a second is the same request: GNU `timeout` sends its
/// signal twice, to the command and to the command's process group, microseconds apart, and
/// treating the second as "stop now" killed runs before they saved. A repeat a second or more
/// later (a second Ctrl-C) ends the process at once with status 128 + signal.
pub fn install_stop_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        for sig in [SIGINT, SIGTERM] {
            let flag = stop_flag().clone();
            // the monotonic time of the first signal of this kind, + 1 (0: none yet)
            let first = AtomicU64::new(0);
            let handler = move || {
                let now = monotonic_ms() + 1;
                match first.compare_exchange(0, now, SeqCst, SeqCst) {
                    Ok(_) => flag.store(sig as usize, SeqCst),
                    Err(t0) if now.saturating_sub(t0) >= 1000 => {
                        signal_hook::low_level::exit(128 + sig)
                    }
                    Err(_) => {}
                }
            };
            // SAFETY: the handler reads the monotonic clock, updates atomics and may call
            // `_exit`: all async-signal-safe; it allocates nothing and takes no lock.
            let _ = unsafe { signal_hook::low_level::register(sig, handler) };
        }
    });
}
