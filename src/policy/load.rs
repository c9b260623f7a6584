//! Reading policy files: serde (unknown keys and wrong types are errors with line and
//! column, saying what was expected), then semantic checks located at the offending value
//! (resource types, scopes, interactions, operation names, globs, field paths). Every
//! problem of every file is collected, so that `smartgate check` lists them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::{
    Ceiling, CompartmentChoices, DenyRule, FieldPath, FieldStep, Glob, LabelRule, Mode, Policy,
    PolicySet, RedactRule, SearchRules,
};
use crate::authorize::{NonMemberAccess, OperationRule, Rules};
use crate::classify::{Interaction, OperationLevel};
use crate::config::ConfigError;
use crate::fhir::ResourceType;
use crate::scope::{Context, Letter, SmartScope};

type S = Spanned<String>;

/// One policy file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: S,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    audit_only_clients: Vec<S>,
    #[serde(default)]
    ceilings: Vec<RawCeiling>,
    #[serde(default)]
    deny: Vec<RawDeny>,
    #[serde(default)]
    operations: Option<Vec<RawOperation>>,
    #[serde(default)]
    search: Option<RawSearch>,
    #[serde(default)]
    labels: Vec<RawLabel>,
    #[serde(default)]
    redact: Vec<RawRedact>,
    #[serde(default)]
    compartment: Option<RawCompartment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCeiling {
    name: S,
    clients: Vec<S>,
    scopes: Vec<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    name: S,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    resource_types: Vec<S>,
    #[serde(default)]
    interactions: Vec<S>,
    #[serde(default)]
    operations: Vec<S>,
    #[serde(default)]
    contexts: Vec<RawContext>,
    #[serde(default)]
    clients: Vec<S>,
    #[serde(default)]
    fhir_user_types: Vec<S>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawContext {
    Patient,
    User,
    System,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperation {
    name: S,
    levels: Vec<RawLevel>,
    #[serde(default)]
    types: Vec<S>,
    needs: Spanned<Vec<RawNeed>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawLevel {
    System,
    Type,
    Instance,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawNeed {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSearch {
    #[serde(default)]
    forbidden_parameters: Vec<S>,
    #[serde(default)]
    forbid_chains: bool,
    #[serde(default)]
    max_count: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    name: S,
    #[serde(default)]
    system: Option<String>,
    codes: Vec<S>,
    #[serde(default)]
    unless_clients: Vec<S>,
    #[serde(default)]
    unless_scopes: Vec<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedact {
    name: S,
    resource_types: Vec<S>,
    clients: Vec<S>,
    fields: Vec<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompartment {
    #[serde(default)]
    non_member_types: Option<NonMemberAccess>,
    #[serde(default)]
    actor_membership: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    group_members: Option<GroupMembers>,
    #[serde(default)]
    #[allow(dead_code)]
    patient_link: Option<PatientLink>,
}

/// The only Group choice: a Group is the patient's only when every patient member is.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum GroupMembers {
    AllMustBeThePatient,
}

/// The only link choice: `Patient.link` never makes another Patient visible.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum PatientLink {
    Ignore,
}

/// An allowed operation as declared: name, `(line, column)` of the name, rule.
pub type DeclaredOperation = (String, (u64, u64), OperationRule);

/// One parsed file: its policy and the deployment-wide parts it declares.
pub struct LoadedFile {
    /// The policy.
    pub policy: Policy,
    /// `operations:`, when the file has the block: `(name, where it was written, rule)`.
    pub operations: Option<Vec<DeclaredOperation>>,
    /// `compartment:` choices.
    pub compartment: CompartmentChoices,
}

/// Collects located problems of one file.
struct Problems<'a> {
    file: &'a Path,
    list: Vec<ConfigError>,
}

impl Problems<'_> {
    fn at(&mut self, loc: &Location, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        });
    }

    fn resource_types(&mut self, list: &[S], key: &str) -> Vec<ResourceType> {
        list.iter()
            .filter_map(|s| {
                let t = ResourceType::parse(&s.value);
                if t.is_none() {
                    self.at(
                        &s.referenced,
                        format!(
                            "{key}: unknown resource type `{}` (expected an R4 resource type such as Patient or Observation; names are case-sensitive)",
                            s.value
                        ),
                    );
                }
                t
            })
            .collect()
    }

    fn globs(&mut self, list: &[S], key: &str) -> Vec<Glob> {
        list.iter()
            .filter_map(|s| {
                let ok = !s.value.is_empty()
                    && s.value.chars().all(|c| c.is_ascii_graphic());
                if !ok {
                    self.at(
                        &s.referenced,
                        format!("{key}: `{}` is not a client_id pattern (expected printable characters, `*` and `?` as wildcards, no spaces)", s.value),
                    );
                }
                ok.then(|| Glob::new(&s.value))
            })
            .collect()
    }

    fn name(&mut self, s: &S, key: &str) {
        let ok = !s.value.is_empty()
            && s.value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            self.at(
                &s.referenced,
                format!(
                    "{key}: `{}` is not a valid name (expected letters, digits, `-`, `_` or `.`)",
                    s.value
                ),
            );
        }
    }

    fn non_empty<T>(&mut self, list: &[T], at: &Location, key: &str, why: &str) {
        if list.is_empty() {
            self.at(at, format!("{key}: must list at least one entry ({why})"));
        }
    }
}

