//! SMART App Launch scopes (v1, v2 and granular), parsed once per token into a [`ScopeSet`].
//!
//! Grammar (SMART App Launch 2.x, see `SPEC-NOTES.md`):
//! `context "/" type "." perms [ "?" param "=" value *( "&" param "=" value ) ]`.
//! v1 permissions are mapped to v2 letters at parse time (`read` ⇒ `rs`, `write` ⇒ `cud`,
//! `*` ⇒ `cruds`), so the rest of the proxy only ever sees v2.
//!
//! Invariant relied on by `authorize`: an invalid scope grants nothing. It is kept in
//! [`ScopeSet::invalid`] only so that the audit line can say why it was ignored.

use std::fmt;

use crate::fhir::ResourceType;

/// Whose data a scope speaks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// Data in the compartment of the token's launch `patient`.
    Patient,
    /// Data the signed-in user (`fhirUser`) may see.
    User,
    /// A backend client with no user and no patient.
    System,
}

impl Context {
    /// The prefix as written in a scope.
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// One SMART v2 permission letter: what an interaction needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Letter {
    /// create (incl. conditional create)
    C,
    /// read, vread, instance history
    R,
    /// update (incl. update-as-create), patch
    U,
    /// delete
    D,
    /// type/system/compartment search, type/system history
    S,
}

impl Letter {
    fn bit(self) -> u8 {
        match self {
            Letter::C => 1,
            Letter::R => 2,
            Letter::U => 4,
            Letter::D => 8,
            Letter::S => 16,
        }
    }

    /// The letter as written in a v2 scope.
    pub fn as_char(self) -> char {
        match self {
            Letter::C => 'c',
            Letter::R => 'r',
            Letter::U => 'u',
            Letter::D => 'd',
            Letter::S => 's',
        }
    }
}

/// A set of v2 permission letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    /// `cruds`.
    pub const ALL: Perms = Perms(31);

    /// Whether `letter` is in the set.
    pub fn has(self, letter: Letter) -> bool {
        self.0 & letter.bit() != 0
    }

    /// Parses v2 letters (`cruds` subset, in order, no repeats) or v1 words.
    fn parse(s: &str) -> Result<Perms, ScopeError> {
        match s {
            "read" => return Ok(Perms(Letter::R.bit() | Letter::S.bit())),
            "write" => return Ok(Perms(Letter::C.bit() | Letter::U.bit() | Letter::D.bit())),
            "*" => return Ok(Perms::ALL),
            "" => return Err(ScopeError::EmptyPermissions),
            _ => {}
        }
        let order = [Letter::C, Letter::R, Letter::U, Letter::D, Letter::S];
        let mut next = 0;
        let mut bits = 0;
        for ch in s.chars() {
            let pos = order[next..]
                .iter()
                .position(|l| l.as_char() == ch)
                .ok_or(ScopeError::BadPermissions)?;
            bits |= order[next + pos].bit();
            next += pos + 1;
        }
        Ok(Perms(bits))
    }
}

impl fmt::Debug for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in [Letter::C, Letter::R, Letter::U, Letter::D, Letter::S] {
            if self.has(l) {
                write!(f, "{}", l.as_char())?;
            }
        }
        Ok(())
    }
}

/// Which resource types a scope covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `*`
    AnyType,
    /// One resource type.
    Type(ResourceType),
}

impl Target {
    /// Whether the scope covers `rtype`.
    pub fn covers(self, rtype: ResourceType) -> bool {
        match self {
            Target::AnyType => true,
            Target::Type(t) => t == rtype,
        }
    }
}

/// One `name=value` restriction of a granular scope (decoded; FHIR search syntax).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GranularParam {
    /// Search parameter name, possibly with a modifier (`code:in`).
    pub name: String,
    /// The search value, e.g. `http://terminology.hl7.org/CodeSystem/observation-category|laboratory`.
    pub value: String,
}

/// A valid SMART data scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SmartScope {
    /// `patient`, `user` or `system`.
    pub context: Context,
    /// The resource type, or `*`.
    pub target: Target,
    /// v2 letters (v1 already mapped).
    pub perms: Perms,
    /// Granular restrictions, ANDed; empty for a plain scope.
    pub granular: Vec<GranularParam>,
    /// The scope as the token spelled it, for audit lines and explanations.
    pub raw: String,
}

