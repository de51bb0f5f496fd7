//! The end-to-end test harness: real local parts only. An SQS-compatible server (moto,
//! started by `scripts/test`), HTTP receivers with scripted faults, and an independent
//! signature verifier. Each test in `tests/e2e` reads as a scenario built from these.

pub mod receiver;
pub mod sqs;
pub mod verify;
