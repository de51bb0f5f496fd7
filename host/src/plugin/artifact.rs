//! Precompiled plugin artifacts (`.cwasm`): the one place that turns bytes into
//! native code without compiling them, so the one place allowed `unsafe`.
//!
//! Format 2 (written by [`wrap`]; checked by [`load`] and [`load_file`] before wasmtime
//! deserializes anything): wasmtime's serialized component, unchanged, followed by a
//! trailer.
//!
//! | bytes | content |
//! |---|---|
//! | n | payload: wasmtime's serialized component (an ELF file) |
//! | 8 | magic `SQUALLCW` (the trailer starts here, `TRAILER_LEN` bytes before the end) |
//! | 4 | format version, u32 LE (2) |
//! | 32 | engine digest: wasmtime version, target architecture, and the engine's precompile-compatibility hash (config, CPU features) |
//! | 32 | SHA-256 of the source `.wasm` component |
//! | 32 | CRC-32 (IEEE) of the payload, u32 LE; the CPU kind (1 byte: 0 not recorded, 1 this machine's features, 2 the architecture's baseline); the architecture's name (16 bytes, NUL-padded); zeros |
//! | 8 | payload length, u64 LE |
//!
//! Two kinds of artifact carry two kinds of engine digest. The disk cache holds *native*
//! artifacts: compiled by this engine, with the CPU features it detected, keyed by its own
//! digest. Deployment bundles hold *baseline* artifacts ([`super::Precompiler`]): compiled
//! for an architecture named explicitly (`aarch64-unknown-linux-gnu`, ...), with no optional
//! CPU extension, on any machine (cross-compiling included), so they load on every CPU of
//! that architecture: the digest is that of an engine configured like the runtime with the
//! target set, which a host of that architecture computes the same way
//! ([`super::PluginRuntime`] does, when it first meets an artifact that is not native).
//! The architecture and CPU kind recorded beside the checksum are for error messages (an
//! arm64 bundle deployed to an x86_64 function is refused naming both); the digest alone
//! decides. Artifacts written before the record existed have zeros there and load as before.
//!
//! Why a trailer: with the payload at offset 0, wasmtime can map the file itself
//! ([`Component::deserialize_file`]) instead of copying it, and build the copy-on-write
//! images of the plugin's initial linear memory straight from that mapping. For the 35 MB
//! artifacts of the Python and JavaScript samples (an initialised interpreter heap each)
//! that removes two copies and a memfd image per plugin from a Lambda cold start. Mapping is
//! only for files nothing rewrites in place (`RuntimeOptions::map_artifacts`, on in Lambda);
//! elsewhere artifacts are read and copied ([`load`]).
//!
//! The payload checksum guards against truncation and corruption (a damaged copy, a bad
//! disk), which is what could make deserializing unsound. It is not a defence against
//! someone who can write the file: they could rewrite any checksum beside it, so the bundle
//! itself must be trusted. Format 1 put the header in front and used SHA-256: hashing the
//! large artifacts took three quarters of a cold start's CPU (docs/benchmarks.md). Format 1
//! artifacts are refused with a "precompile again" message (the disk cache recompiles over
//! them).

#![allow(unsafe_code)]

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

use super::PluginError;

const MAGIC: &[u8; 8] = b"SQUALLCW";
const FORMAT_VERSION: u32 = 2;
/// Length of the trailer after wasmtime's payload.
pub(crate) const TRAILER_LEN: usize = 8 + 4 + 32 + 32 + 32 + 8;
/// The wasmtime version the host is built with (the one in Cargo.lock: a test checks it, so a
/// `cargo update -p wasmtime` must change it too). It is part of the engine digest: artifacts
/// made by another wasmtime release are refused with "precompile it again", before wasmtime's
/// own version check would refuse them less clearly.
pub(crate) const WASMTIME_VERSION: &str = "48.0.10";

/// The trailer of `bytes` when they end like a Squall artifact.
pub(crate) fn trailer(bytes: &[u8]) -> Option<&[u8]> {
    let t = bytes.get(bytes.len().checked_sub(TRAILER_LEN)?..)?;
    t.starts_with(MAGIC).then_some(t)
}