impl SmartScope {
    /// Parses one scope token. `Ok(None)` means "not a data scope" (`openid`, `launch/patient`, …).
    pub fn parse(raw: &str) -> Result<Option<SmartScope>, ScopeError> {
        let Some((ctx, rest)) = raw.split_once('/') else {
            return Ok(None);
        };
        let context = match ctx {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            // `launch/patient`, `launch/encounter`, and anything else with a slash that is
            // not a data context grants nothing and is not an error.
            _ if !ctx.eq_ignore_ascii_case("patient")
                && !ctx.eq_ignore_ascii_case("user")
                && !ctx.eq_ignore_ascii_case("system") =>
            {
                return Ok(None);
            }
            _ => return Err(ScopeError::BadContext),
        };
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (rtype, perms) = body
            .rsplit_once('.')
            .ok_or(ScopeError::MissingPermissions)?;
        let target = match rtype {
            "*" => Target::AnyType,
            name => Target::Type(ResourceType::parse(name).ok_or(ScopeError::UnknownType)?),
        };
        let v1 = matches!(perms, "read" | "write" | "*");
        let perms = Perms::parse(perms)?;
        let granular = match query {
            None => Vec::new(),
            Some(_) if v1 => return Err(ScopeError::QueryOnV1),
            Some(q) => parse_granular(q)?,
        };
        Ok(Some(SmartScope {
            context,
            target,
            perms,
            granular,
            raw: raw.to_owned(),
        }))
    }

    /// Whether this scope grants `letter` on `rtype` in `context`, ignoring granular
    /// restrictions (the caller decides what to do with those).
    pub fn covers(&self, context: Context, rtype: ResourceType, letter: Letter) -> bool {
        self.context == context && self.target.covers(rtype) && self.perms.has(letter)
    }
}

fn parse_granular(q: &str) -> Result<Vec<GranularParam>, ScopeError> {
    if q.is_empty() {
        return Err(ScopeError::EmptyQuery);
    }
    q.split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').ok_or(ScopeError::BadQuery)?;
            let name = decode(name)?;
            let value = decode(value)?;
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'));
            if !valid_name || value.is_empty() {
                return Err(ScopeError::BadQuery);
            }
            Ok(GranularParam { name, value })
        })
        .collect()
}

fn decode(s: &str) -> Result<String, ScopeError> {
    crate::pct::decode(s)
        .map(|c| c.into_owned())
        .map_err(|_| ScopeError::BadQuery)
}

/// Why a scope that looks like a data scope grants nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeError {
    /// `Patient/…`, `USER/…`: contexts are lower case.
    BadContext,
    /// No `.perms` part.
    MissingPermissions,
    /// `patient/Observation.`
    EmptyPermissions,
    /// Letters out of order, repeated or unknown (`rc`, `rr`, `x`), or a wrong-case v1 word.
    BadPermissions,
    /// Not an R4 resource type (case-sensitive).
    UnknownType,
    /// `patient/Observation.read?x=y`: granular restrictions need v2 letters.
    QueryOnV1,
    /// `patient/Observation.rs?`
    EmptyQuery,
    /// A restriction that is not `name=value`, or a malformed escape.
    BadQuery,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScopeError::BadContext => "context must be patient, user or system (lower case)",
            ScopeError::MissingPermissions => "missing .permissions",
            ScopeError::EmptyPermissions => "empty permissions",
            ScopeError::BadPermissions => {
                "permissions must be read, write, * or a subset of cruds in that order"
            }
            ScopeError::UnknownType => "not an R4 resource type",
            ScopeError::QueryOnV1 => "v1 permissions cannot carry a ?query",
            ScopeError::EmptyQuery => "empty ?query",
            ScopeError::BadQuery => "?query must be name=value pairs joined by &",
        })
    }
}

/// A scope the token carried that grants nothing, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidScope {
    /// As the token spelled it.
    pub raw: String,
    /// Why it was ignored.
    pub error: ScopeError,
}

/// All scopes of one token, compiled once at token-check time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet {
    data: Vec<SmartScope>,
    other: Vec<String>,
    invalid: Vec<InvalidScope>,
}

impl ScopeSet {
    /// Parses a space-separated scope string. Never fails: bad scopes grant nothing.
    pub fn parse(scopes: &str) -> ScopeSet {
        Self::from_iter(scopes.split_ascii_whitespace())
    }

