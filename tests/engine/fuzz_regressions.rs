//! Replays the fuzz inputs kept in the repository through the same checks the cargo-fuzz
//! targets run (`fuzz/src/checks.rs`, included here), on stable, in `cargo test`:
//! `fuzz/regressions/<target>/*` are inputs that once crashed a target (each fixed since),
//! `fuzz/seeds/<target>/*` are the seed corpus. Every input must pass.

#[allow(dead_code)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

/// Run `check` on every file of `fuzz/{seeds,regressions}/<target>`; returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for kind in ["seeds", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.into_iter().filter(|f| f.is_file()) {
            let data = std::fs::read(&f).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: input {} fails", f.display());
            n += 1;
        }
    }
    n
}

#[test]
fn envelope_decode_inputs() {
    assert!(replay("envelope_decode", checks::envelope_decode) >= 3);
}

#[test]
fn config_parse_inputs() {
    assert!(replay("config_parse", checks::config_parse) >= 3);
}

#[test]
fn retry_after_inputs() {
    assert!(replay("retry_after", checks::retry_after) >= 5);
}

#[test]
fn plugin_output_inputs() {
    assert!(replay("plugin_output", checks::plugin_output) >= 6);
}

/// The checks are not vacuous: each seed kind is accepted where it should be.
#[test]
fn seeds_exercise_the_accepting_paths() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let env = std::fs::read(root.join("envelope_decode/base64.json")).unwrap();
    assert!(squall::envelope::decode(&env, &Default::default()).is_ok());
    let toml = std::fs::read_to_string(root.join("config_parse/example.toml")).unwrap();
    squall::config::Config::from_toml_str(&toml, Path::new("."), Vec::new()).unwrap();
}
