//! A deliberately small FHIRPath evaluator: exactly the subset the R4 compartment
//! parameters and search parameter expressions use, over `serde_json::Value`.
//!
//! Why not a full engine: enforcement only needs "which elements does this search
//! parameter select", and a small evaluator we can read end to end is easier to trust.
//! Supported: dotted paths (arrays flattened at every step), `|` unions, parenthesised
//! branches, `X as T` / `.as(T)` / `.ofType(T)` on choice elements (`value as Quantity`
//! selects `valueQuantity`), bare choice names (`Observation.value` selects any
//! `value[x]`), `.where(resolve() is T)` and `.where(field = 'literal')`. Anything else is
//! an error, which callers treat as "selects nothing" (fail closed). Never panics.
//!
//! R4 expressions are often unions across base types (`AllergyIntolerance.patient |
//! CarePlan.subject.where(...) | ...`): [`Expr::compile`] keeps only the branches rooted at
//! the resource's own type (or at `Resource`/`DomainResource`).

use serde_json::Value;

use crate::fhir::ResourceType;

/// Why an expression cannot be evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FhirPathError {
    /// A construct outside the supported subset (or malformed), at this byte offset of
    /// the branch.
    Unsupported {
        /// The branch that failed.
        branch: String,
        /// Byte offset inside `branch`.
        at: usize,
    },
    /// No branch of the union applies to the resource type.
    NoBranch,
}

impl std::fmt::Display for FhirPathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FhirPathError::Unsupported { branch, at } => {
                write!(f, "unsupported FHIRPath at {at} in `{branch}`")
            }
            FhirPathError::NoBranch => f.write_str("no FHIRPath branch for this resource type"),
        }
    }
}

impl std::error::Error for FhirPathError {}

/// One step of a compiled path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// `.name`; also matches a choice element `name[x]` when `name` itself is absent.
    Field(String),
    /// `.nameType`: a choice element cast to one type (`value as Quantity`).
    Choice(String),
    /// `.where(resolve() is T)`: References whose target type is `T`.
    ResolveIs(String),
    /// `.where(field = 'literal')`.
    WhereEq(String, String),
}

/// A compiled expression for one resource type: a union of paths from the resource root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    branches: Vec<Vec<Step>>,
}

/// FHIR data type names that may suffix a choice element (`value[x]` → `valueQuantity`).
const CHOICE_TYPES: &[&str] = &[
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "CodeableConcept",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Date",
    "DateTime",
    "Decimal",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Id",
    "Identifier",
    "Instant",
    "Integer",
    "Markdown",
    "Meta",
    "Money",
    "Oid",
    "ParameterDefinition",
    "Period",
    "PositiveInt",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "String",
    "Time",
    "Timing",
    "TriggerDefinition",
    "UnsignedInt",
    "Uri",
    "Url",
    "UsageContext",
    "Uuid",
];

impl Expr {
    /// Compiles the branches of `expression` that apply to `rtype`.
    ///
    /// Branches rooted at other types are skipped without being parsed (R4 unions mix
    /// constructs we do not support in branches we never need); an unsupported construct
    /// in an applicable branch fails the whole expression.
    pub fn compile(expression: &str, rtype: ResourceType) -> Result<Expr, FhirPathError> {
        let mut branches = Vec::new();
        for branch in split_union(expression) {
            let branch = branch.trim();
            let root = branch.trim_start_matches('(');
            let root = root
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or("");
            if root == rtype.name() || root == "Resource" || root == "DomainResource" {
                let steps =
                    Parser::new(branch)
                        .branch()
                        .map_err(|at| FhirPathError::Unsupported {
                            branch: branch.to_owned(),
                            at,
                        })?;
                branches.push(steps);
            }
        }
        if branches.is_empty() {
            return Err(FhirPathError::NoBranch);
        }
        Ok(Expr { branches })
    }

    /// The elements the expression selects from `resource` (a resource object), arrays
    /// flattened.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<&'a Value> {
        let mut out = Vec::new();
        for steps in &self.branches {
            let mut items = vec![resource];
            for step in steps {
                items = apply(step, &items);
                if items.is_empty() {
                    break;
                }
            }
            out.extend(items);
        }
        out
    }

    /// Whether the top-level element `key` of a resource may be read by this expression.
    /// Lets the Bundle filter parse only the top-level fields an expression needs.
    pub fn reads_top_level(&self, key: &str) -> bool {
        self.branches.iter().any(|steps| match steps.first() {
            Some(Step::Field(name)) => key == name || choice_of(key, name),
            Some(Step::Choice(name)) => key == name,
            // `Resource.where(...)` style roots read everything they filter on.
            Some(Step::ResolveIs(_) | Step::WhereEq(..)) => true,
            None => true,
        })
    }
}

