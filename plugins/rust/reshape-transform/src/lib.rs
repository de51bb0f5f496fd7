//! Reshape transform: the Rust twin of the Python (`plugins/python/reshape-transform`) and
//! JavaScript (`plugins/js/reshape-transform`) samples. All three produce byte-identical
//! requests; `plugins/conformance/transform-reshape.json` checks them, and
//! `plugins/conformance/README.md` defines the reshape.
//!
//! The output is written by hand (keys in code point order, compact separators, the
//! escapes Python's `json.dumps(ensure_ascii=False)` and JavaScript's `JSON.stringify` use),
//! so it does not depend on serde_json's `preserve_order` feature or number formatting.

#[cfg(target_arch = "wasm32")]
mod component {
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
            let skip_list = host::config_get("skip-event-types");
            let input = super::Input {
                id: &event.id,
                app_id: &event.app_id,
                event_type: &event.event_type,
                headers: &event.headers,
                content_type: &event.content_type,
                body: &event.body,
                attempt: event.attempt,
                created_at_ms: event.created_at,
                skip_event_types: skip_list.as_deref(),
            };
            match super::reshape(&input) {
                Ok(super::Reshaped::Send { headers, body }) => Ok(TransformResult::Send(Request {
                    method: "POST".to_string(),
                    url: event.endpoint_url,
                    headers,
                    body,
                })),
                Ok(super::Reshaped::Skip(reason)) => Ok(TransformResult::Skip(reason)),
                Err(message) => Err(PluginError { message: format!("reshape: {message}") }),
            }
        }
    }

    export!(Component);
}


use serde_json::Value;

const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
const MAX_DEPTH: usize = 64;

/// What the reshape reads from an event.
pub struct Input<'a> {
    /// Event id.
    pub id: &'a str,
    /// Application id.
    pub app_id: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Producer headers.
    pub headers: &'a [(String, String)],
    /// Content type of the body.
    pub content_type: &'a str,
    /// Payload bytes.
    pub body: &'a [u8],
    /// Attempt number.
    pub attempt: u32,
    /// Producer's creation time, Unix ms.
    pub created_at_ms: u64,
    /// The `skip-event-types` config value, if set.
    pub skip_event_types: Option<&'a str>,
}

/// The reshape's answer (the URL and method are the event's endpoint and POST).
#[derive(Debug, PartialEq, Eq)]
pub enum Reshaped {
    /// Send these headers and body.
    Send {
        /// Headers in order.
        headers: Vec<(String, String)>,
        /// Body bytes.
        body: Vec<u8>,
    },
    /// Skip with this reason.
    Skip(String),
}

