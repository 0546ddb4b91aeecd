//! Timestamps as cairn records them: signed nanoseconds since the Unix epoch, shown as RFC 3339
//! UTC.

#![warn(missing_docs)]

/// Current time in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC time of a nanosecond timestamp (times before the epoch show as the epoch).
pub fn format_time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
