// A real OpenID Connect provider for the tests: npm's oidc-provider (panva/node-oidc-provider, pinned by
// package-lock.json beside this file), configured entirely from the JSON file named by argv[2]. Started by
// tests/support/oidc (start_oidc_provider) on a free loopback port, so the gateway's console sign-in (authorization
// code flow with PKCE) is tested against a real identity provider.
//
//   node scripts/oidc-provider/server.mjs <config.json>        (NODE_PATH=build/oidc-provider/node_modules)
//
// Config: {"issuer": "http://127.0.0.1:PORT", "port": PORT,
//          "clients": [{"client_id", "client_secret"?, "redirect_uris": [...], ...other client metadata}],
//          "accounts": {"<login>": {<claims: name, email, roles, carrier, ...>}},
//          "claims"?: {"<scope>": ["claim", ...]}, "id_token_signing_alg"?: "ES256" | "RS256" | "EdDSA"}
//
// What it does: the authorization code flow only (response_type=code), PKCE required with S256; scopes openid,
// profile (name), email (email) and haulmesh (roles, carrier) unless "claims" says otherwise, and the claims of the
// granted scopes are in the ID token (conformIdTokenClaims: false). ID tokens are signed with a key generated at
// start (ES256 unless told), published at the JWKS endpoint. Sign-in is a tiny HTML form at the interaction URL
// (input "login", no password: a test IdP): the login is the account id and the subject; an unknown login gets the
// form again with an error. Consent is granted at once for whatever was requested. Logs go to stdout only (one line
// per request, the provider's errors); "READY <issuer>" is printed once listening; SIGTERM or SIGINT ends it.
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

// Everything to stdout: the provider's own warnings use console.warn/console.error.
console.warn = console.log;
console.error = console.log;

function fail(message) {
  console.log(`oidc-provider test server: ${message}`);
  process.exit(2);
}

// ESM ignores NODE_PATH, so resolve the package the CommonJS way (NODE_PATH honoured), falling back to the
// checkout's build/oidc-provider (where `bash scripts/oidc-provider/install.sh build/oidc-provider` puts it).
function resolveProvider() {
  const require = createRequire(import.meta.url);
  try {
    return require.resolve('oidc-provider');
  } catch {
    const build = new URL('../../build/oidc-provider/', import.meta.url).pathname;
    try {
      return require.resolve('oidc-provider', { paths: [build] });
    } catch {
      return fail('oidc-provider is not installed: bash scripts/oidc-provider/install.sh build/oidc-provider '
        + '(or set NODE_PATH to its node_modules)');
    }
  }
}

const entry = resolveProvider();
const { default: Provider, errors } = await import(pathToFileURL(entry).href);
const { version } = JSON.parse(readFileSync(new URL('../package.json', pathToFileURL(entry)), 'utf8'));

// --- configuration ------------------------------------------------------------------------------------------

if (!process.argv[2]) fail('usage: node server.mjs <config.json>');
let config;
try {
  config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
} catch (err) {
  fail(`cannot read the config ${process.argv[2]}: ${err.message}`);
}
const { issuer, port } = config;
if (typeof issuer !== 'string' || !/^https?:\/\//.test(issuer)) fail('config.issuer must be an http(s) URL');
if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('config.port must be a TCP port');
if (!Array.isArray(config.clients) || config.clients.length === 0) fail('config.clients must list a client');
for (const client of config.clients) {
  if (typeof client.client_id !== 'string' || !client.client_id) fail('every client needs a client_id');
  if (!Array.isArray(client.redirect_uris) || client.redirect_uris.length === 0) {
    fail(`client ${client.client_id} needs redirect_uris`);
  }
}
if (typeof config.accounts !== 'object' || config.accounts === null) fail('config.accounts must be an object');
const accounts = new Map(Object.entries(config.accounts));
const scopeClaims = config.claims ?? {
  openid: ['sub'], profile: ['name'], email: ['email'], haulmesh: ['roles', 'carrier'],
};

// One signing key, made now: the ID tokens' (and, unused here, userinfo's) key, published at jwks_uri.
const KEY_TYPES = {
  ES256: ['ec', { namedCurve: 'P-256' }],
  RS256: ['rsa', { modulusLength: 2048 }],
  EdDSA: ['ed25519', {}],
};
const alg = config.id_token_signing_alg ?? 'ES256';
if (!(alg in KEY_TYPES)) fail(`id_token_signing_alg must be one of ${Object.keys(KEY_TYPES).join(', ')}`);
const { privateKey } = generateKeyPairSync(...KEY_TYPES[alg]);
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg, use: 'sig' };

