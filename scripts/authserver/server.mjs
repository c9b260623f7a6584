// smartgate test bed: a real OAuth2/OIDC authorization server (oidc-provider 9) that mints SMART tokens.
//
//   node server.mjs [PORT]        (or PORT=... node server.mjs); listens on 127.0.0.1, issuer http://127.0.0.1:PORT
//
// What it gives the tests (see scripts/TESTBED.md for the whole list):
// - JWT access tokens (RS256 by default, ES256 with token param alg=ES256) whose `aud` is the `resource` param;
//   opaque access tokens with token param token_format=opaque (for the introspection path).
// - SMART claims chosen per token with token params: patient, fhirUser, encounter, ttl (seconds; <= 0 gives an
//   already-expired JWT), nbf (seconds from now: a not-yet-valid JWT). Any scope string is passed through.
// - Grants: client_credentials, authorization_code + PKCE (auto-approved, launch context from the authorize params
//   patient/fhirUser/encounter, default patient TESTBED_DEFAULT_PATIENT=pt-01 when launch/patient is asked), refresh.
// - /token/introspection, /token/revocation, /jwks, /.well-known/openid-configuration.
// - Test controls under /_testbed/: rotate, jwks and introspection failure modes, stats, the private keys of the
//   private_key_jwt clients (client-keys). Never part of a real AS.
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as querystring from 'node:querystring';

import * as jose from 'jose';
import Provider from 'oidc-provider';

const PORT = Number(process.argv[2] ?? process.env.PORT ?? 0);
if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535) {
  console.error('usage: node server.mjs PORT   (or PORT=... node server.mjs)');
  process.exit(2);
}
const ISSUER = `http://127.0.0.1:${PORT}`;
const DEFAULT_PATIENT = process.env.TESTBED_DEFAULT_PATIENT ?? 'pt-01';
const SLOW_MS = Number(process.env.TESTBED_SLOW_MS ?? 10_000);

// Token-request parameters oidc-provider does not know; read from the body before the provider strips them.
const EXTRA_TOKEN_PARAMS = ['patient', 'fhirUser', 'encounter', 'ttl', 'nbf', 'token_format', 'alg'];
// Authorization-request parameters: the same launch context, plus SMART's `aud` (the FHIR base = resource).
const EXTRA_AUTH_PARAMS = ['patient', 'fhirUser', 'encounter', 'aud', 'launch', 'token_format', 'alg'];

// ---------------------------------------------------------------------------------------------------------------
// Shared state (survives Provider re-creation on key rotation).

/** In-memory oidc-provider adapter over one process-wide Map, so tokens survive a new Provider instance. */
const store = new Map(); // key "Model:id" -> { payload, expiresAt }
const grantIndex = new Map(); // grantId -> Set of keys
class MapAdapter {
  constructor(name) { this.name = name; }
  key(id) { return `${this.name}:${id}`; }
  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(key, { payload, expiresAt });
    if (payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
    if (payload.uid) store.set(`uid:${payload.uid}`, { payload: id, expiresAt });
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt });
  }
  get(key) {
    const hit = store.get(key);
    if (!hit) return undefined;
    if (hit.expiresAt <= Date.now()) { store.delete(key); return undefined; }
    return hit.payload;
  }
  async find(id) { return this.get(this.key(id)); }
  async findByUid(uid) { const id = this.get(`uid:${uid}`); return id ? this.find(id) : undefined; }
  async findByUserCode(code) { const id = this.get(`userCode:${code}`); return id ? this.find(id) : undefined; }
  async consume(id) { const p = await this.find(id); if (p) p.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    for (const key of grantIndex.get(grantId) ?? []) store.delete(key);
    grantIndex.delete(grantId);
  }
}
// Sweep expired entries so a long benchmark does not grow memory forever.
setInterval(() => {
  const now = Date.now();
  for (const [k, v] of store) if (v.expiresAt <= now) store.delete(k);
}, 30_000).unref();

/** Launch context chosen at the authorize step, by grant id (read back when tokens are minted from the grant). */
const launchByGrant = new Map();
/** Every scope string ever requested: the resource server "knows" all of them, so any SMART scope passes through. */
const knownScopes = new Set();
const stats = { jwks_fetches: 0, introspections: 0, tokens: 0 };
const modes = { jwks: 'up', introspection: 'up' };
const cookieKeys = [crypto.randomBytes(32).toString('hex')];

