//! End-to-end tests across the mce crates live in `tests/` of this package: they train with
//! `mce-train` and hand the result to `mce-device`, as a user would.
