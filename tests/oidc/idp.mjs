// A real OpenID Connect provider for portcullis's JWT tests, in Keycloak's URL layout.
//
//   node tests/oidc/idp.mjs [--port P] [--realm jobs] [--ttl SECONDS] [--sso-redirect-uri URL]
//                           [--sso-id-token-roles]
//                           [--sso-refresh-ttl SECONDS]
//
// The provider is `oidc-provider` (panva, OpenID Certified); this file only configures it. It
// serves one realm on 127.0.0.1:P with the URLs a Keycloak realm has:
//
//   issuer     http://127.0.0.1:P/realms/REALM
//   discovery  /realms/REALM/.well-known/openid-configuration
//   JWKS       /realms/REALM/protocol/openid-connect/certs
//   token      /realms/REALM/protocol/openid-connect/token
//
// and prints one JSON line on stdout once it listens:
//   {"ready":true,"issuer":"...","port":P,"kid":"<current RS256 kid>","es256_kid":"..."}
// `--port 0` (the default) picks a free port. SIGTERM and SIGINT stop it with exit 0.
//
// Tokens. oidc-provider implements no password grant (OAuth 2.1 removed it), so this file
// registers one with the library's own extension point, `provider.registerGrantType`, shaped
// like Keycloak's direct grant:
//
//   curl -s -d grant_type=password -d client_id=jobs-web -d username=alice -d password=alice \
//        http://127.0.0.1:P/realms/jobs/protocol/openid-connect/token
//
// The answer is `{"access_token": "<JWT>", "token_type": "Bearer", "expires_in": 300, "scope": ...}`.
// The access token is a JWT that oidc-provider signs (RS256, `kid` set) with Keycloak's claims:
// iss, sub (a fixed UUID per user), aud, azp, exp, iat, jti, typ "Bearer", scope (default
// "openid profile email"), preferred_username, email, name, realm_access.roles and
// resource_access.<client>.roles. Header: {"alg":"RS256","typ":"JWT","kid":...}.
//   users:   alice/alice  realm roles [default-roles-REALM, offline_access, uma_authorization, user]
//            admin/admin  the same and admin
//   clients: jobs-web   (public) aud ["jobs-api", "account"]
//            other-app  (public) aud "account" only: for "audience not allowed" tests
// Browser logins (only with --sso-redirect-uri): a confidential client for the authorization-code
// flow with PKCE, and oidc-provider's own login form (devInteractions: /interaction/UID, fields
// `login` and `password`, checked against the users above; consent is granted without asking):
//   client:  portcullis-sso, secret `sso-secret` (client_secret_basic), redirect_uri URL
//   ID token claims: sub, email, email_verified, preferred_username, name, groups (the realm
//            roles beyond the defaults: alice [user], admin [user, admin]), nonce; and sid
//            once a back-channel logout URI is set (below); with --sso-id-token-roles also
//            realm_access.roles and resource_access.<client>.roles, as Keycloak's `roles` mappers
//            put them there with "Add to ID token" on
// Sign-out (only with --sso-redirect-uri): RP-initiated logout at
//   /realms/REALM/protocol/openid-connect/logout (its confirmation page posts `xsrf` and
//   `logout=yes`); portcullis-sso's post_logout_redirect_uri is `/signed-out` on the origin of
//   URL. Back-Channel Logout is on: once a URI is set with /admin/backchannel-logout, signing out
//   at the provider POSTs a logout token (with sid and sub) there. Loopback addresses are allowed
//   as its target (oidc-provider refuses them by default).
// Refresh (only with --sso-redirect-uri and --sso-refresh-ttl SECONDS): portcullis-sso may use
//   grant_type=refresh_token; its code exchange answers with a refresh token (without asking for
//   offline_access, as Keycloak does for a confidential client), its access tokens live SECONDS,
//   and each refresh rotates the refresh token: a spent one is refused (invalid_grant) and, as
//   oidc-provider does with a reused refresh token, revokes the whole grant.
// Opaque tokens (introspection and revocation, always on):
//   client:  jobs-bot, secret `bot-secret` (client_secret_basic), grant client_credentials, scopes
//            `jobs:read jobs:write`: its access tokens are opaque (oidc-provider's default for
//            this grant), e.g.
//              curl -s -u jobs-bot:bot-secret -d grant_type=client_credentials -d scope=jobs:read \
//                   http://127.0.0.1:P/realms/jobs/protocol/openid-connect/token
//            and it revokes them at /realms/REALM/protocol/openid-connect/revoke (token=...)
//   client:  portcullis-introspect, secret `introspect-secret` (client_secret_basic and
//            client_secret_post both accepted): may introspect any token at
//            /realms/REALM/protocol/openid-connect/token/introspect (RFC 7662)
// JWT access tokens introspected as Keycloak does (oidc-provider itself refuses JWTs at the
// introspection endpoint): each JWT the password grant issues has an opaque twin, stored as any
// access token is; a JWT sent for introspection is answered as its twin (active, sub, client_id,
// scope, exp, iss; `{"active": false}` once the twin is gone), the client authenticated by
// oidc-provider as for any token.
//   POST /admin/end-sessions?sub=SUB  ends SUB's sessions, as Keycloak's "sign out" of a user
//                                    does: the JWTs issued to SUB so far introspect as inactive
//                                    (they still verify locally until they expire).
// private_key_jwt (RFC 7523) at the introspection endpoint:
//   POST /admin/private-key-jwt-client   the JSON body is a JWKS (public keys); registers (or
//                                    replaces) the client `portcullis-introspect-jwt` with
//                                    token_endpoint_auth_method private_key_jwt and those keys;
//                                    the provider is rebuilt, its sessions and tokens are kept.
//                                    Its client assertions' `aud` may be the issuer, the
//                                    endpoint's URL or the token endpoint's (oidc-provider's rule).
// Scopes of the example policy set policies/scopes.yaml:
//   client:  scopes-bot, secret `bot-secret` (client_secret_basic), grant client_credentials,
//            scopes microservice-{a,b}:resource:{read,write} (opaque tokens, as jobs-bot's)
//   The password grant takes any scope asked for, these included, into the JWT's `scope`.
// Extra (non-Keycloak) token request parameter: `signing_alg=ES256` signs with the realm's
// P-256 key instead of the current RS256 key. The ES256 key is always published in the JWKS.
//
// Test controls (outside the realm, not part of Keycloak):
//   POST /admin/rotate[?drop_old=1]  new RS256 key with a new kid; new tokens are signed with it.
//                                    Old RSA keys stay published unless drop_old=1.
//                                    Answers {"kid": new kid, "kids": [every published kid]}.
//   GET  /admin/keys                 {"kid": current RS256 kid, "kids": [...], "es256_kid": ...}
//   GET  /admin/stats                how often discovery, the JWKS, the token and the
//                                    introspection endpoints were requested, and when the JWKS
//                                    last was (ms since the epoch): {"discovery": n, "jwks": n,
//                                    "token": n, "introspection": n, "last_jwks_ms": t}
//   POST /admin/jwks-status?code=503 make the JWKS endpoint answer that status (code=200: normal)
//   POST /admin/token-delay?ms=N     the token endpoint answers N ms late (0: at once), so that
//                                    requests from several clients overlap
//   GET  /admin/refreshes            the refresh_token grants asked for, and how many were refused:
//                                    {"grants": n, "refused": n}
//   POST /admin/revoke-sso-grants    revokes every grant of portcullis-sso (as an administrator
//                                    ending a person's sessions would): their refresh tokens are
//                                    refused from then on. Answers {"revoked": n}
//   POST /admin/backchannel-logout?uri=URL  portcullis-sso's backchannel_logout_uri (uri empty:
//                                    none); the provider is rebuilt, its sessions are kept
//   POST /admin/sign[?foreign=1]     the JSON body (claims) signed as the realm signs its tokens
//                                    (RS256, the current kid, typ logout+jwt); foreign=1: by a
//                                    key the JWKS does not hold, under the same kid.
//                                    Answers {"token": "..."}.
// One line per request goes to stderr.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    realm: { type: 'string', default: 'jobs' },
    ttl: { type: 'string', default: '300' },
    'sso-redirect-uri': { type: 'string' },
    'sso-id-token-roles': { type: 'boolean', default: false },
    'sso-refresh-ttl': { type: 'string' },
  },
});

