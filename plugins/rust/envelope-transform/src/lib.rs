//! Envelope transform: POSTs
//! `{"type": <event type>, "id": <event id>, "timestamp": <created-at, ISO-8601 UTC>, "data": <payload>}`
//! to the event's endpoint. The payload is embedded as JSON when it is valid JSON, as a
//! JSON string when it is other UTF-8 text, and refused (plugin error) when it is binary.
//! A body whose content type is `application/json` is JSON by the host's guarantee (the
//! envelope decoder refuses anything else), so only other bodies are parsed to find out.
//!
//! Config: `skip_types` (comma-separated event types) are skipped with a reason.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "transformer",
});

use exports::squall::plugin::transform::Guest;
use squall::plugin::host;
use squall::plugin::types::{Event, PluginError, Request, TransformResult};

/// Faster than the default allocator for the short-lived strings of each call.
#[global_allocator]
static ALLOC: size_class_alloc::SizeClassAlloc = size_class_alloc::SizeClassAlloc::new();

struct Component;

impl Guest for Component {
    fn transform(event: Event) -> Result<TransformResult, PluginError> {
        // An instance serves one application for its whole life, and that application's
        // config does not change meanwhile: read it on the first call only.
        static SKIP_TYPES: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if let Some(skip) = SKIP_TYPES.get_or_init(|| host::config_get("skip_types")) {
            if skip.split(',').map(str::trim).any(|t| !t.is_empty() && t == event.event_type) {
                return Ok(TransformResult::Skip(format!(
                    "event type {} is listed in skip_types",
                    event.event_type
                )));
            }
        }
        // Not UTF-8 means not JSON, whatever the content type says.
        let text = core::str::from_utf8(&event.body).ok();
        let data_is_json = text.is_some()
            && (is_json_media_type(&event.content_type)
                || serde_json::from_slice::<serde::de::IgnoredAny>(&event.body).is_ok());
        let mut body = String::with_capacity(event.body.len() + event.id.len() + event.event_type.len() + 96);
        body.push_str("{\"type\":");
        push_json_string(&event.event_type, &mut body);
        body.push_str(",\"id\":");
        push_json_string(&event.id, &mut body);
        body.push_str(",\"timestamp\":\"");
        push_iso8601(event.created_at, &mut body);
        body.push_str("\",\"data\":");
        match text {
            Some(text) if data_is_json => body.push_str(text.trim()),
            Some(text) => push_json_string(text, &mut body),
            None => {
                return Err(PluginError {
                    message: format!(
                        "payload of event {} is neither JSON nor UTF-8 text ({} bytes, content-type {})",
                        event.id,
                        event.body.len(),
                        event.content_type
                    ),
                });
            }
        }
        body.push('}');

        let mut headers = Vec::with_capacity(event.headers.len() + 1);
        headers.push(("content-type".to_string(), "application/json".to_string()));
        headers.extend(
            event
                .headers
                .into_iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case("content-type")),
        );
        Ok(TransformResult::Send(Request {
            method: "POST".to_string(),
            url: event.endpoint_url,
            headers,
            body: body.into_bytes(),
        }))
    }
}

/// `application/json`, any case, any parameters.
fn is_json_media_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim_matches([' ', '\t']);
    media.eq_ignore_ascii_case("application/json")
}

fn push_json_string(s: &str, out: &mut String) {
    // Event types and ids rarely need escaping: those are copied as they are.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // serde_json's escaping, without building a Value.
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string()));
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for Unix milliseconds (proleptic Gregorian, UTC).
fn push_iso8601(ms: u64, out: &mut String) {
    let secs = ms / 1000;
    let (days, sod) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // `YYYY-MM-DDTHH:MM:SS.mmmZ` digit by digit: `format!` was most of this transform's own time.
    if y > 9999 {
        out.push_str(&y.to_string());
    } else {
        push_digits(y as u64, 4, out);
    }
    out.push('-');
    push_digits(m as u64, 2, out);
    out.push('-');
    push_digits(d as u64, 2, out);
    out.push('T');
    push_digits(sod / 3600, 2, out);
    out.push(':');
    push_digits((sod / 60) % 60, 2, out);
    out.push(':');
    push_digits(sod % 60, 2, out);
    out.push('.');
    push_digits(ms % 1000, 3, out);
    out.push('Z');
}

/// The last `width` decimal digits of `n`, zero-padded.
fn push_digits(n: u64, width: u32, out: &mut String) {
    let mut div = 10u64.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + (n / div % 10) as u8));
        div /= 10;
    }
}

export!(Component);
