//! Squall's test kit, used by the unit tests, the integration tests (`tests/`), the fault run,
//! the benchmarks and the demo:
//!
//! - [`receiver`]: the one HTTP subscriber for tests, hyper on a loopback address, recording
//!   every request byte for byte and answering from per-path fault scripts (status, headers
//!   such as `Retry-After`, a delay, a hang, a reset).
//! - [`verify`]: the one independent Standard Webhooks verifier, built on the `standardwebhooks`
//!   crate so that the check shares no code with the engine's signer.
//! - [`envelope`] and [`config`]: builders of test envelopes (JSON) and of test configurations
//!   (TOML text).
//!
//! It depends on no Squall crate: the engine depends on it (the demo ships in the CLI), and a
//! check written with the engine's own code would prove nothing.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use squall_testkit::receiver::{Receiver, Reply};
//!
//! let rx = Receiver::start(Reply::Status(200)).await;
//! rx.script("/hook", vec![Reply::Status(503)]);
//! let url = rx.url("/hook"); // http://127.0.0.1:PORT/hook: 503 once, then 200
//! # let _ = url;
//! # }
//! ```

pub mod config;
pub mod envelope;
pub mod receiver;
pub mod verify;

/// The Standard Webhooks secret the tests sign with (test-only).
pub const TEST_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Unix time now, milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