const HOST = '127.0.0.1';
const REALM = args.realm;
const PREFIX = `/realms/${REALM}`;
const ACCESS_TOKEN_TTL = Number(args.ttl);
const DEFAULT_SCOPE = 'openid profile email';
const SSO_CLIENT = 'portcullis-sso';
const SSO_REDIRECT_URI = args['sso-redirect-uri'];
const SSO_ID_TOKEN_ROLES = args['sso-id-token-roles'];
const SSO_REFRESH = Boolean(SSO_REDIRECT_URI && args['sso-refresh-ttl']);
const SSO_ACCESS_TOKEN_TTL = Number(args['sso-refresh-ttl'] ?? ACCESS_TOKEN_TTL);
const INTROSPECTION_CLIENT = 'portcullis-introspect';
const INTROSPECTION_SCOPES = ['jobs:read', 'jobs:write'];
const SERVICE_SCOPES = ['microservice-a', 'microservice-b'].flatMap((service) => ['read', 'write'].map((action) => `${service}:resource:${action}`));
const PRIVATE_KEY_JWT_CLIENT = 'portcullis-introspect-jwt';

const DEFAULT_ROLES = [`default-roles-${REALM}`, 'offline_access', 'uma_authorization'];
const ACCOUNT_ROLES = { roles: ['manage-account', 'manage-account-links', 'view-profile'] };
const USERS = {
  alice: {
    password: 'alice',
    sub: '0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11',
    email: 'alice@example.com',
    given_name: 'Alice',
    family_name: 'Liddell',
    realmRoles: [...DEFAULT_ROLES, 'user'],
    clientRoles: { 'jobs-web': ['viewer'] },
  },
  admin: {
    password: 'admin',
    sub: '7d8e0a52-2c0f-4b6a-8f0e-1d7c9b4e5f22',
    email: 'admin@example.com',
    given_name: 'Ada',
    family_name: 'Admin',
    realmRoles: [...DEFAULT_ROLES, 'user', 'admin'],
    clientRoles: { 'jobs-web': ['viewer', 'editor'] },
  },
};
// client_id -> the `aud` its access tokens carry (Keycloak: audience mappers / client scopes).
const CLIENT_AUDIENCES = {
  'jobs-web': ['jobs-api', 'account'],
  'other-app': 'account',
};