/// Every interaction a deny rule can name, by its audit name.
const INTERACTIONS: [Interaction; 20] = [
    Interaction::Read,
    Interaction::Vread,
    Interaction::Update,
    Interaction::Patch,
    Interaction::Delete,
    Interaction::Create,
    Interaction::SearchType,
    Interaction::SearchSystem,
    Interaction::SearchCompartment,
    Interaction::HistoryInstance,
    Interaction::HistoryType,
    Interaction::HistorySystem,
    Interaction::Capabilities,
    Interaction::Batch,
    Interaction::Transaction,
    Interaction::Operation,
    Interaction::ConditionalCreate,
    Interaction::ConditionalUpdate,
    Interaction::ConditionalPatch,
    Interaction::ConditionalDelete,
];

/// `search` and `history` name every interaction of their family.
fn interactions_named(name: &str) -> Vec<Interaction> {
    let family = |prefix: &str| {
        INTERACTIONS
            .iter()
            .copied()
            .filter(|i| i.name().starts_with(prefix))
            .collect::<Vec<_>>()
    };
    match name {
        "search" => family("search-"),
        "history" => family("history-"),
        _ => INTERACTIONS
            .iter()
            .copied()
            .filter(|i| i.name() == name)
            .collect(),
    }
}

/// Result parameters and other `_` parameters FHIR defines for every type.
const COMMON_PARAMETERS: &[&str] = &[
    "_id",
    "_lastUpdated",
    "_tag",
    "_profile",
    "_security",
    "_source",
    "_text",
    "_content",
    "_list",
    "_has",
    "_type",
    "_query",
    "_filter",
    "_sort",
    "_count",
    "_include",
    "_revinclude",
    "_summary",
    "_total",
    "_elements",
    "_contained",
    "_containedType",
];

fn known_parameter(name: &str) -> bool {
    COMMON_PARAMETERS.contains(&name)
        || crate::compartment::definition::search_params()
            .params
            .values()
            .any(|codes| codes.contains_key(name))
}

fn is_scope_like(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ctx, _)| {
        ["patient", "user", "system"]
            .iter()
            .any(|c| ctx.eq_ignore_ascii_case(c))
    })
}

/// `a.b[key=value].c` ⇒ steps; `Err` says what is wrong.
fn parse_field(text: &str) -> Result<FieldPath, String> {
    let mut steps = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let name = &rest[..end];
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(format!(
                "`{name}` is not a FHIR element name (expected e.g. `photo` or `identifier[system=http://hl7.org/fhir/sid/us-ssn]`)"
            ));
        }
        rest = &rest[end..];
        let mut filter = None;
        if let Some(inner) = rest.strip_prefix('[') {
            let close = inner
                .find(']')
                .ok_or_else(|| format!("`[` after `{name}` is not closed"))?;
            let (k, v) = inner[..close]
                .split_once('=')
                .ok_or_else(|| format!("`[{}]` must be `[element=value]`", &inner[..close]))?;
            if k.is_empty() || v.is_empty() {
                return Err(format!("`[{}]` must be `[element=value]`", &inner[..close]));
            }
            filter = Some((k.to_owned(), v.to_owned()));
            rest = &inner[close + 1..];
        }
        steps.push(FieldStep {
            name: name.to_owned(),
            filter,
        });
        match rest.strip_prefix('.') {
            Some(r) if !r.is_empty() => rest = r,
            Some(_) => return Err("a field path cannot end with `.`".into()),
            None if rest.is_empty() => {}
            None => return Err(format!("unexpected `{rest}`")),
        }
    }
    match steps.first().map(|s| s.name.as_str()) {
        None => Err("empty field path".into()),
        Some("id" | "resourceType" | "meta") => Err(format!(
            "`{text}` cannot be redacted: the proxy and clients need it"
        )),
        Some(_) => Ok(FieldPath {
            text: text.to_owned(),
            steps,
        }),
    }
}

