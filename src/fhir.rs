//! The FHIR R4 vocabulary every stage shares: resource types and the id grammar.
//!
//! Kept tiny and allocation-free because the classifier, the scope parser and the
//! response filter all call into it on the request path.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

/// Every R4 (4.0.1) resource type name, sorted so that [`ResourceType::parse`] can
/// binary-search it. Case-sensitive on purpose: `patient` is not `Patient`.
const NAMES: [&str; 146] = [
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// Every name with its type (built once).
static BY_NAME: LazyLock<HashMap<&str, ResourceType, BuildHasherDefault<Fnv1a>>> =
    LazyLock::new(|| {
        (0..NAMES.len())
            .filter_map(|i| Some((*NAMES.get(i)?, ResourceType(u8::try_from(i).ok()?))))
            .collect()
    });

/// FNV-1a: a fast hash for short, trusted-size keys (these names; no flooding risk, the
/// table is fixed).
#[derive(Default)]
struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// An R4 resource type, stored as an index into the sorted list of names.
///
/// Invariant: the index is always in bounds, because the only constructor is
/// [`ResourceType::parse`] (and the associated constants below).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(u8);

impl ResourceType {
    /// Looks up an exact, case-sensitive R4 resource type name. Hashed: the response
    /// filter asks this several times per Bundle entry.
    pub fn parse(name: &str) -> Option<Self> {
        BY_NAME.get(name).copied()
    }

    /// The canonical name, as it appears in URLs and in `resourceType`.
    pub fn name(self) -> &'static str {
        NAMES.get(usize::from(self.0)).copied().unwrap_or("")
    }

    /// All R4 resource types, in name order.
    pub fn all() -> impl Iterator<Item = ResourceType> {
        (0..NAMES.len()).filter_map(|i| u8::try_from(i).ok().map(ResourceType))
    }

    /// `Patient`.
    pub const PATIENT: ResourceType = ResourceType(102);
    /// `Observation`.
    pub const OBSERVATION: ResourceType = ResourceType(95);
    /// `Bundle`.
    pub const BUNDLE: ResourceType = ResourceType(11);
    /// `Binary`.
    pub const BINARY: ResourceType = ResourceType(8);
    /// `Group`.
    pub const GROUP: ResourceType = ResourceType(57);
    /// `Provenance`.
    pub const PROVENANCE: ResourceType = ResourceType(110);
    /// `Practitioner`.
    pub const PRACTITIONER: ResourceType = ResourceType(107);
    /// `Organization`.
    pub const ORGANIZATION: ResourceType = ResourceType(99);
    /// `Medication`.
    pub const MEDICATION: ResourceType = ResourceType(74);
    /// `Device`.
    pub const DEVICE: ResourceType = ResourceType(34);
    /// `Location`.
    pub const LOCATION: ResourceType = ResourceType(70);
    /// `OperationOutcome`.
    pub const OPERATION_OUTCOME: ResourceType = ResourceType(98);
    /// `Parameters`.
    pub const PARAMETERS: ResourceType = ResourceType(101);
    /// `Encounter`.
    pub const ENCOUNTER: ResourceType = ResourceType(43);
    /// `AuditEvent`.
    pub const AUDIT_EVENT: ResourceType = ResourceType(6);
    /// `Person`.
    pub const PERSON: ResourceType = ResourceType(105);
    /// `RelatedPerson`.
    pub const RELATED_PERSON: ResourceType = ResourceType(113);
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The FHIR `id` grammar: `[A-Za-z0-9\-\.]{1,64}`. Used for resource ids, version ids
/// and the launch `patient` claim alike.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_and_round_trip() {
        assert!(NAMES.windows(2).all(|w| w[0] < w[1]));
        for t in ResourceType::all() {
            assert_eq!(ResourceType::parse(t.name()), Some(t));
        }
        assert_eq!(ResourceType::all().count(), 146);
    }

    #[test]
    fn parse_is_case_sensitive() {
        assert_eq!(ResourceType::parse("Patient"), Some(ResourceType::PATIENT));
        assert_eq!(ResourceType::parse("patient"), None);
        assert_eq!(ResourceType::parse("PATIENT"), None);
        assert_eq!(ResourceType::parse(""), None);
    }

    #[test]
    fn id_grammar() {
        assert!(is_valid_id("pt-01.a"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a_b"));
    }
}
