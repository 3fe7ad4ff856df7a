/**
 * Authorization, against a real daemon: every route × every built-in role (a user with
 * that role on `/`) is refused with 403 FORBIDDEN exactly when the role lacks the route's
 * declared privilege; and tenants are boundaries over REST and every WebSocket.
 */
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUILTIN_ROLES } from '../../src/auth/privileges.js';
import { api, removeDir, sampleVm, spawnDaemon, waitOp, type DaemonHandle, wsTls } from '../helpers/daemon.js';
import { EventClient } from '../helpers/events.js';
import { daemonRouter } from '../helpers/routes.js';

let d: DaemonHandle;
beforeAll(async () => {
  d = await spawnDaemon();
});
afterAll(async () => {
  await d?.kill();
  if (d) removeDir(d.dataDir);
});

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

/** A user holding `role` on `path` (or in a tenant), and a token of it. */
async function userWith(name: string, acl: { path: string; role: string } | undefined, tenant?: string): Promise<Record<string, string>> {
  const u = await api(d.url, 'POST', '/v1/users', { name, ...(tenant ? { tenant } : {}) });
  expect(u.status, JSON.stringify(u.body)).toBe(201);
  if (acl) expect((await api(d.url, 'PUT', '/v1/acl', { ...acl, user: name })).status).toBe(200);
  const t = await api(d.url, 'POST', `/v1/users/${name}/tokens`, {});
  expect(t.status).toBe(201);
  return bearer(t.body.token);
}

