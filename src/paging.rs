//! Paging links bound to the token (and patient) that started the search.
//!
//! Upstream paging links can be opaque (`?_getpages=…`), so the proxy cannot re-check
//! them like a search. Instead every link it hands out carries `_sg`, an HMAC over the
//! link, the token's hash, the launch patient and the view it was filtered under.
//! Stateless, so it works across replicas that share `paging.secret_file`.

use aws_lc_rs::hmac;

use crate::authenticate::Grant;
use crate::authorize::View;
use crate::config::BaseUrl;
use crate::scope::{Context, Letter};

const PARAM: &str = "_sg";

/// The HMAC key.
pub struct PagingKey {
    key: hmac::Key,
}

impl PagingKey {
    /// A key from secret bytes (share them across replicas).
    pub fn new(secret: &[u8]) -> Self {
        PagingKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A random key: links then only work on this process.
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        let _ = aws_lc_rs::rand::fill(&mut secret);
        Self::new(&secret)
    }

    /// Binds a (public) paging link to `grant` and `view`. `None` when the link does not
    /// point under the public base: such a link is dropped, never passed on.
    pub fn sign(&self, url: &str, public: &BaseUrl, view: &View, grant: &Grant) -> Option<String> {
        let base = public.full();
        let rest = url.strip_prefix(&base)?;
        let rel = rest.strip_prefix('/').unwrap_or(rest);
        if !(rest.is_empty() || rest.starts_with(['/', '?'])) {
            return None;
        }
        let tag = tag(view)?;
        let mac = self.mac(rel, grant, &tag);
        let sep = if url.contains('?') { '&' } else { '?' };
        Some(format!("{url}{sep}{PARAM}={tag}.{mac}"))
    }

    /// If the request is a paging link this grant was given, the view to filter it with.
    pub fn verify(&self, rel: &str, query: Option<&str>, grant: &Grant) -> Option<View> {
        let query = query?;
        let (unsigned, value) = split_sig(query)?;
        let (tag, mac) = value.rsplit_once('.')?;
        let target = if unsigned.is_empty() {
            rel.to_owned()
        } else {
            format!("{rel}?{unsigned}")
        };
        let expected = self.mac(&target, grant, tag);
        // Constant-time comparison of the hex strings.
        if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), mac.as_bytes())
            .is_err()
        {
            return None;
        }
        view_of(tag, grant)
    }

    /// The upstream target of a verified paging link: the link without `_sg`.
    pub fn strip(&self, rel: &str, query: Option<&str>) -> String {
        match query.and_then(split_sig) {
            Some(("", _)) | None => rel.to_owned(),
            Some((unsigned, _)) => format!("{rel}?{unsigned}"),
        }
    }

    /// An HMAC (128 bits, hex) over length-prefixed `parts` with this key: for other
    /// stateless bindings that must work across the same replicas (bulk export URLs,
    /// `crate::bulk`), which put a domain label of their own first.
    pub fn mac_parts(&self, parts: &[&[u8]]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        ctx.sign()
            .as_ref()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn mac(&self, target: &str, grant: &Grant, tag: &str) -> String {
        self.mac_parts(&[
            target.as_bytes(),
            &grant.token_hash,
            grant.patient.as_deref().unwrap_or("").as_bytes(),
            tag.as_bytes(),
        ])
    }
}

/// Splits `query` into (everything before `&_sg=`, the signature value). The signature
/// must be the last parameter, as `sign` writes it.
fn split_sig(query: &str) -> Option<(&str, &str)> {
    let marker = format!("{PARAM}=");
    if let Some(v) = query.strip_prefix(&marker) {
        return Some(("", v));
    }
    let at = query.rfind(&format!("&{marker}"))?;
    let value = query.get(at + 1 + marker.len()..)?;
    (!value.contains('&')).then_some((query.get(..at)?, value))
}

fn tag(view: &View) -> Option<String> {
    let c = match view.context {
        Context::Patient => 'p',
        Context::User => 'u',
        Context::System => 's',
    };
    Some(format!("{c}{}", view.letter.as_char()))
}

fn view_of(tag: &str, grant: &Grant) -> Option<View> {
    let mut chars = tag.chars();
    let context = match chars.next()? {
        'p' => Context::Patient,
        'u' => Context::User,
        's' => Context::System,
        _ => return None,
    };
    let letter = match chars.next()? {
        'r' => Letter::R,
        's' => Letter::S,
        _ => return None,
    };
    let patient = match context {
        Context::Patient => Some(grant.patient.clone()?),
        _ => None,
    };
    Some(View {
        context,
        patient,
        letter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authenticate::TokenKind;
    use crate::scope::ScopeSet;

    fn grant(hash: u8, patient: &str) -> Grant {
        Grant {
            issuer: None,
            subject: None,
            client_id: None,
            fhir_user: None,
            patient: Some(patient.into()),
            encounter: None,
            expires_at: 0,
            scopes: ScopeSet::parse("patient/*.rs"),
            kind: TokenKind::Jwt,
            token_hash: [hash; 32],
        }
    }

    #[test]
    fn links_are_bound_to_token_and_patient() {
        let key = PagingKey::new(b"k");
        let public = crate::config::parse_base_url("https://gw/fhir").unwrap();
        let view = View {
            context: Context::Patient,
            patient: Some("A".into()),
            letter: Letter::S,
        };
        let a = grant(1, "A");
        let signed = key
            .sign(
                "https://gw/fhir/Observation?patient=A&_page=2",
                &public,
                &view,
                &a,
            )
            .unwrap();
        let (path, query) = signed
            .strip_prefix("https://gw/fhir/")
            .unwrap()
            .split_once('?')
            .unwrap();
        assert_eq!(key.verify(path, Some(query), &a), Some(view.clone()));
        assert_eq!(
            key.strip(path, Some(query)),
            "Observation?patient=A&_page=2"
        );
        assert_eq!(
            key.verify(path, Some(query), &grant(2, "A")),
            None,
            "other token"
        );
        assert_eq!(
            key.verify(path, Some(query), &grant(1, "B")),
            None,
            "other patient"
        );
        let tampered = query.replace("_page=2", "_page=3");
        assert_eq!(key.verify(path, Some(&tampered), &a), None);
        assert_eq!(key.sign("https://evil/fhir/x", &public, &view, &a), None);
        assert_eq!(PagingKey::new(b"other").verify(path, Some(query), &a), None);
    }
}