// ---------------------------------------------------------------- keys

function newKid() {
  return crypto.randomBytes(24).toString('base64url');
}

function newRsaKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: newKid(), alg: 'RS256', use: 'sig' };
}

function newEcKey() {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), kid: newKid(), alg: 'ES256', use: 'sig' };
}

const keys = {
  rsa: [newRsaKey()], // newest first; rsa[0] signs
  ec: newEcKey(),
};
// The provider's cookie keys: kept when it is rebuilt, so that its browser sessions survive.
const COOKIE_KEYS = [crypto.randomBytes(32).toString('base64url')];
// portcullis-sso's backchannel_logout_uri, set with /admin/backchannel-logout.
let ssoBackchannelLogoutUri;
// The public keys of portcullis-introspect-jwt, set with /admin/private-key-jwt-client.
let privateKeyJwtClientJwks;
// A JWT access token's jti -> its opaque twin { value, sub }, for introspection.
const jwtTwins = new Map();

// ---------------------------------------------------------------- the provider

// Per-token Keycloak claims, handed from the grant handler to the JWT customizer.
const pendingClaims = new WeakMap();

function keycloakClaims(username, user, clientId, scope) {
  return {
    typ: 'Bearer',
    azp: clientId,
    scope,
    preferred_username: username,
    email: user.email,
    email_verified: true,
    name: `${user.given_name} ${user.family_name}`,
    given_name: user.given_name,
    family_name: user.family_name,
    realm_access: { roles: user.realmRoles },
    resource_access: {
      ...Object.fromEntries(Object.entries(user.clientRoles).map(([c, roles]) => [c, { roles }])),
      account: ACCOUNT_ROLES,
    },
  };
}

