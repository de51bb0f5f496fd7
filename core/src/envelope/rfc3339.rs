//! `created_at` as RFC 3339, through the `time` crate.

/// Parse an RFC 3339 date-time (`2026-11-28T10:00:00Z`, `...T10:00:00.123+02:00`) to Unix ms.
/// Also accepted: a space instead of the `T` (RFC 3339 section 5.6 allows it) and a leap second
/// (`:60`), folded onto the second before it. Fractions beyond milliseconds are truncated.
pub fn parse_rfc3339_ms(s: &str) -> Result<u64, &'static str> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err("too short");
    }
    let mut text = std::borrow::Cow::Borrowed(s);
    if b[10] == b' ' || b.get(17..19) == Some(b"60") {
        let mut owned = b.to_vec();
        if owned[10] == b' ' {
            owned[10] = b'T';
        }
        if owned.get(17..19) == Some(b"60") {
            owned[17..19].copy_from_slice(b"59");
        }
        text = std::borrow::Cow::Owned(String::from_utf8(owned).map_err(|_| "not UTF-8")?);
    }
    let t = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| match e {
            time::error::Parse::TryFromParsed(_) => "a field is out of range",
            _ => "not of the form YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM)",
        })?;
    let ms = t.unix_timestamp() * 1000 + i64::from(t.millisecond());
    u64::try_from(ms).map_err(|_| "before 1970-01-01T00:00:00Z")
}

/// Format Unix ms as RFC 3339 UTC with milliseconds (`2026-11-28T10:00:00.000Z`), for times up
/// to 9999-12-31T23:59:59.999Z (later times are written as integers, see `Envelope::encode`).
pub fn format_rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
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
