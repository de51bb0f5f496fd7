//! The endpoint URL: parsed once per thread and remembered, and the rules it must meet.

/// `url::Url::parse`, remembered per thread for recently seen URLs.
///
/// An event's endpoint is parsed on its way through the engine by the envelope decoder, for
/// the metrics host, for the per-endpoint limiter and by the deliverer's pre-send check; each
/// parse (with IDNA host processing) cost about 1.5 us, some 6% of an event's CPU. Endpoints
/// repeat across events, so parses are looked up by the exact URL text first. The memo holds
/// at most `URL_MEMO_ENTRIES` URLs of up to `URL_MEMO_MAX_LEN` bytes per thread (about
/// 200 KiB at most) and is emptied when full; only successful parses are kept.
pub fn parse_url(s: &str) -> Result<url::Url, url::ParseError> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    const URL_MEMO_ENTRIES: usize = 256;
    const URL_MEMO_MAX_LEN: usize = 512;
    thread_local! {
        static MEMO: RefCell<HashMap<Box<str>, url::Url>> = RefCell::new(HashMap::new());
    }
    if s.len() > URL_MEMO_MAX_LEN {
        return url::Url::parse(s);
    }
    MEMO.with_borrow_mut(|memo| {
        if let Some(url) = memo.get(s) {
            return Ok(url.clone());
        }
        let url = url::Url::parse(s)?;
        if memo.len() >= URL_MEMO_ENTRIES {
            memo.clear();
        }
        memo.insert(s.into(), url.clone());
        Ok(url)
    })
}

/// The rules an endpoint URL must meet (shared with the HTTP deliverer's pre-send check).
pub fn check_endpoint_url(url: &url::Url) -> Result<(), &'static str> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must use the http or https scheme");
    }
    if url.host().is_none() {
        return Err("must name a host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not contain a user name or password (user:password@); use a signing key or headers",
        );
    }
    Ok(())
}
