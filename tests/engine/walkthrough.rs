//! The walk-throughs of docs/plugins.md, run as written: every block fenced as
//! ```` ```<lang> file=PATH ```` is written to PATH in a fresh folder, then every
//! ```` ```sh walkthrough=LANG ```` block of that language runs there, in order, in one `bash`
//! (so a `cd` carries over), with `$SQUALL` set to this repository and the toolchains the
//! build scripts install on `PATH`. The test checks the output the guide quotes.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// (info string, body) of every fenced block of the guide.
fn blocks() -> Vec<(String, String)> {
    let guide = std::fs::read_to_string(repo().join("docs/plugins.md")).unwrap();
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in guide.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_string(), String::new())),
            (Some(_), Some("")) => out.push(current.take().unwrap()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// Run the walk-through of `lang`; its combined output.
fn walk(lang: &str, tools: &[PathBuf]) -> String {
    let dir = std::env::temp_dir().join(format!(
        "squall-walkthrough-{lang}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut script = String::from("set -euo pipefail\n");
    for (info, body) in blocks() {
        let mut words = info.split_whitespace();
        let _language = words.next();
        for word in words {
            if let Some(path) = word.strip_prefix("file=") {
                let path = dir.join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &body).unwrap();
            }
            if word == format!("walkthrough={lang}") {
                script.push_str(&body);
            }
        }
    }
    assert!(script.lines().count() > 1, "no walk-through for {lang}");
    let squall = squall_tests::process::squall_bin();
    let mut path = vec![squall.parent().unwrap().to_path_buf()];
    path.extend(tools.iter().cloned());
    for tool in tools {
        assert!(
            tool.is_dir(),
            "{} is missing: run scripts/build-plugins first",
            tool.display()
        );
    }
    path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap()));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("SQUALL", repo())
        .env("PATH", std::env::join_paths(path).unwrap())
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("RUST_BACKTRACE", "0")
        // A reader's crate builds into its own target folder.
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "walk-through {lang} failed:\n{script}\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    text
}

fn contains_all(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "missing {w:?} in:\n{text}");
    }
}

#[test]
fn the_python_walkthrough_works_as_written() {
    let text = walk("python", &[repo().join(".tools/py-plugins/bin")]);
    contains_all(
        &text,
        &[
            "hooks:    retry-policy (@0.3.0)",
            "attempt 1 of evt_2Q7x9KpLmN4vR8sT: retrying in 30 s",
            "RetryAfterSeconds(30)",
            "reported an error: config delay: 'soon' is not a number (plugin-error)",
            "exit status 1",
            "attempt 1 of evt_1: retrying in 30 s\nRetryDecision_RetryAfterSeconds(value=30)",
        ],
    );
}

#[test]
fn the_javascript_walkthrough_works_as_written() {
    let text = walk("javascript", &[repo().join("plugins/js/node_modules/.bin")]);
    contains_all(
        &text,
        &[
            "hooks:    retry-policy (@0.3.0)",
            "DeadLetter(\"endpoint gone\")",
            "reported an error: config delay: -5 is not a whole number of seconds (plugin-error)",
            "exit status 1",
        ],
    );
}

#[test]
fn the_rust_walkthrough_works_as_written() {
    let text = walk("rust", &[]);
    let raw = std::fs::read(repo().join("examples/envelope.json")).unwrap();
    let event = squall::envelope::decode(&raw, &squall::envelope::Limits::default())
        .unwrap()
        .into_event(1, 0);
    let key = squall::secrets::SecretKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let want: String = key
        .hmac_sha256_parts(&[&event.body])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    contains_all(
        &text,
        &[
            &format!("x-signature: {want}"),
            "reported an error: application billing has no secret named \"nope\" (plugin-error)",
            "exit status 1",
        ],
    );
}

#[test]
fn the_c_walkthrough_works_as_written() {
    let text = walk(
        "c",
        &[
            repo().join(".tools/wit-bindgen/bin"),
            repo().join(".tools/c-encoder/release"),
        ],
    );
    contains_all(
        &text,
        &["DeadLetter(\"endpoint gone\")", "RetryAfterSeconds(60)"],
    );
}
