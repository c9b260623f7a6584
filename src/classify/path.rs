//! Strict path segments: the raw path is split on `/` *before* decoding, then each
//! segment is checked raw, decoded exactly once, and checked again decoded.
//!
//! Everything a server, a cache or a servlet container might read differently from us
//! is refused: encoded `/` or `\`, dot-segments (raw or encoded), `;` path parameters,
//! `%25` (double encoding), control characters, empty segments (`//`, trailing `/`),
//! invalid UTF-8 and absolute-form targets.

use std::borrow::Cow;

use super::ClassifyError;
use crate::pct::{self, DecodeError};

/// The most segments any FHIR R4 REST path has (`T/id/_history/vid`).
const MAX_SEGMENTS: usize = 4;

/// Splits and decodes `raw` (relative to the FHIR base, no leading `/`).
pub(super) fn segments(raw: &str) -> Result<Vec<Cow<'_, str>>, ClassifyError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    if is_absolute_form(raw) {
        return Err(ClassifyError::AbsoluteForm);
    }
    let mut out = Vec::with_capacity(MAX_SEGMENTS);
    for seg in raw.split('/') {
        out.push(segment(seg)?);
    }
    if out.len() > MAX_SEGMENTS {
        return Err(ClassifyError::UnknownPath);
    }
    Ok(out)
}

/// `scheme:` at the start: the proxy was handed an absolute URI instead of a path.
fn is_absolute_form(raw: &str) -> bool {
    let mut bytes = raw.bytes();
    if !bytes.next().is_some_and(|b| b.is_ascii_alphabetic()) {
        return false;
    }
    for b in bytes {
        match b {
            b':' => return true,
            b'+' | b'-' | b'.' => {}
            _ if b.is_ascii_alphanumeric() => {}
            _ => return false,
        }
    }
    false
}

fn segment(raw: &str) -> Result<Cow<'_, str>, ClassifyError> {
    if raw.is_empty() {
        return Err(ClassifyError::EmptySegment);
    }
    for b in raw.bytes() {
        match b {
            b';' => return Err(ClassifyError::MatrixParameter),
            b'\\' => return Err(ClassifyError::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(ClassifyError::ControlCharacter),
            b'%' | b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*'
            | b'+' | b',' | b'=' | b':' | b'@' => {}
            _ if b.is_ascii_alphanumeric() => {}
            _ => return Err(ClassifyError::InvalidCharacter),
        }
    }
    let decoded = pct::decode(raw).map_err(|e| match e {
        DecodeError::BadEscape => ClassifyError::BadEscape,
        DecodeError::NotUtf8 => ClassifyError::NotUtf8,
    })?;
    for c in decoded.chars() {
        match c {
            '/' | '\\' => return Err(ClassifyError::EncodedSeparator),
            '%' => return Err(ClassifyError::DoubleEncoding),
            ';' => return Err(ClassifyError::MatrixParameter),
            _ if c.is_control() => return Err(ClassifyError::ControlCharacter),
            _ => {}
        }
    }
    if decoded == "." || decoded == ".." {
        return Err(ClassifyError::DotSegment);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_segments() {
        assert_eq!(segments("Patient/1").unwrap(), ["Patient", "1"]);
        assert_eq!(segments("Pati%65nt").unwrap(), ["Patient"]);
        assert_eq!(segments("a%2Fb"), Err(ClassifyError::EncodedSeparator));
        assert_eq!(segments("a%5cb"), Err(ClassifyError::EncodedSeparator));
        assert_eq!(segments("a/%2e%2e/b"), Err(ClassifyError::DotSegment));
        assert_eq!(segments("a/./b"), Err(ClassifyError::DotSegment));
        assert_eq!(segments("a;x=1"), Err(ClassifyError::MatrixParameter));
        assert_eq!(segments("a%3Bx"), Err(ClassifyError::MatrixParameter));
        assert_eq!(segments("a%00"), Err(ClassifyError::ControlCharacter));
        assert_eq!(segments("a%252F"), Err(ClassifyError::DoubleEncoding));
        assert_eq!(segments("a//b"), Err(ClassifyError::EmptySegment));
        assert_eq!(segments("a/"), Err(ClassifyError::EmptySegment));
        assert_eq!(segments("%ff"), Err(ClassifyError::NotUtf8));
        assert_eq!(segments("%zz"), Err(ClassifyError::BadEscape));
        assert_eq!(
            segments("http://x/Patient"),
            Err(ClassifyError::AbsoluteForm)
        );
        assert_eq!(segments("a/b/c/d/e"), Err(ClassifyError::UnknownPath));
    }
}