/// True when `bytes` start like a format 1 artifact (header in front), which this host
/// no longer reads.
pub(crate) fn is_format_1(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The error for a format 1 artifact.
pub(crate) fn format_1_error(path: &Path) -> PluginError {
    PluginError::ForeignArtifact {
        path: path.to_path_buf(),
        detail: format!(
            "artifact format version 1, this host reads version {FORMAT_VERSION}; precompile it again with this build (`squall plugin precompile`) or ship the .wasm"
        ),
    }
}

/// A digest naming everything an artifact depends on: the wasmtime version, the target
/// architecture (`aarch64`, `x86_64`: the names of `std::env::consts::ARCH`) and the
/// engine's compatibility hash (its compilation settings and CPU features).
pub(crate) fn engine_digest(engine: &Engine, arch: &str) -> [u8; 32] {
    engine_digest_for(WASMTIME_VERSION, arch, engine)
}

/// [`engine_digest`] as a build with wasmtime `version` computes it.
fn engine_digest_for(version: &str, arch: &str, engine: &Engine) -> [u8; 32] {
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
    h.write(version.as_bytes());
    h.write(arch.as_bytes());
    h.write(std::env::consts::OS.as_bytes());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().into()
}

/// Which CPU an artifact's code was compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cpu {
    /// Not recorded (an artifact written before the record existed).
    Unknown,
    /// The CPU features of the machine that compiled it (the disk cache).
    Native,
    /// The architecture's baseline, no optional extension (deployment bundles).
    Baseline,
}

/// What an artifact was compiled for, as recorded in its trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `aarch64`, `x86_64` (empty when not recorded).
    pub arch: String,
    /// Native or baseline CPU features.
    pub cpu: Cpu,
}

impl Target {
    /// This machine, with its own CPU features.
    pub fn native() -> Target {
        Target {
            arch: std::env::consts::ARCH.to_string(),
            cpu: Cpu::Native,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cpu {
            Cpu::Unknown => f.write_str("an unrecorded target"),
            Cpu::Native => write!(
                f,
                "{} (the CPU features of the machine that compiled it)",
                self.arch
            ),
            Cpu::Baseline => write!(f, "{} (any {} CPU)", self.arch, self.arch),
        }
    }
}

/// The checksum field: CRC-32 (IEEE) little-endian, the CPU kind, the architecture's name
/// (16 bytes, NUL-padded), zeros to 32 bytes.
fn checksum_field(crc: u32, target: &Target) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out[4] = match target.cpu {
        Cpu::Unknown => 0,
        Cpu::Native => 1,
        Cpu::Baseline => 2,
    };
    let name = target.arch.as_bytes();
    let n = name.len().min(16);
    out[5..5 + n].copy_from_slice(&name[..n]);
    out
}

fn parse_checksum_field(field: &[u8; 32]) -> (u32, Target) {
    let crc = u32::from_le_bytes(field[..4].try_into().expect("4 bytes"));
    let cpu = match field[4] {
        1 => Cpu::Native,
        2 => Cpu::Baseline,
        _ => Cpu::Unknown,
    };
    let name = &field[5..21];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let arch = String::from_utf8_lossy(&name[..end]).into_owned();
    (crc, Target { arch, cpu })
}

/// Wasmtime's serialized component followed by the Squall trailer.
pub(crate) fn wrap(
    engine_digest: &[u8; 32],
    target: &Target,
    source_digest: &[u8; 32],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + TRAILER_LEN);
    out.extend_from_slice(payload);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(engine_digest);
    out.extend_from_slice(source_digest);
    out.extend_from_slice(&checksum_field(crc32fast::hash(payload), target));
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out
}

/// What the trailer of an artifact says, once it has been checked against this engine.
pub(crate) struct Header {
    /// SHA-256 of the source `.wasm` the payload was compiled from.
    pub source_digest: [u8; 32],
    /// What it was compiled for.
    pub target: Target,
    payload_crc: u32,
    payload_len: u64,
}

/// The engine digests a runtime loads artifacts for.
pub(crate) trait Accepts {
    /// This engine's own digest.
    fn native(&self) -> &[u8; 32];
    /// The baseline digest of this host's architecture (computed when first needed; `None`
    /// where the host has none: not Linux, or another architecture).
    fn baseline(&self) -> Option<[u8; 32]>;
}

