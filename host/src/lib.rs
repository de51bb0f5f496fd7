//! Squall: a webhook delivery engine. Events come from SQS (or the embedded in-process
//! queue), pass through per-application WebAssembly plugins (transform, signer, retry
//! policy) or the native built-ins, are POSTed to the subscriber, and end delivered,
//! dead-lettered with a reason, or queued for a later attempt.
//!
//! The decisions live in `squall-core` (no I/O); this crate does the I/O around them. The
//! core's modules are re-exported under their own names (`squall::config`, `squall::envelope`,
//! ...), so a user of the engine sees one crate. See `ARCHITECTURE.md` at the repository root for
//! the map.

pub mod actor;
pub mod apps;
pub mod config;
pub mod conformance;
pub mod demo;
pub mod health;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod oauth2;
pub mod ops;
pub mod pipeline;
pub mod plugin;
pub mod queue;
pub mod registry;
pub mod retry;
pub mod runner;
pub mod ssrf;
#[cfg(test)]
mod testing;
pub mod traces;

pub use squall_core::{deploy, endpoints, envelope, hooks, provision, secrets, signing};
