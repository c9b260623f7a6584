//! Strict percent-decoding: one pass, every `%` followed by two hex digits, valid UTF-8.
//!
//! `percent_encoding::percent_decode_str` passes malformed escapes through unchanged,
//! which is right for browsers and wrong for an authorization decision.

/// Why a string could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

/// Decodes `s` once. Returns a borrowed view when there is nothing to decode.
pub fn decode(s: &str) -> Result<std::borrow::Cow<'_, str>, DecodeError> {
    if !s.contains('%') {
        return Ok(std::borrow::Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| hex(*c));
            let lo = bytes.get(i + 2).and_then(|c| hex(*c));
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(DecodeError::BadEscape),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| DecodeError::NotUtf8)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict() {
        assert_eq!(decode("a%20b").unwrap(), "a b");
        assert_eq!(decode("plain").unwrap(), "plain");
        assert_eq!(decode("a+b").unwrap(), "a+b");
        assert_eq!(decode("%zz"), Err(DecodeError::BadEscape));
        assert_eq!(decode("%2"), Err(DecodeError::BadEscape));
        assert_eq!(decode("%"), Err(DecodeError::BadEscape));
        assert_eq!(decode("%ff"), Err(DecodeError::NotUtf8));
        assert_eq!(decode("%2541").unwrap(), "%41");
    }
}
