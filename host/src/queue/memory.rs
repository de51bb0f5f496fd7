//! The embedded in-process queue: the SQS semantics the engine relies on, in memory.
//!
//! Per queue: DelaySeconds (0..=900), a default visibility timeout and ChangeMessageVisibility
//! (0..=43,200 s, at most 12 h after the receive), ApproximateReceiveCount, SentTimestamp,
//! string message attributes, long-poll waits, the in-flight limit (OverLimit) and a redrive
//! policy (a message received more than `max_receive_count` times moves to the dead-letter
//! queue on its next receive, as in SQS).
//!
//! Messages carry an optional MessageGroupId, and receives follow SQS fair queues by default
//! ([`Order::Fair`]: each message taken comes from the group holding the fewest in-flight
//! messages among those with a visible one), or plain FIFO order ([`Order::Fifo`]).
//!
//! One `Mutex` + `Notify` per queue; each operation is O(1) amortised apart from the fair
//! choice, O(groups with a visible message) (a FIFO of visible messages per group plus a timer
//! heap with lazy invalidation), so it keeps up with the engine in the throughput benchmark.
//! Time comes from `tokio::time::Instant`, so tests can pause it.
//!
//! Deliberate differences from SQS: ordering is the documented rule above (SQS gives no
//! order beyond its fairness; nothing may rely on either), and a receipt handle from an earlier receive is refused
//! with `ReceiptHandleInvalid` (SQS sometimes accepts it for a delete), which makes stale-handle
//! bugs visible in tests.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Attributes, BatchResults, MAX_DELAY_SECS, MAX_VISIBILITY_SECS, Outgoing, Queue, QueueError,
    Received, VisibilityChange,
};

/// SQS's maximum message size: body plus attribute names and values.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// How a message moves to a dead-letter queue after too many receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// Name of the dead-letter queue (must already exist).
    pub dead_letter_queue: String,
    /// A receive beyond this count moves the message instead of returning it.
    pub max_receive_count: u32,
}

/// In which order a receive takes visible messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// SQS fair queues' behaviour on messages with a MessageGroupId: each message a receive
    /// takes comes from the group holding the fewest in-flight messages among the groups with
    /// a visible message (ties: the group whose oldest visible message is oldest). A group with
    /// a backlog therefore cannot keep a quiet group's messages waiting behind its own; within
    /// a group the order is oldest first. Messages without a group id form one group.
    #[default]
    Fair,
    /// Oldest visible message first, whatever its group (a plain queue: the head-of-line
    /// delay fair ordering removes; the fairness bench compares the two).
    Fifo,
}

/// Options of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// Default visibility timeout after a receive (SQS default 30 s).
    pub visibility_timeout: Duration,
    /// Redrive policy, if any.
    pub redrive: Option<Redrive>,
    /// In-flight messages beyond which ReceiveMessage fails with OverLimit (SQS: 120,000).
    pub max_in_flight: usize,
    /// Order of receives among visible messages.
    pub order: Order,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            visibility_timeout: Duration::from_secs(30),
            redrive: None,
            max_in_flight: 120_000,
            order: Order::Fair,
        }
    }
}

/// Message counts of one queue at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// All messages stored (visible, delayed and in flight).
    pub total: usize,
    /// Received and not deleted (includes those waiting out a visibility backoff).
    pub in_flight: usize,
}

/// A message as stored, for inspection by the demo and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Message id.
    pub message_id: String,
    /// Body.
    pub body: String,
    /// Attributes.
    pub attributes: Attributes,
    /// Receives so far.
    pub receive_count: u32,
    /// MessageGroupId.
    pub group_id: Option<String>,
}

/// A set of named in-process queues.
#[derive(Default)]
pub struct MemoryQueues {
    queues: RwLock<HashMap<String, Arc<MemQueue>>>,
}

struct MemQueue {
    name: String,
    options: QueueOptions,
    dead_letter: Option<Arc<MemQueue>>,
    state: Mutex<State>,
    notify: Notify,
}

struct State {
    next_seq: u64,
    msgs: HashMap<u64, Msg>,
    /// Visible messages, per group oldest first: (seq, sched). Stale entries are skipped.
    ready: Ready,
    /// Delayed or invisible messages by the instant they become visible: (at, seq, sched).
    timed: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    in_flight: usize,
}