/// Parses and validates one policy file's text (`path` is used in messages).
pub fn parse_policy(text: &str, path: &Path) -> Result<LoadedFile, Vec<ConfigError>> {
    let raw: RawPolicy =
        serde_saphyr::from_str(text).map_err(|e| vec![crate::config::yaml_error(&e, path)])?;
    let mut p = Problems {
        file: path,
        list: Vec::new(),
    };
    p.name(&raw.name, "name");
    let mut policy = Policy {
        name: raw.name.value.clone(),
        file: path.to_owned(),
        mode: raw.mode,
        audit_only_clients: p.globs(&raw.audit_only_clients, "audit_only_clients"),
        ..Policy::default()
    };
    let mut names: BTreeMap<String, ()> = BTreeMap::new();
    let mut unique = |p: &mut Problems<'_>, s: &S, key: &str| {
        p.name(s, key);
        if names.insert(s.value.clone(), ()).is_some() {
            p.at(
                &s.referenced,
                format!(
                    "{key}: the rule name `{}` is used twice in this policy",
                    s.value
                ),
            );
        }
    };

    for c in &raw.ceilings {
        unique(&mut p, &c.name, "ceilings.name");
        p.non_empty(
            &c.clients,
            &c.name.referenced,
            "ceilings.clients",
            "which clients the ceiling limits; `*` for all",
        );
        let clients = p.globs(&c.clients, "ceilings.clients");
        let scopes = c
            .scopes
            .iter()
            .filter_map(|s| match SmartScope::parse(&s.value) {
                Ok(Some(scope)) => Some(scope),
                Ok(None) => {
                    p.at(&s.referenced, format!("ceilings.scopes: `{}` is not a data scope (expected patient/, user/ or system/ scopes such as patient/Observation.rs; openid, fhirUser and launch scopes are never limited)", s.value));
                    None
                }
                Err(e) => {
                    p.at(&s.referenced, format!("ceilings.scopes: `{}` is not a valid SMART scope: {e}", s.value));
                    None
                }
            })
            .collect();
        policy.ceilings.push(Ceiling {
            name: c.name.value.clone(),
            clients,
            scopes,
        });
    }

    for d in &raw.deny {
        unique(&mut p, &d.name, "deny.name");
        let mut interactions = Vec::new();
        for i in &d.interactions {
            let found = interactions_named(&i.value);
            if found.iter().any(|f| {
                matches!(
                    f,
                    Interaction::Batch | Interaction::Transaction | Interaction::Capabilities
                )
            }) {
                p.at(&i.referenced, format!("deny.interactions: `{}` is never decided as a whole (metadata is public; batch and transaction entries are judged one by one): deny the entries' interactions instead", i.value));
            } else if found.is_empty() {
                p.at(&i.referenced, format!("deny.interactions: unknown interaction `{}` (expected read, vread, update, patch, delete, create, search, search-type, search-system, search-compartment, history, history-instance, history-type, history-system, operation, conditional-create, conditional-update, conditional-patch or conditional-delete)", i.value));
            }
            interactions.extend(found);
        }
        let operations = d
            .operations
            .iter()
            .filter_map(|o| operation_name(&mut p, o, "deny.operations"))
            .collect::<Vec<_>>();
        let rule = DenyRule {
            name: d.name.value.clone(),
            message: d.message.clone(),
            resource_types: p.resource_types(&d.resource_types, "deny.resource_types"),
            interactions,
            operations,
            contexts: d
                .contexts
                .iter()
                .map(|c| match c {
                    RawContext::Patient => Context::Patient,
                    RawContext::User => Context::User,
                    RawContext::System => Context::System,
                })
                .collect(),
            clients: p.globs(&d.clients, "deny.clients"),
            fhir_user_types: p.resource_types(&d.fhir_user_types, "deny.fhir_user_types"),
        };
        let conditions = d.resource_types.len()
            + d.interactions.len()
            + d.operations.len()
            + d.contexts.len()
            + d.clients.len()
            + d.fhir_user_types.len();
        if conditions == 0 {
            p.at(&d.name.referenced, "deny: a rule needs at least one condition (resource_types, interactions, operations, contexts, clients or fhir_user_types)");
        }
        policy.deny.push(rule);
    }

    let operations = raw.operations.as_ref().map(|ops| {
        ops.iter()
            .filter_map(|o| {
                let name = operation_name(&mut p, &o.name, "operations.name")?;
                p.non_empty(&o.levels, &o.name.referenced, "operations.levels", "system, type and/or instance");
                if o.needs.value.is_empty() {
                    p.at(&o.needs.referenced, "operations.needs: must list at least one of create, read, update, delete, search (an operation needing nothing would be open to every token)");
                }
                let rule = OperationRule {
                    levels: o
                        .levels
                        .iter()
                        .map(|l| match l {
                            RawLevel::System => OperationLevel::System,
                            RawLevel::Type => OperationLevel::Type,
                            RawLevel::Instance => OperationLevel::Instance,
                        })
                        .collect(),
                    types: p.resource_types(&o.types, "operations.types"),
                    letters: o
                        .needs
                        .value
                        .iter()
                        .map(|n| match n {
                            RawNeed::Create => Letter::C,
                            RawNeed::Read => Letter::R,
                            RawNeed::Update => Letter::U,
                            RawNeed::Delete => Letter::D,
                            RawNeed::Search => Letter::S,
                        })
                        .collect(),
                };
                Some((name, (o.name.referenced.line(), o.name.referenced.column()), rule))
            })
            .collect()
    });

    if let Some(s) = &raw.search {
        for f in &s.forbidden_parameters {
            if !known_parameter(&f.value) {
                p.at(&f.referenced, format!("search.forbidden_parameters: unknown search parameter `{}` (expected an R4 search parameter code such as _has, _filter or subject; for chains use forbid_chains: true)", f.value));
            }
        }
        if let Some(m) = &s.max_count
            && m.value == 0
        {
            p.at(&m.referenced, "search.max_count: must be at least 1");
        }
        policy.search = Some(SearchRules {
            forbidden_parameters: s
                .forbidden_parameters
                .iter()
                .map(|f| f.value.clone())
                .collect(),
            forbid_chains: s.forbid_chains,
            max_count: s.max_count.as_ref().map(|m| m.value),
        });
    }

    for l in &raw.labels {
        unique(&mut p, &l.name, "labels.name");
        p.non_empty(
            &l.codes,
            &l.name.referenced,
            "labels.codes",
            "the meta.security codes that hide a resource, e.g. R, PSY, HIV",
        );
        for s in &l.unless_scopes {
            let bad = s.value.is_empty()
                || s.value.contains(char::is_whitespace)
                || (is_scope_like(&s.value) && !matches!(SmartScope::parse(&s.value), Ok(Some(_))));
            if bad {
                p.at(&s.referenced, format!("labels.unless_scopes: `{}` is not a valid scope (expected one scope as the token spells it, e.g. user/*.rs or a custom scope without spaces)", s.value));
            }
        }
        policy.labels.push(LabelRule {
            name: l.name.value.clone(),
            system: l.system.clone(),
            codes: l.codes.iter().map(|c| c.value.clone()).collect(),
            unless_clients: p.globs(&l.unless_clients, "labels.unless_clients"),
            unless_scopes: l.unless_scopes.iter().map(|s| s.value.clone()).collect(),
        });
    }

    for r in &raw.redact {
        unique(&mut p, &r.name, "redact.name");
        p.non_empty(
            &r.resource_types,
            &r.name.referenced,
            "redact.resource_types",
            "which types lose the fields",
        );
        p.non_empty(
            &r.clients,
            &r.name.referenced,
            "redact.clients",
            "which clients get redacted resources; `*` for all",
        );
        p.non_empty(
            &r.fields,
            &r.name.referenced,
            "redact.fields",
            "the elements to remove",
        );
        let fields = r
            .fields
            .iter()
            .filter_map(|f| match parse_field(&f.value) {
                Ok(path) => Some(path),
                Err(e) => {
                    p.at(&f.referenced, format!("redact.fields: {e}"));
                    None
                }
            })
            .collect();
        policy.redact.push(RedactRule {
            name: r.name.value.clone(),
            resource_types: p.resource_types(&r.resource_types, "redact.resource_types"),
            clients: p.globs(&r.clients, "redact.clients"),
            fields,
        });
    }

    let compartment = raw
        .compartment
        .as_ref()
        .map(|c| CompartmentChoices {
            non_member_types: c.non_member_types,
            actor_membership: c.actor_membership,
        })
        .unwrap_or_default();

    if p.list.is_empty() {
        Ok(LoadedFile {
            policy,
            operations,
            compartment,
        })
    } else {
        p.list.sort_by_key(|e| (e.line, e.column));
        Err(p.list)
    }
}