function scopeOf(requested) {
  const scopes = new Set(DEFAULT_SCOPE.split(' '));
  for (const s of (requested || '').split(' ')) if (s) scopes.add(s);
  return [...scopes].join(' ');
}

async function passwordGrant(ctx) {
  const { client, params, provider } = ctx.oidc;
  const user = Object.hasOwn(USERS, params.username) ? USERS[params.username] : undefined;
  if (!user || !params.password || !crypto.timingSafeEqual(
    crypto.createHash('sha256').update(params.password).digest(),
    crypto.createHash('sha256').update(user.password).digest(),
  )) {
    const error = new errors.InvalidGrant();
    error.error_description = 'Invalid user credentials'; // Keycloak's wording
    throw error;
  }
  const alg = params.signing_alg || 'RS256';
  if (alg !== 'RS256' && alg !== 'ES256') {
    throw new errors.InvalidRequest('signing_alg must be RS256 or ES256');
  }
  const kid = alg === 'ES256' ? keys.ec.kid : keys.rsa[0].kid;
  const scope = scopeOf(params.scope);
  const resourceServer = new provider.ResourceServer(`urn:${REALM}:access-token`, {
    audience: 'account',
    scope,
    accessTokenFormat: 'jwt',
    accessTokenTTL: ACCESS_TOKEN_TTL,
    jwt: { sign: { alg, kid } },
  });
  const token = new provider.AccessToken({
    accountId: user.sub,
    client,
    scope,
    gty: 'password',
    resourceServer,
    expiresIn: ACCESS_TOKEN_TTL,
  });
  pendingClaims.set(token, keycloakClaims(params.username, user, client.clientId, scope));
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  const twin = new provider.AccessToken({ accountId: user.sub, client, scope, gty: 'password', expiresIn: ACCESS_TOKEN_TTL });
  jwtTwins.set(token.jti, { value: await twin.save(), sub: user.sub });
  ctx.body = {
    access_token: value,
    expires_in: ACCESS_TOKEN_TTL,
    refresh_expires_in: 0,
    token_type: 'Bearer',
    'not-before-policy': 0,
    scope,
  };
}

function customizeJwt(ctx, token, jwt) {
  const claims = pendingClaims.get(token);
  if (!claims) return;
  jwt.header = { typ: 'JWT' };
  const { payload } = jwt;
  delete payload.client_id;
  Object.assign(payload, claims);
  payload.aud = CLIENT_AUDIENCES[token.clientId];
}

// The browser-login client and its settings, when --sso-redirect-uri is given.
function ssoClients() {
  if (!SSO_REDIRECT_URI) return [];
  return [{
    client_id: SSO_CLIENT,
    client_secret: 'sso-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: SSO_REFRESH ? ['authorization_code', 'refresh_token'] : ['authorization_code'],
    response_types: ['code'],
    redirect_uris: [SSO_REDIRECT_URI],
    post_logout_redirect_uris: [new URL('/signed-out', SSO_REDIRECT_URI).href],
    ...(ssoBackchannelLogoutUri ? {
      backchannel_logout_uri: ssoBackchannelLogoutUri,
      backchannel_logout_session_required: true,
    } : {}),
  }];
}

// portcullis-introspect-jwt, once its keys are registered.
function privateKeyJwtClients() {
  if (!privateKeyJwtClientJwks) return [];
  return [{
    client_id: PRIVATE_KEY_JWT_CLIENT,
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: privateKeyJwtClientJwks,
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  }];
}

// A JWT sent for introspection is answered as its opaque twin (Keycloak introspects JWTs); the
// form is read here and handed on as `req.body`, which oidc-provider reads when the stream is spent.
async function introspectJwtsAsTwins(ctx, next) {
  if (ctx.method !== 'POST' || ctx.path !== '/protocol/openid-connect/token/introspect') return next();
  const form = new URLSearchParams(await readBody(ctx.req));
  const parts = (form.get('token') ?? '').split('.');
  if (parts.length === 3) {
    let jti;
    try {
      ({ jti } = JSON.parse(Buffer.from(parts[1], 'base64url').toString()));
    } catch {
      jti = undefined;
    }
    // A JWT without a twin (ended, or never issued here) is looked up as a made-up token.
    form.set('token', jwtTwins.get(jti)?.value ?? `ended-${crypto.randomBytes(8).toString('hex')}`);
  }
  ctx.req.body = form.toString();
  return next();
}

