//! Squall: a webhook delivery engine. Events come from SQS (or the embedded in-process
//! queue), pass through per-application WebAssembly plugins (transform, signer, retry
//! policy) or the native built-ins, are POSTed to the subscriber, and end delivered,
//! dead-lettered with a reason, or queued for a later attempt.
//!
//! See `ARCHITECTURE.md` at the repository root for the map.

pub mod config;
pub mod conformance;
pub mod demo;
pub mod deploy;
pub mod envelope;
pub mod hooks;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod plugin;
pub mod queue;
pub mod retry;
pub mod runner;
pub mod secrets;
pub mod signing;
pub mod ssrf;
