/**
 * Users, API tokens, custom roles and ACL entries, kept in the cluster's replicated store
 * under `auth/` so that any member authenticates any request. Each member holds the whole
 * set in memory (it is small) and rereads it every `refreshMs`, so a change made on one
 * member holds on every member within that time; the member that made it sees it at once.
 *
 * Before the cluster store is open (the first moments of a start), only the bootstrap
 * tokens given to `IdentityStore` (this member's admin.token, a configured token) exist.
 */
import { z } from 'zod';
import { NovaError } from '../errors.js';
import { prefixRange, type Entry, type KeyRange, type WriteOp } from '../store/store.js';
import { AclEntry, TenantName, UserName } from './acl.js';
import { BUILTIN_ROLES, PrivilegeName, RoleName, type Privilege } from './privileges.js';

export const UserRecord = z.strictObject({
  name: UserName,
  /** A tenant's user: ACLs granted by a TenantAdmin stay within this tenant. */
  tenant: TenantName.optional(),
  passwordHash: z.string().max(256).optional(),
  disabled: z.boolean().optional(),
  createdAt: z.string(),
});
export type UserRecord = z.infer<typeof UserRecord>;

export const TokenRecord = z.strictObject({
  id: z.string().regex(/^[0-9a-f]{16}$/),
  user: UserName,
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  /** The token may use only these roles' privileges (and never more than its user has). */
  roles: z.array(RoleName).max(16).optional(),
  /** Milliseconds since the epoch. */
  expiresAt: z.number().optional(),
  description: z.string().max(256).optional(),
  createdAt: z.string(),
});
export type TokenRecord = z.infer<typeof TokenRecord>;

/** A session-signing key (Ed25519, PEM): private half too, so any member can sign. */
export const JwtKeyRecord = z.strictObject({ kid: z.string().max(64), createdAt: z.number(), privatePem: z.string().max(4096), publicPem: z.string().max(4096) });
export type JwtKeyRecord = z.infer<typeof JwtKeyRecord>;

export const RoleRecord = z.strictObject({ name: RoleName, privileges: z.array(PrivilegeName).max(64) });
export type RoleRecord = z.infer<typeof RoleRecord>;

/** The store the records live in: the cluster's replicated store (stale reads are this member's applied state). */
export interface IdentityBackend {
  write(ops: WriteOp[]): Promise<void>;
  scan(range: KeyRange, opts?: { stale?: boolean }): Promise<Entry[]>;
}

/** The built-in administrator: every member's admin.token is one of its tokens. */
export const ADMIN_USER = 'admin';

const PREFIX = 'auth/';
const K = {
  user: (n: string) => `${PREFIX}user/${n}`,
  token: (id: string) => `${PREFIX}token/${id}`,
  role: (n: string) => `${PREFIX}role/${n}`,
  acl: (e: { path: string; user: string }) => `${PREFIX}acl/${e.path}\u0000${e.user}`,
  jwtKey: (kid: string) => `${PREFIX}jwtkey/${kid}`,
};

interface Snapshot {
  users: Map<string, UserRecord>;
  tokens: Map<string, TokenRecord>;
  roles: Map<string, ReadonlySet<Privilege>>;
  custom: Map<string, RoleRecord>;
  acls: AclEntry[];
  aclsByUser: Map<string, AclEntry[]>;
  jwtKeys: Map<string, JwtKeyRecord>;
}

export class IdentityStore {
  #backend: IdentityBackend | undefined;
  #snap: Snapshot;
  #raw = new Map<string, Buffer>();
  #bootstrap: TokenRecord[];
  #timer: NodeJS.Timeout | undefined;
  #version = 0;
  #refreshing: Promise<void> | undefined;
  #stopped = false;

  constructor(bootstrap: TokenRecord[] = []) {
    this.#bootstrap = bootstrap;
    this.#snap = build([], bootstrap);
  }

  /** Bumped whenever the records change (principals built from older ones are stale). */
  get version(): number {
    return this.#version;
  }

  /** Starts using the replicated store: loads it, then rereads it every `refreshMs`. */
  async attach(backend: IdentityBackend, refreshMs = 250): Promise<void> {
    this.#backend = backend;
    await this.refresh();
    this.#publishBootstrap();
    this.#timer = setInterval(() => void this.refresh().catch(() => undefined), refreshMs);
    this.#timer.unref();
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
  }