const provider = new Provider(issuer, {
  clients: config.clients.map((client) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: client.client_secret ? 'client_secret_basic' : 'none',
    id_token_signed_response_alg: alg,
    ...client,
  })),
  async findAccount(ctx, id) {
    if (!accounts.has(id)) return undefined;
    return { accountId: id, claims: async () => ({ ...accounts.get(id), sub: id }) };
  },
  jwks: { keys: [signingKey] },
  claims: scopeClaims,
  // Without this, an ID token issued with an access token for userinfo carries only sub (and the protocol
  // claims): OIDC Core §5.4 puts scope-requested claims in userinfo. The console reads them from the ID token.
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  pkce: { methods: ['S256'], required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // Signed cookies; not `secure`: oidc-provider sets secure only when the request came over https.
  cookies: { keys: [randomBytes(32).toString('base64url')] },
});

// Static clients are validated on first use: do it now, so a bad client fails the start, not the first request.
for (const { client_id: clientId } of config.clients) {
  try {
    if (!await provider.Client.find(clientId)) fail(`client ${clientId} is not found`);
  } catch (err) {
    fail(`client ${clientId} is invalid: ${err.error_description ?? err.message}`);
  }
}

for (const event of ['authorization.error', 'grant.error', 'server_error', 'userinfo.error', 'end_session.error',
  'jwks.error', 'discovery.error']) {
  provider.on(event, (ctx, err) => {
    console.log(`${event}: ${err.error ?? err.name}: ${err.error_description ?? err.message}`
      + (event === 'server_error' ? `\n${err.stack}` : ''));
  });
}

// --- interactions: the sign-in form, and consent granted at once ----------------------------------------------

const escapeHtml = (value) => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(res, status, title, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>`
    + `<body><h1>${escapeHtml(title)}</h1>${body}</body></html>\n`);
}

function loginForm(res, details, error) {
  const alert = error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : '';
  page(res, 200, 'Sign in to the Haulmesh test IdP',
    `<p>Client <code>${escapeHtml(details.params.client_id)}</code> asks for <code>`
    + `${escapeHtml(details.params.scope ?? '')}</code>.</p>${alert}`
    + `<form method="post" action="/interaction/${escapeHtml(details.uid)}/login">`
    + '<label>Login <input name="login" autocomplete="username" autofocus required></label> '
    + '<button type="submit">Sign in</button></form>');
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function grantConsent(details) {
  const { prompt: { details: missing }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return details.grantId ? {} : { grantId };
}

async function interaction(req, res, path) {
  const match = /^\/interaction\/([\w-]+)(\/login)?$/.exec(path);
  if (!match) return page(res, 404, 'Not found', '');
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    if (err instanceof errors.SessionNotFound) {
      return page(res, 400, 'Sign-in expired', `<p role="alert">${escapeHtml(err.error_description)}</p>`);
    }
    throw err;
  }
  if (details.uid !== match[1]) return page(res, 400, 'Sign-in expired', '<p role="alert">another sign-in</p>');
  const { prompt } = details;
  if (!match[2]) {
    if (req.method !== 'GET') return page(res, 405, 'Method not allowed', '');
    if (prompt.name === 'login') return loginForm(res, details);
    if (prompt.name === 'consent') {
      const consent = await grantConsent(details);
      return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
    }
    return page(res, 400, 'Unsupported prompt', `<p role="alert">${escapeHtml(prompt.name)}</p>`);
  }
  if (req.method !== 'POST') return page(res, 405, 'Method not allowed', '');
  if (prompt.name !== 'login') return page(res, 400, 'Not a sign-in', `<p role="alert">${escapeHtml(prompt.name)}</p>`);
  const login = ((await readForm(req)).get('login') ?? '').trim();
  if (!accounts.has(login)) return loginForm(res, details, `Unknown login: ${login}`);
  console.log(`signed in: ${login}`);
  return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
}

// --- the server ---------------------------------------------------------------------------------------------

const callback = provider.callback();
const server = createServer(async (req, res) => {
  const path = new URL(req.url, issuer).pathname;
  res.on('finish', () => console.log(`${req.method} ${path} ${res.statusCode}`));
  if (!path.startsWith('/interaction/')) return callback(req, res);
  try {
    return await interaction(req, res, path);
  } catch (err) {
    console.log(`interaction failed: ${err.stack}`);
    if (!res.headersSent) return page(res, 500, 'Server error', `<p role="alert">${escapeHtml(err.message)}</p>`);
    return res.end();
  }
});
server.on('error', (err) => {
  console.log(`cannot listen on port ${port}: ${err.code ?? ''} ${err.message}`);
  process.exit(1);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    console.log(`stopping on ${signal}`);
    server.closeAllConnections();
    server.close();
    process.exit(0);
  });
}
server.listen(port, config.host ?? new URL(issuer).hostname, () => {
  console.log(`oidc-provider ${version} (node ${process.version}), ${config.clients.length} client(s), `
    + `${accounts.size} account(s), ID tokens ${alg}`);
  console.log(`READY ${issuer}`);
});