/// A reshaped JSON value; object entries sorted by key in code point order (byte order of
/// UTF-8), keys unique.
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// Where a value is (`$.items[3].sku_id`), rendered only for an error message: building the
/// string for every value cost a fifth of a call.
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => f.write_str("$"),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn trim_sp_tab(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// customerId -> customer_id: an ASCII capital after an ASCII lower-case letter or digit
/// gets an underscore; every ASCII capital is lower-cased; nothing else changes.
fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev = '\0';
    for ch in key.chars() {
        if ch.is_ascii_uppercase() {
            if prev.is_ascii_lowercase() || prev.is_ascii_digit() {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
        prev = ch;
    }
    out
}

/// True if the JSON text has a `\u` escape of a surrogate that is not part of a valid pair.
fn has_lone_surrogate_escape(text: &str) -> bool {
    let b = text.as_bytes();
    let hex4 = |i: usize| -> Option<u32> {
        let s = text.get(i..i + 4)?;
        u32::from_str_radix(s, 16).ok()
    };
    let mut i = 0;
    let mut in_string = false;
    while i < b.len() {
        match (in_string, b[i]) {
            (false, b'"') => in_string = true,
            (true, b'"') => in_string = false,
            (true, b'\\') => {
                if b.get(i + 1) == Some(&b'u') {
                    if let Some(u) = hex4(i + 2) {
                        if (0xD800..0xDC00).contains(&u) {
                            let low = (b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u'))
                                .then(|| hex4(i + 8))
                                .flatten();
                            match low {
                                Some(l) if (0xDC00..0xE000).contains(&l) => i += 6,
                                _ => return true,
                            }
                        } else if (0xDC00..0xE000).contains(&u) {
                            return true;
                        }
                    }
                }
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// True if a number token outside strings has a fraction or an exponent.
fn has_non_integer_token(text: &str) -> bool {
    let b = text.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_string {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        } else if c == b'-' || c.is_ascii_digit() {
            let start = i;
            while i < b.len() && matches!(b[i], b'0'..=b'9' | b'e' | b'E' | b'.' | b'+' | b'-') {
                i += 1;
            }
            if b[start..i].iter().any(|c| matches!(c, b'.' | b'e' | b'E')) {
                return true;
            }
            continue;
        }
        i += 1;
    }
    false
}

fn parse_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not valid UTF-8".to_string())?;
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        // serde_json refuses what Python and JavaScript parse and then refuse: report those
        // the way they do.
        Err(_) if has_lone_surrogate_escape(text) => {
            return Err("body contains a lone surrogate escape".into());
        }
        Err(e) if e.to_string().contains("number out of range") && has_non_integer_token(text) => {
            return Err("body contains a number that is not an integer".into());
        }
        Err(_) => return Err("body is not valid JSON".into()),
    };
    if has_non_integer_token(text) {
        return Err("body contains a number that is not an integer".into());
    }
    match value {
        Value::Object(map) => Ok(map),
        _ => Err("body is not a JSON object".into()),
    }
}

fn quote(s: &str) -> String {
    let mut out = String::new();
    write_str(&mut out, s);
    out
}

fn reshape_value(value: Value, path: &Path<'_>, depth: usize) -> Result<Json, String> {
    if depth > MAX_DEPTH {
        return Err(format!("body nests deeper than {MAX_DEPTH} levels"));
    }
    Ok(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(b),
        Value::String(s) => Json::Str(s),
        Value::Number(n) => {
            let out_of_range = || format!("number at {path} is outside the safe integer range");
            if let Some(i) = n.as_i64() {
                if i.unsigned_abs() > MAX_SAFE_INTEGER {
                    return Err(out_of_range());
                }
                Json::Int(i)
            } else if n.as_u64().is_some() {
                return Err(out_of_range());
            } else if n.as_f64() == Some(0.0) {
                // serde_json reads the integer token -0 as the float -0.0; it is 0.
                Json::Int(0)
            } else {
                // Integer tokens beyond the u64 range (fractions were refused already).
                return Err(out_of_range());
            }
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, v) in items.into_iter().enumerate() {
                out.push(reshape_value(v, &Path::Index(path, i), depth + 1)?);
            }
            Json::Array(out)
        }
        Value::Object(map) => {
            // serde_json's map (without `preserve_order`) iterates in key order: code point
            // order, as Python and JavaScript visit them, so errors come out the same.
            let entries: Vec<(String, Value)> = map.into_iter().collect();
            // Most keys have no capital to rewrite: those are copied, not rebuilt.
            let new_keys: Vec<String> = entries
                .iter()
                .map(|(k, _)| if k.bytes().any(|b| b.is_ascii_uppercase()) { snake_case(k) } else { k.clone() })
                .collect();
            // The first key (in that order) whose new name an earlier key already took.
            let mut order: Vec<usize> = (0..entries.len()).collect();
            order.sort_by(|&a, &b| new_keys[a].cmp(&new_keys[b]).then(a.cmp(&b)));
            let collision = order
                .windows(2)
                .filter(|w| new_keys[w[0]] == new_keys[w[1]])
                .map(|w| (w[0], w[1]))
                .min_by_key(|&(_, later)| later);
            let collision = collision.map(|(first, later)| (entries[first].0.clone(), later));
            let mut out: Vec<(String, Json)> = Vec::with_capacity(entries.len() + 2);
            for (i, ((key, v), new_key)) in entries.into_iter().zip(new_keys).enumerate() {
                if let Some((first, later)) = &collision
                    && i == *later
                {
                    return Err(format!(
                        "fields {} and {} at {path} both become {}",
                        quote(first),
                        quote(&key),
                        quote(&new_key)
                    ));
                }
                let child = reshape_value(v, &Path::Key(path, &new_key), depth + 1)?;
                out.push((new_key, child));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(out)
        }
    })
}

fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

fn get<'a>(data: &'a [(String, Json)], key: &str) -> Option<&'a Json> {
    data.binary_search_by(|(k, _)| k.as_str().cmp(key))
        .ok()
        .map(|i| &data[i].1)
}

/// Insert or replace `key`, keeping the entries sorted.
fn set(data: &mut Vec<(String, Json)>, key: &str, value: Json) {
    match data.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
        Ok(i) => data[i].1 = value,
        Err(i) => data.insert(i, (key.to_string(), value)),
    }
}