// Signing keys: newest RSA first (oidc-provider signs with the first key that fits the alg), then EC P-256.
let keys = [];
async function newKey(kind) {
  const alg = kind === 'EC' ? 'ES256' : 'RS256';
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, ...(kind === 'RSA' ? { modulusLength: 2048 } : {}) });
  const jwk = await jose.exportJWK(privateKey);
  const stamp = new Date().toISOString().replace(/[-:.TZ]/g, '').slice(0, 14);
  jwk.kid = `${kind.toLowerCase()}-${stamp}-${crypto.randomBytes(3).toString('hex')}`;
  jwk.alg = alg;
  jwk.use = 'sig';
  return jwk;
}

// ---------------------------------------------------------------------------------------------------------------
// Provider configuration.

const clients = [
  {
    client_id: 'test-client',
    client_secret: 'test-secret',
    grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback', 'http://localhost/callback', 'http://127.0.0.1:8080/callback', 'http://localhost:8080/callback'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'test-client-post',
    client_secret: 'test-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    client_id: 'smart-app',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback', 'http://localhost/callback', 'http://127.0.0.1:8080/callback', 'http://localhost:8080/callback'],
    token_endpoint_auth_method: 'none',
  },
  // The proxy's own credentials for introspection (basic and post both work: two ids, same secret).
  {
    client_id: 'smartgate',
    client_secret: 'smartgate-secret',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'smartgate-post',
    client_secret: 'smartgate-secret',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
  },
];

// Clients that authenticate with private_key_jwt (RFC 7523), as smartgate's upstream OAuth
// client does: a key pair per algorithm, made at start; the public key is registered inline
// (jwks), the private key is handed to tests by GET /_testbed/client-keys.
const clientKeys = {};
async function addJwtClient(clientId, alg) {
  const { privateKey, publicKey } = await jose.generateKeyPair(alg, { extractable: true, ...(alg === 'RS256' ? { modulusLength: 2048 } : {}) });
  const jwk = await jose.exportJWK(publicKey);
  jwk.kid = `${clientId}-key`;
  jwk.alg = alg;
  jwk.use = 'sig';
  clientKeys[alg] = { client_id: clientId, kid: jwk.kid, pem: await jose.exportPKCS8(privateKey) };
  clients.push({
    client_id: clientId,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: alg,
    jwks: { keys: [jwk] },
  });
}

/** The launch context + token options for the token being minted now (request params win over the grant's). */
function tokenOptions(ctx, token) {
  const fromGrant = (token?.grantId && launchByGrant.get(token.grantId)) || {};
  const fromReq = ctx?.req?.tbExtras ?? {};
  return { ...fromGrant, ...fromReq };
}

function ttlOf(opts) {
  if (opts.ttl === undefined) return 3600;
  const n = Number(opts.ttl);
  return Number.isFinite(n) ? Math.max(1, Math.trunc(n)) : 3600;
}

