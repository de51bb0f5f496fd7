//! Test envelopes: the version-1 JSON a producer puts on an application queue, written with
//! `serde_json` (not with the engine's encoder, which the tests check).

use serde_json::{Value, json};

/// A version-1 envelope with a JSON payload. Defaults: type `invoice.paid`, created now,
/// payload `{}`.
#[derive(Debug, Clone)]
pub struct TestEnvelope {
    id: String,
    app_id: String,
    event_type: String,
    endpoint: String,
    /// Set: the envelope names this registered endpoint instead of `endpoint`.
    endpoint_id: Option<String>,
    created_at_ms: u64,
    payload: Value,
}

impl TestEnvelope {
    /// Event `id` of application `app_id`, addressed to its registered endpoint `endpoint_id`
    /// (the envelope carries `endpoint_id`, no `endpoint`).
    pub fn for_endpoint_id(id: &str, app_id: &str, endpoint_id: &str) -> TestEnvelope {
        TestEnvelope {
            endpoint_id: Some(endpoint_id.into()),
            ..TestEnvelope::new(id, app_id, "")
        }
    }

    /// Event `id` of application `app_id`, to be delivered to `endpoint`.
    pub fn new(id: &str, app_id: &str, endpoint: &str) -> TestEnvelope {
        TestEnvelope {
            id: id.into(),
            app_id: app_id.into(),
            event_type: "invoice.paid".into(),
            endpoint: endpoint.into(),
            endpoint_id: None,
            created_at_ms: crate::now_ms(),
            payload: json!({}),
        }
    }

    /// The event type.
    pub fn event_type(mut self, event_type: &str) -> TestEnvelope {
        self.event_type = event_type.into();
        self
    }

    /// `created_at`, Unix milliseconds.
    pub fn created_at_ms(mut self, ms: u64) -> TestEnvelope {
        self.created_at_ms = ms;
        self
    }

    /// The JSON payload (delivered as the request body, compact).
    pub fn payload(mut self, payload: Value) -> TestEnvelope {
        self.payload = payload;
        self
    }

    /// The envelope's JSON text; `created_at` in RFC 3339.
    pub fn to_json(&self) -> String {
        let mut v = json!({
            "version": 1,
            "id": self.id,
            "app_id": self.app_id,
            "type": self.event_type,
            "endpoint": self.endpoint,
            "created_at": rfc3339(self.created_at_ms),
            "payload": self.payload,
        });
        if let Some(eid) = &self.endpoint_id {
            let m = v.as_object_mut().expect("an object");
            m.remove("endpoint");
            m.insert("endpoint_id".into(), eid.as_str().into());
        }
        v.to_string()
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-11-28T10:00:00.500Z`).
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or_else(|_| panic!("{ms} ms is not a representable time"));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_version_1_envelope() {
        let e = TestEnvelope::new("evt_1", "billing", "http://127.0.0.1:9/hook")
            .event_type("ping")
            .created_at_ms(1_795_860_000_500)
            .payload(json!({"n": 1}));
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"version": 1, "id": "evt_1", "app_id": "billing", "type": "ping",
                   "endpoint": "http://127.0.0.1:9/hook",
                   "created_at": "2026-11-28T10:00:00.500Z", "payload": {"n": 1}})
        );
    }
}
