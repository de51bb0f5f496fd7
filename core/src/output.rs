//! What the host accepts back from a plugin. Pure checks over values: a plugin's
//! request, headers and reasons are refused here, before anything reaches the wire.

use crate::envelope::is_tchar;
use crate::hooks::{Headers, Request, RetryDecision, TransformResult};

/// Check a request a transform returned: method `POST` or `PUT`, an absolute http(s)
/// URL, valid header names and values, and a size within `max_bytes` (body plus headers).
pub fn check_request(request: &Request, max_bytes: usize) -> Result<(), String> {
    check_request_from(request, max_bytes, None)
}

/// [`check_request`], where `checked_url` is a URL the host has already checked (the
/// event's endpoint): a request sent there, the usual case, skips parsing it again.
pub fn check_request_from(
    request: &Request,
    max_bytes: usize,
    checked_url: Option<&str>,
) -> Result<(), String> {
    if request.method != "POST" && request.method != "PUT" {
        return Err(format!(
            "method {:?} is not allowed (POST or PUT)",
            truncate(&request.method, 32)
        ));
    }
    if checked_url != Some(request.url.as_str()) {
        check_url(&request.url)?;
    }
    let header_bytes = check_headers(&request.headers, max_bytes)?;
    if request.body.len() > max_bytes {
        return Err(format!(
            "body of {} bytes exceeds the limit of {max_bytes} bytes",
            request.body.len()
        ));
    }
    if request.body.len() + header_bytes > max_bytes {
        return Err(format!(
            "body ({} bytes) and headers ({header_bytes} bytes) exceed the limit of {max_bytes} bytes",
            request.body.len()
        ));
    }
    Ok(())
}

/// Check a URL: absolute, `http` or `https`, with a host. (The SSRF guard still runs
/// later on the addresses it resolves to.)
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = crate::envelope::parse_url(url)
        .map_err(|e| format!("URL {:?} does not parse: {e}", truncate(url, 200)))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "URL {:?} has scheme {:?}; only http and https are allowed",
            truncate(url, 200),
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL {:?} has no host", truncate(url, 200)));
    }
    Ok(())
}

/// Check headers: names are HTTP tokens (RFC 9110), values hold no CR, LF or NUL, and
/// names plus values fit in `max_bytes`. Returns their total size.
pub fn check_headers(headers: &Headers, max_bytes: usize) -> Result<usize, String> {
    let mut total = 0usize;
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!(
                "header name {:?} is not a valid HTTP token",
                truncate(name, 64)
            ));
        }
        // Almost every value is printable ASCII: one cheap pass, the exact byte only on failure.
        if value.bytes().any(|b| b < b' ')
            && let Some(bad) = value.bytes().find(|b| matches!(b, b'\r' | b'\n' | 0))
        {
            return Err(format!(
                "header {name} has a value containing {}",
                match bad {
                    b'\r' => "CR",
                    b'\n' => "LF",
                    _ => "NUL",
                }
            ));
        }
        total = total.saturating_add(name.len() + value.len() + 4);
        if total > max_bytes {
            return Err(format!("headers exceed the limit of {max_bytes} bytes"));
        }
    }
    Ok(total)
}

/// Check a transform's result; `checked_url` as in [`check_request_from`].
pub fn check_transform(
    result: &TransformResult,
    max_bytes: usize,
    checked_url: Option<&str>,
) -> Result<(), String> {
    match result {
        TransformResult::Send(request) => check_request_from(request, max_bytes, checked_url),
        TransformResult::Skip(reason) => check_reason(reason, max_bytes),
    }
}

/// Check a retry decision (its reason must fit the output limit and be a single line
/// of text, since it travels in DLQ attributes and logs).
pub fn check_decision(decision: &RetryDecision, max_bytes: usize) -> Result<(), String> {
    match decision {
        RetryDecision::RetryAfterSeconds(_) => Ok(()),
        RetryDecision::DeadLetter(r) | RetryDecision::Discard(r) => check_reason(r, max_bytes),
    }
}