function wsStatus(path: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${d.url.replace('http', 'ws')}${path}`, { ...wsTls(d.url), headers });
    ws.once('open', () => {
      ws.close();
      resolve(101);
    });
    ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.once('error', reject);
  });
}

describe('route × role matrix', { timeout: 120_000 }, () => {
  it('every route answers 403 FORBIDDEN exactly to the built-in roles that lack its declared privilege', async () => {
    const roles = Object.keys(BUILTIN_ROLES);
    const tokens: Record<string, Record<string, string>> = {};
    for (const role of roles) tokens[role] = await userWith(`m-${role.toLowerCase()}`, { path: '/', role });

    // Fixtures every route can name; made again whenever a request removed or changed one.
    const fx = { op: '', mig: '' };
    const ensure = async () => {
      let vm = await api(d.url, 'GET', '/v1/vms/fx');
      if (vm.status === 404) vm = await api(d.url, 'POST', '/v1/vms', sampleVm('fx', { disks: [{ name: 'root', sizeMiB: 16, format: 'qcow2' }] }));
      if (vm.body.template || vm.body.state !== 'stopped') {
        const del = await api(d.url, 'DELETE', '/v1/vms/fx?force=true');
        expect(del.status, `re-making fx (${vm.body.state}): ${JSON.stringify(del.body)}`).toBe(202);
        await waitOp(d.url, del.body.id);
        vm = await api(d.url, 'POST', '/v1/vms', sampleVm('fx', { disks: [{ name: 'root', sizeMiB: 16, format: 'qcow2' }] }));
      }
      if ((await api(d.url, 'GET', '/v1/pools/local/volumes/fxv')).status === 404) {
        expect((await api(d.url, 'POST', '/v1/pools/local/volumes', { name: 'fxv', sizeMiB: 1, format: 'qcow2' })).status).toBe(201);
      }
      if (!fx.op) fx.op = (await api(d.url, 'POST', '/v1/vms/fx/start')).body.id;
      if (fx.op) await waitOp(d.url, fx.op);
      const started = await api(d.url, 'GET', '/v1/vms/fx');
      if (started.body.state === 'running') await waitOp(d.url, (await api(d.url, 'POST', '/v1/vms/fx/stop')).body.id);
      if (!fx.mig) {
        const m = await api(d.url, 'POST', '/v1/vms/fx/migrate', { target: 'http://127.0.0.1:1', targetToken: 'x'.repeat(16), force: true });
        expect(m.status, JSON.stringify(m.body)).toBeLessThan(300);
        fx.mig = m.body.id;
        for (let i = 0; i < 100 && (await api(d.url, 'GET', `/v1/migrations/${fx.mig}`)).body.state === 'running'; i++) await new Promise((r) => setTimeout(r, 50));
      }
    };
    await ensure();

    const fill = (pattern: string) =>
      pattern
        .replace(/^\/v1\/operations\/:id/, `/v1/operations/${fx.op}`)
        .replace(/^\/v1\/migrations\/:id/, `/v1/migrations/${fx.mig}`)
        .replace(/^\/v1\/cluster\/members\/:id/, '/v1/cluster/members/99')
        .replace(/^\/v1\/users\/:name/, '/v1/users/nobody')
        .replace(/^\/v1\/roles\/:name/, '/v1/roles/Nosuch')
        .replace(':id', 'fx')
        .replace(':pool', 'local')
        .replace(':name', 'fxv')
        .replace(':snapshot', 's1')
        .replace(':disk', 'root')
        .replace(':key', 'k')
        .replace(/:(\w+)/g, 'x');

    let cells = 0;
    const wrong: string[] = [];
    for (const route of daemonRouter().routes.filter((r) => r.priv !== 'public')) {
      for (const role of roles) {
        const path = fill(route.pattern);
        const r = await api(d.url, route.method, path, route.body ? {} : undefined, tokens[role]);
        cells++;
        const lacks = route.priv !== 'authenticated' && !(BUILTIN_ROLES[role] as readonly string[]).includes(route.priv);
        if (lacks !== (r.status === 403) || (r.status === 403 && r.body.error.code !== 'FORBIDDEN') || r.status >= 500) {
          wrong.push(`${role} ${route.method} ${path} (needs ${route.priv}): ${r.status} ${JSON.stringify(r.body)}`);
        }
        if (r.status === 202 && String(r.body?.id).startsWith('op-')) await waitOp(d.url, r.body.id).catch(() => undefined);
        if (route.method !== 'GET' && r.status < 300) await ensure();
      }
    }
    expect(wrong).toEqual([]);
    expect(cells).toBeGreaterThan(300);

    // The WebSockets: the console needs VM.Console on the VM; the event and telemetry streams are open to all (and filtered).
    for (const role of roles) {
      const privs = BUILTIN_ROLES[role] as readonly string[];
      expect(await wsStatus('/v1/vms/fx/console', tokens[role]!), role).toBe(privs.includes('VM.Console') ? 101 : 403);
      expect(await wsStatus('/v1/vms/fx/vnc', tokens[role]!), role).toBe(privs.includes('VM.Console') ? 409 : 403); // sim VMs have no display
      expect(await wsStatus('/v1/events', tokens[role]!)).toBe(101);
      expect(await wsStatus('/v1/telemetry?vmId=fx', tokens[role]!), role).toBe(privs.includes('VM.Audit') ? 101 : 403);
    }
  });
});

describe('tenants are boundaries', { timeout: 120_000 }, () => {
  it('a tenant user sees and acts on its own tenant only, over REST and every WebSocket; a tenant admin grants no more than it holds', async () => {
    const alice = await userWith('alice', { path: '/tenants/acme', role: 'TenantAdmin' }, 'acme');
    const bob = await userWith('bob', { path: '/tenants/globex', role: 'TenantAdmin' }, 'globex');

    const bobEvents = await EventClient.connect(d.url, '', bob);
    const aliceEvents = await EventClient.connect(d.url, '', alice);
    const bobTelemetry = await EventClient.connect(d.url, '', bob, '/v1/telemetry');

    // Alice's VM and volume land in her tenant without naming it.
    const vm = await api(d.url, 'POST', '/v1/vms', sampleVm('acme-web'), alice);
    expect(vm.status, JSON.stringify(vm.body)).toBe(201);
    expect(vm.body.spec.tenant).toBe('acme');
    const vol = await api(d.url, 'POST', '/v1/pools/local/volumes', { name: 'acme-data', sizeMiB: 1 }, alice);
    expect(vol.body.tenant).toBe('acme');
    const gvm = await api(d.url, 'POST', '/v1/vms', sampleVm('globex-db'), bob);
    expect(gvm.body.spec.tenant).toBe('globex');
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${vm.body.id}/start`, undefined, alice)).body.id)).state).toBe('succeeded');

    // Bob: nothing of acme's is visible or reachable.
    const bobList = await api(d.url, 'GET', '/v1/vms?limit=1000', undefined, bob);
    expect(bobList.body.items.map((v: any) => v.name)).toEqual(['globex-db']);
    for (const [method, path] of [['GET', `/v1/vms/${vm.body.id}`], ['GET', '/v1/vms/acme-web'], ['POST', `/v1/vms/${vm.body.id}/stop`], ['GET', `/v1/vms/${vm.body.id}/stats`], ['DELETE', `/v1/vms/${vm.body.id}?force=true`], ['GET', '/v1/pools/local/volumes/acme-data'], ['DELETE', '/v1/pools/local/volumes/acme-data']] as const) {
      expect((await api(d.url, method, path, undefined, bob)).status, `${method} ${path}`).toBe(403);
    }
    expect((await api(d.url, 'GET', '/v1/pools/local/volumes', undefined, bob)).body.items.map((v: any) => v.name)).not.toContain('acme-data');
    expect((await api(d.url, 'POST', '/v1/vms', sampleVm('intruder', { tenant: 'acme' }), bob)).status).toBe(403);
    expect(await wsStatus(`/v1/vms/${vm.body.id}/console`, bob)).toBe(403);
    expect(await wsStatus(`/v1/telemetry?vmId=${vm.body.id}`, bob)).toBe(403);

    // Tenant admins manage their own tenant's users, and grant only what they hold.
    expect((await api(d.url, 'POST', '/v1/users', { name: 'carol', tenant: 'acme' }, alice)).status).toBe(201);
    expect((await api(d.url, 'PUT', '/v1/acl', { path: '/tenants/acme', user: 'carol', role: 'TenantUser' }, alice)).status).toBe(200);
    expect((await api(d.url, 'POST', '/v1/users', { name: 'mallory', tenant: 'globex' }, alice)).status).toBe(403);
    expect((await api(d.url, 'POST', '/v1/users', { name: 'mallory' }, alice)).status).toBe(403);
    expect((await api(d.url, 'PUT', '/v1/acl', { path: '/', user: 'alice', role: 'Administrator' }, alice)).status).toBe(403);
    expect((await api(d.url, 'PUT', '/v1/acl', { path: '/tenants/globex', user: 'carol', role: 'TenantUser' }, alice)).status).toBe(403);
    expect((await api(d.url, 'PUT', '/v1/acl', { path: '/tenants/acme', user: 'bob', role: 'TenantUser' }, alice)).status).toBe(403);
    const escalate = await api(d.url, 'PUT', '/v1/acl', { path: '/tenants/acme', user: 'carol', role: 'Operator' }, alice);
    expect(escalate.status).toBe(403);
    expect(escalate.body.error.details.missing).toContain('VM.Migrate');

    // Key-value and lock namespaces are per user.
    expect((await api(d.url, 'PUT', '/v1/kv/plan', { value: 'acme secret' }, alice)).status).toBe(200);
    expect((await api(d.url, 'GET', '/v1/kv/plan', undefined, bob)).status).toBe(404);
    expect((await api(d.url, 'GET', '/v1/kv/plan', undefined, alice)).body.value).toBe('acme secret');

    // The streams: bob saw only globex's events and no sample of acme's VM; alice saw no globex event.
    await new Promise((r) => setTimeout(r, 2500)); // one telemetry interval
    const events = (c: EventClient) => c.frames.filter((f: any) => f.type === 'event').map((f: any) => f.event);
    expect(events(bobEvents).length).toBeGreaterThan(0);
    expect(events(bobEvents).every((e: any) => e.tenant === 'globex')).toBe(true);
    expect(events(aliceEvents).some((e: any) => e.vmId === vm.body.id && e.type === 'operation.succeeded')).toBe(true);
    expect(events(aliceEvents).every((e: any) => e.tenant === 'acme')).toBe(true);
    const samples = bobTelemetry.frames.filter((f: any) => f.type === 'samples').flatMap((f: any) => f.samples);
    expect(bobTelemetry.frames.some((f: any) => f.type === 'samples')).toBe(true);
    expect(samples.some((s: any) => s.vmId === vm.body.id)).toBe(false);
    for (const c of [bobEvents, aliceEvents, bobTelemetry]) c.close();
  });
});
