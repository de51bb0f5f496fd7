//! Squall's core: everything that decides, and nothing that waits. The envelope format, the hook
//! contract (mirroring `wit/`), retry decisions and backoff arithmetic, Standard Webhooks
//! signing, secrets, SSRF address classification, the configuration model and its validation,
//! the metrics record, the per-message decision of the pipeline, and the deployment plan.
//!
//! This crate has no tokio, HTTP, AWS or wasmtime dependency: the engine (`squall`) does the
//! I/O and calls these functions with what it read (bytes, hook results, HTTP outcomes, the
//! clock's reading, a random draw). See ARCHITECTURE.md "Crates".
//!
//! The compiler keeps it so: the dependency graph has no I/O crate (`cargo tree -p squall-core`),
//! and clippy denies the standard library's file, environment, clock and socket access here
//! (clippy.toml lists them; tests may use them).
#![cfg_attr(not(test), deny(clippy::disallowed_methods, clippy::disallowed_types))]

pub mod config;
pub mod deploy;
pub mod endpoints;
pub mod envelope;
pub mod health;
pub mod hooks;
pub mod message;
pub mod metrics;
pub mod oauth2;
pub mod output;
pub mod pipeline;
pub mod provision;
pub mod registry;
pub mod retry;
pub mod secrets;
pub mod shared_queue;
pub mod signing;
pub mod ssrf;
pub mod trace;
