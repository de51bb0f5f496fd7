//! A real HTTP/1.1 subscriber on 127.0.0.1 with scripted faults. Hand-written over tokio so a
//! test can do what a real endpoint does wrong: hang past a timeout, reset the connection,
//! answer slowly, or answer 429 with Retry-After. Every request is recorded byte for byte.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the receiver does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer this status with an empty body.
    Status(u16),
    /// Answer this status with these headers.
    StatusWith(u16, Vec<(String, String)>),
    /// Read the request, then say nothing for this long, then close.
    Hang(Duration),
    /// Read the request, then reset the connection (RST).
    Reset,
    /// Wait this long, then answer this status.
    Slow(Duration, u16),
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request path.
    pub path: String,
    /// Method.
    pub method: String,
    /// Headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Arrival time (the whole request read).
    pub at: Instant,
    /// When the connection it came on was accepted. A sender that died before this request was
    /// read may still have written it: a request on a connection accepted before some moment
    /// was sent by a process that existed then.
    pub connected_at: Instant,
    /// What the receiver did.
    pub reply: String,
    /// The status it answered (`None` for a hang or a reset).
    pub status: Option<u16>,
}

impl Recorded {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Chooses the reply to each request from the request itself (headers, path, body): the
/// fault-injection run answers at random, seeded, per event id.
pub type Chooser = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    scripts: HashMap<String, VecDeque<Reply>>,
    requests: Vec<Recorded>,
}

/// A running receiver. Dropping it stops accepting.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    default: Reply,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Start on a free loopback port; requests with no script left get `default`.
    pub async fn start(default: Reply) -> Receiver {
        Receiver::start_on(std::net::Ipv4Addr::LOCALHOST.into(), default).await
    }

    /// Start on a free port of `ip` (a loopback address, e.g. `::1`).
    pub async fn start_on(ip: IpAddr, default: Reply) -> Receiver {
        Receiver::start_with(ip, default, None).await
    }

    /// Start on a free port of loopback `ip` (any 127.x.y.z works on Linux, so each receiver
    /// can be its own endpoint host). Requests with no script left get `chooser`'s reply,
    /// else `default`.
    pub async fn start_with(ip: IpAddr, default: Reply, chooser: Option<Chooser>) -> Receiver {
        assert!(ip.is_loopback(), "test receivers listen on loopback only");
        let listener = TcpListener::bind((ip, 0)).await.expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (st, def) = (state.clone(), default.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connected_at = Instant::now();
                let (st, def, ch) = (st.clone(), def.clone(), chooser.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, connected_at, st, def, ch).await;
                });
            }
        });
        Receiver {
            addr,
            state,
            default,
            task,
        }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queue replies for `path`, used in order before falling back to the default.
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .entry(path.to_string())
            .or_default()
            .extend(replies);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests to one path.
    pub fn requests_for(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The default reply.
    pub fn default_reply(&self) -> &Reply {
        &self.default
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    connected_at: Instant,
    state: Arc<Mutex<State>>,
    default: Reply,
    chooser: Option<Chooser>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);

        let reply = {
            let mut st = state.lock().unwrap();
            let mut rec = Recorded {
                path,
                method,
                headers,
                body,
                at: Instant::now(),
                connected_at,
                reply: String::new(),
                status: None,
            };
            let reply = match st.scripts.get_mut(&rec.path).and_then(VecDeque::pop_front) {
                Some(r) => r,
                None => match &chooser {
                    Some(choose) => choose(&rec),
                    None => default.clone(),
                },
            };
            rec.reply = format!("{reply:?}");
            rec.status = match &reply {
                Reply::Status(s) | Reply::StatusWith(s, _) | Reply::Slow(_, s) => Some(*s),
                Reply::Hang(_) | Reply::Reset => None,
            };
            st.requests.push(rec);
            reply
        };
        match reply {
            Reply::Status(s) => respond(&mut stream, s, &[]).await?,
            Reply::StatusWith(s, h) => respond(&mut stream, s, &h).await?,
            Reply::Slow(d, s) => {
                tokio::time::sleep(d).await;
                respond(&mut stream, s, &[]).await?
            }
            Reply::Hang(d) => {
                tokio::time::sleep(d).await;
                return Ok(());
            }
            Reply::Reset => {
                // A zero linger makes close send RST at once; it never blocks, which is
                // what tokio's deprecation warns about.
                #[allow(deprecated)]
                stream.set_linger(Some(Duration::ZERO))?;
                drop(stream);
                return Ok(());
            }
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
