//! The allocator setting of every binary (`mce-device`, `mce-train`, `mce-calib`, the benches).
//!
//! A training step allocates and frees tensors of hundreds of megabytes (attention maps of
//! `(B, heads, N, N)`, their gradients). mimalloc (v3), the binaries' global allocator, gives freed
//! memory back to the OS after 1 s by default, so within a step of several seconds the later
//! tensors are page-faulted and zeroed by the kernel again. Keeping freed memory for reuse, measured
//! (`bench_frame --case train_step_b8`, edge paper head, 1 thread, interleaved A/B on a loaded
//! 2-core CPU): 17.1 / 12.9 s -> 11.0 / 9.3 s per step. An edge frame (under 1 s) is unchanged
//! (462 / 490 ms against 475 / 488); the device sets it too, for frames slower than the delay (the
//! paper preset, several classes). The cost: the process keeps its peak memory, which every step
//! and every frame reaches again anyway.
//!
//! Only meaningful where mimalloc is the global allocator (`#[global_allocator]` in each `main`).

/// `mi_option_purge_delay` in mimalloc v2 and v3's `mi_option_e` (libmimalloc-sys 0.1.49 has no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never give freed memory back to the OS (mimalloc `purge_delay = -1`). Call first in `main`.
pub fn retain_freed_memory() {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// mimalloc's current purge delay in milliseconds (-1: never purge).
#[allow(clippy::useless_conversion)] // c_long is i64 here, i32 on other targets
pub fn purge_delay_ms() -> i64 {
    // SAFETY: mi_option_get only reads mimalloc's option table.
    i64::from(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_is_the_purge_delay_and_retaining_sets_it_to_never() {
        // Option 15 is the purge delay: mimalloc v3's default is 1000 ms (unless the environment
        // overrides it), which catches a mimalloc that numbers its options differently.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1000);
        }
        retain_freed_memory();
        assert_eq!(purge_delay_ms(), -1);
    }
}