function userNamed(id) {
  return Object.entries(USERS).find(([name, u]) => u.sub === id || name === id);
}

// First-party client: consent is granted without a question (oidc-provider's documented recipe).
async function loadExistingGrant(ctx) {
  const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
  if (grantId) return ctx.oidc.provider.Grant.find(grantId);
  if (ctx.oidc.client.clientId !== SSO_CLIENT) return undefined;
  const grant = new ctx.oidc.provider.Grant({ clientId: SSO_CLIENT, accountId: ctx.oidc.session.accountId });
  grant.addOIDCScope(DEFAULT_SCOPE);
  await grant.save();
  return grant;
}

function passwordMatches(user, password) {
  return Boolean(user && password) && crypto.timingSafeEqual(
    crypto.createHash('sha256').update(password).digest(),
    crypto.createHash('sha256').update(user.password).digest(),
  );
}

// The login form's submission, checked here (devInteractions only renders it): a known user with
// the right password logs in as that user's id; anything else gets 401 and the form again.
async function checkLoginForm(provider, ctx, next) {
  if (ctx.method !== 'POST' || !/^\/interaction\/[^/]+$/.test(ctx.path)) return next();
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  const form = new URLSearchParams(Buffer.concat(chunks).toString());
  const user = Object.hasOwn(USERS, form.get('login') ?? '') ? USERS[form.get('login')] : undefined;
  if (form.get('prompt') !== 'login' || !passwordMatches(user, form.get('password'))) {
    ctx.status = 401;
    ctx.body = 'Invalid username or password';
    return undefined;
  }
  ctx.respond = false;
  return provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
}

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: [
      ...ssoClients(),
      ...privateKeyJwtClients(),
      {
        client_id: 'scopes-bot',
        client_secret: 'bot-secret',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: SERVICE_SCOPES.join(' '),
      },
      {
        client_id: 'jobs-web', token_endpoint_auth_method: 'none', grant_types: ['password'], response_types: [], redirect_uris: [],
      },
      {
        client_id: 'other-app', token_endpoint_auth_method: 'none', grant_types: ['password'], response_types: [], redirect_uris: [],
      },
      {
        client_id: 'jobs-bot',
        client_secret: 'bot-secret',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: INTROSPECTION_SCOPES.join(' '),
      },
      ...['client_secret_basic', 'client_secret_post'].map((method) => ({
        client_id: method === 'client_secret_basic' ? INTROSPECTION_CLIENT : `${INTROSPECTION_CLIENT}-post`,
        client_secret: 'introspect-secret',
        token_endpoint_auth_method: method,
        grant_types: [],
        response_types: [],
        redirect_uris: [],
      })),
    ],
    scopes: ['openid', 'offline_access', ...INTROSPECTION_SCOPES, ...SERVICE_SCOPES],
    jwks: { keys: [...keys.rsa, keys.ec] },
    routes: {
      authorization: '/protocol/openid-connect/auth',
      end_session: '/protocol/openid-connect/logout',
      introspection: '/protocol/openid-connect/token/introspect',
      jwks: '/protocol/openid-connect/certs',
      revocation: '/protocol/openid-connect/revoke',
      token: '/protocol/openid-connect/token',
      userinfo: '/protocol/openid-connect/userinfo',
    },
    ttl: {
      AccessToken: (ctx, token, client) => (SSO_REFRESH && client?.clientId === SSO_CLIENT ? SSO_ACCESS_TOKEN_TTL : ACCESS_TOKEN_TTL),
    },
    // portcullis-sso (with --sso-refresh-ttl) gets a refresh token without asking for offline_access.
    issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
      && (client.clientId === SSO_CLIENT || code.scopes.has('offline_access')),
    rotateRefreshToken: true,
    features: {
      devInteractions: { enabled: Boolean(SSO_REDIRECT_URI) },
      rpInitiatedLogout: { enabled: true },
      backchannelLogout: { enabled: Boolean(SSO_REDIRECT_URI) },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
    },
    // Back-channel logout tokens go to portcullis on loopback: without oidc-provider's guard
    // against special-use addresses (a test provider only).
    fetch: (url, options) => globalThis.fetch(url, { ...options, dispatcher: undefined }),
    conformIdTokenClaims: false,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['preferred_username', 'name', 'groups', ...(SSO_ID_TOKEN_ROLES ? ['realm_access', 'resource_access'] : [])],
    },
    loadExistingGrant,
    formats: { customizers: { jwt: customizeJwt } },
    cookies: { keys: COOKIE_KEYS },
    async findAccount(ctx, id) {
      // A user's id (tokens) or name (the login form's `login`).
      const entry = userNamed(id);
      if (!entry) return undefined;
      const [name, user] = entry;
      return {
        accountId: id,
        claims: async () => ({
          sub: user.sub,
          preferred_username: name,
          email: user.email,
          email_verified: true,
          name: `${user.given_name} ${user.family_name}`,
          groups: user.realmRoles.filter((role) => !DEFAULT_ROLES.includes(role)),
          realm_access: { roles: user.realmRoles },
          resource_access: Object.fromEntries(Object.entries(user.clientRoles).map(([c, roles]) => [c, { roles }])),
        }),
      };
    },
  });
  if (SSO_REDIRECT_URI) provider.use((ctx, next) => checkLoginForm(provider, ctx, next));
  provider.use(introspectJwtsAsTwins);
  provider.registerGrantType('password', passwordGrant, ['username', 'password', 'scope', 'signing_alg']);
  provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err));
  provider.on('grant.error', (ctx, err) => console.error('oidc-provider grant.error:', err.message, err.error_description ?? ''));
  provider.on('backchannel.error', (ctx, err) => console.error('oidc-provider backchannel.error:', err.message));
  provider.on('grant.saved', (grant) => { if (grant.clientId === SSO_CLIENT) ssoGrants.add(grant.jti); });
  provider.on('grant.success', (ctx) => { if (ctx.oidc.params?.grant_type === 'refresh_token') refreshes.grants += 1; });
  provider.on('grant.error', (ctx) => {
    if (ctx.oidc?.params?.grant_type === 'refresh_token') {
      refreshes.grants += 1;
      refreshes.refused += 1;
    }
  });
  return { provider, handle: provider.callback() };
}

