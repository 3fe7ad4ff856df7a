/**
 * Authentication is always on: every route but the probes and the join endpoint refuses
 * a request without valid credentials; the administrator token is made on first start
 * (DIR/admin.token, 0600, shown once); users' API tokens expire, are revoked and are
 * capped by their roles.
 */
import { spawnSync } from 'node:child_process';
import { request } from 'node:http';
import { statSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { createSigner } from 'fast-jwt';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { api, BIN, NO_AUTH, removeDir, sampleVm, spawnDaemon, tempDataDir, type DaemonHandle, type SpawnOptions } from '../helpers/daemon.js';
import { EventClient } from '../helpers/events.js';
import { daemonRouter, wsPaths } from '../helpers/routes.js';

const TOKEN = 'test-token-0123456789abcdef';
const PUBLIC = ['GET /healthz', 'GET /readyz', 'POST /v1/auth/login'];

/** Runs `fn` against a fresh daemon, then kills it and removes its data directory. */
async function withDaemon(opts: SpawnOptions, fn: (d: DaemonHandle) => Promise<void>): Promise<void> {
  const d = await spawnDaemon(opts);
  try {
    await fn(d);
  } finally {
    await d.kill();
    removeDir(d.dataDir);
  }
}

describe('authentication', () => {
  it('a fresh daemon answers every route but the probes, login and join with 401 UNAUTHORIZED, whatever the credentials are missing or wrong', async () => {
    await withDaemon({}, async (d) => {
      const routes = daemonRouter().routes;
      expect(routes.filter((r) => r.priv === 'public').map((r) => `${r.method} ${r.pattern}`).sort()).toEqual(PUBLIC.slice().sort());
      for (const r of routes.filter((x) => x.priv !== 'public')) {
        const path = r.pattern.replace(/:(\w+)/g, 'x1');
        for (const authorization of ['', 'Bearer nope', `Bearer nc1.0123456789abcdef.${'A'.repeat(43)}`, `Basic ${Buffer.from('admin:admin').toString('base64')}`, d.token]) {
          const res = await api(d.url, r.method, path, r.body ? {} : undefined, { authorization });
          expect(res.status, `${r.method} ${path} with "${authorization}"`).toBe(401);
          expect(res.body.error.code).toBe('UNAUTHORIZED');
        }
      }
      for (const p of wsPaths()) {
        await expect(EventClient.connect(d.url, '', NO_AUTH, p.replace(':id', 'x1'))).rejects.toMatchObject({ status: 401 });
      }
      // The probes reveal liveness only; what the daemon is, only to a caller with Sys.Audit.
      expect((await api(d.url, 'GET', '/healthz', undefined, NO_AUTH)).body).toEqual({ status: 'ok' });
      expect((await api(d.url, 'GET', '/healthz')).body).toMatchObject({ status: 'ok', driver: 'sim' });
      expect((await api(d.url, 'GET', '/v1/vms')).status).toBe(200);
    });
  });

  it('makes DIR/admin.token (0600, in a 0700 data dir) on first start, shows it only then, keeps it across restarts, and the CLI finds it', async () => {
    const dataDir = tempDataDir();
    let d = await spawnDaemon({ dataDir });
    try {
      expect(statSync(dataDir).mode & 0o777).toBe(0o700);
      expect(statSync(join(dataDir, 'admin.token')).mode & 0o777).toBe(0o600);
      expect(d.token).toMatch(/^nc1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/);
      expect(d.output()).toContain(d.token);
      const first = d.token;
      await d.kill();
      d = await spawnDaemon({ dataDir });
      expect(d.token).toBe(first);
      expect(d.output()).not.toContain(first);
      expect((await api(d.url, 'GET', '/v1/vms', undefined, { authorization: `Bearer ${first}` })).status).toBe(200);
      const cli = (env: Record<string, string>) => spawnSync(process.execPath, [BIN, '--url', d.url, '--json', 'vm', 'list'], { encoding: 'utf8', env: { ...process.env, ...env }, cwd: '/' });
      expect(cli({ NOVACRON_DATA_DIR: dataDir }).status).toBe(0);
      const stranger = cli({ NOVACRON_DATA_DIR: '/nonexistent' });
      expect(stranger.status).not.toBe(0);
      expect(stranger.stderr).toContain('UNAUTHORIZED');
    } finally {
      await d.kill();
      removeDir(dataDir);
    }
  });

  it('a configured token is one more administrator token, warned about when it is on the command line', async () => {
    await withDaemon({ args: ['--api-token', TOKEN] }, async (d) => {
      expect((await api(d.url, 'GET', '/v1/auth/whoami', undefined, { authorization: `Bearer ${TOKEN}` })).body.user).toBe('admin');
      expect((await api(d.url, 'GET', '/v1/vms', undefined, { authorization: `Bearer ${TOKEN}x` })).status).toBe(401);
      expect(d.output()).toContain('--api-token on the command line is visible');
      expect(d.output()).not.toContain(TOKEN);
      const ok = await EventClient.connect(d.url, '', { authorization: `Bearer ${TOKEN}` });
      ok.close();
    });
  });

  it('a user\'s API token: shown once, stored as a hash, capped by its roles, refused once expired or revoked', async () => {
    await withDaemon({}, async (d) => {
      expect((await api(d.url, 'POST', '/v1/users', { name: 'ops' })).status).toBe(201);
      expect((await api(d.url, 'PUT', '/v1/acl', { path: '/', user: 'ops', role: 'Operator' })).status).toBe(200);
      const full = await api(d.url, 'POST', '/v1/users/ops/tokens', { description: 'ci' });
      expect(full.status).toBe(201);
      const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
      expect((await api(d.url, 'GET', '/v1/users/ops/tokens')).body.items.map((t: any) => [t.id, t.token, t.hash])).toEqual([[full.body.id, undefined, undefined]]);
      expect((await api(d.url, 'POST', '/v1/vms', sampleVm('by-ops'), bearer(full.body.token))).status).toBe(201);
      // Operators do not manage users.
      expect((await api(d.url, 'POST', '/v1/users', { name: 'x' }, bearer(full.body.token))).body.error.code).toBe('FORBIDDEN');

      // A token scoped to Auditor: reads, but cannot create, though its user could.
      const audit = await api(d.url, 'POST', '/v1/users/ops/tokens', { roles: ['Auditor'] });
      expect((await api(d.url, 'GET', '/v1/vms', undefined, bearer(audit.body.token))).status).toBe(200);
      const refused = await api(d.url, 'POST', '/v1/vms', sampleVm('no'), bearer(audit.body.token));
      expect(refused.status).toBe(403);
      expect(refused.body.error).toMatchObject({ code: 'FORBIDDEN', details: { privilege: 'VM.Allocate' } });

      const short = await api(d.url, 'POST', '/v1/users/ops/tokens', { expiresInSeconds: 1 });
      expect((await api(d.url, 'GET', '/v1/vms', undefined, bearer(short.body.token))).status).toBe(200);
      await new Promise((r) => setTimeout(r, 1100));
      const expired = await api(d.url, 'GET', '/v1/vms', undefined, bearer(short.body.token));
      expect(expired.status).toBe(401);
      expect(expired.body.error.message).toContain('expired');

      expect((await api(d.url, 'DELETE', `/v1/users/ops/tokens/${full.body.id}`)).status).toBe(204);
      expect((await api(d.url, 'GET', '/v1/vms', undefined, bearer(full.body.token))).status).toBe(401);
      // Disabling the user stops its other tokens too.
      expect((await api(d.url, 'PATCH', '/v1/users/ops', { disabled: true })).status).toBe(200);
      expect((await api(d.url, 'GET', '/v1/vms', undefined, bearer(audit.body.token))).status).toBe(401);
    });
  });

  it('refuses foreign Host names (DNS rebinding) and cross-site Origins with 403 ORIGIN_REFUSED, on routes and WebSocket upgrades alike', async () => {
    await withDaemon({}, async (d) => {
      const raw = (headers: Record<string, string>) =>
        new Promise<{ status: number; body: any }>((resolve, reject) => {
          const req = request({ host: '127.0.0.1', port: d.port, path: '/v1/vms', headers: { authorization: `Bearer ${d.token}`, ...headers } }, (res) => {
            let text = '';
            res.on('data', (c) => (text += c));
            res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) }));
          });
          req.on('error', reject);
          req.end();
        });
      expect((await raw({ host: `evil.example:${d.port}` })).body.error.code).toBe('ORIGIN_REFUSED');
      expect((await raw({ host: `evil.example:${d.port}` })).status).toBe(403);
      expect((await raw({ host: `localhost:${d.port}` })).status).toBe(200);
      expect((await raw({ host: `127.0.0.1:${d.port}`, origin: 'http://evil.example' })).body.error.code).toBe('ORIGIN_REFUSED');
      expect((await raw({ host: `127.0.0.1:${d.port}`, origin: `http://127.0.0.1:${d.port}` })).status).toBe(200);
      await expect(EventClient.connect(d.url, '', { origin: 'http://evil.example' })).rejects.toMatchObject({ status: 403 });
      const same = await EventClient.connect(d.url, '', { origin: d.url });
      same.close();
    });
  });

  it('audits every mutating request and every refused credential or privilege: who, what, result, source, request id; Sys.Audit only', async () => {
    await withDaemon({}, async (d) => {
      await api(d.url, 'POST', '/v1/users', { name: 'viewer' });
      await api(d.url, 'PUT', '/v1/acl', { path: '/', user: 'viewer', role: 'TenantUser' });
      const viewer = { authorization: `Bearer ${(await api(d.url, 'POST', '/v1/users/viewer/tokens', {})).body.token}` };
      const events = await EventClient.connect(d.url, '?types=audit.*');
      const viewerEvents = await EventClient.connect(d.url, '', viewer);
      expect((await api(d.url, 'POST', '/v1/vms', sampleVm('audited'), { 'x-request-id': 'req-42' })).status).toBe(201);
      expect((await api(d.url, 'GET', '/v1/vms', undefined, NO_AUTH)).status).toBe(401);
      expect((await api(d.url, 'DELETE', '/v1/vms/audited', undefined, viewer)).status).toBe(403);
      expect((await api(d.url, 'GET', '/v1/vms', undefined, viewer)).status).toBe(200); // a read that succeeds is not audited
      await expect(EventClient.connect(d.url, '', NO_AUTH)).rejects.toMatchObject({ status: 401 }); // a WebSocket upgrade too
      const log = await api(d.url, 'GET', '/v1/audit');
      expect(log.status).toBe(200);
      const rows = log.body.items.map((r: any) => [r.principal, r.method, r.path, r.status, r.code]);
      expect(rows).toEqual(expect.arrayContaining([
        ['admin!' + d.token.split('.')[1], 'POST', '/v1/vms', 201, undefined],
        [undefined, 'GET', '/v1/vms', 401, 'UNAUTHORIZED'],
        [expect.stringMatching(/^viewer!/), 'DELETE', '/v1/vms/audited', 403, 'FORBIDDEN'],
        [undefined, 'GET', '/v1/events', 401, 'UNAUTHORIZED'],
      ]));
      expect(rows.some((r: any[]) => r[0]?.startsWith('viewer') && r[1] === 'GET')).toBe(false);
      expect(log.body.items.find((r: any) => r.path === '/v1/vms' && r.status === 201)).toMatchObject({ source: '127.0.0.1', requestId: 'req-42' });
      expect((await api(d.url, 'GET', '/v1/audit?principal=viewer')).body.items.every((r: any) => r.principal.startsWith('viewer!'))).toBe(true);
      expect((await api(d.url, 'GET', '/v1/audit', undefined, viewer)).status).toBe(403);
      await events.waitFor((c) => c.frames.some((f: any) => f.type === 'event' && f.event.data.code === 'FORBIDDEN'));
      expect(viewerEvents.frames.some((f: any) => f.type === 'event' && f.event.type === 'audit.request')).toBe(false);
      events.close();
      viewerEvents.close();
    });
  });

  it('password login gives a short-lived session token (EdDSA JWT) that refresh renews; failed logins are rate-limited per address', async () => {
    await withDaemon({}, async (d) => {
      expect((await api(d.url, 'POST', '/v1/users', { name: 'dash', password: 'correct horse battery' })).status).toBe(201);
      await api(d.url, 'PUT', '/v1/acl', { path: '/', user: 'dash', role: 'Auditor' });
      expect((await api(d.url, 'GET', '/v1/users/dash')).body).toMatchObject({ hasPassword: true });
      expect(JSON.stringify((await api(d.url, 'GET', '/v1/users/dash')).body)).not.toContain('scrypt');
      const login = await api(d.url, 'POST', '/v1/auth/login', { user: 'dash', password: 'correct horse battery' }, NO_AUTH);
      expect(login.status, JSON.stringify(login.body)).toBe(200);
      expect(login.body.token).toMatch(/^eyJ/);
      expect(login.body.expiresAt - Date.now()).toBeLessThanOrEqual(15 * 60_000);
      const session = { authorization: `Bearer ${login.body.token}` };
      expect((await api(d.url, 'GET', '/v1/auth/whoami', undefined, session)).body).toMatchObject({ user: 'dash', privileges: ['Cluster.Audit', 'Pool.Audit', 'Sys.Audit', 'VM.Audit'] });
      expect((await api(d.url, 'POST', '/v1/vms', sampleVm('no'), session)).status).toBe(403);
      const renewed = await api(d.url, 'POST', '/v1/auth/refresh', undefined, session);
      expect(renewed.status).toBe(200);
      expect(renewed.body.token).not.toBe(login.body.token);
      expect((await api(d.url, 'GET', '/v1/vms', undefined, { authorization: `Bearer ${renewed.body.token}` })).status).toBe(200);
      expect((await api(d.url, 'POST', '/v1/auth/refresh')).status).toBe(400); // an API token is not a session
      // A forged session (signed by another key) and a tampered one are refused.
      const [h, p, sig] = login.body.token.split('.');
      const tampered = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, 'base64url').toString()), sub: 'admin' })).toString('base64url')}.${sig}`;
      expect((await api(d.url, 'GET', '/v1/vms', undefined, { authorization: `Bearer ${tampered}` })).status).toBe(401);
      // Disabling the user ends its sessions.
      await api(d.url, 'PATCH', '/v1/users/dash', { disabled: true });
      expect((await api(d.url, 'GET', '/v1/vms', undefined, session)).status).toBe(401);
      await api(d.url, 'PATCH', '/v1/users/dash', { disabled: false });

      const wrong = await api(d.url, 'POST', '/v1/auth/login', { user: 'dash', password: 'wrong' }, NO_AUTH);
      expect(wrong.body.error.code).toBe('LOGIN_FAILED');
      expect((await api(d.url, 'POST', '/v1/auth/login', { user: 'ghost', password: 'wrong' }, NO_AUTH)).body.error).toEqual(wrong.body.error);
      for (let i = 0; i < 3; i++) await api(d.url, 'POST', '/v1/auth/login', { user: 'dash', password: 'wrong' }, NO_AUTH);
      const limited = await api(d.url, 'POST', '/v1/auth/login', { user: 'dash', password: 'correct horse battery' }, NO_AUTH);
      expect(limited.status).toBe(429);
      expect(limited.body.error.code).toBe('TOO_MANY_ATTEMPTS');
    });
  });

  it('tokens of an OIDC provider are verified against its JWKS file (key, issuer, expiry) and name the user <sub>@oidc', async () => {
    const dataDir = tempDataDir();
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    writeFileSync(join(dataDir, 'jwks.json'), JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'idp-1', use: 'sig' }] }));
    writeFileSync(join(dataDir, 'config.json'), JSON.stringify({ oidc: { jwksFile: join(dataDir, 'jwks.json'), issuer: 'https://idp.test' } }));
    await withDaemon({ dataDir, args: ['--config', join(dataDir, 'config.json')] }, async (d) => {
      const pem = (k: KeyObject) => k.export({ format: 'pem', type: 'pkcs8' }).toString();
      const sign = (key: KeyObject, claims: Record<string, unknown>, opts: Record<string, unknown> = {}) => createSigner({ key: pem(key), algorithm: 'RS256', kid: 'idp-1', expiresIn: 60_000, ...opts })(claims);
      const call = (t: string) => api(d.url, 'GET', '/v1/auth/whoami', undefined, { authorization: `Bearer ${t}` });
      const good = sign(privateKey, { sub: 'erin', iss: 'https://idp.test' });
      expect((await call(good)).status).toBe(401); // no such user here yet
      await api(d.url, 'POST', '/v1/users', { name: 'erin@oidc' });
      await api(d.url, 'PUT', '/v1/acl', { path: '/', user: 'erin@oidc', role: 'Auditor' });
      expect((await call(good)).body).toMatchObject({ user: 'erin@oidc', privileges: expect.arrayContaining(['VM.Audit']) });
      expect((await call(sign(privateKey, { sub: 'erin', iss: 'https://evil.test' }))).status).toBe(401);
      expect((await call(sign(other, { sub: 'erin', iss: 'https://idp.test' }))).status).toBe(401);
      expect((await call(sign(privateKey, { sub: 'erin', iss: 'https://idp.test', exp: Math.floor(Date.now() / 1000) - 10 }, { expiresIn: undefined }))).status).toBe(401);
    });
  });

  it('rejects invalid configuration with a clear message', async () => {
    const dataDir = tempDataDir();
    for (const [args, msg] of [
      [['--listen', 'nonsense'], 'invalid listen address'],
      [['--log-level', 'loud'], 'Allowed choices'],
      [['--api-token', 'short'], 'at least 16 characters'],
    ] as const) {
      const err = await spawnDaemon({ dataDir, args: [...args] }).catch((e) => e);
      expect(err.message).toContain(msg);
    }
    const env = await spawnDaemon({ dataDir, env: { NOVACRON_NODE_ID: 'bad id!' } }).catch((e) => e);
    expect(env.message).toContain('nodeId');
    removeDir(dataDir);
  });
});
