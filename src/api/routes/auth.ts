/**
 * Identities: `/v1/auth/whoami`, users (`/v1/users`), their API tokens, ACL entries
 * (`/v1/acl`) and roles (`/v1/roles`). A user is managed by whoever holds User.Modify on
 * the user's tenant (or on `/` for users without one); a token's secret is shown once, at
 * creation; an ACL entry can grant only privileges its granter holds on that path.
 */
import { z } from 'zod';
import { NovaError } from '../../errors.js';
import { AclEntry, AclPath, ROOT, TenantName, UserName, type ObjectRef } from '../../auth/acl.js';
import { ADMIN_USER, type IdentityStore, type TokenRecord, type UserRecord } from '../../auth/identity.js';
import { isBuiltinRole, PrivilegeName, RoleName } from '../../auth/privileges.js';
import { hashPassword, newToken, verifyPassword } from '../../auth/secrets.js';

/** A valid hash of nothing anyone knows: unknown users cost a login as much as known ones. */
const DUMMY_HASH = 'scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
import type { ApiRequest, Router } from '../router.js';
import type { TargetResolver } from '../access.js';
import { parseWith } from '../validate.js';
import type { AuditLog } from '../../auth/audit.js';
import { FailureLimiter } from '../../auth/rate-limit.js';
import { MAX_SESSION_MS, type Sessions } from '../../auth/sessions.js';

const Password = z.string().min(12, 'passwords have at least 12 characters').max(1024);
const CreateUser = z.strictObject({ name: UserName, tenant: TenantName.optional(), password: Password.optional() });
const PatchUser = z.strictObject({ password: Password.optional(), disabled: z.boolean().optional() });
const CreateToken = z.strictObject({
  roles: z.array(RoleName).min(1).max(16).optional(),
  /** Lifetime; omitted = never expires. */
  expiresInSeconds: z.int().min(1).max(10 * 365 * 86400).optional(),
  description: z.string().max(256).optional(),
});
const AclQuery = z.strictObject({ path: AclPath, user: UserName });
const CreateRole = z.strictObject({ name: RoleName, privileges: z.array(PrivilegeName).min(1).max(64) });

/** A token as the API shows it: never its hash. */
const tokenView = ({ hash: _hash, ...t }: TokenRecord) => t;
const userView = ({ passwordHash, ...u }: UserRecord) => ({ ...u, hasPassword: passwordHash !== undefined });

