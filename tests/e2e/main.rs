//! End-to-end scenarios.
mod lambda;
