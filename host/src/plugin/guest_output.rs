//! What a plugin writes to WASI stdout and stderr: captured per instance into one bounded
//! buffer, emptied at the start of every call, so what a call leaves there is that call's own
//! output (a `print`, a `console.log`, a Python traceback, a JavaScript exception, a Rust
//! panic message). Never shared: each instance (so each application) has its own buffer.
//!
//! The buffer keeps the *last* [`CAPTURE_BYTES`] of a call's output (the end of a traceback
//! is what says what went wrong) and counts what it dropped. A plugin sees no secret (it asks
//! the host for HMACs by key name), so its output cannot contain one; it can contain the
//! event's payload if the plugin prints it, which is why it is logged at `debug` level unless
//! the call failed, and rate-limited either way.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The most of one call's stdout and stderr kept (the end of it), bytes.
pub const CAPTURE_BYTES: usize = 8 * 1024;
/// The most of a call's output carried in a trap's detail (its last lines), bytes.
pub const TRAP_TAIL_BYTES: usize = 1536;

#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
    /// Bytes written during this call but no longer held (the oldest go first).
    dropped: u64,
}

/// One instance's stdout and stderr, interleaved in the order written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Tail>>);

impl Capture {
    fn append(&self, data: &[u8]) {
        let Ok(mut tail) = self.0.lock() else { return };
        if data.len() >= CAPTURE_BYTES {
            tail.dropped += (tail.bytes.len() + data.len() - CAPTURE_BYTES) as u64;
            tail.bytes.clear();
            tail.bytes
                .extend_from_slice(&data[data.len() - CAPTURE_BYTES..]);
            return;
        }
        let over = (tail.bytes.len() + data.len()).saturating_sub(CAPTURE_BYTES);
        if over > 0 {
            tail.bytes.drain(..over);
            tail.dropped += over as u64;
        }
        tail.bytes.extend_from_slice(data);
    }

    /// Forget what earlier calls wrote.
    pub(crate) fn clear(&self) {
        if let Ok(mut tail) = self.0.lock()
            && (!tail.bytes.is_empty() || tail.dropped > 0)
        {
            tail.bytes.clear();
            tail.dropped = 0;
        }
    }

    /// What the call wrote, taken out of the buffer; `None` when it wrote nothing.
    pub(crate) fn take(&self) -> Option<GuestOutput> {
        let mut tail = self.0.lock().ok()?;
        if tail.bytes.is_empty() && tail.dropped == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&tail.bytes).into_owned();
        let dropped = tail.dropped;
        tail.bytes.clear();
        tail.dropped = 0;
        Some(GuestOutput {
            text,
            dropped_bytes: dropped,
        })
    }
}

/// What one call wrote to stdout and stderr (the end of it, if it wrote more than
/// [`CAPTURE_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOutput {
    /// The text (invalid UTF-8 replaced), interleaved stdout and stderr.
    pub text: String,
    /// How many earlier bytes of the call's output were dropped to keep within the bound.
    pub dropped_bytes: u64,
}

impl GuestOutput {
    /// The last lines of the output, at most `max` bytes, cut at a line start where one is
    /// near; trailing blank lines dropped.
    pub fn last_lines(&self, max: usize) -> &str {
        let text = self.text.trim_end();
        if text.len() <= max {
            return text;
        }
        let start = text.ceil_char_boundary(text.len() - max);
        let tail = &text[start..];
        match tail.find('\n') {
            Some(i) if i + 1 < tail.len() => &tail[i + 1..],
            _ => tail,
        }
    }
}

impl std::fmt::Display for GuestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dropped_bytes > 0 {
            writeln!(f, "[{} earlier bytes dropped]", self.dropped_bytes)?;
        }
        f.write_str(self.text.trim_end())
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

// Always ready, never full: what does not fit pushes the oldest bytes out.
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Pollable for Capture {
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(std::future::ready(()))
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How often one hook's output may be logged: `BURST` records at once, then one per
/// `REFILL`; what is held back is counted and reported with the next record logged.
#[derive(Debug)]
pub(crate) struct LogBudget {
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    tokens: u32,
    last: Instant,
    suppressed: u64,
}

impl LogBudget {
    const BURST: u32 = 10;
    const REFILL: Duration = Duration::from_secs(6);

    pub(crate) fn new() -> LogBudget {
        LogBudget {
            state: Mutex::new(BudgetState {
                tokens: Self::BURST,
                last: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when a record may be logged now (`n` records were held back since the last
    /// one logged), `None` when this one is held back.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().ok()?;
        let refills = (now.saturating_duration_since(s.last).as_secs_f64()
            / Self::REFILL.as_secs_f64()) as u32;
        if refills > 0 {
            s.tokens = (s.tokens.saturating_add(refills)).min(Self::BURST);
            s.last = now;
        }
        if s.tokens == 0 {
            s.suppressed += 1;
            return None;
        }
        s.tokens -= 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_end_of_a_long_output_and_counts_the_rest() {
        let c = Capture::default();
        c.append(b"first line\n");
        c.append(&vec![b'x'; CAPTURE_BYTES]);
        c.append(b"\nlast line\n");
        let out = c.take().unwrap();
        assert_eq!(out.text.len(), CAPTURE_BYTES);
        assert!(out.text.ends_with("x\nlast line\n"));
        assert_eq!(out.dropped_bytes, 11 + 11);
        assert!(out.to_string().starts_with("[22 earlier bytes dropped]\n"));
        assert_eq!(c.take(), None, "taken");
    }

    #[test]
    fn clear_forgets_an_earlier_call() {
        let c = Capture::default();
        c.append(b"from the call before");
        c.clear();
        c.append(b"this call");
        assert_eq!(c.take().unwrap().text, "this call");
    }

    #[test]
    fn last_lines_start_at_a_line() {
        let out = GuestOutput {
            text: "Traceback (most recent call last):\n  File \"app.py\", line 5\nKeyError: 'amount'\n\n"
                .into(),
            dropped_bytes: 0,
        };
        assert_eq!(out.last_lines(30), "KeyError: 'amount'");
        assert_eq!(out.last_lines(1000), out.text.trim_end());
    }

    #[test]
    fn the_log_budget_holds_back_a_flood_and_counts_it() {
        let b = LogBudget::new();
        let t0 = Instant::now();
        for _ in 0..LogBudget::BURST {
            assert_eq!(b.admit(t0), Some(0));
        }
        assert_eq!(b.admit(t0), None);
        assert_eq!(b.admit(t0), None);
        assert_eq!(b.admit(t0 + LogBudget::REFILL), Some(2));
        assert_eq!(b.admit(t0 + LogBudget::REFILL), None);
    }
}