/// The visible messages and the per-group in-flight counts fair ordering reads.
struct Ready {
    order: Order,
    /// Visible messages by group (all under `None` in FIFO order).
    by_group: HashMap<Option<String>, VecDeque<(u64, u64)>>,
    /// In-flight messages by group (only groups holding some).
    in_flight: HashMap<Option<String>, usize>,
}

impl Ready {
    fn new(order: Order) -> Ready {
        Ready {
            order,
            by_group: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    fn key(&self, group: &Option<String>) -> Option<String> {
        match self.order {
            Order::Fair => group.clone(),
            Order::Fifo => None,
        }
    }

    fn push_back(&mut self, group: &Option<String>, seq: u64, sched: u64) {
        let k = self.key(group);
        self.by_group.entry(k).or_default().push_back((seq, sched));
    }

    fn push_front(&mut self, group: &Option<String>, seq: u64, sched: u64) {
        let k = self.key(group);
        self.by_group.entry(k).or_default().push_front((seq, sched));
    }

    fn entered_flight(&mut self, group: &Option<String>) {
        *self.in_flight.entry(group.clone()).or_default() += 1;
    }

    fn left_flight(&mut self, group: &Option<String>) {
        if let Some(n) = self.in_flight.get_mut(group) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(group);
            }
        }
    }

    /// The next visible message per the order: stale heads dropped, then the group with the
    /// fewest in flight (ties: the oldest head). O(groups with visible messages).
    fn pop(&mut self, msgs: &HashMap<u64, Msg>) -> Option<(u64, u64)> {
        self.by_group.retain(|_, q| {
            while let Some(&(seq, sched)) = q.front() {
                if msgs
                    .get(&seq)
                    .is_some_and(|m| m.sched == sched && !m.in_flight)
                {
                    break;
                }
                q.pop_front();
            }
            !q.is_empty()
        });
        let in_flight = &self.in_flight;
        let best = self
            .by_group
            .iter()
            .map(|(g, q)| {
                let held = if self.order == Order::Fair {
                    in_flight.get(g).copied().unwrap_or(0)
                } else {
                    0
                };
                ((held, q.front().map_or(u64::MAX, |e| e.0)), g)
            })
            .min_by_key(|(k, _)| *k)
            .map(|(_, g)| g.clone())?;
        self.by_group.get_mut(&best)?.pop_front()
    }
}

/// Result of one attempt to take messages: those received, those to move to the
/// dead-letter queue, and when the next timed message becomes visible.
struct Taken {
    out: Vec<Received>,
    dead: Vec<Msg>,
    next: Option<Instant>,
}

struct Msg {
    message_id: String,
    body: String,
    attributes: Attributes,
    sent_ms: u64,
    receive_count: u32,
    /// MessageGroupId.
    group: Option<String>,
    /// Bumped on each receive; part of the receipt handle.
    receipt: u64,
    /// Bumped on each (re)scheduling; entries in `ready`/`timed` with another value are stale.
    sched: u64,
    in_flight: bool,
    received_at: Instant,
}

/// A message accepted by a send, to store.
struct Pushed {
    body: String,
    delay: u32,
    attributes: Attributes,
    sent_ms: u64,
    group: Option<String>,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn message_bytes(m: &Outgoing) -> usize {
    m.body.len()
        + m.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len() + "String".len())
            .sum::<usize>()
}

impl MemoryQueues {
    /// No queues yet.
    pub fn new() -> MemoryQueues {
        MemoryQueues::default()
    }

