//! Strict query strings: split on `&`, split each pair on the first `=`, decode name and
//! value exactly once, then split the name into code, modifier and chain.
//!
//! `+` in a URL query is a literal plus (re-encoded as `%2B`, so the upstream cannot read
//! it as a space); only in an `application/x-www-form-urlencoded` body does `+` mean a
//! space, as that format defines. Either way the upstream sees the canonical encoding
//! produced by [`encode_params`], never the client's bytes.

use super::{ClassifyError, SearchParam};
use crate::pct::{self, DecodeError};

/// How `+` is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plus {
    /// URL query: `+` is a plus sign.
    Literal,
    /// Form body: `+` is a space.
    Space,
}

/// Parses `raw` (no leading `?`) and appends its parameters to `out`.
pub(super) fn parse_into(
    raw: &str,
    plus: Plus,
    out: &mut Vec<SearchParam>,
) -> Result<(), ClassifyError> {
    if raw.is_empty() {
        return Ok(());
    }
    if let Some(b) = raw
        .bytes()
        .find(|b| !(0x21..=0x7e).contains(b) || *b == b'#')
    {
        return Err(if b < 0x20 || b == 0x7f {
            ClassifyError::ControlCharacter
        } else {
            ClassifyError::InvalidCharacter
        });
    }
    for pair in raw.split('&') {
        let (name, value) = pair.split_once('=').ok_or(ClassifyError::BadParameter)?;
        let (name, value) = match plus {
            Plus::Literal => (decode(name)?, decode(value)?),
            Plus::Space => (
                decode(&name.replace('+', " "))?,
                decode(&value.replace('+', " "))?,
            ),
        };
        if value.chars().any(char::is_control) {
            return Err(ClassifyError::ControlCharacter);
        }
        out.push(split_name(&name, value)?);
    }
    Ok(())
}

fn decode(s: &str) -> Result<String, ClassifyError> {
    pct::decode(s).map(|c| c.into_owned()).map_err(|e| match e {
        DecodeError::BadEscape => ClassifyError::BadEscape,
        DecodeError::NotUtf8 => ClassifyError::NotUtf8,
    })
}

/// `code[:modifier][.chain]`, each part non-empty, from a small, safe alphabet.
pub(super) fn split_name(key: &str, value: String) -> Result<SearchParam, ClassifyError> {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'));
    if !ok {
        return Err(ClassifyError::BadParameter);
    }
    let (head, chain) = match key.find(['.', ':']) {
        Some(i) if key.as_bytes().get(i) == Some(&b':') => {
            let rest = key.get(i + 1..).unwrap_or("");
            match rest.split_once('.') {
                Some((m, c)) => ((key.get(..i).unwrap_or(""), Some(m)), Some(c.to_owned())),
                None => ((key.get(..i).unwrap_or(""), Some(rest)), None),
            }
        }
        Some(i) => (
            (key.get(..i).unwrap_or(""), None),
            Some(key.get(i + 1..).unwrap_or("").to_owned()),
        ),
        None => ((key, None), None),
    };
    let (name, modifier) = head;
    let empty = name.is_empty()
        || modifier.is_some_and(str::is_empty)
        || chain.as_deref().is_some_and(str::is_empty);
    if empty {
        return Err(ClassifyError::BadParameter);
    }
    if name == "_method" {
        return Err(ClassifyError::MethodOverride);
    }
    Ok(SearchParam {
        name: name.to_owned(),
        modifier: modifier.map(str::to_owned),
        chain,
        value,
    })
}

/// Bytes that never need escaping in a query name or value (RFC 3986 unreserved plus the
/// delimiters FHIR values use); everything else, `+ & = ; % # ?` included, is escaped.
fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'_' | b'~' | b':' | b'/' | b'|' | b',' | b'$' | b'@' | b'!' | b'*'
        )
}

fn push_encoded(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// Appends the canonical encoding of `params` (`a=1&b=2`) to `out`.
pub(super) fn encode_params<'a>(
    out: &mut String,
    params: impl IntoIterator<Item = &'a SearchParam>,
) {
    for (i, p) in params.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        push_encoded(out, &p.name);
        if let Some(m) = &p.modifier {
            out.push(':');
            push_encoded(out, m);
        }
        if let Some(c) = &p.chain {
            out.push('.');
            push_encoded(out, c);
        }
        out.push('=');
        push_encoded(out, &p.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(raw: &str) -> Result<SearchParam, ClassifyError> {
        let mut v = Vec::new();
        parse_into(raw, Plus::Literal, &mut v)?;
        assert_eq!(v.len(), 1);
        Ok(v.remove(0))
    }

    #[test]
    fn names_split_after_decoding() {
        let p = one("subject%3APatient.name=peter").unwrap();
        assert_eq!(p.name, "subject");
        assert_eq!(p.modifier.as_deref(), Some("Patient"));
        assert_eq!(p.chain.as_deref(), Some("name"));
        let p = one("_has:Observation:patient:code=1").unwrap();
        assert_eq!(p.modifier.as_deref(), Some("Observation:patient:code"));
        let p = one("subject.name=x").unwrap();
        assert_eq!((p.modifier, p.chain.as_deref()), (None, Some("name")));
        assert_eq!(one("a:=1"), Err(ClassifyError::BadParameter));
        assert_eq!(one("a.=1"), Err(ClassifyError::BadParameter));
        assert_eq!(one(":a=1"), Err(ClassifyError::BadParameter));
    }

    #[test]
    fn encoding_round_trips() {
        let mut v = Vec::new();
        parse_into("a=1%2B2+3&b=%20x%26y%3D", Plus::Literal, &mut v).unwrap();
        assert_eq!(v[0].value, "1+2+3");
        assert_eq!(v[1].value, " x&y=");
        let mut s = String::new();
        encode_params(&mut s, &v);
        assert_eq!(s, "a=1%2B2%2B3&b=%20x%26y%3D");
        let mut w = Vec::new();
        parse_into(&s, Plus::Literal, &mut w).unwrap();
        assert_eq!(v, w);
        let mut f = Vec::new();
        parse_into("a=1+2", Plus::Space, &mut f).unwrap();
        assert_eq!(f[0].value, "1 2");
    }
}