/// Whether `key` is `name` + a FHIR data type (`valueQuantity` for `value`).
fn choice_of(key: &str, name: &str) -> bool {
    key.strip_prefix(name)
        .is_some_and(|suffix| CHOICE_TYPES.contains(&suffix))
}

fn push_flat<'a>(out: &mut Vec<&'a Value>, v: &'a Value) {
    match v {
        Value::Array(items) => out.extend(items.iter().filter(|i| !i.is_null())),
        Value::Null => {}
        other => out.push(other),
    }
}

fn apply<'a>(step: &Step, items: &[&'a Value]) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for item in items {
        match step {
            Step::Field(name) => {
                let Some(obj) = item.as_object() else {
                    continue;
                };
                if let Some(v) = obj.get(name.as_str()) {
                    push_flat(&mut out, v);
                } else {
                    for (k, v) in obj {
                        if choice_of(k, name) {
                            push_flat(&mut out, v);
                        }
                    }
                }
            }
            Step::Choice(name) => {
                if let Some(v) = item.as_object().and_then(|o| o.get(name.as_str())) {
                    push_flat(&mut out, v);
                }
            }
            Step::ResolveIs(t) => {
                if reference_type(item) == Some(t.as_str()) {
                    out.push(item);
                }
            }
            Step::WhereEq(field, lit) => {
                let hit = item
                    .as_object()
                    .and_then(|o| o.get(field.as_str()))
                    .and_then(Value::as_str)
                    == Some(lit.as_str());
                if hit {
                    out.push(item);
                }
            }
        }
    }
    out
}

/// The resource type a Reference points at, as `resolve() is T` sees it without
/// resolving: the type segment of `reference` (relative `T/id`, versioned
/// `T/id/_history/v`, or absolute `…/T/id`), else the `type` element. Contained (`#x`),
/// `urn:` and unparseable references have no type; a `reference` whose type disagrees
/// with `type` has none either (fail closed).
pub fn reference_type(reference: &Value) -> Option<&str> {
    let obj = reference.as_object()?;
    let declared = match obj.get("type") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return None,
    };
    match obj.get("reference") {
        None => declared,
        Some(Value::String(r)) => {
            let (t, _) = split_reference(r)?;
            match declared {
                Some(d) if d != t => None,
                _ => Some(t),
            }
        }
        Some(_) => None,
    }
}

/// Splits a literal reference into `(type, id)`: `T/id`, `T/id/_history/v` or
/// `scheme://host/…/T/id[/_history/v]`. `T` must be an R4 type and `id` a FHIR id;
/// contained, `urn:`, query-bearing or otherwise odd references give `None`.
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.contains(['?', '#']) || reference.starts_with("urn:") {
        return None;
    }
    let mut segs: Vec<&str> = reference.split('/').collect();
    if segs.len() >= 4 && segs.get(segs.len() - 2) == Some(&"_history") {
        let v = segs.last()?;
        if !crate::fhir::is_valid_id(v) {
            return None;
        }
        segs.truncate(segs.len() - 2);
    }
    let id = *segs.last()?;
    let t = *segs.get(segs.len().checked_sub(2)?)?;
    if segs.len() > 2 && !reference.contains("://") {
        return None;
    }
    let rtype = ResourceType::parse(t)?;
    crate::fhir::is_valid_id(id).then_some((rtype.name(), id))
}

