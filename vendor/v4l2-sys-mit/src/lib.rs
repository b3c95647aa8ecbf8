// Vendored v4l2-sys-mit 0.3.0: the upstream crate ran bindgen over wrapper.h in its build script;
// this copy includes bindings generated once, per target architecture, by ../regenerate.sh.
#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "v4l2-sys-mit (vendored): V4L2 exists only on Linux; these bindings are for Linux targets only"
);

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
include!("bindings/x86_64.rs");

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
include!("bindings/aarch64.rs");

#[cfg(all(
    target_os = "linux",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
compile_error!(
    "v4l2-sys-mit (vendored): no pre-generated V4L2 bindings for this target architecture; \
     generate src/bindings/<arch>.rs with vendor/v4l2-sys-mit/regenerate.sh (see its header and \
     README.md), then add the arch to src/lib.rs"
);