const AuditQuery = z.strictObject({
  since: z.coerce.number().int().min(0).default(0),
  principal: UserName.optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

const Login = z.strictObject({ user: UserName, password: z.string().min(1).max(1024) });

export function authRoutes(router: Router, identity: IdentityStore, resolver: TargetResolver, audit: AuditLog, sessions: Sessions): void {
  // Password login: a session token (15 min), renewed by refresh for up to 12 h.
  const failures = new FailureLimiter();
  router.add('POST', '/v1/auth/login', async (req) => {
    const source = req.source ?? '?';
    failures.check(source);
    const body = parseWith(Login, req.body);
    const u = identity.user(body.user);
    // The same answer and roughly the same time whether the user exists or not.
    const ok = await verifyPassword(body.password, u?.passwordHash ?? DUMMY_HASH);
    if (!u || !u.passwordHash || !ok || u.disabled) {
      failures.fail(source);
      throw new NovaError('LOGIN_FAILED');
    }
    failures.succeed(source);
    return { status: 200, json: { user: u.name, ...(await sessions.issue(u.name)) } };
  }, { priv: 'public', body: true, source: true });
  router.add('POST', '/v1/auth/refresh', async (req) => {
    const p = req.principal!;
    const claims = sessions.verifySession(String(req.callerHeaders?.authorization ?? '').slice(7));
    if (!claims) throw new NovaError('VALIDATION_FAILED', 'refresh takes a session token (from POST /v1/auth/login), not an API token');
    if (Date.now() - claims.authTime >= MAX_SESSION_MS) throw new NovaError('UNAUTHORIZED', 'the session is too old to renew: log in again');
    return { status: 200, json: { user: p.user, ...(await sessions.issue(p.user, claims.authTime)) } };
  }, { priv: 'authenticated', callerHeaders: true });

  router.add('GET', '/v1/audit', async (req) => {
    const q = parseWith(AuditQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    const items = await audit.list({ since: q.since, limit: q.limit, ...(q.principal ? { principal: q.principal } : {}) });
    return { status: 200, json: { items: items.map((e) => ({ seq: e.seq, time: e.time, ...e.data })), ...(items.length === q.limit ? { nextSince: items.at(-1)!.seq } : {}) } };
  }, { priv: 'Sys.Audit' });

  const userObject = (u: { tenant?: string | undefined }): ObjectRef => (u.tenant ? { kind: 'tenant', tenant: u.tenant } : ROOT);
  const existing = (name: string) => {
    const u = identity.user(name);
    if (!u) throw new NovaError('USER_NOT_FOUND', `no user "${name}"`);
    return u;
  };
  /** The user `:name`, if the caller is that user or may manage it. */
  const manageable = (req: ApiRequest, opts: { self?: boolean } = {}) => {
    const u = existing(parseWith(UserName, req.params.name, 'BAD_QUERY'));
    if (!(opts.self && u.name === req.principal!.user)) req.principal!.assertCan('User.Modify', userObject(u));
    return u;
  };
  /** What an ACL path protects, for checking the granter's own privileges there. */
  const pathObject = async (path: string): Promise<ObjectRef> => {
    const [, kind, name] = path.split('/');
    if (path === '/') return ROOT;
    if (kind === 'cluster') return { kind: 'cluster' };
    if (kind === 'tenants') return { kind: 'tenant', tenant: name! };
    if (kind === 'pools') return { kind: 'pool', pool: name! };
    return (await resolver.resolve({ kind: 'vm-ref', ref: name! })) ?? { kind: 'vm', id: name!, tenant: '' };
  };

  router.add('GET', '/v1/auth/whoami', (req) => {
    const p = req.principal!;
    return { status: 200, json: { user: p.user, ...(p.tenant ? { tenant: p.tenant } : {}), ...(p.tokenId ? { token: p.tokenId } : {}), privileges: p.privilegesOn(p.tenant ? { kind: 'tenant', tenant: p.tenant } : ROOT) } };
  }, { priv: 'authenticated' });

  router.add('GET', '/v1/users', (req) => ({ status: 200, json: { items: identity.users().filter((u) => u.name === req.principal!.user || req.principal!.can('User.Modify', userObject(u))).map(userView) } }), { priv: 'authenticated' });
  router.add('POST', '/v1/users', async (req) => {
    const body = parseWith(CreateUser, req.body);
    if (identity.user(body.name)) throw new NovaError('USER_EXISTS', `a user "${body.name}" exists`);
    const u: UserRecord = { name: body.name, ...(body.tenant ? { tenant: body.tenant } : {}), createdAt: new Date().toISOString() };
    if (body.password) u.passwordHash = await hashPassword(body.password);
    await identity.putUser(u);
    return { status: 201, json: userView(u), headers: { location: `/v1/users/${u.name}` } };
  }, { priv: 'User.Modify', on: (req) => userObject({ tenant: (req.body as { tenant?: string } | undefined)?.tenant }), body: true });
  router.add('GET', '/v1/users/:name', (req) => ({ status: 200, json: userView(manageable(req, { self: true })) }), { priv: 'authenticated' });
  router.add('PATCH', '/v1/users/:name', async (req) => {
    const body = parseWith(PatchUser, req.body);
    const u = manageable(req, { self: body.disabled === undefined });
    if (body.disabled && u.name === ADMIN_USER) throw new NovaError('FORBIDDEN', 'the built-in admin user cannot be disabled');
    const next: UserRecord = { ...u };
    if (body.password) next.passwordHash = await hashPassword(body.password);
    if (body.disabled !== undefined) next.disabled = body.disabled;
    await identity.putUser(next);
    return { status: 200, json: userView(next) };
  }, { priv: 'authenticated', body: true });
  router.add('DELETE', '/v1/users/:name', async (req) => {
    const u = manageable(req);
    if (u.name === ADMIN_USER) throw new NovaError('FORBIDDEN', 'the built-in admin user cannot be deleted');
    await identity.deleteUser(u.name);
    return { status: 204 };
  }, { priv: 'authenticated' });

  router.add('GET', '/v1/users/:name/tokens', (req) => ({ status: 200, json: { items: identity.tokensOf(manageable(req, { self: true }).name).map(tokenView) } }), { priv: 'authenticated' });
  router.add('POST', '/v1/users/:name/tokens', async (req) => {
    const body = parseWith(CreateToken, req.body);
    const u = manageable(req, { self: true });
    for (const r of body.roles ?? []) if (!identity.roles().has(r)) throw new NovaError('ROLE_NOT_FOUND', `no role "${r}"`);
    const t = newToken();
    const record: TokenRecord = {
      id: t.id, user: u.name, hash: t.hash, createdAt: new Date().toISOString(),
      ...(body.roles ? { roles: body.roles } : {}),
      ...(body.expiresInSeconds ? { expiresAt: Date.now() + body.expiresInSeconds * 1000 } : {}),
      ...(body.description ? { description: body.description } : {}),
    };
    await identity.putToken(record);
    // The only time the secret is shown: only its hash is stored.
    return { status: 201, json: { ...tokenView(record), token: t.text } };
  }, { priv: 'authenticated', body: true });
  router.add('DELETE', '/v1/users/:name/tokens/:id', async (req) => {
    const u = manageable(req, { self: true });
    const t = identity.token(String(req.params.id));
    if (!t || t.user !== u.name) throw new NovaError('TOKEN_NOT_FOUND', `user "${u.name}" has no token "${req.params.id}"`);
    await identity.deleteToken(t.id);
    return { status: 204 };
  }, { priv: 'authenticated' });

  router.add('GET', '/v1/acl', async (req) => {
    const p = req.principal!;
    const items = [];
    for (const e of identity.acls()) if (e.user === p.user || p.can('User.Modify', await pathObject(e.path))) items.push(e);
    return { status: 200, json: { items } };
  }, { priv: 'authenticated' });
  router.add('PUT', '/v1/acl', async (req) => {
    const entry = parseWith(AclEntry, req.body);
    const p = req.principal!;
    const on = await pathObject(entry.path);
    p.assertCan('User.Modify', on);
    const grantee = existing(entry.user);
    p.assertCan('User.Modify', userObject(grantee));
    const privs = identity.roles().get(entry.role);
    if (!privs) throw new NovaError('ROLE_NOT_FOUND', `no role "${entry.role}"`);
    const missing = [...privs].filter((x) => !p.can(x, on));
    if (missing.length > 0) throw new NovaError('FORBIDDEN', `${p.label} cannot grant ${entry.role} on ${entry.path}: it lacks ${missing.join(', ')} there`, { missing });
    await identity.putAcl(entry);
    return { status: 200, json: entry };
  }, { priv: 'authenticated', body: true });
  router.add('DELETE', '/v1/acl', async (req) => {
    const q = parseWith(AclQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    req.principal!.assertCan('User.Modify', await pathObject(q.path));
    const grantee = identity.user(q.user);
    if (grantee) req.principal!.assertCan('User.Modify', userObject(grantee)); // only entries of users the caller manages
    await identity.deleteAcl(q);
    return { status: 204 };
  }, { priv: 'authenticated' });

  router.add('GET', '/v1/roles', () => ({ status: 200, json: { items: [...identity.roles()].map(([name, privs]) => ({ name, builtin: isBuiltinRole(name), privileges: [...privs].sort() })) } }), { priv: 'authenticated' });
  router.add('POST', '/v1/roles', async (req) => {
    const r = parseWith(CreateRole, req.body);
    if (identity.roles().has(r.name)) throw new NovaError(isBuiltinRole(r.name) ? 'ROLE_BUILTIN' : 'ROLE_EXISTS', `a role "${r.name}" exists`);
    await identity.putRole(r);
    return { status: 201, json: r };
  }, { priv: 'User.Modify', body: true });
  router.add('DELETE', '/v1/roles/:name', async (req) => {
    const name = parseWith(RoleName, req.params.name, 'BAD_QUERY');
    if (isBuiltinRole(name)) throw new NovaError('ROLE_BUILTIN', `${name} is built in`);
    if (!identity.customRole(name)) throw new NovaError('ROLE_NOT_FOUND', `no role "${name}"`);
    await identity.deleteRole(name);
    return { status: 204 };
  }, { priv: 'User.Modify' });
}