// ---------------------------------------------------------------- HTTP

const stats = { discovery: 0, jwks: 0, token: 0, introspection: 0, last_jwks_ms: null };
const refreshes = { grants: 0, refused: 0 };
let tokenDelayMs = 0;
const ssoGrants = new Set(); // ids of portcullis-sso's grants, for /admin/revoke-sso-grants
let jwksStatus = 200;
let issuer;
let current; // { provider, handle }: rebuilt when the keys change

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function keyInfo() {
  return { kid: keys.rsa[0].kid, kids: [...keys.rsa.map((k) => k.kid), keys.ec.kid], es256_kid: keys.ec.kid };
}

function base64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

// `claims` as a compact JWS, RS256, under the current kid; with `foreign`, by a key not published.
function signClaims(claims, foreign) {
  const jwk = foreign ? newRsaKey() : keys.rsa[0];
  const header = { alg: 'RS256', typ: 'logout+jwt', kid: keys.rsa[0].kid };
  const input = `${base64url(header)}.${base64url(claims)}`;
  const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  return `${input}.${crypto.sign('sha256', Buffer.from(input), key).toString('base64url')}`;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString();
}

async function admin(req, res, url) {
  const route = `${req.method} ${url.pathname}`;
  if (route === 'POST /admin/backchannel-logout') {
    ssoBackchannelLogoutUri = url.searchParams.get('uri') || undefined;
    current = buildProvider(issuer);
    return sendJson(res, 200, { backchannel_logout_uri: ssoBackchannelLogoutUri ?? null });
  }
  if (route === 'POST /admin/private-key-jwt-client') {
    try {
      privateKeyJwtClientJwks = JSON.parse(await readBody(req));
    } catch {
      return sendJson(res, 400, { error: 'the body must be a JWKS' });
    }
    current = buildProvider(issuer);
    return sendJson(res, 200, { client_id: PRIVATE_KEY_JWT_CLIENT });
  }
  if (route === 'POST /admin/end-sessions') {
    const sub = url.searchParams.get('sub');
    const ended = [...jwtTwins].filter(([, twin]) => twin.sub === sub);
    for (const [jti, twin] of ended) {
      jwtTwins.delete(jti);
      // eslint-disable-next-line no-await-in-loop
      await (await current.provider.AccessToken.find(twin.value))?.destroy();
    }
    return sendJson(res, 200, { ended: ended.length });
  }
  if (route === 'POST /admin/sign') {
    let claims;
    try {
      claims = JSON.parse(await readBody(req));
    } catch {
      return sendJson(res, 400, { error: 'the body must be JSON claims' });
    }
    return sendJson(res, 200, { token: signClaims(claims, url.searchParams.get('foreign') === '1') });
  }
  if (route === 'POST /admin/rotate') {
    const fresh = newRsaKey();
    keys.rsa = url.searchParams.get('drop_old') === '1' ? [fresh] : [fresh, ...keys.rsa];
    current = buildProvider(issuer);
    return sendJson(res, 200, keyInfo());
  }
  if (route === 'GET /admin/keys') return sendJson(res, 200, keyInfo());
  if (route === 'GET /admin/refreshes') return sendJson(res, 200, refreshes);
  if (route === 'POST /admin/token-delay') {
    tokenDelayMs = Math.max(0, Number(url.searchParams.get('ms') ?? '0')) || 0;
    return sendJson(res, 200, { token_delay_ms: tokenDelayMs });
  }
  if (route === 'POST /admin/revoke-sso-grants') {
    let revoked = 0;
    for (const id of ssoGrants) {
      const grant = await current.provider.Grant.find(id);
      if (grant) {
        await grant.destroy();
        revoked += 1;
      }
    }
    ssoGrants.clear();
    return sendJson(res, 200, { revoked });
  }
  if (route === 'GET /admin/stats') return sendJson(res, 200, stats);
  if (route === 'POST /admin/jwks-status') {
    const code = Number(url.searchParams.get('code') ?? '200');
    if (!Number.isInteger(code) || code < 200 || code > 599) return sendJson(res, 400, { error: 'code must be an HTTP status' });
    jwksStatus = code;
    return sendJson(res, 200, { jwks_status: jwksStatus });
  }
  return sendJson(res, 404, { error: `no admin route ${route}` });
}

