/**
 * Who is calling, and what they may do: `authenticate` turns an Authorization header
 * into a `Principal` from the in-memory identity records (no I/O, so the HTTP layer can
 * decide synchronously, as uWS requires).
 */
import { timingSafeEqual } from 'node:crypto';
import { NovaError } from '../errors.js';
import { chainOf, Grants, type ObjectRef } from './acl.js';
import { ADMIN_USER, type IdentityStore, type TokenRecord } from './identity.js';
import type { Privilege } from './privileges.js';
import { parseToken, secretMatchesHash } from './secrets.js';
import type { Sessions } from './sessions.js';

export class Principal {
  readonly #grants: Grants;
  readonly #cap: ReadonlySet<Privilege> | undefined;

  constructor(
    readonly user: string,
    readonly tenant: string | undefined,
    /** The API token the call came with (absent for a session or the configured token). */
    readonly tokenId: string | undefined,
    grants: Grants,
    cap?: ReadonlySet<Privilege>,
    /** Set when the caller is a cluster member acting for itself. */
    readonly member?: number,
  ) {
    this.#grants = grants;
    this.#cap = cap;
  }

  can(priv: Privilege, on: ObjectRef): boolean {
    return (this.#cap === undefined || this.#cap.has(priv)) && this.#grants.has(priv, on);
  }

  /** The privileges this principal holds on `on`. */
  privilegesOn(on: ObjectRef): Privilege[] {
    return [...this.#grants.on(on)].filter((p) => this.#cap === undefined || this.#cap.has(p)).sort();
  }

  /** FORBIDDEN unless this principal holds `priv` on `on`. */
  assertCan(priv: Privilege, on: ObjectRef): void {
    if (!this.can(priv, on)) throw new NovaError('FORBIDDEN', `${this.label} lacks ${priv} on ${describe(on)}`, { privilege: priv, path: describe(on) });
  }

  /** How audit records and logs name the caller. */
  get label(): string {
    return this.tokenId ? `${this.user}!${this.tokenId}` : this.user;
  }
}

/** Verified credentials remembered (by their full text) at most this many, and this long. */
const MAX_VERIFIED = 10_000;
const VERIFIED_MS = 60_000;

export type AuthOutcome = { ok: true; principal: Principal } | { ok: false; reason: 'missing' | 'malformed' | 'unknown' | 'expired' | 'disabled' };

/** The request a credential comes with (a member's assertion is bound to it). */
export interface CallTarget {
  method: string;
  /** Path and query. */
  url: string;
}

/** Checks another member's assertion (cluster/member-assertion.ts): who sent it and for whom. */
export interface MemberVerifier {
  verify(header: string, method: string, url: string): { member: number; onBehalf?: { user: string; tokenId?: string | undefined } } | undefined;
}

/** What a member acting for itself may do: offer a VM it migrates, and follow that migration. */
const MEMBER_PRIVILEGES: ReadonlySet<Privilege> = new Set<Privilege>(['VM.Migrate', 'VM.Audit']);
const MEMBER_ROLE = '(member)';

export class Authenticator {
  readonly #identity: IdentityStore;
  readonly #configured: Buffer | undefined;
  #cache = new Map<string, Principal>();
  #verified = new Map<string, { outcome: AuthOutcome; until: number }>();
  #version = -1;

  readonly #sessions: Sessions | undefined;
  #members: MemberVerifier | undefined;

  constructor(identity: IdentityStore, configuredToken?: string, sessions?: Sessions) {
    this.#identity = identity;
    this.#configured = configuredToken ? Buffer.from(configuredToken) : undefined;
    this.#sessions = sessions;
  }

  /** From now on, other members' assertions are accepted (once this member knows its cluster's CA). */
  useMembers(verifier: MemberVerifier): void {
    this.#members = verifier;
  }

  /** `call` is the request the header came with: a member's assertion is valid only for the one it was made for. */
  authenticate(header: string, call?: CallTarget, now = Date.now()): AuthOutcome {
    if (header === '') return { ok: false, reason: 'missing' };
    if (this.#version !== this.#identity.version) {
      this.#cache.clear();
      this.#verified.clear();
      this.#version = this.#identity.version;
    }
    if (header.startsWith('NovaMember ')) return this.#member(header, call, now);
    if (!header.startsWith('Bearer ')) return { ok: false, reason: 'malformed' };
    // A credential verified before (and unchanged since: the records' version is the same)
    // is looked up by its full text, which only its holder knows; no hashing per request.
    const seen = this.#verified.get(header);
    if (seen && seen.until > now) return seen.outcome;
    const outcome = this.#verify(header.slice(7), now);
    if (outcome.ok) {
      if (this.#verified.size >= MAX_VERIFIED) this.#verified.clear();
      this.#verified.set(header, { outcome, until: Math.min(now + VERIFIED_MS, this.#expiry(header.slice(7)) ?? Infinity) });
    }
    return outcome;
  }

  /** When a verified credential stops being valid by itself (an API token's or a JWT's expiry). */
  #expiry(text: string): number | undefined {
    const parsed = parseToken(text);
    if (parsed) return this.#identity.token(parsed.id)?.expiresAt;
    if (!text.startsWith('eyJ')) return undefined;
    const exp = (JSON.parse(Buffer.from(text.split('.')[1] ?? '', 'base64url').toString()) as { exp?: unknown }).exp;
    return typeof exp === 'number' ? exp * 1000 : 0; // verified JWTs have one; without, nothing is remembered
  }

  #verify(text: string, now: number): AuthOutcome {
    if (this.#sessions && text.startsWith('eyJ')) return this.#jwt(text);
    const parsed = parseToken(text);
    if (!parsed) {
      if (this.#configured) {
        const given = Buffer.from(text);
        if (given.length === this.#configured.length && timingSafeEqual(given, this.#configured)) return { ok: true, principal: this.principalOf(ADMIN_USER) };
      }
      return { ok: false, reason: 'unknown' };
    }
    const record = this.#identity.token(parsed.id);
    if (!record || !secretMatchesHash(parsed.secret, record.hash)) return { ok: false, reason: 'unknown' };
    return this.#tokenPrincipal(record, now);
  }

  /** The principal of a known API token, unless it expired or its user is gone or disabled. */
  #tokenPrincipal(record: TokenRecord, now: number): AuthOutcome {
    if (record.expiresAt !== undefined && record.expiresAt <= now) return { ok: false, reason: 'expired' };
    const user = this.#identity.user(record.user);
    if (!user) return { ok: false, reason: 'unknown' };
    if (user.disabled) return { ok: false, reason: 'disabled' };
    let p = this.#cache.get(record.id);
    if (!p) {
      const roles = this.#identity.roles();
      const cap = record.roles && new Set(record.roles.flatMap((r) => [...(roles.get(r) ?? [])]));
      p = new Principal(user.name, user.tenant, record.id, new Grants(this.#identity.aclsOf(user.name), roles), cap);
      this.#cache.set(record.id, p);
    }
    return { ok: true, principal: p };
  }

  /**
   * Another member's request: for the user (and token) it names, checked against this
   * member's identity records as if the user had called here; or for the member itself.
   */
  #member(header: string, call: CallTarget | undefined, now: number): AuthOutcome {
    const verified = call && this.#members?.verify(header, call.method, call.url);
    if (!verified) return { ok: false, reason: 'unknown' };
    const on = verified.onBehalf;
    if (!on) return { ok: true, principal: this.#memberPrincipal(verified.member) };
    if (on.tokenId !== undefined) {
      const record = this.#identity.token(on.tokenId);
      if (!record || record.user !== on.user) return { ok: false, reason: 'unknown' };
      return this.#tokenPrincipal(record, now);
    }
    const user = this.#identity.user(on.user);
    if (!user) return { ok: false, reason: 'unknown' };
    if (user.disabled) return { ok: false, reason: 'disabled' };
    return { ok: true, principal: this.principalOf(on.user) };
  }

  #memberPrincipal(member: number): Principal {
    const key = `member:${member}`;
    let p = this.#cache.get(key);
    if (!p) {
      p = new Principal(key, undefined, undefined, new Grants([{ path: '/', user: key, role: MEMBER_ROLE, propagate: true }], new Map([[MEMBER_ROLE, MEMBER_PRIVILEGES]])), undefined, member);
      this.#cache.set(key, p);
    }
    return p;
  }

  /** A session token of this cluster, or an OIDC provider's token. */
  #jwt(text: string): AuthOutcome {
    const session = this.#sessions!.verifySession(text);
    const name = session?.user ?? this.#sessions!.verifyExternal(text);
    if (!name) return { ok: false, reason: 'unknown' };
    // An OIDC user exists here too (made by an administrator, like a Proxmox realm's users), with its ACLs.
    const user = this.#identity.user(name);
    if (!user) return { ok: false, reason: 'unknown' };
    if (user.disabled) return { ok: false, reason: 'disabled' };
    return { ok: true, principal: this.principalOf(name) };
  }

  /** A user's principal with all of its grants (a session, or the configured token for `admin`). */
  principalOf(name: string): Principal {
    const key = `user:${name}`;
    let p = this.#cache.get(key);
    if (!p) {
      const user = this.#identity.user(name);
      p = new Principal(name, user?.tenant, undefined, new Grants(this.#identity.aclsOf(name), this.#identity.roles()));
      this.#cache.set(key, p);
    }
    return p;
  }
}

/** An object as error messages name it: its ACL path, or its kind under the nearest path. */
export function describe(obj: ObjectRef): string {
  const { own, up } = chainOf(obj);
  return own ?? `${obj.kind} under ${up[0]}`;
}