    /// Create (or replace) a queue. A redrive target must exist already.
    pub fn create_queue(&self, name: &str, options: QueueOptions) -> Result<(), QueueError> {
        let dead_letter = match &options.redrive {
            Some(r) => Some(self.get(&r.dead_letter_queue)?),
            None => None,
        };
        let order = options.order;
        let q = Arc::new(MemQueue {
            name: name.to_string(),
            options,
            dead_letter,
            state: Mutex::new(State {
                next_seq: 0,
                msgs: HashMap::new(),
                ready: Ready::new(order),
                timed: BinaryHeap::new(),
                in_flight: 0,
            }),
            notify: Notify::new(),
        });
        self.queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), q);
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Arc<MemQueue>, QueueError> {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| QueueError::QueueDoesNotExist {
                queue: name.to_string(),
            })
    }

    /// Counts of messages in a queue.
    pub fn counts(&self, name: &str) -> Result<QueueCounts, QueueError> {
        let q = self.get(name)?;
        let st = q.lock();
        Ok(QueueCounts {
            total: st.msgs.len(),
            in_flight: st.in_flight,
        })
    }

    /// Every message stored in a queue (any state), oldest first. Does not receive them.
    pub fn messages(&self, name: &str) -> Result<Vec<StoredMessage>, QueueError> {
        let q = self.get(name)?;
        let st = q.lock();
        let mut seqs: Vec<&u64> = st.msgs.keys().collect();
        seqs.sort();
        Ok(seqs
            .into_iter()
            .map(|s| {
                let m = &st.msgs[s];
                StoredMessage {
                    message_id: m.message_id.clone(),
                    body: m.body.clone(),
                    attributes: m.attributes.clone(),
                    receive_count: m.receive_count,
                    group_id: m.group.clone(),
                }
            })
            .collect())
    }
}

