//! End-to-end scenarios.

mod ops;