/// `$everything` ⇒ `everything`.
fn operation_name(p: &mut Problems<'_>, s: &S, key: &str) -> Option<String> {
    let name = s.value.strip_prefix('$').filter(|n| {
        n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if name.is_none() {
        p.at(
            &s.referenced,
            format!("{key}: `{}` is not an operation name (expected `$` and a name, e.g. $everything or $export)", s.value),
        );
    }
    name.map(str::to_owned)
}

/// The policy files a configured path stands for: the file itself, or the `*.yaml` /
/// `*.yml` files of a directory (not `*.tests.yaml`, not hidden entries such as a
/// Kubernetes ConfigMap's `..data`), in name order.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let cannot = |e: std::io::Error| ConfigError {
        file: path.to_owned(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    };
    if !std::fs::metadata(path).map_err(cannot)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(cannot)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && !name.ends_with(".tests.yaml")
                && !name.ends_with(".tests.yml")
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads every configured path into one [`PolicySet`]. `base` holds the rules of the
/// configuration (operations and non-member choice when no policy sets them).
pub fn load_paths(paths: &[PathBuf], base: &Rules) -> Result<PolicySet, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut loaded: Vec<(PathBuf, String, LoadedFile)> = Vec::new();
    for path in paths {
        let files = match policy_files(path) {
            Ok(f) => f,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError {
                        file: file.clone(),
                        line: 0,
                        column: 0,
                        message: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            match parse_policy(&text, &file) {
                Ok(l) => loaded.push((file, text, l)),
                Err(e) => errors.extend(e),
            }
        }
    }
    let set = combine(loaded, base, &mut errors);
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// Merges files: policy names and operations must be unique, compartment choices must agree.
fn combine(
    loaded: Vec<(PathBuf, String, LoadedFile)>,
    base: &Rules,
    errors: &mut Vec<ConfigError>,
) -> PolicySet {
    let mut set = PolicySet::empty(base.clone());
    let mut operations: Option<BTreeMap<String, OperationRule>> = None;
    let mut compartment = CompartmentChoices::default();
    let mut at = |file: &Path, (line, column): (u64, u64), message: String| {
        errors.push(ConfigError {
            file: file.to_owned(),
            line,
            column,
            message,
        })
    };
    for (file, text, l) in loaded {
        let name_at = locate_key(&text, "name");
        if set.policies.iter().any(|p| p.name == l.policy.name) {
            at(
                &file,
                name_at,
                format!("name: a policy named `{}` is already loaded", l.policy.name),
            );
        }
        if let Some(ops) = l.operations {
            let map = operations.get_or_insert_with(BTreeMap::new);
            for (name, pos, rule) in ops {
                if map.insert(name.clone(), rule).is_some() {
                    at(&file, pos, format!("operations: ${name} is defined twice"));
                }
            }
        }
        let c = l.compartment;
        for (mine, theirs, key) in [
            (
                c.non_member_types.map(|v| format!("{v:?}")),
                compartment.non_member_types.map(|v| format!("{v:?}")),
                "non_member_types",
            ),
            (
                c.actor_membership.map(|v| v.to_string()),
                compartment.actor_membership.map(|v| v.to_string()),
                "actor_membership",
            ),
        ] {
            if let (Some(a), Some(b)) = (mine, theirs)
                && a != b
            {
                at(
                    &file,
                    locate_key(&text, key),
                    format!(
                        "compartment.{key}: another policy sets a different value; compartment choices must agree"
                    ),
                );
            }
        }
        compartment.non_member_types = compartment.non_member_types.or(c.non_member_types);
        compartment.actor_membership = compartment.actor_membership.or(c.actor_membership);
        set.policies.push(l.policy);
    }
    if let Some(ops) = operations {
        set.rules.operations = ops;
    }
    if let Some(n) = compartment.non_member_types {
        set.rules.non_member_types = n;
    }
    set.compartment = compartment;
    set
}

/// Line and column of the first `key:` in `text` (for cross-file problems).
fn locate_key(text: &str, key: &str) -> (u64, u64) {
    text.lines()
        .enumerate()
        .find_map(|(no, line)| {
            let trimmed = line.trim_start();
            trimmed
                .starts_with(&format!("{key}:"))
                .then(|| (no as u64 + 1, (line.len() - trimmed.len()) as u64 + 1))
        })
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests;
