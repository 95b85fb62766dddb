//! TXT values: a record's text travels as character-strings of at most 255 bytes (RFC 1035
//! 3.3.14), so a long value (a DKIM key, say) is split on write and joined on read. PowerDNS's API
//! takes and gives TXT content in zone-file presentation form (`"part one" "part two"`, with `\"`,
//! `\\` and `\DDD` escapes); [`quote`] and [`unquote`] translate.

/// The most bytes one character-string holds.
pub const CHUNK: usize = 255;

/// `value`'s bytes in character-strings of at most [`CHUNK`] bytes (one empty string for "").
pub fn chunks(value: &str) -> Vec<&[u8]> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return vec![bytes];
    }
    bytes.chunks(CHUNK).collect()
}

/// Character-strings joined back into one value (bytes that are not UTF-8 are replaced).
pub fn join<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let bytes: Vec<u8> = parts.into_iter().flatten().copied().collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `value` in presentation form: quoted character-strings of at most [`CHUNK`] bytes each.
pub fn quote(value: &str) -> String {
    let mut out = String::new();
    for chunk in chunks(value) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push('"');
        for &b in chunk {
            match b {
                b'"' | b'\\' => {
                    out.push('\\');
                    out.push(b as char);
                }
                0x20..=0x7e => out.push(b as char),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        out.push('"');
    }
    out
}

/// The value of presentation-form `content`: its quoted (or bare) character-strings joined.
pub fn unquote(content: &str) -> Result<String, String> {
    let bytes = content.as_bytes();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' => i += 1,
            b'"' => {
                let mut part = Vec::new();
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(format!("unterminated quote in TXT {content:?}")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            let (byte, used) = escape(&bytes[i + 1..])
                                .ok_or_else(|| format!("bad escape in TXT {content:?}"))?;
                            part.push(byte);
                            i += 1 + used;
                            continue;
                        }
                        Some(&b) => part.push(b),
                    }
                    i += 1;
                }
                i += 1;
                parts.push(part);
            }
            _ => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| *b == b' ')
                    .map_or(bytes.len(), |p| i + p);
                parts.push(bytes[i..end].to_vec());
                i = end;
            }
        }
    }
    Ok(join(parts.iter().map(Vec::as_slice)))
}

/// The byte an escape stands for (after the backslash) and how many bytes it used.
fn escape(rest: &[u8]) -> Option<(u8, usize)> {
    match rest {
        [a, b, c, ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            let n = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
            u8::try_from(n).ok().map(|byte| (byte, 3))
        }
        [b, ..] => Some((*b, 1)),
        [] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_split_at_255_bytes_and_join_back() {
        let value = "x".repeat(600);
        let parts = chunks(&value);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [255, 255, 90]
        );
        assert_eq!(join(parts), value);
        assert_eq!(chunks(""), [b"" as &[u8]]);
    }

    #[test]
    fn presentation_form_round_trips() {
        for value in ["v=spf1 -all", "say \"hi\" \\ ok", "é", "", &"k".repeat(300)] {
            let quoted = quote(value);
            assert_eq!(unquote(&quoted).as_deref(), Ok(value), "{quoted}");
        }
        assert_eq!(
            quote(&"a".repeat(256)),
            format!("\"{}\" \"a\"", "a".repeat(255))
        );
        assert_eq!(unquote("\"a\\065\" bare").as_deref(), Ok("aAbare"));
        assert!(unquote("\"open").is_err());
    }
}