fn add_computed(data: &mut Vec<(String, Json)>) {
    if let Some(Json::Int(cents)) = get(data, "amount_cents") {
        let amount = format_cents(*cents);
        set(data, "amount", Json::Str(amount));
    }
    if let Ok(i) = data.binary_search_by(|(k, _)| k.as_str().cmp("currency"))
        && let Json::Str(currency) = &mut data[i].1
    {
        currency.make_ascii_uppercase();
    }
    if let Some(Json::Array(items)) = get(data, "items") {
        let n = items.len() as i64;
        set(data, "item_count", Json::Int(n));
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    // Copy runs of bytes that need no escape at once (every byte of a multi-byte UTF-8
    // sequence is >= 0x80, so a run never splits a character).
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{:04x}", b));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn write_json(out: &mut String, value: &Json) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Int(i) => {
            use std::fmt::Write;
            let _ = write!(out, "{i}");
        }
        Json::Str(s) => write_str(out, s),
        Json::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, v);
            }
            out.push(']');
        }
        Json::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_json(out, v);
            }
            out.push('}');
        }
    }
}

/// The reshape, as a pure function of the event (and the skip list from config).
pub fn reshape(input: &Input<'_>) -> Result<Reshaped, String> {
    if let Some(list) = input.skip_event_types {
        if list.split(',').map(trim_sp_tab).any(|t| !t.is_empty() && t == input.event_type) {
            return Ok(Reshaped::Skip(format!(
                "event type {} is listed in skip-event-types",
                input.event_type
            )));
        }
    }
    let media_type = trim_sp_tab(input.content_type.split(';').next().unwrap_or("")).to_ascii_lowercase();
    if media_type != "application/json" {
        return Ok(Reshaped::Skip(format!("content type {media_type} is not application/json")));
    }
    let payload = parse_body(input.body)?;
    let Json::Object(mut data) = reshape_value(Value::Object(payload), &Path::Root, 1)? else {
        unreachable!("an object reshapes to an object")
    };
    add_computed(&mut data);
    // Keys in code point order: attempt, data, id, occurred_at, source, type.
    let mut body = String::with_capacity(input.body.len() + 128);
    body.push_str("{\"attempt\":");
    body.push_str(&input.attempt.to_string());
    body.push_str(",\"data\":");
    write_json(&mut body, &Json::Object(data));
    body.push_str(",\"id\":");
    write_str(&mut body, input.id);
    body.push_str(",\"occurred_at\":");
    body.push_str(&(input.created_at_ms / 1000).to_string());
    body.push_str(",\"source\":");
    write_str(&mut body, input.app_id);
    body.push_str(",\"type\":");
    write_str(&mut body, input.event_type);
    body.push('}');
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    headers.extend(
        input
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("content-type"))
            .cloned(),
    );
    Ok(Reshaped::Send { headers, body: body.into_bytes() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(body: &str) -> Input<'_> {
        Input {
            id: "evt_1",
            app_id: "shop",
            event_type: "invoice.paid",
            headers: &[],
            content_type: "application/json",
            body: body.as_bytes(),
            attempt: 1,
            created_at_ms: 1_700_000_000_999,
            skip_event_types: None,
        }
    }

    fn body_of(r: Reshaped) -> String {
        match r {
            Reshaped::Send { body, .. } => String::from_utf8(body).unwrap(),
            Reshaped::Skip(s) => panic!("skipped: {s}"),
        }
    }

    #[test]
    fn renames_computes_and_orders() {
        let out = body_of(reshape(&input(r#"{"amountCents":-5,"currency":"eur","zKey":{"bB":[1]}}"#)).unwrap());
        assert_eq!(
            out,
            r#"{"attempt":1,"data":{"amount":"-0.05","amount_cents":-5,"currency":"EUR","z_key":{"b_b":[1]}},"id":"evt_1","occurred_at":1700000000,"source":"shop","type":"invoice.paid"}"#
        );
    }

    #[test]
    fn number_rules() {
        assert_eq!(body_of(reshape(&input(r#"{"a":-0}"#)).unwrap()).contains(r#""a":0"#), true);
        for (body, err) in [
            (r#"{"a":1.0}"#, "not an integer"),
            (r#"{"a":1e400}"#, "not an integer"),
            (r#"{"a":9007199254740992}"#, "outside the safe integer range"),
            (r#"{"a":-9007199254740992}"#, "outside the safe integer range"),
            (r#"{"a":99999999999999999999999}"#, "outside the safe integer range"),
            (r#"{"a":"\udc00"}"#, "lone surrogate"),
            (r#"{"a":"\ud83d\ude00 ok","b":"\ud800x"}"#, "lone surrogate"),
        ] {
            let got = reshape(&input(body)).unwrap_err();
            assert!(got.contains(err), "{body}: {got}");
        }
        assert!(!has_lone_surrogate_escape(r#"{"a":"\ud83d\ude00","b":"\\ud800"}"#));
        assert!(!has_non_integer_token(r#"{"e.E":true,"x":-12}"#));
    }
}

/// The shared vectors, run against the pure function (the host test runs them through the
/// component too).
#[cfg(test)]
mod vectors {
    use super::*;
    use serde_json::Value;

    fn s<'a>(v: &'a Value, key: &str, default: &'a str) -> &'a str {
        v.get(key).and_then(Value::as_str).unwrap_or(default)
    }

    #[test]
    fn transform_reshape_vectors_pass() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../conformance/transform-reshape.json"
        ))
        .unwrap();
        let file: Value = serde_json::from_str(&text).unwrap();
        let mut checked = 0;
        for v in file["vectors"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap();
            let e = &v["event"];
            let body: Vec<u8> = match (e.get("body"), e.get("body_base64")) {
                (Some(b), _) => b.as_str().unwrap().as_bytes().to_vec(),
                (None, Some(b64)) => decode_base64(b64.as_str().unwrap()),
                (None, None) => Vec::new(),
            };
            let headers: Vec<(String, String)> = e
                .get("headers")
                .and_then(Value::as_array)
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
                        .collect()
                })
                .unwrap_or_default();
            let input = Input {
                id: s(e, "id", "evt_test"),
                app_id: s(e, "app_id", "app"),
                event_type: s(e, "event_type", "test.event"),
                headers: &headers,
                content_type: s(e, "content_type", "application/json"),
                body: &body,
                attempt: e.get("attempt").and_then(Value::as_u64).unwrap_or(1) as u32,
                created_at_ms: e.get("created_at_ms").and_then(Value::as_u64).unwrap_or(0),
                skip_event_types: v.get("config").and_then(|c| c.get("skip-event-types")).and_then(Value::as_str),
            };
            let got = reshape(&input);
            let expect = &v["expect"];
            if let Some(send) = expect.get("send") {
                let want_headers: Vec<(String, String)> = send["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
                    .collect();
                let want = Reshaped::Send {
                    headers: want_headers,
                    body: send["body"].as_str().unwrap().as_bytes().to_vec(),
                };
                assert_eq!(got.as_ref().ok(), Some(&want), "{name}: {got:?}");
            } else if let Some(reason) = expect.get("skip") {
                assert_eq!(got, Ok(Reshaped::Skip(reason.as_str().unwrap().into())), "{name}");
            } else {
                let want = expect["error_contains"].as_str().unwrap();
                let got = got.expect_err(name);
                assert!(format!("reshape: {got}").contains(want), "{name}: {got}");
            }
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} vectors");
    }

    fn decode_base64(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes().filter(|&c| c != b'=') {
            bits = (bits << 6) | A.iter().position(|&a| a == c).unwrap() as u32;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        out
    }
}