/// The seconds of a WIT 0.3.0 `retry-after-seconds(s64)`: 0 to 4294967295, or the reason it is
/// refused. (Earlier versions take a `u32`, which a JavaScript guest's conversion wraps: -5
/// arrives as 4294967291 and cannot be told from a real value; 0.3.0 lets -5 arrive as -5.)
pub fn retry_after_seconds(seconds: i64) -> Result<u32, String> {
    u32::try_from(seconds).map_err(|_| {
        let why = if seconds < 0 { "negative" } else { "above 4294967295" };
        format!("retry-after-seconds {seconds} is {why}: a retry policy must return 0 to 4294967295 seconds")
    })
}

fn check_reason(reason: &str, max_bytes: usize) -> Result<(), String> {
    if reason.len() > max_bytes {
        return Err(format!(
            "reason of {} bytes exceeds the limit of {max_bytes} bytes",
            reason.len()
        ));
    }
    if reason.bytes().any(|b| b == 0) {
        return Err("reason contains NUL".to_string());
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    /// [`is_tchar`] as a table: this runs on every header of every plugin call.
    const TOKEN: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = is_tchar(i as u8);
            i += 1;
        }
        t
    };
    TOKEN[usize::from(b)]
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, url: &str, headers: &[(&str, &str)], body: usize) -> Request {
        Request {
            method: method.into(),
            url: url.into(),
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: vec![b'x'; body],
        }
    }

    #[test]
    fn good_requests_pass() {
        check_request(
            &req(
                "POST",
                "https://example.com/hook",
                &[("content-type", "application/json")],
                10,
            ),
            1024,
        )
        .unwrap();
        check_request(&req("PUT", "http://10.0.0.1:8080/", &[], 0), 1024).unwrap();
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let cases = [
            (req("GET", "https://e.com", &[], 0), "method \"GET\""),
            (req("POST", "file:///etc/passwd", &[], 0), "scheme \"file\""),
            (req("POST", "/relative", &[], 0), "does not parse"),
            (
                req("POST", "https://e.com", &[("bad name", "v")], 0),
                "not a valid HTTP token",
            ),
            (
                req("POST", "https://e.com", &[("", "v")], 0),
                "not a valid HTTP token",
            ),
            (
                req("POST", "https://e.com", &[("x", "a\r\nset-cookie: 1")], 0),
                "containing CR",
            ),
            (
                req("POST", "https://e.com", &[("x", "a\nb")], 0),
                "containing LF",
            ),
            (
                req("POST", "https://e.com", &[("x", "a\0b")], 0),
                "containing NUL",
            ),
            (
                req("POST", "https://e.com", &[], 2000),
                "body of 2000 bytes",
            ),
            (
                req("POST", "https://e.com", &[("x", &"v".repeat(1000))], 100),
                "exceed",
            ),
        ];
        for (r, want) in cases {
            let err = check_request(&r, 1024).unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn reasons_are_bounded() {
        assert!(check_decision(&RetryDecision::DeadLetter("x".repeat(11)), 10).is_err());
        assert!(check_decision(&RetryDecision::Discard("fine".into()), 10).is_ok());
        assert!(check_transform(&TransformResult::Skip("a\0".into()), 10, None).is_err());
    }

    #[test]
    fn retry_after_seconds_out_of_range_is_refused_not_wrapped() {
        assert_eq!(retry_after_seconds(0), Ok(0));
        assert_eq!(retry_after_seconds(4_294_967_295), Ok(u32::MAX));
        assert_eq!(
            retry_after_seconds(-5),
            Err("retry-after-seconds -5 is negative: a retry policy must return 0 to 4294967295 seconds".into())
        );
        assert!(
            retry_after_seconds(4_294_967_296)
                .unwrap_err()
                .contains("above 4294967295")
        );
    }
}