impl MemQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn invalid(&self, operation: &'static str, message: String) -> QueueError {
        QueueError::InvalidParameter {
            queue: self.name.clone(),
            operation,
            message,
        }
    }

    fn handle_invalid(&self) -> QueueError {
        QueueError::ReceiptHandleInvalid {
            queue: self.name.clone(),
        }
    }

    /// Store messages already validated; returns nothing, wakes receivers.
    fn push(&self, msgs: Vec<Pushed>) {
        if msgs.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut st = self.lock();
            for Pushed {
                body,
                delay,
                attributes,
                sent_ms,
                group,
            } in msgs
            {
                let seq = st.next_seq;
                st.next_seq += 1;
                if delay == 0 {
                    st.ready.push_back(&group, seq, 0);
                } else {
                    st.timed
                        .push(Reverse((now + Duration::from_secs(delay as u64), seq, 0)));
                }
                st.msgs.insert(
                    seq,
                    Msg {
                        message_id: format!("{}-{seq:08}", self.name),
                        body,
                        attributes,
                        sent_ms,
                        receive_count: 0,
                        receipt: 0,
                        sched: 0,
                        in_flight: false,
                        received_at: now,
                        group,
                    },
                );
            }
        }
        self.notify.notify_waiters();
    }

    /// Try to take up to `max` visible messages. Returns them, the messages to move to the
    /// dead-letter queue, and when the next timed message becomes visible.
    fn take(&self, max: usize) -> Result<Taken, QueueError> {
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        // Promote every timed message that is due.
        while let Some(Reverse((at, seq, sched))) = st.timed.peek().copied() {
            if at > now {
                break;
            }
            st.timed.pop();
            if let Some(m) = st.msgs.get_mut(&seq)
                && m.sched == sched
            {
                if m.in_flight {
                    m.in_flight = false;
                    st.in_flight -= 1;
                    st.ready.left_flight(&m.group);
                }
                st.ready.push_back(&m.group, seq, sched);
            }
        }
        let mut out = Vec::new();
        let mut dead = Vec::new();
        while out.len() < max {
            let Some((seq, sched)) = st.ready.pop(&st.msgs) else {
                break;
            };
            let Some(m) = st.msgs.get_mut(&seq) else {
                continue;
            };
            if m.sched != sched || m.in_flight {
                continue;
            }
            if let Some(r) = &self.options.redrive
                && m.receive_count >= r.max_receive_count
            {
                dead.push(st.msgs.remove(&seq).expect("present"));
                continue;
            }
            if st.in_flight >= self.options.max_in_flight {
                st.ready.push_front(&m.group, seq, sched);
                if out.is_empty() {
                    return Err(QueueError::OverLimit {
                        queue: self.name.clone(),
                    });
                }
                break;
            }
            m.receive_count += 1;
            m.receipt += 1;
            m.sched += 1;
            m.in_flight = true;
            m.received_at = now;
            st.in_flight += 1;
            st.ready.entered_flight(&m.group);
            st.timed.push(Reverse((
                now + self.options.visibility_timeout,
                seq,
                m.sched,
            )));
            out.push(Received {
                message_id: m.message_id.clone(),
                receipt_handle: format!("{seq}.{}", m.receipt),
                body: m.body.clone(),
                attributes: m.attributes.clone(),
                receive_count: m.receive_count,
                sent_timestamp_ms: m.sent_ms,
                group_id: m.group.clone(),
            });
        }
        let next = st.timed.peek().map(|Reverse((at, _, _))| *at);
        Ok(Taken { out, dead, next })
    }

    fn parse_handle(&self, handle: &str) -> Result<(u64, u64), QueueError> {
        let (a, b) = handle
            .split_once('.')
            .ok_or_else(|| self.handle_invalid())?;
        match (a.parse(), b.parse()) {
            (Ok(seq), Ok(receipt)) => Ok((seq, receipt)),
            _ => Err(self.handle_invalid()),
        }
    }

    fn delete(&self, handles: &[String]) -> BatchResults {
        let mut st = self.lock();
        handles
            .iter()
            .map(|h| {
                let (seq, receipt) = self.parse_handle(h)?;
                match st.msgs.get(&seq) {
                    // Already deleted: deleting again is not an error (as in SQS).
                    None => Ok(()),
                    Some(m) if m.receipt != receipt || receipt == 0 => Err(self.handle_invalid()),
                    Some(_) => {
                        let m = st.msgs.remove(&seq).expect("present");
                        if m.in_flight {
                            st.in_flight -= 1;
                            st.ready.left_flight(&m.group);
                        }
                        Ok(())
                    }
                }
            })
            .collect()
    }

    fn change_visibility(&self, changes: &[VisibilityChange]) -> BatchResults {
        let now = Instant::now();
        let results = {
            let mut st = self.lock();
            let st = &mut *st;
            changes
                .iter()
                .map(|c| {
                    let (seq, receipt) = self.parse_handle(&c.receipt_handle)?;
                    if c.timeout_secs > MAX_VISIBILITY_SECS {
                        return Err(self.invalid(
                            "ChangeMessageVisibility",
                            format!(
                                "visibility timeout {} s is above {MAX_VISIBILITY_SECS} s",
                                c.timeout_secs
                            ),
                        ));
                    }
                    let m = st.msgs.get_mut(&seq).ok_or_else(|| self.handle_invalid())?;
                    if m.receipt != receipt || receipt == 0 {
                        return Err(self.handle_invalid());
                    }
                    if !m.in_flight {
                        return Err(QueueError::NotInFlight {
                            queue: self.name.clone(),
                        });
                    }
                    let until = now + Duration::from_secs(c.timeout_secs as u64);
                    if until.duration_since(m.received_at)
                        > Duration::from_secs(MAX_VISIBILITY_SECS as u64)
                    {
                        return Err(self.invalid(
                            "ChangeMessageVisibility",
                            "total visibility would exceed 12 h from the receive".to_string(),
                        ));
                    }
                    m.sched += 1;
                    if c.timeout_secs == 0 {
                        m.in_flight = false;
                        st.in_flight -= 1;
                        st.ready.left_flight(&m.group);
                        st.ready.push_back(&m.group, seq, m.sched);
                    } else {
                        st.timed.push(Reverse((until, seq, m.sched)));
                    }
                    Ok(())
                })
                .collect()
        };
        // Waiting receivers recompute their wake-up time (an earlier one, or visible now).
        self.notify.notify_waiters();
        results
    }
}

