//! The engine library against real local artefacts, no SQS needed: the sample plugin
//! components in `plugins/dist` (build them with `scripts/build-plugins`), the shared
//! conformance vectors in `plugins/conformance/`, and the fuzz inputs kept in `fuzz/`.

mod conformance;
mod fuzz_regressions;
mod plugins;
mod walkthrough;
