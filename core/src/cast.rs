//! The asciicast v2 header rule of recording uploads: what the CA checks before it stores a
//! recording a gateway sent (a pure function of the bytes, so that it can be fuzzed).

/// The longest asciicast header line accepted (the header is a small JSON object).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Checks the first line of an asciicast: a JSON object with `"version": 2`.
pub fn check_cast(cast: &str) -> Result<(), String> {
    let header = cast.split('\n').next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(header)
        .map_err(|e| format!("the cast's first line is not a JSON header: {e}"))?;
    if v.get("version").and_then(serde_json::Value::as_u64) != Some(2) {
        return Err("the cast's header does not say \"version\": 2 (asciicast v2)".into());
    }
    Ok(())
}

/// Checks the beginning of a recording of `bytes` bytes: `head` is its first
/// `min(bytes, MAX_HEADER_BYTES)` bytes, which must hold the whole header line, in UTF-8.
pub fn check_head(head: &[u8], bytes: u64) -> Result<(), String> {
    match head.iter().position(|b| *b == b'\n') {
        Some(n) => std::str::from_utf8(&head[..n])
            .map_err(|_| "the cast's first line is not UTF-8".to_owned())
            .and_then(check_cast),
        None if bytes <= MAX_HEADER_BYTES as u64 => std::str::from_utf8(head)
            .map_err(|_| "the cast's first line is not UTF-8".to_owned())
            .and_then(check_cast),
        None => Err(format!(
            "the cast's first line is longer than {MAX_HEADER_BYTES} bytes"
        )),
    }
}
