//! `squall send`: put one event on an application's queue, from a file or from flags. The body
//! is validated exactly as the engine will decode it, so a bad event is refused here, naming
//! the field, instead of ending in the dead-letter queue.

use super::OpsError;
use crate::envelope::{self, Envelope, Limits};

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSource {
    /// A complete envelope (JSON text) from a file: sent byte for byte.
    File {
        /// Where it came from (for messages).
        path: String,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Built from parts; the id defaults to a random one, the creation time to now.
    Parts {
        /// Event id (`None`: `evt_` + 16 random hex digits).
        id: Option<String>,
        /// Event type.
        event_type: String,
        /// Endpoint URL.
        endpoint: String,
        /// JSON payload text.
        payload: String,
    },
}

/// The message body to send for `app`, validated with the app's limits. `random_hex` and
/// `now_ms` are arguments so this stays a pure function.
pub fn build_body(
    app: &str,
    source: &EventSource,
    limits: &Limits,
    now_ms: u64,
    random_hex: &str,
) -> Result<(String, Envelope), OpsError> {
    let (what, body) = match source {
        EventSource::File { path, bytes } => (path.clone(), bytes.clone()),
        EventSource::Parts {
            id,
            event_type,
            endpoint,
            payload,
        } => {
            let value: serde_json::Value =
                serde_json::from_str(payload).map_err(|e| OpsError::Input {
                    what: "--payload".into(),
                    message: format!("not valid JSON: {e}"),
                })?;
            let id = id.clone().unwrap_or_else(|| format!("evt_{random_hex}"));
            let env = Envelope::new_json(id, app, event_type, endpoint, now_ms, &value);
            (
                "the event built from --type/--endpoint/--payload".into(),
                env.encode(),
            )
        }
    };
    let env = envelope::decode(&body, limits).map_err(|e| OpsError::Input {
        what: what.clone(),
        message: format!("not a valid envelope: {e}"),
    })?;
    if env.app_id != app {
        return Err(OpsError::Input {
            what,
            message: format!(
                "app_id is {:?} but --app is {app:?}: the engine would route it to another application",
                env.app_id
            ),
        });
    }
    let text = String::from_utf8(body).map_err(|_| OpsError::Input {
        what,
        message: "not UTF-8".into(),
    })?;
    Ok((text, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(payload: &str) -> EventSource {
        EventSource::Parts {
            id: None,
            event_type: "invoice.paid".into(),
            endpoint: "https://hooks.example.com/in".into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn parts_build_a_valid_envelope_with_generated_id() {
        let (body, env) = build_body(
            "billing",
            &parts(r#"{"amount": 5}"#),
            &Limits::default(),
            1_764_288_000_000,
            "00ff00ff00ff00ff",
        )
        .unwrap();
        assert_eq!(env.id, "evt_00ff00ff00ff00ff");
        assert_eq!(env.event_type, "invoice.paid");
        assert!(body.contains(r#""payload":{"amount":5}"#), "{body}");
        assert!(
            body.contains(r#""created_at":"2025-11-28T00:00:00.000Z""#),
            "{body}"
        );
    }

    #[test]
    fn bad_input_names_what_was_wrong() {
        let err = build_body("billing", &parts("{nope"), &Limits::default(), 0, "0")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--payload: not valid JSON"), "{err}");
        let file = |text: &str| EventSource::File {
            path: "ev.json".into(),
            bytes: text.as_bytes().to_vec(),
        };
        let other_app = r#"{"version":1,"id":"e1","app_id":"shop","type":"t","endpoint":"https://x.example/","created_at":"2026-01-01T00:00:00Z","payload":{}}"#;
        let err = build_body("billing", &file(other_app), &Limits::default(), 0, "0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ev.json") && err.contains("\"shop\""), "{err}");
        let (body, _) = build_body("shop", &file(other_app), &Limits::default(), 0, "0").unwrap();
        assert_eq!(body, other_app, "a file is sent byte for byte");
        let err = build_body(
            "shop",
            &file(r#"{"version":1}"#),
            &Limits::default(),
            0,
            "0",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("ev.json: not a valid envelope"), "{err}");
    }
}