/// Only an engine's own artifacts (the disk cache).
pub(crate) struct NativeOnly<'a>(pub &'a [u8; 32]);

impl Accepts for NativeOnly<'_> {
    fn native(&self) -> &[u8; 32] {
        self.0
    }
    fn baseline(&self) -> Option<[u8; 32]> {
        None
    }
}

fn accepted(accepts: &dyn Accepts, digest: &[u8]) -> bool {
    digest == accepts.native() || accepts.baseline().is_some_and(|b| digest == b)
}

/// Check the trailer of an artifact (see [`trailer`]) against this engine: magic, format
/// version and engine digest. Cheap: the payload is not read, so a component already
/// loaded from the same source can be reused without touching it.
pub(crate) fn check_header(
    accepts: &dyn Accepts,
    trailer: &[u8],
    path: &Path,
) -> Result<Header, PluginError> {
    let foreign = |detail: String| PluginError::ForeignArtifact {
        path: path.to_path_buf(),
        detail,
    };
    if trailer.len() != TRAILER_LEN || !trailer.starts_with(MAGIC) {
        return Err(corrupt(
            path,
            "not a Squall precompiled artifact (bad trailer)",
        ));
    }
    let version = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(foreign(format!(
            "artifact format version {version}, this host reads version {FORMAT_VERSION}"
        )));
    }
    let (artifact_engine, rest) = trailer[12..].split_at(32);
    let (payload_crc, target) = parse_checksum_field(rest[32..64].try_into().expect("32 bytes"));
    if !accepted(accepts, artifact_engine) {
        let host = std::env::consts::ARCH;
        if target.cpu != Cpu::Unknown && target.arch != host {
            return Err(foreign(format!(
                "it was compiled for {target}, and this host is {host}; \
                 precompile it for this architecture (`squall plugin precompile --arch`, \
                 `squall deploy bundle --precompile --arch`, `scripts/package-lambda --arch`) or ship the .wasm"
            )));
        }
        return Err(foreign(format!(
            "it was compiled for another engine (engine digest {}, compiled for {target}; this host {} with wasmtime {WASMTIME_VERSION} on {host}-{}); \
             precompile it again with this build (`squall plugin precompile`) or ship the .wasm",
            hex::encode(&artifact_engine[..8]),
            hex::encode(&accepts.native()[..8]),
            std::env::consts::OS,
        )));
    }
    Ok(Header {
        source_digest: rest[..32].try_into().expect("32 bytes"),
        target,
        payload_crc,
        payload_len: u64::from_le_bytes(rest[64..72].try_into().expect("8 bytes")),
    })
}

/// The source digest field of a trailer (see [`trailer`]), unchecked: what the artifact
/// says it was compiled from.
pub(crate) fn source_digest(trailer: &[u8]) -> [u8; 32] {
    trailer[44..76].try_into().expect("32 bytes")
}