function makeConfig() {
  return {
    clients,
    adapter: MapAdapter,
    jwks: { keys },
    cookies: { keys: cookieKeys },
    scopes: ['openid', 'offline_access', 'fhirUser', 'profile', 'launch', 'launch/patient', 'launch/encounter', 'online_access'],
    claims: { openid: ['sub'], fhirUser: ['fhirUser'], profile: ['name'] },
    extraParams: EXTRA_AUTH_PARAMS,
    pkce: { required: () => true },
    clientBasedCORS: () => true,
    conformIdTokenClaims: false,
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      async claims() {
        const opts = tokenOptions(ctx, ctx?.oidc?.entities?.AuthorizationCode ?? ctx?.oidc?.entities?.RefreshToken);
        return { sub, fhirUser: opts.fhirUser, name: sub };
      },
    }),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      introspection: { enabled: true, allowedPolicy: async (ctx, client) => client.clientAuthMethod !== 'none' },
      revocation: { enabled: true, allowedPolicy: async () => true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // SMART apps name the FHIR server with `aud` on the authorize request: use it as the resource.
        defaultResource: async (ctx, client, oneOf) => oneOf ?? ctx.oidc.params?.aud ?? undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => {
          let url;
          try { url = new URL(resource); } catch { url = undefined; }
          if (!url || !['http:', 'https:'].includes(url.protocol)) throw new Provider.errors.InvalidTarget('resource must be an http(s) URL');
          for (const s of (ctx.oidc.params?.scope ?? '').split(' ')) if (s) knownScopes.add(s);
          const opts = tokenOptions(ctx, ctx.oidc.entities?.AuthorizationCode ?? ctx.oidc.entities?.RefreshToken);
          const alg = opts.alg === 'ES256' ? 'ES256' : 'RS256';
          return {
            scope: [...knownScopes].join(' '),
            audience: resource,
            accessTokenTTL: ttlOf(opts),
            accessTokenFormat: opts.token_format === 'opaque' ? 'opaque' : 'jwt',
            jwt: { sign: { alg } },
          };
        },
      },
    },
    extraTokenClaims: async (ctx, token) => {
      if (!['AccessToken', 'ClientCredentials'].includes(token.kind)) return undefined;
      const opts = tokenOptions(ctx, token);
      const claims = {};
      if (opts.patient !== undefined) claims.patient = opts.patient;
      if (opts.fhirUser !== undefined) claims.fhirUser = opts.fhirUser;
      if (opts.encounter !== undefined) claims.encounter = opts.encounter;
      return claims;
    },
    formats: {
      customizers: {
        // Expired / not-yet-valid JWTs on demand (ttl <= 0, nbf > 0), so the proxy's time checks can be tested.
        jwt: async (ctx, token, jwt) => {
          const opts = tokenOptions(ctx, token);
          if (opts.ttl !== undefined && Number(opts.ttl) <= 0) jwt.payload.exp = jwt.payload.iat + Math.trunc(Number(opts.ttl));
          if (opts.nbf !== undefined && Number.isFinite(Number(opts.nbf))) jwt.payload.nbf = jwt.payload.iat + Math.trunc(Number(opts.nbf));
        },
      },
    },
    ttl: {
      AccessToken: (ctx, token) => ttlOf(tokenOptions(ctx, token)),
      ClientCredentials: (ctx, token) => ttlOf(tokenOptions(ctx, token)),
      AuthorizationCode: 120,
      IdToken: 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600 * 24,
      RefreshToken: 3600 * 24,
    },
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  };
}

let provider;
let providerCallback;
function buildProvider() {
  const p = new Provider(ISSUER, makeConfig());
  p.proxy = false;
  // SMART launch context in the token response (patient, encounter), next to access_token.
  p.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/token' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object' && ctx.body.access_token) {
      stats.tokens += 1;
      const code = ctx.oidc?.entities?.AuthorizationCode ?? ctx.oidc?.entities?.RefreshToken;
      const opts = tokenOptions(ctx, code ?? ctx.oidc?.entities?.ClientCredentials);
      if (opts.patient !== undefined) ctx.body.patient = opts.patient;
      if (opts.encounter !== undefined) ctx.body.encounter = opts.encounter;
      if (opts.fhirUser !== undefined && !ctx.body.id_token) ctx.body.fhirUser = opts.fhirUser;
    }
  });
  p.on('server_error', (ctx, err) => console.error('server_error', ctx.path, err));
  provider = p;
  providerCallback = p.callback();
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP front: test-bed controls, auto-approving interactions, failure modes, then the provider.

function send(res, status, body, type = 'application/json') {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(text);
}
const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