/// Splits a union at top-level `|` (outside parentheses and string literals).
fn split_union(expression: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut start = 0;
    for (i, c) in expression.char_indices() {
        match c {
            '\'' => in_str = !in_str,
            '(' if !in_str => depth += 1,
            ')' if !in_str => depth = depth.saturating_sub(1),
            '|' if !in_str && depth == 0 => {
                out.push(expression.get(start..i).unwrap_or(""));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(expression.get(start..).unwrap_or(""));
    out
}

/// A recursive-descent parser for one branch; errors are byte offsets.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser { src, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), usize> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.pos)
        }
    }

    fn ident(&mut self) -> Result<&'a str, usize> {
        self.skip_ws();
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let id = rest.get(..len).unwrap_or("");
        if id.is_empty() || id.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(self.pos);
        }
        self.pos += len;
        Ok(id)
    }

    fn literal(&mut self) -> Result<&'a str, usize> {
        self.expect("'")?;
        let rest = self.rest();
        let end = rest.find('\'').ok_or(self.pos)?;
        let lit = rest.get(..end).unwrap_or("");
        if lit.contains('\\') {
            return Err(self.pos);
        }
        self.pos += end + 1;
        Ok(lit)
    }

    /// `branch := '(' path ['as' T] ')' | path ['as' T]`, consuming all input.
    fn branch(mut self) -> Result<Vec<Step>, usize> {
        let paren = self.eat("(");
        let mut steps = self.path()?;
        if self.eat_keyword("as") {
            let t = self.ident()?;
            cast(&mut steps, t).ok_or(self.pos)?;
        }
        if paren {
            self.expect(")")?;
        }
        self.skip_ws();
        if !self.rest().is_empty() {
            return Err(self.pos);
        }
        Ok(steps)
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        let after = rest.get(kw.len()..).unwrap_or("");
        if rest.starts_with(kw) && after.starts_with(|c: char| c.is_whitespace()) {
            self.pos += kw.len();
            true
        } else {
            false
        }
    }

    /// `path := Root ('.' step)*`; the root (resource type) is dropped.
    fn path(&mut self) -> Result<Vec<Step>, usize> {
        self.ident()?;
        let mut steps = Vec::new();
        while self.eat(".") {
            let name = self.ident()?;
            if self.eat("(") {
                match name {
                    "where" => {
                        steps.push(self.condition()?);
                    }
                    "as" | "ofType" => {
                        let t = self.ident()?;
                        cast(&mut steps, t).ok_or(self.pos)?;
                    }
                    _ => return Err(self.pos),
                }
                self.expect(")")?;
            } else {
                steps.push(Step::Field(name.to_owned()));
            }
        }
        Ok(steps)
    }

    /// `resolve() is T` or `field = 'literal'`.
    fn condition(&mut self) -> Result<Step, usize> {
        let name = self.ident()?;
        if name == "resolve" {
            self.expect("(")?;
            self.expect(")")?;
            if !self.eat_keyword("is") {
                return Err(self.pos);
            }
            let t = self.ident()?;
            ResourceType::parse(t).ok_or(self.pos)?;
            return Ok(Step::ResolveIs(t.to_owned()));
        }
        self.expect("=")?;
        let lit = self.literal()?;
        Ok(Step::WhereEq(name.to_owned(), lit.to_owned()))
    }
}

