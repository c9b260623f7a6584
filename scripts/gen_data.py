#!/usr/bin/env python3
"""smartgate test bed: deterministic FHIR R4 data set + ground-truth manifest (standard library only).

    python3 scripts/gen_data.py OUT_DIR [--seed N]

Writes OUT_DIR/bundle-NN-*.json (transaction Bundles of `PUT Type/id` entries; load them in file-name order) and
OUT_DIR/manifest.json, the ground truth the leak tests use:

    resources["Type/id"] = {
      "type": ...,
      "patients": [...],          # STRICT compartment: the patient(s) the record is ABOUT (subject, patient,
                                  #   beneficiary, Group member, Provenance target, the Patient itself)
      "actor_patients": [...],    # patients that only act on it (performer, asserter, recorder, author,
                                  #   Patient.link, Coverage subscriber, ...): NOT in the strict compartment
      "related_patients": [...],  # patients reached through another resource (Provenance target Observation,
                                  #   Binary.securityContext, Device.patient): not compartment members, but protected through them
      "categories": [...],        # Observation only: observation-category codes
      "security": [...],          # meta.security codes (R, PSY, HIV, ...)
    }
plus "by_patient" (strict compartment listing), "counts", "total", "bundles", "awkward" (ids of the odd shapes).
Every reference is relative (`Patient/pt-01`); ids are stable across runs for a given seed.
"""

import argparse
import base64
import datetime
import json
import os
import random
import sys

N_PATIENTS = 24
OBS_PER_PATIENT = 70
CAT_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
CONF_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
BASE_DAY = datetime.date(2024, 1, 1)
# A 1x1 transparent PNG for Patient.photo.
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)

LABS = [  # code, display, unit, low, high
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 140),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11, 17),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4, 11),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 120, 260),
]
VITALS = [
    ("8867-4", "Heart rate", "/min", 55, 110),
    ("8310-5", "Body temperature", "Cel", 36.1, 38.2),
    ("29463-7", "Body weight", "kg", 45, 120),
    ("8302-2", "Body height", "cm", 150, 195),
    ("9279-1", "Respiratory rate", "/min", 12, 22),
]
CONDITIONS = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("35489007", "Depressive disorder"),
    ("86406008", "Human immunodeficiency virus infection"),
    ("40055000", "Chronic sinusitis"),
]
MEDICATIONS = [
    ("860975", "metformin 500 MG Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ("312940", "sertraline 50 MG Oral Tablet"),
    ("617314", "atorvastatin 10 MG Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
]
GIVEN = ["Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Max", "Nia",
         "Oto", "Pia", "Quin", "Rae", "Sol", "Tia", "Uma", "Vic", "Wes", "Xia"]
FAMILY = ["Archer", "Brook", "Castillo", "Dunn", "Eklund", "Ferreira", "Grant", "Huang", "Ito", "Jansen"]


def pid(i):
    return "pt-%02d" % i


def ref(rtype, rid):
    return {"reference": "%s/%s" % (rtype, rid)}


def day(n):
    return (BASE_DAY + datetime.timedelta(days=n)).isoformat()


def instant(n, rng):
    return "%sT%02d:%02d:00Z" % (day(n), rng.randrange(7, 19), rng.randrange(0, 60))


def cc(system, code, display=None):
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], **({"text": display} if display else {})}


def category(code):
    display = {"laboratory": "Laboratory", "vital-signs": "Vital Signs", "social-history": "Social History"}[code]
    return {"coding": [{"system": CAT_SYSTEM, "code": code, "display": display}]}


