//! Benchmarks live in `functions.rs` (criterion); see README.md.
