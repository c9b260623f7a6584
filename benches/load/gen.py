#!/usr/bin/env python3
"""Canned FHIR data, an RSA key, its JWKS and signed tokens for the load benchmark (stdlib + openssl).

    gen.py OUT_DIR --upstream-base http://127.0.0.1:UPORT --public-base http://127.0.0.1:SPORT/fhir
           [--issuer https://bench.example] [--binary-mb 100]

Writes (OUT_DIR/data is what the upstream nginx serves; OUT_DIR/keys stays private):
  data/patient.json        Patient/A, ~2 KB
  data/bundle-50.json      searchset, 50 Observations of Patient/A (search.mode match)
  data/bundle-1mb.json     searchset, 1,000 Observations + 3 Practitioner includes (~1 MB)
  data/bundle-10mb.json    searchset, 10,000 Observations + 3 Practitioner includes (~10 MB)
  data/binary-100mb.bin    a 100 MB opaque body (sparse file) for the streaming test
  data/jwks.json           the public key as a JWKS
  data/introspect.json     the static RFC 7662 answer for the opaque token
  keys/key.pem             RSA 2048 private key
  tokens.json              {"jwt": ..., "jwt_binary": ..., "opaque": ...}
"""

import argparse
import base64
import json
import os
import subprocess
import time

PATIENT_ID = "A"
PRACTITIONERS = ["P1", "P2", "P3"]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def patient() -> dict:
    return {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "meta": {
            "versionId": "3",
            "lastUpdated": "2026-10-02T09:14:27.412Z",
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
        },
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">Amelia Rose Okafor-Lindqvist, female, born 1984-03-17</div>',
        },
        "extension": [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2054-5", "display": "Black or African American"}},
                    {"url": "text", "valueString": "Black or African American"},
                ],
            },
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2186-5", "display": "Not Hispanic or Latino"}},
                    {"url": "text", "valueString": "Not Hispanic or Latino"},
                ],
            },
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"},
        ],
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical Record Number"}]},
                "system": "http://hospital.example.org/mrn",
                "value": "MRN-00482913",
            },
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS", "display": "Social Security Number"}]},
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": "999-41-7732",
            },
        ],
        "active": True,
        "name": [
            {"use": "official", "family": "Okafor-Lindqvist", "given": ["Amelia", "Rose"], "prefix": ["Ms."]},
            {"use": "maiden", "family": "Okafor", "given": ["Amelia"]},
        ],
        "telecom": [
            {"system": "phone", "value": "555-201-4471", "use": "home"},
            {"system": "phone", "value": "555-310-9982", "use": "mobile", "rank": 1},
            {"system": "email", "value": "amelia.okafor@example.org"},
        ],
        "gender": "female",
        "birthDate": "1984-03-17",
        "deceasedBoolean": False,
        "address": [
            {
                "use": "home",
                "type": "physical",
                "line": ["1742 Willow Creek Road", "Apt 5B"],
                "city": "Springfield",
                "district": "Sangamon",
                "state": "IL",
                "postalCode": "62704",
                "country": "US",
                "period": {"start": "2017-06-01"},
            }
        ],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M", "display": "Married"}], "text": "Married"},
        "multipleBirthBoolean": False,
        "contact": [
            {
                "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N", "display": "Next-of-Kin"}]}],
                "name": {"family": "Lindqvist", "given": ["Erik"]},
                "telecom": [{"system": "phone", "value": "555-201-4472", "use": "mobile"}],
            }
        ],
        "communication": [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US", "display": "English (United States)"}]}, "preferred": True}
        ],
        "generalPractitioner": [{"reference": "Practitioner/P1", "display": "Dr. Jonas Whitfield"}],
        "managingOrganization": {"reference": "Organization/O1", "display": "Springfield General Hospital"},
    }


VITALS = [
    ("8867-4", "Heart rate", 72.0, "/min", "/min", 60, 100),
    ("8310-5", "Body temperature", 36.8, "Cel", "Cel", 36.1, 37.2),
    ("9279-1", "Respiratory rate", 16.0, "/min", "/min", 12, 20),
    ("2708-6", "Oxygen saturation in Arterial blood", 97.0, "%", "%", 95, 100),
    ("29463-7", "Body weight", 68.4, "kg", "kg", 50, 90),
]


def observation(i: int, upstream_base: str) -> dict:
    code, display, base, unit, ucum, low, high = VITALS[i % len(VITALS)]
    value = round(base + ((i * 37) % 11 - 5) * 0.1, 1)
    day = 1 + i % 28
    month = 1 + (i // 28) % 12
    return {
        "fullUrl": f"{upstream_base}/Observation/obs-{i}",
        "resource": {
            "resourceType": "Observation",
            "id": f"obs-{i}",
            "meta": {
                "versionId": "1",
                "lastUpdated": f"2026-{month:02d}-{day:02d}T08:{i % 60:02d}:00.000Z",
                "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"],
            },
            "identifier": [{"system": "http://hospital.example.org/obs", "value": f"OBS-{100000 + i}"}],
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs",
                            "display": "Vital Signs",
                        }
                    ],
                    "text": "Vital Signs",
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "encounter": {"reference": f"Encounter/enc-{i // 5}"},
            "effectiveDateTime": f"2026-{month:02d}-{day:02d}T08:{i % 60:02d}:00Z",
            "issued": f"2026-{month:02d}-{day:02d}T08:{i % 60:02d}:30.000Z",
            "performer": [{"reference": f"Practitioner/{PRACTITIONERS[i % len(PRACTITIONERS)]}"}],
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum},
            "interpretation": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                            "code": "N",
                            "display": "Normal",
                        }
                    ]
                }
            ],
            "referenceRange": [
                {
                    "low": {"value": low, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum},
                    "high": {"value": high, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum},
                }
            ],
            "note": [{"text": "Measured at rest, seated, after five minutes."}],
        },
        "search": {"mode": "match"},
    }