class Gen:
    """Builds every resource in a fixed order from one seeded RNG, grouped into named bundles."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.bundles = {}  # name -> list of resources
        self.awkward = {}

    def add(self, bundle, res):
        self.bundles.setdefault(bundle, []).append(res)
        return res

    def mark(self, what, res):
        self.awkward.setdefault(what, []).append("%s/%s" % (res["resourceType"], res["id"]))

    # ----- shared, non-compartment resources -----
    def shared(self):
        b = "00-shared"
        for i in range(1, 3):
            self.add(b, {"resourceType": "Organization", "id": "org-%02d" % i, "active": True,
                         "name": ["Riverside General Hospital", "Northside Clinical Lab"][i - 1]})
        for i in range(1, 3):
            self.add(b, {"resourceType": "Location", "id": "loc-%02d" % i, "status": "active",
                         "name": ["Ward A", "Outpatient Clinic"][i - 1],
                         "managingOrganization": ref("Organization", "org-01")})
        for i in range(1, 6):
            self.add(b, {"resourceType": "Practitioner", "id": "pr-%02d" % i, "active": True,
                         "name": [{"family": FAMILY[i], "given": [GIVEN[-i]], "prefix": ["Dr."]}],
                         "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "99900000%02d" % i}]})
        for i, (code, display) in enumerate(MEDICATIONS, 1):
            self.add(b, {"resourceType": "Medication", "id": "med-%02d" % i,
                         "code": cc("http://www.nlm.nih.gov/research/umls/rxnorm", code, display)})
        self.add(b, {"resourceType": "Device", "id": "dev-shared-01", "status": "active",
                     "deviceName": [{"name": "Ward A infusion pump", "type": "user-friendly-name"}],
                     "location": ref("Location", "loc-01"), "owner": ref("Organization", "org-01")})

    def patients(self):
        b = "01-patients"
        for i in range(1, N_PATIENTS + 1):
            p = {"resourceType": "Patient", "id": pid(i), "active": True,
                 "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-%04d" % (1000 + i)}],
                 "name": [{"family": FAMILY[i % len(FAMILY)], "given": [GIVEN[i - 1]]}],
                 "gender": "female" if i % 2 else "male",
                 "birthDate": day(-365 * (20 + (i * 7) % 60) - i),
                 "managingOrganization": ref("Organization", "org-01"),
                 "generalPractitioner": [ref("Practitioner", "pr-%02d" % (1 + i % 5))]}
            if i in (1, 2, 3):
                p["identifier"].append({"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-01-%04d" % i})
            if i == 1:
                p["photo"] = [{"contentType": "image/png", "data": PNG_1PX, "title": "portrait"}]
                self.mark("patient_photo_ssn", p)
            if i == 9:
                p["link"] = [{"other": ref("Patient", pid(10)), "type": "seealso"}]
                self.mark("patient_link", p)
            if i == 17:
                p["meta"] = {"security": [{"system": CONF_SYSTEM, "code": "R", "display": "restricted"}]}
                self.mark("security_label", p)
            self.add(b, p)

    # ----- per-patient clinical data -----
    def clinical(self, i):
        rng = self.rng
        p = pid(i)
        b = "10-%s" % p
        encs = []
        for e in range(1, 4):
            enc = self.add(b, {
                "resourceType": "Encounter", "id": "enc-%s-%d" % (p, e), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                          "display": "ambulatory"},
                "subject": ref("Patient", p),
                "participant": [{"individual": ref("Practitioner", "pr-%02d" % (1 + (i + e) % 5))}],
                "period": {"start": day(30 * e + i), "end": day(30 * e + i)},
                "serviceProvider": ref("Organization", "org-01"),
                "location": [{"location": ref("Location", "loc-%02d" % (1 + e % 2))}]})
            encs.append(enc["id"])
        obs_ids = []
        for n in range(1, OBS_PER_PATIENT + 1):
            lab = n % 2 == 1
            code, display, unit, low, high = rng.choice(LABS if lab else VITALS)
            value = round(rng.uniform(low, high), 1)
            enc_id = encs[(n - 1) % 3]
            obs = {
                "resourceType": "Observation", "id": "obs-%s-%04d" % (p, n), "status": "final",
                "category": [category("laboratory" if lab else "vital-signs")],
                "code": cc(LOINC, code, display),
                "subject": ref("Patient", p),
                "encounter": ref("Encounter", enc_id),
                "effectiveDateTime": instant(n * 3 + i, rng),
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            }
            if lab:
                obs["performer"] = [ref("Organization", "org-02")]
            else:
                obs["performer"] = [ref("Practitioner", "pr-%02d" % (1 + n % 5))]
            if i == 16 and n == 1:
                obs["meta"] = {"security": [{"system": CONF_SYSTEM, "code": "R", "display": "restricted"}]}
                self.mark("security_label", obs)
            if i == 2 and n == 2:
                obs["category"].append(category("social-history"))
                self.mark("observation_two_categories", obs)
            self.add(b, obs)
            obs_ids.append(obs["id"])
        for c in range(1, 4):
            code, display = CONDITIONS[(i + c) % 4]  # PSY/HIV conditions only where labelled below
            cond = {"resourceType": "Condition", "id": "cond-%s-%d" % (p, c),
                    "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active"),
                    "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                             "confirmed"),
                    "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category",
                                    "problem-list-item")],
                    "code": cc(SNOMED, code, display),
                    "subject": ref("Patient", p), "encounter": ref("Encounter", encs[c - 1]),
                    "onsetDateTime": day(c * 20 + i), "recorder": ref("Practitioner", "pr-%02d" % (1 + c % 5))}
            if i == 14 and c == 1:
                cond["code"] = cc(SNOMED, *CONDITIONS[3])
                cond["meta"] = {"security": [{"system": ACT_SYSTEM, "code": "PSY", "display": "psychiatry information sensitivity"}]}
                self.mark("security_label", cond)
            if i == 15 and c == 1:
                cond["code"] = cc(SNOMED, *CONDITIONS[4])
                cond["meta"] = {"security": [{"system": ACT_SYSTEM, "code": "HIV", "display": "HIV/AIDS information sensitivity"}]}
                self.mark("security_label", cond)
            if i == 12 and c == 2:
                cond["asserter"] = ref("Patient", pid(13))
                self.mark("condition_asserter_other_patient", cond)
            self.add(b, cond)
        for m in range(1, 4):
            med = 1 + (i + m) % len(MEDICATIONS)
            self.add(b, {"resourceType": "MedicationRequest", "id": "medreq-%s-%d" % (p, m), "status": "active",
                         "intent": "order", "medicationReference": ref("Medication", "med-%02d" % med),
                         "subject": ref("Patient", p), "encounter": ref("Encounter", encs[m - 1]),
                         "authoredOn": day(m * 25 + i), "requester": ref("Practitioner", "pr-%02d" % (1 + m % 5)),
                         "dosageInstruction": [{"text": "1 tablet daily"}]})
        allergy = {"resourceType": "AllergyIntolerance", "id": "allergy-%s-1" % p,
                   "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active"),
                   "code": cc(SNOMED, "91936005", "Allergy to penicillin"),
                   "patient": ref("Patient", p), "recordedDate": day(10 + i),
                   "recorder": ref("Practitioner", "pr-01")}
        if i == 12:  # a parent (pt-13) reports and records the child's allergy
            allergy["asserter"] = ref("Patient", pid(13))
            allergy["recorder"] = ref("Patient", pid(13))
            self.mark("allergy_asserter_recorder_other_patient", allergy)
        if i == 13:
            allergy["asserter"] = ref("Patient", pid(12))
            self.mark("allergy_asserter_recorder_other_patient", allergy)
        self.add(b, allergy)
        for d in range(1, 3):
            doc = {"resourceType": "DocumentReference", "id": "doc-%s-%d" % (p, d), "status": "current",
                   "type": cc(LOINC, "34133-9", "Summary of episode note"),
                   "subject": ref("Patient", p), "date": instant(40 * d + i, rng),
                   "author": [ref("Practitioner", "pr-%02d" % (1 + d % 5))],
                   "content": [{"attachment": {"contentType": "text/plain",
                                               "url": "Binary/bin-doc-%s-%d" % (p, d)}}],
                   "context": {"encounter": [ref("Encounter", encs[d - 1])]}}
            if i == 18 and d == 2:
                doc["author"] = [ref("Patient", pid(19))]
                self.mark("docref_author_other_patient", doc)
            self.add(b, doc)
        for d in range(1, 3):
            text = "Note %d for %s." % (d, p)
            self.add(b, {"resourceType": "Binary", "id": "bin-doc-%s-%d" % (p, d), "contentType": "text/plain",
                         "securityContext": ref("DocumentReference", "doc-%s-%d" % (p, d)),
                         "data": base64.b64encode(text.encode()).decode()})
        for x in range(1, 3):
            self.add(b, {"resourceType": "Procedure", "id": "proc-%s-%d" % (p, x), "status": "completed",
                         "code": cc(SNOMED, "73761001", "Colonoscopy") if x == 1 else cc(SNOMED, "80146002",
                                                                                        "Appendectomy"),
                         "subject": ref("Patient", p), "encounter": ref("Encounter", encs[x]),
                         "performedDateTime": day(x * 33 + i),
                         "performer": [{"actor": ref("Practitioner", "pr-%02d" % (1 + x % 5))}]})
            self.add(b, {"resourceType": "Immunization", "id": "imm-%s-%d" % (p, x), "status": "completed",
                         "vaccineCode": cc("http://hl7.org/fhir/sid/cvx", "140" if x == 1 else "208",
                                           "Influenza" if x == 1 else "COVID-19"),
                         "patient": ref("Patient", p), "occurrenceDateTime": day(x * 90 + i),
                         "performer": [{"actor": ref("Practitioner", "pr-%02d" % (1 + x % 5))}]})
            results = obs_ids[(x - 1) * 10:(x - 1) * 10 + 10:2]  # lab observations (odd numbers)
            self.add(b, {"resourceType": "DiagnosticReport", "id": "dr-%s-%d" % (p, x), "status": "final",
                         "category": [cc("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
                         "code": cc(LOINC, "24323-8", "Comprehensive metabolic panel"),
                         "subject": ref("Patient", p), "encounter": ref("Encounter", encs[x - 1]),
                         "effectiveDateTime": day(x * 30 + i), "issued": instant(x * 30 + i, rng),
                         "performer": [ref("Organization", "org-02")],
                         "result": [ref("Observation", o) for o in results]})
        cov = {"resourceType": "Coverage", "id": "cov-%s" % p, "status": "active",
               "beneficiary": ref("Patient", p), "payor": [ref("Organization", "org-01")],
               "subscriberId": "SUB-%04d" % i}
        if i == 20:  # the parent pt-21 is the subscriber of the child's policy
            cov["subscriber"] = ref("Patient", pid(21))
            cov["policyHolder"] = ref("Patient", pid(21))
            self.mark("coverage_subscriber_other_patient", cov)
        self.add(b, cov)
        if i in (1, 5, 12):
            self.add(b, {"resourceType": "Device", "id": "dev-%s" % p, "status": "active",
                         "deviceName": [{"name": "Home glucose meter", "type": "user-friendly-name"}],
                         "patient": ref("Patient", p)})

    # ----- cross-patient shapes (loaded last, after every target exists) -----
    def cross(self):
        b = "90-cross"
        rng = self.rng
        for subj, perf, n in ((3, 4, 1), (4, 3, 2)):
            obs = self.add(b, {
                "resourceType": "Observation", "id": "obs-%s-perf-%s" % (pid(subj), pid(perf)), "status": "final",
                "category": [category("vital-signs")], "code": cc(LOINC, "8867-4", "Heart rate"),
                "subject": ref("Patient", pid(subj)), "performer": [ref("Patient", pid(perf))],
                "effectiveDateTime": instant(200 + n, rng),
                "valueQuantity": {"value": 70 + n, "unit": "/min", "system": "http://unitsofmeasure.org",
                                  "code": "/min"}})
            self.mark("observation_performer_other_patient", obs)
        obs = self.add(b, {
            "resourceType": "Observation", "id": "obs-env-0001", "status": "final",
            "category": [category("laboratory")], "code": cc(LOINC, "8310-5", "Body temperature"),
            "subject": ref("Location", "loc-01"), "effectiveDateTime": instant(210, rng),
            "valueQuantity": {"value": 21.5, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}})
        self.mark("observation_without_patient", obs)
        g = self.add(b, {"resourceType": "Group", "id": "grp-family", "type": "person", "actual": True,
                         "name": "Household 5-7", "quantity": 3,
                         "member": [{"entity": ref("Patient", pid(k))} for k in (5, 6, 7)]})
        self.mark("group_many", g)
        g = self.add(b, {"resourceType": "Group", "id": "grp-single", "type": "person", "actual": True,
                         "name": "Single member", "quantity": 1, "member": [{"entity": ref("Patient", pid(8))}]})
        self.mark("group_single", g)
        prov = [
            ("prov-pt-11", [ref("Patient", pid(11))]),
            ("prov-obs-pt-01", [ref("Observation", "obs-pt-01-0001"), ref("Observation", "obs-pt-01-0002")]),
            ("prov-obs-pt-02", [ref("Observation", "obs-pt-02-0001")]),
            ("prov-pt-22-obs-pt-23", [ref("Patient", pid(22)), ref("Observation", "obs-pt-23-0001")]),
            ("prov-pt-01", [ref("Patient", pid(1))]),
        ]
        for k, (prov_id, targets) in enumerate(prov):
            pr = self.add(b, {"resourceType": "Provenance", "id": prov_id, "target": targets,
                              "recorded": instant(220 + k, rng),
                              "agent": [{"who": ref("Practitioner", "pr-%02d" % (1 + k % 5))}]})
            self.mark("provenance_patient_target" if any(t["reference"].startswith("Patient/") for t in targets)
                      else "provenance_observation_target", pr)
        bn = self.add(b, {"resourceType": "Binary", "id": "bin-pt-02", "contentType": "text/plain",
                          "securityContext": ref("Patient", pid(2)),
                          "data": base64.b64encode(b"Consent form signed by pt-02.").decode()})
        self.mark("binary_security_context_patient", bn)
        self.mark("binary_security_context_docref", {"resourceType": "Binary", "id": "bin-doc-pt-01-1"})
        bn = self.add(b, {"resourceType": "Binary", "id": "bin-public", "contentType": "text/plain",
                          "data": base64.b64encode(b"Clinic opening hours.").decode()})
        self.mark("binary_no_security_context", bn)

    def build(self):
        self.shared()
        self.patients()
        for i in range(1, N_PATIENTS + 1):
            self.clinical(i)
        self.cross()


# ----- ground truth -----
ABOUT = {  # strict rule: the patient the record is about
    "Observation": ["subject"], "Encounter": ["subject"], "Condition": ["subject"],
    "MedicationRequest": ["subject"], "AllergyIntolerance": ["patient"], "DocumentReference": ["subject"],
    "Procedure": ["subject"], "Immunization": ["patient"], "DiagnosticReport": ["subject"],
    "Coverage": ["beneficiary"], "Group": ["member.entity"], "Provenance": ["target"],
}
ACTOR = {  # patients that act on the record: in the R4 compartment definition for some types, not in the strict one
    "Patient": ["link.other"], "Observation": ["performer"], "Condition": ["asserter", "recorder"],
    "AllergyIntolerance": ["asserter", "recorder"], "DocumentReference": ["author"],
    "Procedure": ["performer.actor"], "Coverage": ["subscriber", "policyHolder", "payor"],
    "MedicationRequest": ["requester", "performer"], "Encounter": ["participant.individual"],
    "Immunization": ["performer.actor"], "DiagnosticReport": ["performer"], "Provenance": ["agent.who"],
}
# Patients reached through another resource, or named by a type that is not a Patient compartment member in R4
# (Device.patient: searchable as Device?patient=, but hfs answers 400 to Patient/X/Device).
INDIRECT = {"Provenance": ["target"], "Binary": ["securityContext"], "Device": ["patient"]}


def refs_at(res, path):
    """All reference strings at a dotted path (lists are walked)."""
    nodes = [res]
    for part in path.split("."):
        nxt = []
        for n in nodes:
            v = n.get(part) if isinstance(n, dict) else None
            if isinstance(v, list):
                nxt.extend(v)
            elif v is not None:
                nxt.append(v)
        nodes = nxt
    return [n["reference"] for n in nodes if isinstance(n, dict) and isinstance(n.get("reference"), str)]


def patients_in(refs):
    return sorted({r.split("/", 1)[1] for r in refs if r.startswith("Patient/")})


def manifest(gen, seed):
    all_res = [r for name in sorted(gen.bundles) for r in gen.bundles[name]]
    entries = {}
    for r in all_res:
        key = "%s/%s" % (r["resourceType"], r["id"])
        rt = r["resourceType"]
        about = [key] if rt == "Patient" else [x for p in ABOUT.get(rt, []) for x in refs_at(r, p)]
        actor = [x for p in ACTOR.get(rt, []) for x in refs_at(r, p)]
        patients = patients_in(about)
        entries[key] = {"type": rt, "patients": patients,
                        "actor_patients": [x for x in patients_in(actor) if x not in patients],
                        "related_patients": [],
                        "security": sorted(s["code"] for s in r.get("meta", {}).get("security", []))}
        if rt == "Observation":
            entries[key]["categories"] = sorted({c["code"] for cat in r.get("category", [])
                                                 for c in cat.get("coding", []) if c.get("system") == CAT_SYSTEM})
    # Second pass: patients reached through another resource (target Observation, securityContext DocumentReference).
    for r in all_res:
        key = "%s/%s" % (r["resourceType"], r["id"])
        related = set()
        for p in INDIRECT.get(r["resourceType"], []):
            for x in refs_at(r, p):
                if x.startswith("Patient/"):
                    if r["resourceType"] in ("Binary", "Device"):
                        related.add(x.split("/", 1)[1])
                elif x in entries:
                    related.update(entries[x]["patients"])
        entries[key]["related_patients"] = sorted(related - set(entries[key]["patients"]))
    by_patient = {pid(i): [] for i in range(1, N_PATIENTS + 1)}
    for key, e in entries.items():
        for p in e["patients"]:
            by_patient[p].append(key)
    counts = {}
    for e in entries.values():
        counts[e["type"]] = counts.get(e["type"], 0) + 1
    return {"seed": seed, "patients": sorted(by_patient), "total": len(entries),
            "counts": dict(sorted(counts.items())),
            "bundles": ["bundle-%s.json" % name for name in sorted(gen.bundles)],
            "awkward": gen.awkward, "by_patient": by_patient, "resources": entries}


def to_bundle(resources):
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": r, "request": {"method": "PUT", "url": "%s/%s" % (r["resourceType"], r["id"])}}
                      for r in resources]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=20261129)
    args = ap.parse_args()
    gen = Gen(args.seed)
    gen.build()
    os.makedirs(args.out_dir, exist_ok=True)
    for name, resources in sorted(gen.bundles.items()):
        with open(os.path.join(args.out_dir, "bundle-%s.json" % name), "w") as f:
            json.dump(to_bundle(resources), f, separators=(",", ":"), sort_keys=True)
    m = manifest(gen, args.seed)
    with open(os.path.join(args.out_dir, "manifest.json"), "w") as f:
        json.dump(m, f, indent=1, sort_keys=True)
    print("wrote %d resources of %d types in %d bundles to %s" % (m["total"], len(m["counts"]), len(m["bundles"]),
                                                                  args.out_dir), file=sys.stderr)


if __name__ == "__main__":
    main()