const server = http.createServer((req, res) => {
  res.on('finish', () => console.error(`${req.method} ${req.originalUrl ?? req.url} ${res.statusCode}`));
  const url = new URL(req.url, `http://${HOST}`);
  if (url.pathname.startsWith('/admin/')) return admin(req, res, url);
  if (url.pathname !== PREFIX && !url.pathname.startsWith(`${PREFIX}/`)) {
    return sendJson(res, 404, { error: 'Realm does not exist' });
  }
  const inner = url.pathname.slice(PREFIX.length);
  if (inner === '/.well-known/openid-configuration') stats.discovery += 1;
  if (inner === '/protocol/openid-connect/certs') {
    stats.jwks += 1;
    stats.last_jwks_ms = Date.now();
    if (jwksStatus !== 200) return sendJson(res, jwksStatus, { error: 'unavailable' });
  }
  if (inner === '/protocol/openid-connect/token') {
    stats.token += 1;
    if (tokenDelayMs > 0) {
      req.pause();
      setTimeout(() => {
        req.originalUrl = req.url;
        req.url = req.url.slice(PREFIX.length) || '/';
        req.resume();
        current.handle(req, res);
      }, tokenDelayMs);
      return undefined;
    }
  }
  if (inner === '/protocol/openid-connect/token/introspect') stats.introspection += 1;
  // Mount the provider under PREFIX, as Express does: oidc-provider reads the mount path from
  // req.originalUrl minus req.url.
  req.originalUrl = req.url;
  req.url = req.url.slice(PREFIX.length) || '/';
  return current.handle(req, res);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

server.listen(Number(args.port), HOST, () => {
  const { port } = server.address();
  issuer = `http://${HOST}:${port}${PREFIX}`;
  current = buildProvider(issuer);
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, port, ...keyInfo() })}\n`);
});