def practitioner(pid: str, upstream_base: str) -> dict:
    return {
        "fullUrl": f"{upstream_base}/Practitioner/{pid}",
        "resource": {
            "resourceType": "Practitioner",
            "id": pid,
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": f"99999{ord(pid[-1]):05d}"}],
            "active": True,
            "name": [{"family": f"Whitfield-{pid}", "given": ["Jonas"], "prefix": ["Dr."]}],
        },
        "search": {"mode": "include"},
    }


def bundle(n: int, upstream_base: str, count: int | None, includes: bool) -> dict:
    query = f"patient={PATIENT_ID}" + (f"&_count={count}" if count else "")
    entries = [observation(i, upstream_base) for i in range(n)]
    if includes:
        entries += [practitioner(p, upstream_base) for p in PRACTITIONERS]
    return {
        "resourceType": "Bundle",
        "id": f"search-{n}",
        "meta": {"lastUpdated": "2026-11-29T10:00:00.000Z"},
        "type": "searchset",
        "total": n,
        "link": [{"relation": "self", "url": f"{upstream_base}/Observation?{query}"}],
        "entry": entries,
    }


def write_json(path: str, obj: dict) -> int:
    data = json.dumps(obj, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)
    return len(data)


def sign_jwt(key: str, kid: str, claims: dict) -> str:
    header = {"alg": "RS256", "typ": "at+jwt", "kid": kid}
    signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(
        json.dumps(claims, separators=(",", ":")).encode()
    )
    sig = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key],
        input=signing_input.encode(),
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    return signing_input + "." + b64url(sig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--upstream-base", required=True)
    ap.add_argument("--public-base", required=True)
    ap.add_argument("--issuer", default="https://bench.example")
    ap.add_argument("--binary-mb", type=int, default=100)
    a = ap.parse_args()

    data = os.path.join(a.out, "data")
    keys = os.path.join(a.out, "keys")
    os.makedirs(data, mode=0o755, exist_ok=True)
    os.makedirs(keys, mode=0o700, exist_ok=True)
    os.chmod(a.out, 0o755)  # the nginx worker (nobody when started as root) must reach data/
    os.chmod(data, 0o755)

    sizes = {
        "patient": write_json(os.path.join(data, "patient.json"), patient()),
        "bundle50": write_json(os.path.join(data, "bundle-50.json"), bundle(50, a.upstream_base, None, False)),
        "bundle1mb": write_json(os.path.join(data, "bundle-1mb.json"), bundle(1000, a.upstream_base, 1000, True)),
        "bundle10mb": write_json(os.path.join(data, "bundle-10mb.json"), bundle(10000, a.upstream_base, 10000, True)),
    }
    binary = os.path.join(data, "binary-100mb.bin")
    with open(binary, "wb") as f:
        f.truncate(a.binary_mb * 1024 * 1024)
    os.chmod(binary, 0o644)
    sizes["binary"] = a.binary_mb * 1024 * 1024

    key = os.path.join(keys, "key.pem")
    if not os.path.exists(key):
        subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True, timeout=60)
    modulus_hex = subprocess.run(
        ["openssl", "rsa", "-in", key, "-noout", "-modulus"], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip().split("=", 1)[1]
    n = bytes.fromhex(modulus_hex)
    kid = "bench-" + b64url(n[:9])
    jwks = {"keys": [{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64url(n), "e": b64url((65537).to_bytes(3, "big"))}]}
    write_json(os.path.join(data, "jwks.json"), jwks)

    now = int(time.time())
    exp = now + 365 * 24 * 3600
    base_claims = {"iss": a.issuer, "aud": a.public_base, "iat": now, "exp": exp, "sub": "bench-user", "client_id": "bench"}
    scope = "patient/Patient.rs patient/Observation.rs launch/patient"
    jwt = sign_jwt(key, kid, {**base_claims, "jti": "bench-1", "scope": scope, "patient": PATIENT_ID})
    jwt_binary = sign_jwt(
        key, kid, {**base_claims, "jti": "bench-2", "scope": "user/Binary.r", "fhirUser": "Practitioner/P1"}
    )
    opaque = "opaque-" + b64url(os.urandom(24))
    introspect = {"active": True, "scope": scope, "client_id": "bench", "exp": exp, "iat": now, "patient": PATIENT_ID, "sub": "u"}
    write_json(os.path.join(data, "introspect.json"), introspect)
    with open(os.path.join(a.out, "tokens.json"), "w") as f:
        json.dump({"jwt": jwt, "jwt_binary": jwt_binary, "opaque": opaque, "kid": kid}, f)
    print(json.dumps({"sizes": sizes, "kid": kid}))


if __name__ == "__main__":
    main()