async function readBody(req) {
  const chunks = [];
  let n = 0;
  for await (const c of req) {
    n += c.length;
    if (n > 64 * 1024) throw new Error('body too large');
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function testbedControl(req, res, url) {
  const path = url.pathname;
  if (req.method === 'GET' && path === '/_testbed/stats') return send(res, 200, { ...stats, jwks_mode: modes.jwks, introspection_mode: modes.introspection, kids: keys.map((k) => k.kid) });
  if (req.method === 'GET' && path === '/_testbed/client-keys') return send(res, 200, clientKeys);
  if (req.method !== 'POST') return send(res, 405, { error: 'use POST' });
  if (path === '/_testbed/reset-stats') {
    stats.jwks_fetches = 0; stats.introspections = 0; stats.tokens = 0;
    return send(res, 200, stats);
  }
  if (path === '/_testbed/rotate') {
    const kind = (url.searchParams.get('kty') ?? 'RSA').toUpperCase() === 'EC' ? 'EC' : 'RSA';
    const fresh = await newKey(kind);
    const dropOld = url.searchParams.get('drop_old') === '1';
    const others = keys.filter((k) => !(dropOld && k.kty === fresh.kty));
    keys = [fresh, ...others];
    buildProvider();
    return send(res, 200, { kid: fresh.kid, kty: fresh.kty, kids: keys.map((k) => k.kid) });
  }
  const which = path === '/_testbed/jwks' ? 'jwks' : path === '/_testbed/introspection' ? 'introspection' : undefined;
  if (which) {
    const mode = url.searchParams.get('mode') ?? 'up';
    if (!['up', 'down', 'garbage', 'slow'].includes(mode)) return send(res, 400, { error: 'mode must be up|down|garbage|slow' });
    modes[which] = mode;
    return send(res, 200, { [which]: mode });
  }
  return send(res, 404, { error: 'unknown test-bed control' });
}

/** Auto-approve: log in as login_hint (default "user-01") and grant every requested scope, no UI. */
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session, grantId } = details;
  if (prompt.name === 'login') {
    const accountId = typeof params.login_hint === 'string' && params.login_hint ? params.login_hint : 'user-01';
    return provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
  }
  const grant = grantId ? await provider.Grant.find(grantId) : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const d = prompt.details ?? {};
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) grant.addResourceScope(indicator, scopes.join(' '));
  const id = await grant.save();
  const scopes = String(params.scope ?? '').split(' ');
  const launch = {};
  if (params.patient) launch.patient = params.patient;
  else if (scopes.includes('launch/patient')) launch.patient = DEFAULT_PATIENT;
  if (params.encounter) launch.encounter = params.encounter;
  if (params.fhirUser) launch.fhirUser = params.fhirUser;
  else if (scopes.includes('fhirUser') && launch.patient) launch.fhirUser = `Patient/${launch.patient}`;
  if (params.token_format) launch.token_format = params.token_format;
  if (params.alg) launch.alg = params.alg;
  launchByGrant.set(id, { ...(launchByGrant.get(id) ?? {}), ...launch });
  return provider.interactionFinished(req, res, { consent: { grantId: id } }, { mergeWithLastSubmission: true });
}

async function handle(req, res) {
  const url = new URL(req.url, ISSUER);
  const path = url.pathname;
  if (path.startsWith('/_testbed/')) return testbedControl(req, res, url);
  if (path.startsWith('/interaction/')) return interaction(req, res);

  if (path === '/jwks') {
    stats.jwks_fetches += 1;
    if (modes.jwks === 'down') return send(res, 503, { error: 'jwks down (test bed)' });
    if (modes.jwks === 'garbage') return send(res, 200, '{"keys": [ this is not json', 'application/json');
    if (modes.jwks === 'slow') await sleep(SLOW_MS);
  }
  if (path === '/token/introspection') {
    stats.introspections += 1;
    if (modes.introspection === 'down') return send(res, 503, { error: 'introspection down (test bed)' });
    if (modes.introspection === 'garbage') return send(res, 200, '{"active": tru', 'application/json');
    if (modes.introspection === 'slow') await sleep(SLOW_MS);
  }
  if (path === '/token' && req.method === 'POST') {
    // Read the form ourselves to pick up the test-bed params; oidc-provider then reuses req.body.
    const raw = await readBody(req);
    req.body = raw;
    const form = querystring.parse(raw);
    const extras = {};
    for (const k of EXTRA_TOKEN_PARAMS) if (typeof form[k] === 'string') extras[k] = form[k];
    if (typeof form.scope === 'string') for (const s of form.scope.split(' ')) if (s) knownScopes.add(s);
    req.tbExtras = extras;
  }
  if (path === '/auth' && typeof url.searchParams.get('scope') === 'string') {
    for (const s of url.searchParams.get('scope').split(' ')) if (s) knownScopes.add(s);
  }
  return providerCallback(req, res);
}

keys = [await newKey('RSA'), await newKey('EC')];
await addJwtClient('upstream-jwt-rs', 'RS256');
await addJwtClient('upstream-jwt-es', 'ES256');
buildProvider();
const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error('handler error', req.method, req.url, err);
    if (!res.headersSent) send(res, 500, { error: 'server_error', error_description: String(err?.message ?? err) });
  });
});
server.listen(PORT, '127.0.0.1', () => {
  console.log(`authserver listening issuer=${ISSUER} kids=${keys.map((k) => k.kid).join(',')}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { server.close(); process.exit(0); });
