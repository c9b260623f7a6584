#!/usr/bin/env python3
"""Regenerates fuzz/seeds/<target>/ from the test suites (run from the repo root).

classify and search_body come from tests/classify_table.rs, scope from the table's grants,
fhirpath from the R4 compartment expressions in src/data/, config from the example
configuration; token, filter_bundle and framing seeds are written here from the shapes the unit
tests use. Seeds are small and committed; scripts/fuzz.sh copies them into fuzz/corpus/.
"""
import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def rust_unescape(s):
    return (s.replace('\\"', '"').replace("\\\\", "\\")
            .replace("\\u{0}", "\x00").replace("\\n", "\n"))


def table_cases():
    text = open(os.path.join(ROOT, "tests", "classify_table.rs"), encoding="utf-8").read()
    block = text.split("const CASES: &[&str] = &[", 1)[1].split("\n];", 1)[0]
    for m in re.finditer(r'^\s*"((?:[^"\\]|\\.)*)",\s*$', block, re.M):
        yield rust_unescape(m.group(1))


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    scopes = set()
    for i, case in enumerate(table_cases()):
        cols = [c.strip() for c in case.split(" | ")]
        req = cols[0]
        if req.startswith("ENTRY "):
            req = req[len("ENTRY "):]
        method, _, target = req.partition(" ")
        target = target.replace("^", "", 1)
        headers, body = [], ""
        for extra in cols[4:]:
            if extra.startswith("ct:"):
                headers.append("Content-Type: " + extra[3:])
            elif extra.startswith("body:"):
                body = extra[5:]
            elif extra.startswith("ine:"):
                headers.append("If-None-Exist: " + extra[4:])
            elif extra.startswith("h:") and "=" in extra:
                k, v = extra[2:].split("=", 1)
                headers.append(f"{k}: {v}")
        text = "\n".join([f"{method} {target}"] + headers)
        if body:
            text += "\n\n" + body
        write("classify", f"table-{i:03}", text)
        if "_search" in target and body:
            write("search_body", f"table-{i:03}", body)
        for s in cols[1].split():
            if not s.startswith(("@", "~", "!")) and s != "-":
                scopes.add(s)
    for i, s in enumerate(sorted(scopes)):
        write("scope", f"table-{i:03}", s)
    write("scope", "mixed", "openid fhirUser launch/patient patient/Observation.rs?category=http://x|laboratory&status=final "
          "patient/observation.rs user/Patient.read system/*.* Patient/Observation.rs patient/*.sr patient/Obs.rs?")
    for i, body in enumerate(["", "code=x&patient=A", "_type=Observation,Condition&patient=Patient/A",
                              "code=1+2&date=ge2020&_include=Observation:subject", "a=%zz", "_has:Condition:patient:code=x"]):
        write("search_body", f"extra-{i}", body)

    # token: authorization \0 claims \0 jwks
    claims = {"iss": "https://as.test/realm", "aud": "https://fhir.test/r4", "sub": "u1", "client_id": "app",
              "exp": 4102444800, "iat": 1700000000, "patient": "p1",
              "scope": "launch/patient patient/Observation.rs openid fhirUser", "fhirUser": "Practitioner/9"}
    jwt = ("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiYXQrand0In0."
           "eyJpc3MiOiJodHRwczovL2FzLnRlc3QvcmVhbG0iLCJzdWIiOiJ1MSJ9.c2ln")
    jwks = {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "e": "AQAB",
                      "n": "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw"},
                     {"kty": "EC", "kid": "e1", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                      "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
                     {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}
    for i, (auth, cl, ks) in enumerate([
        (f"Bearer {jwt}", claims, jwks),
        ("Bearer abc.def", {**claims, "patient": "../x", "scope": ["patient/*.rs", 5]}, {"keys": []}),
        ("bearer  opaque-token==", {"exp": 1.5e9, "iss": 5, "realm_access": {"roles": ["user/*.rs"]}}, {"keys": [{}]}),
        ("Basic dXNlcjpwYXNz", {"exp": "soon", "ctx": {"patient": "A"}, "a/b": {"c~d": "B"}}, {"nokeys": 1}),
        ("Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.", {"exp": None, "scp": "system/*.*"}, "[]"),
    ]):
        ks = ks if isinstance(ks, str) else json.dumps(ks)
        write("token", f"seed-{i}", f"{auth}\x00{json.dumps(cl)}\x00{ks}")

    # filter_bundle: searchset / history / batch-response shapes the filter tests use.
    up = "http://upstream:8080/fhir"

    def obs(i, p, cat="laboratory", extra=None):
        r = {"resourceType": "Observation", "id": i, "status": "final",
             "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": cat}]}],
             "subject": {"reference": f"Patient/{p}"}}
        r.update(extra or {})
        return r

    def entry(r, mode="match"):
        return {"fullUrl": f"{up}/{r['resourceType']}/{r.get('id', 'x')}", "resource": r, "search": {"mode": mode}}

    links = [{"relation": "self", "url": f"{up}/Observation?patient=A"},
             {"relation": "next", "url": f"{up}?_getpages=abc&_getpagesoffset=20"}]
    bundles = [
        {"resourceType": "Bundle", "type": "searchset", "total": 3, "link": links,
         "entry": [entry(obs("1", "A")), entry(obs("2", "B")), entry(obs("3", "A", "vital-signs")),
                   entry({"resourceType": "Patient", "id": "A"}, "include"),
                   entry({"resourceType": "Patient", "id": "B", "link": [{"other": {"reference": "Patient/A"}}]}, "include"),
                   entry({"resourceType": "Practitioner", "id": "9"}, "include"),
                   entry({"resourceType": "OperationOutcome", "issue": []}, "outcome")]},
        {"resourceType": "Bundle", "type": "history",
         "entry": [{"fullUrl": f"{up}/Observation/1", "request": {"method": "DELETE", "url": "Observation/1"}},
                   entry(obs("1", "A", extra={"performer": [{"reference": "Patient/B"}]}))]},
        {"resourceType": "Bundle", "type": "searchset",
         "entry": [entry({"resourceType": "Group", "id": "g", "member": [{"entity": {"reference": "Patient/A"}}, {"entity": {"reference": "Patient/B"}}]}),
                   entry({"resourceType": "Binary", "id": "b", "securityContext": {"reference": "Patient/A"}}),
                   entry({"resourceType": "Binary", "id": "c", "securityContext": {"reference": "DocumentReference/d"}}),
                   entry({"resourceType": "Device", "id": "d", "patient": {"reference": f"{up}/Patient/B"}}),
                   entry({"resourceType": "Bundle", "id": "nested", "type": "collection"}),
                   entry({"resourceType": "Encounter", "id": "e", "subject": {"reference": "Patient/A", "type": "Patient"},
                          "contained": [{"resourceType": "Patient", "id": "p"}]})]},
        {"resourceType": "Bundle", "type": "batch-response",
         "entry": [{"response": {"status": "201 Created", "location": "Observation/9/_history/1"}}]},
    ]
    for i, b in enumerate(bundles):
        write("filter_bundle", f"seed-{i}", json.dumps(b))
    write("filter_bundle", "dup-subject",
          '{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Observation","id":"1",'
          '"subject":{"reference":"Patient/A"},"subject":{"reference":"Patient/B"}}}]}')
    write("filter_bundle", "truncated", json.dumps(bundles[0])[:200])

    # fhirpath: every R4 compartment expression, on a resource of its type.
    params = json.load(open(os.path.join(ROOT, "src", "data", "patient-compartment-params.json")))
    n = 0
    for rtype, ps in sorted(params["members"].items()):
        for code, expr in sorted(ps.items()):
            res = {"resourceType": rtype, "id": "x", code: {"reference": "Patient/A"},
                   "subject": {"reference": "Patient/A", "type": "Patient"},
                   "valueQuantity": {"value": 1}, "participant": [{"actor": {"reference": "Patient/A"}}]}
            write("fhirpath", f"r4-{n:03}", f"{expr}\n{rtype}\n{json.dumps(res)}")
            n += 1
    write("fhirpath", "where-eq", "Observation.category.coding.where(code = 'laboratory')\nObservation\n"
          + json.dumps(obs("1", "A")))
    write("fhirpath", "as-choice", "(Observation.value as Quantity) | Observation.effective.ofType(dateTime)\nObservation\n"
          '{"resourceType":"Observation","valueQuantity":{"value":1},"effectiveDateTime":"2020"}')

    # config: the example, a minimal one, and a broken one.
    write("config", "example.yaml", open(os.path.join(ROOT, "smartgate.example.yaml"), encoding="utf-8").read())
    minimal = ("listen: 127.0.0.1:8443\nadmin_listen: 127.0.0.1:9464\npublic_base_url: http://127.0.0.1:8443/fhir\n"
               "upstream:\n  url: http://127.0.0.1:8103/fhir\n  timeout: 30s\n")
    write("config", "minimal.yaml", minimal)
    write("config", "limits.yaml", minimal + "limits:\n  max_connections: 50\n  header_read_timeout: 1s\n"
          "  max_body_bytes: 1024\ncompartment:\n  actor_membership: true\n  non_member_types: deny\n")
    write("config", "broken.yaml", minimal.replace("30s", "30 parsecs") + "  tiemout: 5s\nadmin_listen: [\n")
    # framing: one split byte, then an HTTP/1 byte stream (keep-alive bodies, chunks with
    # extensions and trailers, and the smuggling shapes of tests/abuse.rs).
    post = "POST /fhir/Binary HTTP/1.1\r\nHost: x\r\n"
    streams = {
        "keep-alive": post + "Content-Length: 5\r\n\r\nhello" + post
        + "Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: t\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "cl-te": post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nDELETE /x HTTP/1.1\r\n\r\n",
        "te-cl": post + "Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n",
        "cl-twice": post + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        "cl-list": post + "Content-Length: 5, 5\r\n\r\nhello",
        "te-list": post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "http10-te": "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "h2-preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    }
    for i, (name, stream) in enumerate(sorted(streams.items())):
        write("framing", name, bytes([1 + 5 * i]) + stream.encode())
    print(f"seeds written to {SEEDS}", file=sys.stderr)


if __name__ == "__main__":
    main()
