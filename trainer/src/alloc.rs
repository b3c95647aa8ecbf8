//! The allocator setting of the workstation binaries (`mce-train`, `mce-calib`).
//!
//! A training step allocates and frees tensors of hundreds of megabytes (attention maps of
//! `(B, heads, N, N)`). By default mimalloc returns freed memory to the OS after 10 ms, so the next
//! step's tensors are page-faulted and zeroed by the kernel again: measured on the edge paper head
//! (batch 8, `examples/train_step.rs`), 20-30 % of the step went to the kernel's `clear_page`, and
//! the step took 4.5 s instead of 7 s with the setting below. The cost is that the process keeps
//! its peak memory; these are batch jobs on a workstation, so that is the right trade.

/// `mi_option_purge_delay` in mimalloc v2 and v3's `mi_option_e` (libmimalloc-sys 0.1.49 has no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never give freed memory back to the OS (mimalloc `purge_delay = -1`). Call first in `main`,
/// with mimalloc as the global allocator.
pub fn retain_freed_memory() {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