impl Queue for MemoryQueues {
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        let q = self.get(queue)?;
        let max = max.clamp(1, super::MAX_BATCH);
        let deadline = Instant::now() + wait;
        loop {
            let notified = q.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Taken {
                out: got,
                dead,
                next,
            } = q.take(max)?;
            if !dead.is_empty()
                && let Some(dlq) = &q.dead_letter
            {
                // Moved as-is: same id, body, attributes, receive count and SentTimestamp.
                let now = Instant::now();
                {
                    let mut st = dlq.lock();
                    for mut m in dead {
                        let seq = st.next_seq;
                        st.next_seq += 1;
                        m.in_flight = false;
                        m.sched = 0;
                        m.receipt = 0;
                        m.received_at = now;
                        st.ready.push_back(&m.group, seq, 0);
                        st.msgs.insert(seq, m);
                    }
                }
                dlq.notify.notify_waiters();
            }
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            let wake = next.map_or(deadline, |n| n.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn delete_batch(&self, queue: &str, receipt_handles: &[String]) -> BatchResults {
        match self.get(queue) {
            Ok(q) => q.delete(receipt_handles),
            Err(e) => super::all_failed(receipt_handles.len(), &e),
        }
    }

    async fn change_visibility_batch(
        &self,
        queue: &str,
        changes: &[VisibilityChange],
    ) -> BatchResults {
        match self.get(queue) {
            Ok(q) => q.change_visibility(changes),
            Err(e) => super::all_failed(changes.len(), &e),
        }
    }

    async fn send_batch(&self, queue: &str, messages: &[Outgoing]) -> BatchResults {
        let q = match self.get(queue) {
            Ok(q) => q,
            Err(e) => return super::all_failed(messages.len(), &e),
        };
        let sent_ms = unix_ms_now();
        let mut accepted = Vec::with_capacity(messages.len());
        let results = messages
            .iter()
            .map(|m| {
                if m.delay_secs > MAX_DELAY_SECS {
                    return Err(q.invalid(
                        "SendMessage",
                        format!("DelaySeconds {} is above {MAX_DELAY_SECS}", m.delay_secs),
                    ));
                }
                let size = message_bytes(m);
                if size > MAX_MESSAGE_BYTES {
                    return Err(q.invalid(
                        "SendMessage",
                        format!("message of {size} bytes is above {MAX_MESSAGE_BYTES}"),
                    ));
                }
                accepted.push(Pushed {
                    body: m.body.clone(),
                    delay: m.delay_secs,
                    attributes: m.attributes.clone(),
                    sent_ms,
                    group: m.group_id.clone(),
                });
                Ok(())
            })
            .collect();
        q.push(accepted);
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(body: &str, delay: u32) -> Outgoing {
        Outgoing {
            body: body.to_string(),
            delay_secs: delay,
            attributes: Attributes::from([("squall-attempts".to_string(), "2".to_string())]),
            group_id: None,
        }
    }

    fn grouped(body: &str, group: &str) -> Outgoing {
        Outgoing {
            group_id: Some(group.into()),
            ..out(body, 0)
        }
    }

    /// `n` receives of one message each (none deleted): the bodies in order.
    async fn drain_order(qs: &MemoryQueues, q: &str, n: usize) -> Vec<String> {
        let mut order = Vec::new();
        for _ in 0..n {
            let m = qs.receive(q, 1, NO_WAIT).await.unwrap().remove(0);
            order.push(m.body.clone());
        }
        order
    }

    #[tokio::test(start_paused = true)]
    async fn fair_order_prefers_groups_holding_fewer_in_flight_and_fifo_does_not() {
        for (order, expected) in [
            // The backlog's group holds one in flight after the first receive, so each quiet
            // group's message comes before the backlog's second; then oldest first on ties.
            (Order::Fair, ["n1", "a1", "b1", "n2", "a2", "n3"]),
            (Order::Fifo, ["n1", "n2", "n3", "n4", "n5", "a1"]),
        ] {
            let qs = MemoryQueues::new();
            let options = QueueOptions {
                order,
                ..QueueOptions::default()
            };
            qs.create_queue("shared", options).unwrap();
            let mut batch: Vec<Outgoing> = (1..=5)
                .map(|i| grouped(&format!("n{i}"), "noisy"))
                .collect();
            batch.push(grouped("a1", "a"));
            batch.push(grouped("b1", "b"));
            batch.push(grouped("a2", "a"));
            for r in qs.send_batch("shared", &batch).await {
                r.unwrap();
            }
            // Received messages stay in flight (none deleted): the noisy group's count grows.
            assert_eq!(drain_order(&qs, "shared", 6).await, expected, "{order:?}");
            // The group id comes back on the received copy.
            let rest = qs.receive("shared", 10, NO_WAIT).await.unwrap();
            assert_eq!(rest.len(), 2);
            assert!(rest.iter().all(|m| m.group_id.is_some()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_or_expired_message_leaves_its_groups_in_flight_count() {
        let qs = MemoryQueues::new();
        qs.create_queue("shared", QueueOptions::default()).unwrap();
        let batch = [
            grouped("n1", "noisy"),
            grouped("n2", "noisy"),
            grouped("a1", "a"),
            grouped("a2", "a"),
        ];
        for r in qs.send_batch("shared", &batch).await {
            r.unwrap();
        }
        let n1 = qs.receive("shared", 1, NO_WAIT).await.unwrap().remove(0);
        assert_eq!(n1.body, "n1");
        let a1 = qs.receive("shared", 1, NO_WAIT).await.unwrap().remove(0);
        assert_eq!(a1.body, "a1");
        // Both groups hold one; a's is deleted: a holds none, so a2 comes before n2.
        assert_eq!(
            qs.delete_batch("shared", &[a1.receipt_handle]).await,
            vec![Ok(())]
        );
        assert_eq!(drain_order(&qs, "shared", 1).await, ["a2"]);
        // After the visibility timeout n1 and a2 are visible again, both groups hold none: the
        // oldest head first (n2, visible all along), then a2 (a holds none, noisy one), then n1
        // (within a group, in the order they became visible).
        tokio::time::advance(Duration::from_secs(31)).await;
        let got: Vec<String> = qs
            .receive("shared", 10, NO_WAIT)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(got, ["n2", "a2", "n1"]);
    }

    fn queues() -> MemoryQueues {
        let qs = MemoryQueues::new();
        qs.create_queue("dlq", QueueOptions::default()).unwrap();
        qs.create_queue(
            "app",
            QueueOptions {
                visibility_timeout: Duration::from_secs(30),
                redrive: Some(Redrive {
                    dead_letter_queue: "dlq".into(),
                    max_receive_count: 3,
                }),
                max_in_flight: 5,
                order: Order::Fair,
            },
        )
        .unwrap();
        qs
    }

    const NO_WAIT: Duration = Duration::ZERO;

    #[tokio::test(start_paused = true)]
    async fn send_receive_delete_with_attributes_and_counts() {
        let qs = queues();
        let before = unix_ms_now();
        assert!(
            qs.send_batch("app", &[out("a", 0), out("b", 0)])
                .await
                .iter()
                .all(Result::is_ok)
        );
        let got = qs.receive("app", 10, NO_WAIT).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].body, "a");
        assert_eq!(got[0].receive_count, 1);
        assert_eq!(got[0].attributes["squall-attempts"], "2");
        assert!(got[0].sent_timestamp_ms >= before);
        assert_eq!(qs.counts("app").unwrap().in_flight, 2);
        // Invisible now.
        assert!(qs.receive("app", 10, NO_WAIT).await.unwrap().is_empty());
        let handles: Vec<String> = got.iter().map(|r| r.receipt_handle.clone()).collect();
        assert!(
            qs.delete_batch("app", &handles)
                .await
                .iter()
                .all(Result::is_ok)
        );
        assert_eq!(qs.counts("app").unwrap(), QueueCounts::default());
    }

    #[tokio::test(start_paused = true)]
    async fn delay_seconds_hides_until_due() {
        let qs = queues();
        qs.send_batch("app", &[out("later", 5)]).await;
        assert!(qs.receive("app", 1, NO_WAIT).await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(qs.receive("app", 1, NO_WAIT).await.unwrap().is_empty());
        // A long poll wakes when the delay ends.
        let t0 = Instant::now();
        let got = qs.receive("app", 1, Duration::from_secs(20)).await.unwrap();
        assert_eq!(got[0].body, "later");
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn visibility_timeout_and_change_visibility() {
        let qs = queues();
        qs.send_batch("app", &[out("x", 0)]).await;
        let r1 = qs.receive("app", 1, NO_WAIT).await.unwrap().remove(0);
        // Default visibility 30 s: back after it, with receive count 2.
        tokio::time::advance(Duration::from_secs(30)).await;
        let r2 = qs.receive("app", 1, NO_WAIT).await.unwrap().remove(0);
        assert_eq!(r2.receive_count, 2);
        // The first handle is stale now.
        assert!(matches!(
            qs.delete_batch("app", std::slice::from_ref(&r1.receipt_handle))
                .await[0],
            Err(QueueError::ReceiptHandleInvalid { .. })
        ));
        // Backoff by visibility: 7 s.
        let res = qs
            .change_visibility_batch(
                "app",
                &[VisibilityChange {
                    receipt_handle: r2.receipt_handle.clone(),
                    timeout_secs: 7,
                }],
            )
            .await;
        assert_eq!(res, vec![Ok(())]);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(qs.receive("app", 1, NO_WAIT).await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        let r3 = qs.receive("app", 1, NO_WAIT).await.unwrap().remove(0);
        assert_eq!(r3.receive_count, 3);
        // Out of range and garbage handles are typed errors.
        let res = qs
            .change_visibility_batch(
                "app",
                &[
                    VisibilityChange {
                        receipt_handle: r3.receipt_handle.clone(),
                        timeout_secs: 43_201,
                    },
                    VisibilityChange {
                        receipt_handle: "nonsense".into(),
                        timeout_secs: 1,
                    },
                ],
            )
            .await;
        assert!(matches!(res[0], Err(QueueError::InvalidParameter { .. })));
        assert!(matches!(
            res[1],
            Err(QueueError::ReceiptHandleInvalid { .. })
        ));
        // Visibility 0 makes it visible at once; this 4th receive exceeds maxReceiveCount 3,
        // so it moves to the DLQ instead of being returned.
        qs.change_visibility_batch(
            "app",
            &[VisibilityChange {
                receipt_handle: r3.receipt_handle.clone(),
                timeout_secs: 0,
            }],
        )
        .await;
        assert!(qs.receive("app", 1, NO_WAIT).await.unwrap().is_empty());
        assert_eq!(qs.counts("dlq").unwrap().total, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn redrive_moves_to_dead_letter_queue_after_max_receives() {
        let qs = queues();
        qs.send_batch("app", &[out("poison", 0)]).await;
        for n in 1..=3 {
            let r = qs.receive("app", 1, NO_WAIT).await.unwrap();
            assert_eq!(r[0].receive_count, n);
            tokio::time::advance(Duration::from_secs(30)).await;
        }
        assert!(qs.receive("app", 1, NO_WAIT).await.unwrap().is_empty());
        assert_eq!(qs.counts("app").unwrap().total, 0);
        let dead = qs.receive("dlq", 10, NO_WAIT).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "poison");
        assert_eq!(dead[0].attributes["squall-attempts"], "2");
    }

    #[tokio::test(start_paused = true)]
    async fn over_limit_when_too_many_in_flight() {
        let qs = queues();
        let batch: Vec<Outgoing> = (0..7).map(|i| out(&i.to_string(), 0)).collect();
        qs.send_batch("app", &batch).await;
        assert_eq!(qs.receive("app", 10, NO_WAIT).await.unwrap().len(), 5);
        assert!(matches!(
            qs.receive("app", 10, NO_WAIT).await,
            Err(QueueError::OverLimit { .. })
        ));
        // Delayed messages are not in flight: sending still works.
        assert_eq!(qs.send_batch("app", &[out("d", 900)]).await, vec![Ok(())]);
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_wakes_on_send_and_times_out_empty() {
        let qs = Arc::new(queues());
        let t0 = Instant::now();
        assert!(
            qs.receive("app", 10, Duration::from_secs(3))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(Instant::now() - t0, Duration::from_secs(3));
        let qs2 = qs.clone();
        let waiter = tokio::spawn(async move {
            qs2.receive("app", 10, Duration::from_secs(20))
                .await
                .unwrap()
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        qs.send_batch("app", &[out("now", 0)]).await;
        let got = waiter.await.unwrap();
        assert_eq!(got[0].body, "now");
    }

    #[tokio::test]
    async fn bad_sends_are_refused_per_entry() {
        let qs = queues();
        let big = Outgoing {
            body: "x".repeat(MAX_MESSAGE_BYTES + 1),
            delay_secs: 0,
            attributes: Attributes::new(),
            group_id: None,
        };
        let res = qs
            .send_batch("app", &[out("ok", 0), out("late", 901), big])
            .await;
        assert_eq!(res[0], Ok(()));
        assert!(
            matches!(&res[1], Err(QueueError::InvalidParameter { message, .. }) if message.contains("901"))
        );
        assert!(
            matches!(&res[2], Err(QueueError::InvalidParameter { message, .. }) if message.contains("bytes"))
        );
        assert_eq!(qs.counts("app").unwrap().total, 1);
        assert!(matches!(
            qs.send_batch("nope", &[out("x", 0)]).await[0],
            Err(QueueError::QueueDoesNotExist { .. })
        ));
    }
}
