/**
 * Members vouch for their requests to each other with their certificates, never with a
 * user's token. A request one member makes to another's API (a forwarded request, a
 * relayed WebSocket, a migration offer) carries `Authorization: NovaMember <JWT>`: an
 * ES256 JWT signed with the sender's member key, with its certificate in `x5c`. The
 * receiver accepts it only if the cluster CA issued that certificate to the member the JWT
 * says it is from (`iss`), the JWT is for this member (`aud`), this method and target
 * (`htm`, `htu`, as DPoP binds a proof to its request, RFC 9449), at most a minute old,
 * and — for a request that changes something — not seen before (`jti`).
 *
 * `sub` and `tok` name the user (and the user's API token) the member acts for; the
 * receiver builds that user's principal from the replicated identity records, so a
 * revoked token or a disabled user is refused there too. Without them the member acts for
 * itself (a migration offer).
 */
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { createDecoder, createSigner, createVerifier } from 'fast-jwt';
import { verifyMemberCert } from '../tls/pki.js';
import type { MemberTls } from '../tls/member-tls.js';

export const MEMBER_SCHEME = 'NovaMember ';

/** How long an assertion is valid after it is made. */
export const ASSERTION_MS = 60_000;
/** Clocks of members may differ by this much. */
const SKEW_MS = 10_000;
/** Certificates verified (by SHA-256 of their DER), at most. */
const MAX_CERTS = 256;
/** Identifiers of mutating requests remembered (for their lifetime), at most. */
const MAX_SEEN = 200_000;

/** Who a member acts for. */
export interface OnBehalf {
  user: string;
  tokenId?: string | undefined;
}

/** A verified assertion: the member that sent it, and the user it acts for, if any. */
export interface MemberCall {
  member: number;
  onBehalf?: OnBehalf;
}

type Verify = (token: string) => Record<string, unknown>;
const decode = createDecoder({ complete: true }) as (token: string) => { header: Record<string, unknown>; payload: Record<string, unknown> };
const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export class MemberAssertions {
  readonly #tls: MemberTls;
  readonly #now: () => number;
  #signer: { certPem: string; sign: (payload: Record<string, unknown>) => string } | undefined;
  #certs = new Map<string, { member: number; notBefore: number; notAfter: number; caPem: string; verify: Verify }>();
  #seen = new Map<string, number>();

  constructor(tls: MemberTls, now: () => number = Date.now) {
    this.#tls = tls;
    this.#now = now;
  }

  /** This member. */
  get self(): number {
    return this.#tls.memberId;
  }

  /** The Authorization header of a request to member `to`: `method` on `url` (path and query). */
  header(to: number, method: string, url: string, onBehalf?: OnBehalf): string {
    const payload: Record<string, unknown> = {
      iss: String(this.self), aud: String(to), htm: method.toUpperCase(), htu: canonicalTarget(url),
      iat: Math.floor(this.#now() / 1000), jti: randomBytes(12).toString('base64url'),
    };
    if (onBehalf) {
      payload.sub = onBehalf.user;
      if (onBehalf.tokenId) payload.tok = onBehalf.tokenId;
    }
    return MEMBER_SCHEME + this.#sign()(payload);
  }

  /** The verified call an Authorization header vouches for, as a request `method` on `url` here; undefined if it does not. */
  verify(header: string, method: string, url: string): MemberCall | undefined {
    if (!header.startsWith(MEMBER_SCHEME)) return undefined;
    const token = header.slice(MEMBER_SCHEME.length);
    let claims: Record<string, unknown>;
    try {
      const { header: h } = decode(token);
      const x5c = h.x5c;
      if (h.alg !== 'ES256' || !Array.isArray(x5c) || typeof x5c[0] !== 'string') return undefined;
      const cert = this.#cert(x5c[0]);
      if (!cert) return undefined;
      claims = cert.verify(token);
      if (claims.iss !== String(cert.member)) return undefined;
    } catch {
      return undefined;
    }
    const now = this.#now();
    const iat = Number(claims.iat) * 1000;
    if (!Number.isFinite(iat) || iat > now + SKEW_MS || iat + ASSERTION_MS < now - SKEW_MS) return undefined;
    if (claims.aud !== String(this.self) || claims.htm !== method.toUpperCase() || claims.htu !== canonicalTarget(url)) return undefined;
    if (MUTATING.has(method.toUpperCase()) && !this.#firstUse(String(claims.jti ?? ''), iat + ASSERTION_MS + SKEW_MS, now)) return undefined;
    const call: MemberCall = { member: Number(claims.iss) };
    if (typeof claims.sub === 'string') call.onBehalf = { user: claims.sub, ...(typeof claims.tok === 'string' ? { tokenId: claims.tok } : {}) };
    return call;
  }

  #sign(): (payload: Record<string, unknown>) => string {
    const m = this.#tls.material;
    if (this.#signer?.certPem !== m.certPem) {
      const der = new X509Certificate(m.certPem).raw.toString('base64');
      this.#signer = { certPem: m.certPem, sign: createSigner({ key: m.keyPem, algorithm: 'ES256', header: { alg: 'ES256', x5c: [der] } }) as (p: Record<string, unknown>) => string };
    }
    return this.#signer.sign;
  }

  /** A certificate the cluster CA issued to a member, valid now (checked once per certificate and CA). */
  #cert(derB64: string) {
    const key = createHash('sha256').update(derB64).digest('base64');
    const caPem = this.#tls.material.caPem;
    const now = this.#now();
    let c = this.#certs.get(key);
    if (!c || c.caPem !== caPem) {
      const cert = new X509Certificate(Buffer.from(derB64, 'base64'));
      const member = verifyMemberCert(cert.toString(), caPem, new Date(now)); // throws if not the cluster's
      const publicPem = cert.publicKey.export({ type: 'spki', format: 'pem' }).toString();
      const verify = createVerifier({ key: publicPem, algorithms: ['ES256'], ignoreExpiration: true, ignoreNotBefore: true }) as Verify;
      if (this.#certs.size >= MAX_CERTS) this.#certs.clear();
      c = { member, notBefore: Date.parse(cert.validFrom), notAfter: Date.parse(cert.validTo), caPem, verify };
      this.#certs.set(key, c);
    }
    return now >= c.notBefore && now <= c.notAfter ? c : undefined;
  }

  /** Whether `jti` is new (then remembered until `until`). */
  #firstUse(jti: string, until: number, now: number): boolean {
    for (const [k, exp] of this.#seen) {
      if (exp > now) break; // remembered in order of arrival, so roughly of expiry
      this.#seen.delete(k);
    }
    if (jti.length < 16 || this.#seen.has(jti) || this.#seen.size >= MAX_SEEN) return false;
    this.#seen.set(jti, until);
    return true;
  }
}

/** A request target as both ends see it: path and query, normalized as a URL parser does (no empty `?`). */
export function canonicalTarget(url: string): string {
  const u = new URL(`http://member${url.startsWith('/') ? '' : '/'}${url}`);
  return u.pathname + u.search;
}
