// A standalone SMART launch driven by the unmodified SMART JS client (npm `fhirclient`).
//
// Usage: node launch.js FHIR_BASE OTHER_PATIENT_ID
// The client discovers the authorization server from FHIR_BASE/.well-known/smart-configuration,
// redirects to its authorization endpoint (authorization code + PKCE S256), the test bed's
// auto-approving interaction is followed with a cookie jar (standing in for the user's browser),
// the client exchanges the code, then reads through FHIR_BASE. Prints one JSON object.
"use strict";
const smart = require("fhirclient");

const [serverUrl, otherPatient] = process.argv.slice(2);
const REDIRECT = "http://127.0.0.1/callback";

// The Node adapter reads the request's URL and keeps its state in req.session.
function fakeRequest(url, session) {
  return { url, headers: { host: "127.0.0.1" }, socket: {}, session };
}
function fakeResponse() {
  return {
    location: null,
    writeHead(status, headers) { this.status = status; this.location = headers.location; },
    end() {},
  };
}

// The browser: follow redirects, keep cookies, stop at the app's redirect URI.
async function browse(start) {
  const jar = new Map();
  let url = start;
  for (let i = 0; i < 10; i++) {
    if (url.startsWith(REDIRECT)) return url;
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
    const r = await fetch(url, { redirect: "manual", headers: cookie ? { cookie } : {} });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(";");
      const eq = pair.indexOf("=");
      jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1));
    }
    const next = r.headers.get("location");
    if (!next) throw new Error(`no redirect from ${url}: ${r.status} ${await r.text()}`);
    url = new URL(next, url).href;
  }
  throw new Error("too many redirects");
}

async function status(promise) {
  try {
    await promise;
    return 200;
  } catch (e) {
    return e.status || (e.response && e.response.status) || String(e.message || e);
  }
}

async function main() {
  const session = {};
  const res = fakeResponse();
  await smart(fakeRequest("/launch", session), res).authorize({
    iss: serverUrl,
    clientId: "smart-app",
    scope: "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs",
    redirectUri: REDIRECT,
    pkceMode: "required",
  });
  const authorizeUrl = new URL(res.location);
  const callback = new URL(await browse(res.location));
  const client = await smart(fakeRequest(callback.pathname + callback.search, session), fakeResponse()).ready();
  const patient = await client.patient.read();
  const observations = await client.request(`Observation?patient=${client.patient.id}&_count=5`);
  const obsPatients = [...new Set((observations.entry || []).map(e => e.resource.subject.reference))];
  out({
    authorize_endpoint: authorizeUrl.origin + authorizeUrl.pathname,
    aud: authorizeUrl.searchParams.get("aud"),
    code_challenge_method: authorizeUrl.searchParams.get("code_challenge_method"),
    patient_id: client.patient.id,
    patient_read: patient.resourceType + "/" + patient.id,
    observation_count: (observations.entry || []).length,
    observation_subjects: obsPatients,
    other_patient_status: await status(client.request(`Patient/${otherPatient}`)),
    other_search_status: await status(client.request(`Observation?patient=${otherPatient}`)),
  });
}

function out(v) { process.stdout.write(JSON.stringify(v) + "\n"); }
main().catch(e => { out({ error: String(e && e.stack || e) }); process.exitCode = 1; });
