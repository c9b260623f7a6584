//! [`Grant`]: everything authorization may know about the caller, and nothing more.

use crate::fhir::ResourceType;
use crate::scope::ScopeSet;

/// How the token behind a [`Grant`] was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A JWT verified locally against the issuer's JWKS.
    Jwt,
    /// An opaque token answered by RFC 7662 introspection.
    Introspected,
}

/// The typed result of a successful token check: who, what, for whom, until when.
///
/// Invariant: `patient`, when present, is a valid FHIR id (`fhir::is_valid_id`); a token
/// whose patient claim is anything else never becomes a `Grant`.
#[derive(Clone, Debug)]
pub struct Grant {
    /// `iss` of the token (JWT) or of the introspection answer, when given.
    pub issuer: Option<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// `client_id` (or `azp`, per the claims mapping).
    pub client_id: Option<String>,
    /// `fhirUser`, e.g. `Practitioner/123` or an absolute URL of one.
    pub fhir_user: Option<String>,
    /// The launch patient: patient/ scopes are confined to this patient's compartment.
    pub patient: Option<String>,
    /// The launch encounter.
    pub encounter: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// The parsed scopes.
    pub scopes: ScopeSet,
    /// How the token was checked.
    pub kind: TokenKind,
    /// SHA-256 of the raw token: binds paging links and cache entries to one token
    /// without keeping the token itself.
    pub token_hash: [u8; 32],
}

impl Grant {
    /// A JWT grant of `scopes` for unit tests, with `patient` as the launch patient.
    #[cfg(test)]
    pub(crate) fn for_tests(scopes: &str, patient: Option<&str>) -> Grant {
        Grant {
            issuer: None,
            subject: None,
            client_id: None,
            fhir_user: None,
            patient: patient.map(str::to_owned),
            encounter: None,
            expires_at: 0,
            scopes: ScopeSet::parse(scopes),
            kind: TokenKind::Jwt,
            token_hash: [0; 32],
        }
    }

    /// The resource type of `fhirUser` (`Practitioner`, `Patient`, `RelatedPerson`, …).
    pub fn fhir_user_type(&self) -> Option<ResourceType> {
        let user = self.fhir_user.as_deref()?;
        let mut segs = user.trim_end_matches('/').rsplit('/');
        let _id = segs.next()?;
        ResourceType::parse(segs.next()?)
    }
}
