//! Precompiled plugin artifacts (`.cwasm`): the one place that turns bytes into
//! native code without compiling them, so the one place allowed `unsafe`.
//!
//! Format (all written by [`wrap`], checked by [`load`] before wasmtime sees a byte):
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `SQUALLCW` |
//! | 4 | format version, u32 LE (1) |
//! | 32 | engine digest: wasmtime version, target, and the engine's precompile-compatibility hash (config, CPU features) |
//! | 32 | SHA-256 of the source `.wasm` component |
//! | 32 | SHA-256 of the payload |
//! | 8 | payload length, u64 LE |
//! | n | payload: wasmtime's serialized component |

#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

use super::PluginError;

const MAGIC: &[u8; 8] = b"SQUALLCW";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 32 + 32 + 32 + 8;
/// The wasmtime version the host is pinned to (`=48.0.8` in the workspace).
pub(crate) const WASMTIME_VERSION: &str = "48.0.8";

/// True when `bytes` start like a Squall artifact.
pub(crate) fn is_artifact(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// A digest naming everything an artifact depends on: the wasmtime version, the target
/// and the engine's compatibility hash (its compilation settings and CPU features).
pub(crate) fn engine_digest(engine: &Engine) -> [u8; 32] {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    h.write(b"squall-cwasm\0wasmtime ");
    h.write(WASMTIME_VERSION.as_bytes());
    h.write(std::env::consts::ARCH.as_bytes());
    h.write(std::env::consts::OS.as_bytes());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().into()
}

/// Wrap wasmtime's serialized component in the Squall header.
pub(crate) fn wrap(engine_digest: &[u8; 32], source_digest: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(engine_digest);
    out.extend_from_slice(source_digest);
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Check an artifact against this engine and deserialize it. Returns the component and
/// the SHA-256 of the source `.wasm` it was compiled from.
pub(crate) fn load(
    engine: &Engine,
    engine_digest: &[u8; 32],
    bytes: &[u8],
    path: &Path,
) -> Result<(Component, [u8; 32]), PluginError> {
    let foreign = |detail: String| PluginError::ForeignArtifact {
        path: path.to_path_buf(),
        detail,
    };
    let corrupt = |detail: &str| PluginError::CorruptArtifact {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    if bytes.len() < HEADER_LEN || !bytes.starts_with(MAGIC) {
        return Err(corrupt("not a Squall precompiled artifact (bad header)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(foreign(format!(
            "artifact format version {version}, this host reads version {FORMAT_VERSION}"
        )));
    }
    let (artifact_engine, rest) = bytes[12..].split_at(32);
    if artifact_engine != engine_digest {
        return Err(foreign(format!(
            "it was compiled for another engine (engine digest {}, this host {} with wasmtime {WASMTIME_VERSION} on {}-{}); \
             precompile it again with this build (`squall plugin precompile`) or ship the .wasm",
            hex::encode(&artifact_engine[..8]),
            hex::encode(&engine_digest[..8]),
            std::env::consts::ARCH,
            std::env::consts::OS,
        )));
    }
    let source_digest: [u8; 32] = rest[..32].try_into().expect("32 bytes");
    let payload_digest = &rest[32..64];
    let len = u64::from_le_bytes(rest[64..72].try_into().expect("8 bytes"));
    let payload = &rest[72..];
    if payload.len() as u64 != len {
        return Err(corrupt(
            "truncated or padded (payload length does not match the header)",
        ));
    }
    if Sha256::digest(payload).as_slice() != payload_digest {
        return Err(corrupt("payload checksum mismatch"));
    }
    if Engine::detect_precompiled(payload) != Some(Precompiled::Component) {
        return Err(corrupt("payload is not a precompiled component"));
    }
    // SAFETY: `Component::deserialize` trusts its input to be wasmtime's own output for
    // a compatible engine. The payload is exactly what `Component::serialize` produced on
    // an engine whose digest (wasmtime version, target, configuration and CPU features)
    // equals ours, and its SHA-256 matches the one recorded beside it, so it is not a
    // truncated, corrupted or foreign file. wasmtime additionally re-checks its own
    // version and configuration metadata and returns an error on a mismatch.
    let component = unsafe { Component::deserialize(engine, payload) }
        .map_err(|e| foreign(format!("wasmtime refused the artifact: {e}")))?;
    Ok((component, source_digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Config;

    fn sample() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/github-signer.wasm");
        std::fs::read(&path).unwrap_or_else(|_| {
            panic!(
                "{} is missing: run scripts/build-plugins first",
                path.display()
            )
        })
    }

    fn engine(epoch: bool) -> Engine {
        let mut c = Config::new();
        c.wasm_component_model(true);
        c.epoch_interruption(epoch);
        Engine::new(&c).unwrap()
    }

    #[test]
    fn artifacts_from_another_engine_configuration_are_refused() {
        let ours = engine(true);
        let theirs = engine(false);
        let (ours_digest, theirs_digest) = (engine_digest(&ours), engine_digest(&theirs));
        assert_ne!(ours_digest, theirs_digest);
        let wasm = sample();
        let source: [u8; 32] = Sha256::digest(&wasm).into();
        let payload = Component::new(&theirs, &wasm).unwrap().serialize().unwrap();
        let path = Path::new("/bundle/github-signer.cwasm");

        let honest = wrap(&theirs_digest, &source, &payload);
        let err = load(&ours, &ours_digest, &honest, path).err().unwrap();
        assert!(
            matches!(err, PluginError::ForeignArtifact { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("/bundle/github-signer.cwasm") && text.contains("another engine"),
            "{text}"
        );

        // A header that lies about the engine: wasmtime's own metadata check still refuses.
        let lying = wrap(&ours_digest, &source, &payload);
        let err = load(&ours, &ours_digest, &lying, path).err().unwrap();
        assert!(
            matches!(err, PluginError::ForeignArtifact { .. }),
            "{err:?}"
        );

        // The matching engine loads it.
        let (_, digest) = load(&theirs, &theirs_digest, &honest, path).unwrap();
        assert_eq!(digest, source);
    }

    #[test]
    fn engine_digest_is_stable_for_one_configuration() {
        assert_eq!(engine_digest(&engine(true)), engine_digest(&engine(true)));
    }
}
