/**
 * Session tokens for interactive use (the web dashboard): short-lived JWTs (EdDSA,
 * fast-jwt), issued by `login` for a user's password and renewed by `refresh` up to
 * `MAX_SESSION_MS` after the login. The signing keys live in the replicated store (so any
 * member verifies any session) and rotate every `ROTATE_MS`; a key is kept for
 * verification until every session it signed has expired, then deleted.
 *
 * Externally issued tokens (OIDC): a JWT signed by a key of the configured JWKS file, with
 * the configured issuer (and audience), is the user `<claim>@<realm>`; ACL entries for that
 * name give it its privileges.
 */
import { createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createDecoder, createSigner, createVerifier } from 'fast-jwt';
import { NovaError } from '../errors.js';
import type { IdentityStore, JwtKeyRecord } from './identity.js';

/** How long one session token is valid. */
export const SESSION_MS = 15 * 60_000;
/** How long after the password was given a session can be renewed. */
export const MAX_SESSION_MS = 12 * 3_600_000;
/** A new signing key this often. */
export const ROTATE_MS = 24 * 3_600_000;

export interface SessionClaims {
  user: string;
  /** When the password was given (ms): refresh stops MAX_SESSION_MS after it. */
  authTime: number;
  expiresAt: number;
}

export interface OidcConfig {
  /** A JWKS document (`{"keys":[…]}`) with the issuer's public keys. */
  jwksFile: string;
  issuer: string;
  audience?: string | undefined;
  /** The claim naming the user (default `sub`). */
  userClaim: string;
  /** Users are `<claim>@<realm>` (default `oidc`). */
  realm: string;
}

const decode = createDecoder({ complete: true });
type Verify = (token: string) => Record<string, unknown>;

export class Sessions {
  readonly #identity: IdentityStore;
  #verifiers = new Map<string, Verify>();
  #oidc: { config: OidcConfig; verifiers: Map<string, Verify> } | undefined;

  constructor(identity: IdentityStore, oidc?: OidcConfig) {
    this.#identity = identity;
    if (oidc) this.#oidc = { config: oidc, verifiers: loadJwks(oidc) };
  }

  /** A new session token for `user` (async: it may have to make and store a new signing key). */
  async issue(user: string, authTime = Date.now()): Promise<{ token: string; expiresAt: number }> {
    const key = await this.#signingKey();
    const expiresAt = Math.min(Date.now() + SESSION_MS, authTime + MAX_SESSION_MS);
    const sign = createSigner({ key: key.privatePem, algorithm: 'EdDSA', kid: key.kid, iss: 'novacron', aud: 'novacron-session' });
    return { token: sign({ sub: user, auth_time: Math.floor(authTime / 1000), exp: Math.floor(expiresAt / 1000), jti: randomBytes(9).toString('base64url') }), expiresAt };
  }

  /** A session token's claims; undefined when it is not a valid session token of this cluster. */
  verifySession(token: string): SessionClaims | undefined {
    const kid = kidOf(token);
    if (!kid) return undefined;
    const record = this.#identity.jwtKey(kid);
    if (!record) return undefined;
    let verify = this.#verifiers.get(kid);
    if (!verify) {
      verify = createVerifier({ key: record.publicPem, algorithms: ['EdDSA'], allowedIss: 'novacron', allowedAud: 'novacron-session', cache: 10_000 });
      this.#verifiers.set(kid, verify);
    }
    try {
      const c = verify(token);
      return { user: String(c.sub), authTime: Number(c.auth_time) * 1000, expiresAt: Number(c.exp) * 1000 };
    } catch {
      return undefined;
    }
  }

  /** The user an OIDC provider's token names; undefined when it is not one (or is invalid). */
  verifyExternal(token: string): string | undefined {
    if (!this.#oidc) return undefined;
    const kid = kidOf(token);
    const verify = kid !== undefined ? this.#oidc.verifiers.get(kid) : undefined;
    if (!verify) return undefined;
    try {
      const claims = verify(token);
      const name = claims[this.#oidc.config.userClaim];
      if (typeof name !== 'string' || !/^[a-z0-9][a-z0-9._-]{0,40}$/.test(name)) return undefined;
      return `${name}@${this.#oidc.config.realm}`;
    } catch {
      return undefined;
    }
  }

  /** The newest key unless it is due for rotation; a new one (stored for every member) otherwise. */
  async #signingKey(): Promise<JwtKeyRecord> {
    const now = Date.now();
    const newest = this.#identity.jwtKeys().sort((a, b) => b.createdAt - a.createdAt)[0];
    if (newest && now - newest.createdAt < ROTATE_MS) return newest;
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const key: JwtKeyRecord = {
      kid: `${now.toString(36)}-${randomBytes(4).toString('hex')}`,
      createdAt: now,
      privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      publicPem: publicKey.export({ format: 'pem', type: 'spki' }).toString(),
    };
    // Keys that can have signed no live session any more go.
    const expired = this.#identity.jwtKeys().filter((k) => now - k.createdAt > ROTATE_MS + MAX_SESSION_MS).map((k) => k.kid);
    await this.#identity.rotateJwtKeys(key, expired);
    return key;
  }
}

function kidOf(token: string): string | undefined {
  if (!token.startsWith('eyJ')) return undefined;
  try {
    const kid = (decode(token) as { header: { kid?: unknown } }).header.kid;
    return typeof kid === 'string' ? kid : undefined;
  } catch {
    return undefined;
  }
}

/** One verifier per key of the JWKS file (RS256/ES256/EdDSA keys, by their `kid`). */
function loadJwks(c: OidcConfig): Map<string, Verify> {
  let jwks: { keys?: Array<Record<string, unknown>> };
  try {
    jwks = JSON.parse(readFileSync(c.jwksFile, 'utf8'));
  } catch (e) {
    throw new NovaError('CONFIG_INVALID', `cannot read the OIDC JWKS file ${c.jwksFile}: ${(e as Error).message}`);
  }
  const out = new Map<string, Verify>();
  for (const jwk of jwks.keys ?? []) {
    if (typeof jwk.kid !== 'string') continue;
    let key: KeyObject;
    try {
      key = createPublicKey({ key: jwk as never, format: 'jwk' });
    } catch {
      continue;
    }
    const alg = key.asymmetricKeyType === 'ed25519' ? 'EdDSA' : key.asymmetricKeyType === 'ec' ? 'ES256' : 'RS256';
    const pem = key.export({ format: 'pem', type: 'spki' }).toString();
    out.set(jwk.kid, createVerifier({ key: pem, algorithms: [alg as 'EdDSA'], allowedIss: c.issuer, ...(c.audience ? { allowedAud: c.audience } : {}), requiredClaims: ['exp'], cache: 10_000 }));
  }
  if (out.size === 0) throw new NovaError('CONFIG_INVALID', `the OIDC JWKS file ${c.jwksFile} has no usable key with a kid`);
  return out;
}