  /**
   * This member's bootstrap tokens become every member's: written to the cluster store in
   * the background, retried until the cluster takes them (a member may start while the
   * cluster has no quorum; its own token works here meanwhile).
   */
  #publishBootstrap(): void {
    const missing = this.#bootstrap.filter((t) => !this.#raw.has(K.token(t.id)));
    if (missing.length === 0 || this.#stopped) return;
    this.#write(missing.map((t) => ({ key: K.token(t.id), value: json(t) }))).catch(() => {
      if (!this.#stopped) setTimeout(() => this.#publishBootstrap(), 1000).unref();
    });
  }

  /** Rereads every record (one at a time: a refresh asked for during one waits for it). */
  refresh(): Promise<void> {
    return (this.#refreshing ??= this.#reload().finally(() => (this.#refreshing = undefined)));
  }

  async #reload(): Promise<void> {
    if (!this.#backend) return;
    const entries = await this.#backend.scan(prefixRange(PREFIX), { stale: true });
    let changed = entries.length !== this.#raw.size;
    if (!changed) for (const e of entries) if (!this.#raw.get(e.key)?.equals(e.value)) (changed = true);
    if (!changed) return;
    this.#raw = new Map(entries.map((e) => [e.key, e.value]));
    this.#snap = build(entries, this.#bootstrap);
    this.#version++;
  }

  user(name: string): UserRecord | undefined {
    return this.#snap.users.get(name);
  }
  users(): UserRecord[] {
    return [...this.#snap.users.values()].sort((a, b) => a.name.localeCompare(b.name));
  }
  token(id: string): TokenRecord | undefined {
    return this.#snap.tokens.get(id);
  }
  tokensOf(user: string): TokenRecord[] {
    return [...this.#snap.tokens.values()].filter((t) => t.user === user);
  }
  /** Every role (built-in and custom) with its privileges. */
  roles(): ReadonlyMap<string, ReadonlySet<Privilege>> {
    return this.#snap.roles;
  }
  customRole(name: string): RoleRecord | undefined {
    return this.#snap.custom.get(name);
  }
  acls(): AclEntry[] {
    return this.#snap.acls;
  }
  aclsOf(user: string): AclEntry[] {
    return this.#snap.aclsByUser.get(user) ?? [];
  }

  jwtKey(kid: string): JwtKeyRecord | undefined {
    return this.#snap.jwtKeys.get(kid);
  }
  jwtKeys(): JwtKeyRecord[] {
    return [...this.#snap.jwtKeys.values()];
  }
  /** Adds a signing key and deletes retired ones, in one write. */
  async rotateJwtKeys(add: JwtKeyRecord, remove: string[]): Promise<void> {
    await this.#write([{ key: K.jwtKey(add.kid), value: json(add) }, ...remove.map((kid) => ({ key: K.jwtKey(kid) }))]);
  }

  async putUser(u: UserRecord): Promise<void> {
    await this.#write([{ key: K.user(u.name), value: json(u) }]);
  }
  /** The user, its tokens and its ACL entries. */
  async deleteUser(name: string): Promise<void> {
    await this.#write([
      { key: K.user(name) },
      ...this.tokensOf(name).map((t) => ({ key: K.token(t.id) })),
      ...this.aclsOf(name).map((e) => ({ key: K.acl(e) })),
    ]);
  }
  async putToken(t: TokenRecord): Promise<void> {
    await this.#write([{ key: K.token(t.id), value: json(t) }]);
  }
  async deleteToken(id: string): Promise<void> {
    await this.#write([{ key: K.token(id) }]);
  }
  async putRole(r: RoleRecord): Promise<void> {
    await this.#write([{ key: K.role(r.name), value: json(r) }]);
  }
  async deleteRole(name: string): Promise<void> {
    await this.#write([{ key: K.role(name) }, ...this.#snap.acls.filter((e) => e.role === name).map((e) => ({ key: K.acl(e) }))]);
  }
  async putAcl(e: AclEntry): Promise<void> {
    await this.#write([{ key: K.acl(e), value: json(e) }]);
  }
  async deleteAcl(e: { path: string; user: string }): Promise<void> {
    await this.#write([{ key: K.acl(e) }]);
  }

  async #write(ops: WriteOp[]): Promise<void> {
    if (!this.#backend) throw new NovaError('NOT_READY', 'the cluster store is not open yet');
    await this.#backend.write(ops);
    await this.refresh();
  }
}

const json = (v: unknown) => Buffer.from(JSON.stringify(v));

function build(entries: Entry[], bootstrap: TokenRecord[]): Snapshot {
  const s: Snapshot = { users: new Map(), tokens: new Map(), roles: new Map(), custom: new Map(), acls: [], aclsByUser: new Map(), jwtKeys: new Map() };
  for (const [name, privs] of Object.entries(BUILTIN_ROLES)) s.roles.set(name, new Set(privs));
  for (const t of bootstrap) s.tokens.set(t.id, t);
  for (const e of entries) {
    const kind = e.key.slice(PREFIX.length, e.key.indexOf('/', PREFIX.length));
    let value: unknown;
    try {
      value = JSON.parse(e.value.toString());
    } catch {
      continue; // not ours to interpret; a record is only ever written whole
    }
    if (kind === 'user') {
      const u = UserRecord.safeParse(value);
      if (u.success) s.users.set(u.data.name, u.data);
    } else if (kind === 'token') {
      const t = TokenRecord.safeParse(value);
      if (t.success) s.tokens.set(t.data.id, t.data);
    } else if (kind === 'role') {
      const r = RoleRecord.safeParse(value);
      if (r.success && !s.roles.has(r.data.name)) {
        s.custom.set(r.data.name, r.data);
        s.roles.set(r.data.name, new Set(r.data.privileges));
      }
    } else if (kind === 'jwtkey') {
      const k = JwtKeyRecord.safeParse(value);
      if (k.success) s.jwtKeys.set(k.data.kid, k.data);
    } else if (kind === 'acl') {
      const a = AclEntry.safeParse(value);
      if (a.success) s.acls.push(a.data);
    }
  }
  // The built-in administrator always exists and always holds Administrator on /: no
  // change to the records can lock the cluster out of itself.
  if (!s.users.has(ADMIN_USER)) s.users.set(ADMIN_USER, { name: ADMIN_USER, createdAt: new Date(0).toISOString() });
  s.acls.push({ path: '/', user: ADMIN_USER, role: 'Administrator', propagate: true });
  for (const a of s.acls) {
    let list = s.aclsByUser.get(a.user);
    if (!list) s.aclsByUser.set(a.user, (list = []));
    list.push(a);
  }
  return s;
}
