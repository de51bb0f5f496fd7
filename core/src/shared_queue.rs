//! The stack's shared queue: which application a message on it belongs to, and the dead letter
//! of one that names no application of the shared tier.
//!
//! On a dedicated queue the queue names the application. On the shared queue the envelope's
//! `app_id` does (producers also set `MessageGroupId = app_id`, which SQS fair queues order by;
//! the engine keeps it on every copy it sends). The engine reads the `app_id` here
//! ([`app_id_of`]), asks the registry for it, and hands the message to the same pipeline as a
//! dedicated queue's: the envelope is then decoded with the application's limits, and its
//! `app_id` matches by construction. A message without a readable `app_id`, or whose `app_id`
//! is not registered or is a dedicated application, is dead-lettered ([`dead_letter`]) with a
//! reason naming the queue and the `app_id`. A registry that cannot answer dead-letters
//! nothing: the caller leaves the message for SQS to redeliver.

use serde::Deserialize;

use crate::message::Received;
use crate::pipeline::{
    Action, DeadLetterFacts, LastFailure, Processed, attempt_state, dead_letter_attributes,
};

/// Why a shared-queue message has no application to go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unroutable {
    /// The body is not a JSON object with a string `app_id`.
    NoAppId(String),
    /// No application of that id is registered.
    Unknown(String),
    /// The application is of the dedicated tier: its events belong on its own queue.
    Dedicated(String),
}

impl Unroutable {
    /// The `app_id` it names, when it names one.
    pub fn app_id(&self) -> Option<&str> {
        match self {
            Unroutable::NoAppId(_) => None,
            Unroutable::Unknown(id) | Unroutable::Dedicated(id) => Some(id),
        }
    }

    /// The DLQ reason, naming the queue and the `app_id`.
    pub fn reason(&self, queue_url: &str) -> String {
        match self {
            Unroutable::NoAppId(why) => {
                format!("shared queue {queue_url}: malformed envelope: no app_id ({why})")
            }
            Unroutable::Unknown(id) => {
                format!("shared queue {queue_url}: app_id {id:?} is not a registered application")
            }
            Unroutable::Dedicated(id) => format!(
                "shared queue {queue_url}: app_id {id:?} is a dedicated application (its events \
                 go to its own queue), not one of the shared tier"
            ),
        }
    }

    /// The `squall-last-error` text.
    fn kind(&self) -> &'static str {
        match self {
            Unroutable::NoAppId(_) => "envelope: no-app-id",
            Unroutable::Unknown(_) => "shared-queue: unknown-app",
            Unroutable::Dedicated(_) => "shared-queue: dedicated-app",
        }
    }
}

#[derive(Deserialize)]
struct AppIdOnly {
    app_id: String,
}

/// The envelope's `app_id`, read without decoding the rest (the application's limits are not
/// known yet; the pipeline decodes the whole envelope with them).
pub fn app_id_of(body: &str) -> Result<String, Unroutable> {
    match serde_json::from_str::<AppIdOnly>(body) {
        Ok(a) if !a.app_id.is_empty() => Ok(a.app_id),
        Ok(_) => Err(Unroutable::NoAppId("app_id is empty".into())),
        Err(e) => Err(Unroutable::NoAppId(e.to_string())),
    }
}

/// The dead letter of a shared-queue message that names no shared application: the body as
/// received, the usual DLQ attributes (`squall-app-id` = the `app_id` it names, `?` when none;
/// `squall-source-queue` = the shared queue), no attempt made and no metrics record.
pub fn dead_letter(why: &Unroutable, queue_url: &str, msg: &Received, now_ms: u64) -> Processed {
    let reason = why.reason(queue_url);
    // Attributes that do not parse are no reason to keep it: count what can be read.
    let (attempts, first_attempt_ms) = match attempt_state(msg) {
        Ok(s) => (s.prior_attempts, s.first_attempt_ms),
        Err(_) => (0, msg.sent_timestamp_ms),
    };
    let attributes = dead_letter_attributes(&DeadLetterFacts {
        app_id: why.app_id().unwrap_or("?"),
        event_id: None,
        endpoint_id: None,
        reason: &reason,
        last: LastFailure::Error(why.kind().to_string()),
        attempts,
        first_attempt_ms,
        source_queue: queue_url,
        now_ms,
    });
    Processed {
        action: Action::DeadLetter { reason, attributes },
        metrics: Vec::new(),
    }
}

/// A shared-queue message put off because its application already holds as many messages as
/// the engine lets it (the engine's rule): a copy after 10-30 s (the endpoint deferral's
/// delay, drawn from `unit_random`), the attempt count unchanged, no record. `None` when its
/// attributes do not parse (the pipeline then dead-letters it).
pub fn deferred(msg: &Received, unit_random: f64) -> Option<Processed> {
    let state = attempt_state(msg).ok()?;
    Some(crate::pipeline::hop(
        &state,
        crate::pipeline::defer_delay_secs(unit_random),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{ATTR_APP_ID, ATTR_LAST_ERROR, ATTR_REASON, ATTR_SOURCE_QUEUE};

    const Q: &str = "http://127.0.0.1:5000/123456789012/stack-shared";

    fn msg(body: &str) -> Received {
        Received {
            message_id: "m".into(),
            receipt_handle: "h".into(),
            body: body.into(),
            attributes: Default::default(),
            receive_count: 1,
            sent_timestamp_ms: 5,
            group_id: Some("tiny".into()),
        }
    }

    #[test]
    fn the_app_id_is_read_from_the_envelope_alone() {
        let body = r#"{"version":1,"id":"e","app_id":"tiny","type":"t","extra":[1]}"#;
        assert_eq!(app_id_of(body), Ok("tiny".into()));
        assert!(matches!(app_id_of("not json"), Err(Unroutable::NoAppId(_))));
        assert!(matches!(
            app_id_of(r#"{"id":"e"}"#),
            Err(Unroutable::NoAppId(_))
        ));
        assert!(matches!(
            app_id_of(r#"{"app_id":""}"#),
            Err(Unroutable::NoAppId(_))
        ));
        assert!(matches!(
            app_id_of(r#"{"app_id":7}"#),
            Err(Unroutable::NoAppId(_))
        ));
    }

    #[test]
    fn a_dead_letter_names_the_queue_and_the_app_id() {
        for (why, app, text, last) in [
            (
                Unroutable::Unknown("ghost".into()),
                "ghost",
                "app_id \"ghost\" is not a registered application",
                "shared-queue: unknown-app",
            ),
            (
                Unroutable::Dedicated("big".into()),
                "big",
                "app_id \"big\" is a dedicated application",
                "shared-queue: dedicated-app",
            ),
            (
                Unroutable::NoAppId("missing field".into()),
                "?",
                "no app_id",
                "envelope: no-app-id",
            ),
        ] {
            let p = dead_letter(&why, Q, &msg("{}"), 9);
            let Action::DeadLetter { reason, attributes } = &p.action else {
                panic!("{:?}", p.action)
            };
            assert!(reason.contains(Q) && reason.contains(text), "{reason}");
            assert_eq!(attributes[ATTR_APP_ID], app);
            assert_eq!(&attributes[ATTR_REASON], reason);
            assert_eq!(attributes[ATTR_SOURCE_QUEUE], Q);
            assert_eq!(attributes[ATTR_LAST_ERROR], last);
            assert!(p.metrics.is_empty());
        }
    }
}