    /// Parses scopes given one by one (e.g. an `scp` array).
    #[allow(clippy::should_implement_trait)]
    pub fn from_iter<'a>(scopes: impl IntoIterator<Item = &'a str>) -> ScopeSet {
        let mut set = ScopeSet::default();
        for raw in scopes {
            match SmartScope::parse(raw) {
                Ok(Some(s)) => {
                    if !set.data.contains(&s) {
                        set.data.push(s)
                    }
                }
                Ok(None) => set.other.push(raw.to_owned()),
                Err(error) => set.invalid.push(InvalidScope {
                    raw: raw.to_owned(),
                    error,
                }),
            }
        }
        set
    }

    /// The valid data scopes.
    pub fn data(&self) -> &[SmartScope] {
        &self.data
    }

    /// Non-data scopes (`openid`, `fhirUser`, `launch/patient`, …): they grant no FHIR data.
    pub fn other(&self) -> &[String] {
        &self.other
    }

    /// Scopes that were ignored as invalid.
    pub fn invalid(&self) -> &[InvalidScope] {
        &self.invalid
    }

    /// Whether a non-data scope such as `fhirUser` or `openid` was granted.
    pub fn has_other(&self, name: &str) -> bool {
        self.other.iter().any(|s| s == name)
    }

    /// Every scope granting `letter` on `rtype` in `context` (granular ones included).
    pub fn matching(
        &self,
        context: Context,
        rtype: ResourceType,
        letter: Letter,
    ) -> impl Iterator<Item = &SmartScope> {
        self.data
            .iter()
            .filter(move |s| s.covers(context, rtype, letter))
    }

    /// Keeps only the data scopes `keep` accepts (a policy's per-client ceiling).
    pub fn retain(&mut self, mut keep: impl FnMut(&SmartScope) -> bool) {
        self.data.retain(|s| keep(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<Option<SmartScope>, ScopeError> {
        SmartScope::parse(s)
    }

    #[test]
    fn v2_letters_in_order() {
        let s = one("patient/Observation.rs").unwrap().unwrap();
        assert_eq!(s.context, Context::Patient);
        assert!(s.perms.has(Letter::R) && s.perms.has(Letter::S));
        assert!(!s.perms.has(Letter::C));
        assert_eq!(
            one("patient/Observation.cruds").unwrap().unwrap().perms,
            Perms::ALL
        );
        assert_eq!(
            one("patient/Observation.sr"),
            Err(ScopeError::BadPermissions)
        );
        assert_eq!(
            one("patient/Observation.rr"),
            Err(ScopeError::BadPermissions)
        );
        assert_eq!(
            one("patient/Observation.x"),
            Err(ScopeError::BadPermissions)
        );
        assert_eq!(
            one("patient/Observation.RS"),
            Err(ScopeError::BadPermissions)
        );
        assert_eq!(
            one("patient/Observation."),
            Err(ScopeError::EmptyPermissions)
        );
        assert_eq!(
            one("patient/Observation"),
            Err(ScopeError::MissingPermissions)
        );
    }

    #[test]
    fn v1_maps_to_v2() {
        let r = one("user/Patient.read").unwrap().unwrap();
        assert_eq!(format!("{:?}", r.perms), "rs");
        let w = one("user/Patient.write").unwrap().unwrap();
        assert_eq!(format!("{:?}", w.perms), "cud");
        assert_eq!(one("system/*.*").unwrap().unwrap().perms, Perms::ALL);
        assert_eq!(one("user/Patient.Read"), Err(ScopeError::BadPermissions));
        assert_eq!(
            one("patient/Observation.read?category=x"),
            Err(ScopeError::QueryOnV1)
        );
    }

    #[test]
    fn granular() {
        let s = one("patient/Observation.rs?category=http://x|laboratory&status=final")
            .unwrap()
            .unwrap();
        assert_eq!(s.granular.len(), 2);
        assert_eq!(s.granular[0].value, "http://x|laboratory");
        assert_eq!(one("patient/Observation.rs?"), Err(ScopeError::EmptyQuery));
        assert_eq!(
            one("patient/Observation.rs?category"),
            Err(ScopeError::BadQuery)
        );
        assert_eq!(one("patient/Observation.rs?=x"), Err(ScopeError::BadQuery));
        assert_eq!(
            one("patient/Observation.rs?a=%zz"),
            Err(ScopeError::BadQuery)
        );
    }

    #[test]
    fn contexts_and_types() {
        assert_eq!(one("Patient/Observation.rs"), Err(ScopeError::BadContext));
        assert_eq!(one("patient/observation.rs"), Err(ScopeError::UnknownType));
        assert_eq!(one("launch/patient"), Ok(None));
        assert_eq!(one("openid"), Ok(None));
        assert_eq!(
            one("patient/*.rs").unwrap().unwrap().target,
            Target::AnyType
        );
    }

    #[test]
    fn set_keeps_everything_apart() {
        let set =
            ScopeSet::parse("openid fhirUser patient/Observation.rs patient/Foo.rs launch/patient");
        assert_eq!(set.data().len(), 1);
        assert_eq!(set.other(), ["openid", "fhirUser", "launch/patient"]);
        assert_eq!(set.invalid().len(), 1);
        let obs = ResourceType::OBSERVATION;
        assert_eq!(set.matching(Context::Patient, obs, Letter::S).count(), 1);
        assert_eq!(set.matching(Context::User, obs, Letter::S).count(), 0);
        assert_eq!(set.matching(Context::Patient, obs, Letter::C).count(), 0);
    }
}
