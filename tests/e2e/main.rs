//! End-to-end scenarios against the real local parts (moto, HTTP receivers, the `squall`
//! binary). Run by `scripts/test`, which starts moto and sets `SQUALL_TEST_SQS_ENDPOINT`.

mod apps;
mod arm64;
mod delivery;
mod endpoints;
mod health;
mod health_shared;
mod isolation;
mod lambda;
mod mtls;
mod oauth2;
mod ops;
mod plugins;
mod registry;
mod shared;
mod signing_v1a;
mod ssrf;
mod supply;
mod template;
mod traces;