/// Turns the last `Field(name)` into `Choice(nameT)`; `None` when there is nothing to cast.
fn cast(steps: &mut [Step], t: &str) -> Option<()> {
    let last = steps.last_mut()?;
    let Step::Field(name) = last else {
        return None;
    };
    let mut chars = t.chars();
    let first = chars.next()?;
    let typed = format!("{name}{}{}", first.to_ascii_uppercase(), chars.as_str());
    *last = Step::Choice(typed);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(name: &str) -> ResourceType {
        ResourceType::parse(name).unwrap()
    }

    fn eval(expr: &str, rtype: &str, resource: &Value) -> Vec<Value> {
        Expr::compile(expr, t(rtype))
            .unwrap()
            .evaluate(resource)
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn dotted_paths_flatten_arrays() {
        let appt = json!({"resourceType": "Appointment", "participant": [
            {"actor": {"reference": "Patient/A"}},
            {"actor": {"reference": "Practitioner/P"}},
            {"status": "accepted"}
        ]});
        let got = eval("Appointment.participant.actor", "Appointment", &appt);
        assert_eq!(
            got,
            vec![
                json!({"reference": "Patient/A"}),
                json!({"reference": "Practitioner/P"})
            ]
        );
        let claim = json!({"payee": {"party": {"reference": "Patient/A"}}});
        assert_eq!(eval("Claim.payee.party", "Claim", &claim).len(), 1);
        assert!(eval("Claim.payee.party", "Claim", &json!({})).is_empty());
        assert!(eval("Claim.payee.party", "Claim", &json!({"payee": 3})).is_empty());
    }

    #[test]
    fn unions_keep_only_own_type_branches() {
        let expr = "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | Observation.subject.where(resolve() is Patient) | Foo.bar.exists()";
        let obs =
            json!({"subject": {"reference": "Patient/A"}, "patient": {"reference": "Patient/B"}});
        assert_eq!(
            eval(expr, "Observation", &obs),
            vec![json!({"reference": "Patient/A"})]
        );
        assert_eq!(
            Expr::compile(expr, t("Practitioner")),
            Err(FhirPathError::NoBranch)
        );
    }

    #[test]
    fn where_resolve_is() {
        let expr = "Observation.subject.where(resolve() is Patient)";
        for (subject, hit) in [
            (json!({"reference": "Patient/A"}), true),
            (json!({"reference": "Patient/A/_history/2"}), true),
            (json!({"reference": "http://x/fhir/Patient/A"}), true),
            (
                json!({"type": "Patient", "identifier": {"value": "1"}}),
                true,
            ),
            (json!({"reference": "Group/G"}), false),
            (json!({"reference": "#p1"}), false),
            (json!({"reference": "urn:uuid:1"}), false),
            (json!({"reference": "Patient/A", "type": "Group"}), false),
            (json!({"reference": "Patient/a b"}), false),
            (json!({"reference": "Patient"}), false),
            (json!({"reference": 7}), false),
            (json!("Patient/A"), false),
        ] {
            let got = eval(expr, "Observation", &json!({ "subject": subject }));
            assert_eq!(got.len(), usize::from(hit), "{subject}");
        }
    }

    #[test]
    fn where_equals_and_choice_types() {
        let expr = "Patient.telecom.where(system='email')";
        let p = json!({"telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]});
        assert_eq!(eval(expr, "Patient", &p).len(), 1);
        let mr = json!({"medicationCodeableConcept": {"text": "x"}, "medicationReference": {"reference": "Medication/m"}});
        let code = "(MedicationRequest.medication as CodeableConcept) | Observation.code";
        assert_eq!(
            eval(code, "MedicationRequest", &mr),
            vec![json!({"text": "x"})]
        );
        let onset = "Condition.onset.as(Age)";
        let c = json!({"onsetAge": {"value": 3}});
        assert_eq!(eval(onset, "Condition", &c).len(), 1);
        let bare = "Observation.value";
        let o = json!({"valueQuantity": {"value": 1}, "valueSet": 1});
        assert_eq!(eval(bare, "Observation", &o), vec![json!({"value": 1})]);
        let compiled = Expr::compile(code, t("MedicationRequest")).unwrap();
        assert!(compiled.reads_top_level("medicationCodeableConcept"));
        assert!(!compiled.reads_top_level("medicationReference"));
        let bare = Expr::compile(bare, t("Observation")).unwrap();
        assert!(bare.reads_top_level("valueQuantity") && !bare.reads_top_level("valueSet"));
    }

    #[test]
    fn resource_roots_apply_to_every_type() {
        let e = Expr::compile("Resource.meta.tag", t("Observation")).unwrap();
        let o = json!({"meta": {"tag": [{"code": "a"}, {"code": "b"}]}});
        assert_eq!(e.evaluate(&o).len(), 2);
    }

    #[test]
    fn unsupported_fails_closed() {
        for bad in [
            "Observation.subject.exists()",
            "Observation.subject.where(resolve() is Nope)",
            "Observation.subject.first()",
            "Observation.subject[0]",
            "Observation.subject.where(x = 'a\\'')",
            "Observation.",
            "Observation.subject and Observation.code",
            "(Observation.subject",
            "Observation.subject as",
            "Observation as Quantity",
            "Observation.1x",
        ] {
            assert!(
                matches!(
                    Expr::compile(bad, t("Observation")),
                    Err(FhirPathError::Unsupported { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_compartment_and_token_expression_of_the_data_compiles_or_errors() {
        // Never panics on the shipped data; compartment paths all compile.
        for rtype in ResourceType::all() {
            if let Some(rule) = crate::compartment::definition::rule(rtype) {
                for p in &rule.params {
                    Expr::compile(&p.path, rtype).unwrap();
                }
            }
        }
        for (base, params) in &crate::compartment::definition::search_params().params {
            let Some(rtype) = ResourceType::parse(base) else {
                continue;
            };
            for p in params.values() {
                if let Some(e) = p.get("expression").and_then(Value::as_str) {
                    let _ = Expr::compile(e, rtype);
                }
            }
        }
    }

    #[test]
    fn split_reference_forms() {
        assert_eq!(split_reference("Patient/A"), Some(("Patient", "A")));
        assert_eq!(
            split_reference("Patient/A/_history/3"),
            Some(("Patient", "A"))
        );
        assert_eq!(
            split_reference("https://h/fhir/Patient/A"),
            Some(("Patient", "A"))
        );
        assert_eq!(split_reference("x/Patient/A"), None);
        assert_eq!(split_reference("Patient/A?x=1"), None);
        assert_eq!(split_reference("Patient/A/_history/"), None);
        assert_eq!(split_reference("patient/A"), None);
        assert_eq!(split_reference("/Patient/A"), None);
        assert_eq!(split_reference(""), None);
    }
}
