//! The real `squall` binary as a child process, started the way an operator starts it:
//! a config file, AWS credentials in the environment, SIGTERM to stop.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the `squall` binary built beside this test executable (`target/debug/squall`).
/// `scripts/test` builds it (`cargo test --workspace` builds every bin of the workspace).
pub fn squall_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SQUALL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("squall");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p squall` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A private scratch directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// New directory under the system temp dir.
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "squall-{tag}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `squall run`.
pub struct SquallRun {
    child: Option<Child>,
    log: PathBuf,
    _scratch: Scratch,
}

impl SquallRun {
    /// Write `config_toml` to a file and start `squall run --config FILE` with static test
    /// credentials. Logs (JSON) go to a file shown on failure.
    pub fn start(config_toml: &str) -> SquallRun {
        let scratch = Scratch::new("run");
        let cfg = scratch.path().join("squall.toml");
        std::fs::File::create(&cfg)
            .unwrap()
            .write_all(config_toml.as_bytes())
            .unwrap();
        let log = scratch.path().join("squall.log");
        let child = Command::new(squall_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env(
                "SQUALL_LOG",
                std::env::var("SQUALL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env(
                "XDG_CACHE_HOME",
                std::env::temp_dir().join("squall-test-cache"),
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("spawn squall run");
        SquallRun {
            child: Some(child),
            log,
            _scratch: scratch,
        }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Send SIGTERM and wait (up to 60 s) for a graceful exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(60))
    }

    /// SIGKILL: the crash case.
    pub fn kill(mut self) {
        self.signal("KILL");
        self.wait(Duration::from_secs(10));
    }

    /// Send `SIGTERM` or `SIGKILL` (`sig` = `"TERM"` / `"KILL"`), wait for the exit (60 s),
    /// and return the exit status with the whole log (the scratch directory holding it is
    /// removed when `self` drops).
    pub fn stop_with_log(mut self, sig: &str) -> (ExitStatus, String) {
        self.signal(sig);
        let status = self.wait(Duration::from_secs(60));
        (status, self.log())
    }

    /// Wait (up to `limit`) for the process to exit by itself; its exit status and whole log.
    pub fn wait_exit(mut self, limit: Duration) -> (ExitStatus, String) {
        let status = self.wait(limit);
        (status, self.log())
    }

    fn signal(&mut self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!("squall did not exit within {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SquallRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- squall log ---\n{}", self.log());
            }
        }
    }
}

/// Poll `check` every 100 ms until it returns `Some`, or fail after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