fn corrupt(path: &Path, detail: &str) -> PluginError {
    PluginError::CorruptArtifact {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn refused(path: &Path, e: wasmtime::Error) -> PluginError {
    PluginError::ForeignArtifact {
        path: path.to_path_buf(),
        detail: format!("wasmtime refused the artifact: {e}"),
    }
}

/// Check an artifact held in memory against this engine and deserialize it (a copy).
/// Returns the component and the SHA-256 of the source `.wasm` it was compiled from.
/// (Bundled artifacts are mapped with [`load_file`]; the disk cache, which other processes
/// write to, is read with this.)
pub(crate) fn load(
    engine: &Engine,
    accepts: &dyn Accepts,
    bytes: &[u8],
    path: &Path,
) -> Result<(Component, [u8; 32]), PluginError> {
    if is_format_1(bytes) {
        return Err(format_1_error(path));
    }
    let Some(trailer) = trailer(bytes) else {
        return Err(corrupt(
            path,
            "not a Squall precompiled artifact (no trailer)",
        ));
    };
    let header = check_header(accepts, trailer, path)?;
    let payload = &bytes[..bytes.len() - TRAILER_LEN];
    if payload.len() as u64 != header.payload_len {
        return Err(truncated(path));
    }
    if crc32fast::hash(payload) != header.payload_crc {
        return Err(corrupt(path, "payload checksum mismatch"));
    }
    if Engine::detect_precompiled(payload) != Some(Precompiled::Component) {
        return Err(corrupt(path, "payload is not a precompiled component"));
    }
    // SAFETY: see `load_file`; the same checks were made on these bytes.
    let component =
        unsafe { Component::deserialize(engine, payload) }.map_err(|e| refused(path, e))?;
    Ok((component, header.source_digest))
}

fn truncated(path: &Path) -> PluginError {
    corrupt(
        path,
        "truncated or padded (payload length does not match the trailer)",
    )
}

/// Verify the payload of the artifact file `file` (`len` bytes long, as the caller found it)
/// at `path`, whose trailer was checked into `header` (length, CRC-32 read in chunks,
/// wasmtime's own marker), then let wasmtime map the file: no copy of the payload is made, and
/// the plugin's initial memory images are copy-on-write mappings of the same file.
pub(crate) fn load_file(
    engine: &Engine,
    header: &Header,
    mut file: File,
    len: u64,
    path: &Path,
) -> Result<Component, PluginError> {
    let io = |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    };
    if len.checked_sub(TRAILER_LEN as u64) != Some(header.payload_len) {
        return Err(truncated(path));
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut crc = crc32fast::Hasher::new();
    let mut left = header.payload_len;
    let mut buf = vec![0u8; 256 * 1024];
    let mut first = true;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        file.read_exact(&mut buf[..n]).map_err(io)?;
        if first && !buf[..n].starts_with(b"\x7fELF") {
            // Not even an ELF file: do not checksum 35 MB to say so.
            return Err(corrupt(path, "payload is not a precompiled component"));
        }
        first = false;
        crc.update(&buf[..n]);
        left -= n as u64;
    }
    if crc.finalize() != header.payload_crc {
        return Err(corrupt(path, "payload checksum mismatch"));
    }
    if Engine::detect_precompiled_file(path).ok().flatten() != Some(Precompiled::Component) {
        return Err(corrupt(path, "payload is not a precompiled component"));
    }
    // SAFETY: `Component::deserialize_file` trusts the file to be wasmtime's own output for a
    // compatible engine and to stay unchanged while mapped. The payload is exactly what
    // `Component::serialize` produced on an engine whose digest (wasmtime version, target,
    // configuration and CPU features) equals ours, and its length and CRC-32 match the ones
    // in the trailer, so it is not a truncated, corrupted or foreign file; the trailer after
    // it is outside every section wasmtime reads. wasmtime additionally re-checks its own
    // version and configuration metadata and returns an error on a mismatch. Plugin files
    // are deployment artifacts, not rewritten while a process runs (`squall plugin
    // precompile` and the disk cache write a new file and rename it over the old one, which
    // leaves an existing mapping intact).
    unsafe { Component::deserialize_file(engine, path) }.map_err(|e| refused(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::env::consts::ARCH;
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
        let (ours_digest, theirs_digest) =
            (engine_digest(&ours, ARCH), engine_digest(&theirs, ARCH));
        assert_ne!(ours_digest, theirs_digest);
        let wasm = sample();
        let source: [u8; 32] = Sha256::digest(&wasm).into();
        let payload = Component::new(&theirs, &wasm).unwrap().serialize().unwrap();
        let path = Path::new("/bundle/github-signer.cwasm");

        let honest = wrap(&theirs_digest, &Target::native(), &source, &payload);
        let err = load(&ours, &NativeOnly(&ours_digest), &honest, path)
            .err()
            .unwrap();
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
        let lying = wrap(&ours_digest, &Target::native(), &source, &payload);
        let err = load(&ours, &NativeOnly(&ours_digest), &lying, path)
            .err()
            .unwrap();
        assert!(
            matches!(err, PluginError::ForeignArtifact { .. }),
            "{err:?}"
        );

        // The matching engine loads it.
        let (_, digest) = load(&theirs, &NativeOnly(&theirs_digest), &honest, path).unwrap();
        assert_eq!(digest, source);
    }

    #[test]
    fn the_wasmtime_version_is_the_one_in_the_lockfile() {
        let lock = include_str!("../../../Cargo.lock");
        let locked: Vec<&str> = lock
            .split("[[package]]")
            .filter(|p| p.contains("\nname = \"wasmtime\"\n"))
            .filter_map(|p| p.split("\nversion = \"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            locked,
            [WASMTIME_VERSION],
            "update WASMTIME_VERSION with wasmtime"
        );
    }

    /// The workspace names cranelift-codegen only to turn on its aarch64 and x86_64 backends
    /// (Cargo.toml): that works only while it is the copy wasmtime uses.
    #[test]
    fn cranelift_codegen_is_the_one_wasmtime_uses() {
        let lock = include_str!("../../../Cargo.lock");
        let versions: Vec<&str> = lock
            .split("[[package]]")
            .filter(|p| p.contains("\nname = \"cranelift-codegen\"\n"))
            .filter_map(|p| p.split("\nversion = \"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            versions.len(),
            1,
            "one cranelift-codegen, wasmtime's: {versions:?} (update the workspace's cranelift-codegen with wasmtime)"
        );
    }

    #[test]
    fn artifacts_of_another_wasmtime_version_are_refused() {
        // What an artifact precompiled by a build with wasmtime 48.0.8 carries: the same
        // engine settings, another version in the digest.
        let engine = engine(true);
        let ours = engine_digest(&engine, ARCH);
        let theirs = engine_digest_for("48.0.8", ARCH, &engine);
        assert_ne!(ours, theirs);
        let wasm = sample();
        let source: [u8; 32] = Sha256::digest(&wasm).into();
        let payload = Component::new(&engine, &wasm).unwrap().serialize().unwrap();
        let old = wrap(&theirs, &Target::native(), &source, &payload);
        let err = load(&engine, &NativeOnly(&ours), &old, Path::new("old.cwasm"))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            matches!(err, PluginError::ForeignArtifact { .. })
                && text.contains(&format!("wasmtime {WASMTIME_VERSION}"))
                && text.contains("precompile it again"),
            "{text}"
        );
    }

    #[test]
    fn engine_digest_is_stable_for_one_configuration() {
        assert_eq!(
            engine_digest(&engine(true), ARCH),
            engine_digest(&engine(true), ARCH)
        );
    }

    #[test]
    fn the_target_is_recorded_beside_the_checksum() {
        let wasm = sample();
        let engine = engine(true);
        let digest = engine_digest(&engine, ARCH);
        let payload = Component::new(&engine, &wasm).unwrap().serialize().unwrap();
        let target = Target {
            arch: "aarch64".into(),
            cpu: Cpu::Baseline,
        };
        let bytes = wrap(&digest, &target, &[7; 32], &payload);
        let header = check_header(
            &NativeOnly(&digest),
            trailer(&bytes).unwrap(),
            Path::new("x.cwasm"),
        )
        .unwrap();
        assert_eq!(header.target, target);
        assert_eq!(header.payload_crc, crc32fast::hash(&payload));
        // An artifact written before the record: zeros after the CRC, loads as before.
        let mut old = bytes.clone();
        let at = old.len() - 8 - 28;
        old[at..at + 28].fill(0);
        let (_, source) = load(&engine, &NativeOnly(&digest), &old, Path::new("x.cwasm")).unwrap();
        assert_eq!(source, [7; 32]);
    }

    #[test]
    fn an_artifact_for_another_architecture_is_refused_naming_both() {
        let wasm = sample();
        let engine = engine(true);
        let ours = engine_digest(&engine, ARCH);
        let payload = Component::new(&engine, &wasm).unwrap().serialize().unwrap();
        let other = if ARCH == "aarch64" {
            "x86_64"
        } else {
            "aarch64"
        };
        let theirs = engine_digest(&engine, other);
        let target = Target {
            arch: other.into(),
            cpu: Cpu::Baseline,
        };
        let bytes = wrap(&theirs, &target, &[7; 32], &payload);
        let err = load(&engine, &NativeOnly(&ours), &bytes, Path::new("p/x.cwasm"))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            matches!(err, PluginError::ForeignArtifact { .. })
                && text.contains(&format!(
                    "compiled for {other} (any {other} CPU), and this host is {ARCH}"
                ))
                && text.contains("--arch")
                && text.contains("p/x.cwasm"),
            "{text}"
        );
    }
}
