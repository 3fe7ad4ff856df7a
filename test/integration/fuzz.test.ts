import fc from 'fast-check';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, NO_AUTH, removeDir, sampleVm, spawnDaemon, type DaemonHandle } from '../helpers/daemon.js';

let d: DaemonHandle;
let baseline: any[];
beforeAll(async () => {
  d = await spawnDaemon();
  for (const n of ['keep-a', 'keep-b', 'keep-c']) expect((await api(d.url, 'POST', '/v1/vms', sampleVm(n))).status).toBe(201);
  baseline = (await api(d.url, 'GET', '/v1/vms')).body.items;
});
afterAll(async () => {
  await d.kill();
  removeDir(d.dataDir);
});

async function expectIntact(): Promise<void> {
  expect((await api(d.url, 'GET', '/healthz')).status).toBe(200);
  const now = (await api(d.url, 'GET', '/v1/vms?limit=1000')).body.items;
  for (const vm of baseline) expect(now.find((v: any) => v.id === vm.id)).toEqual(vm);
}

function expectCleanError(r: { status: number; body: any }): void {
  expect(r.status).toBeGreaterThanOrEqual(400);
  expect(r.status).toBeLessThan(500);
  expect(r.body?.error?.code).toMatch(/^[A-Z_]+$/);
}

describe('API fuzzing: no crash, clean 4xx, nothing stored is lost', () => {
  it('random JSON values as VM specs', async () => {
    await fc.assert(
      fc.asyncProperty(fc.jsonValue({ maxDepth: 4 }), async (value) => {
        const r = await api(d.url, 'POST', '/v1/vms', JSON.stringify(value));
        expectCleanError(r);
      }),
      { numRuns: 150, seed: 42 },
    );
    await expectIntact();
  });

  it('near-valid specs with one hostile field', async () => {
    const hostile = fc.oneof(
      fc.constant(null), fc.constant(-1), fc.constant(1e308), fc.constant(Number.MAX_SAFE_INTEGER + 2), fc.constant('x'.repeat(10_000)),
      fc.constant('../../etc/passwd'), fc.constant('\u0000'), fc.constant({ __proto__: { admin: true } }), fc.constant([]), fc.string(), fc.integer(),
    );
    const field = fc.constantFrom('name', 'vcpus', 'memoryMiB', 'disks', 'nics', 'boot', 'labels', 'tenant');
    let n = 0;
    await fc.assert(
      fc.asyncProperty(field, hostile, async (key, value) => {
        // A name of its own each run: a 409 for a taken name must not stand in for validation.
        const spec: Record<string, unknown> = { ...sampleVm(`fz-${n++}`), [key]: value };
        const r = await api(d.url, 'POST', '/v1/vms', JSON.stringify(spec));
        if (r.status === 201) {
          // Accepted only if it really was a valid spec (an empty list or map, a plain string name); remove it again.
          expect(['labels', 'nics', 'disks'].includes(key) || (['name', 'tenant'].includes(key) && typeof value === 'string'), `${key}=${JSON.stringify(value)}`).toBe(true);
          await api(d.url, 'DELETE', `/v1/vms/${r.body.id}`);
        } else {
          expect([400, 422], `${key}=${JSON.stringify(value)}: ${JSON.stringify(r.body)}`).toContain(r.status);
          expect(r.body.error.code).toMatch(/^(VALIDATION_FAILED|VM_SPEC_INVALID|BAD_JSON)$/);
        }
      }),
      { numRuns: 150, seed: 7 },
    );
    await expectIntact();
  });

  it('prototype pollution attempts are refused (400) and grant nothing: an Auditor is still refused a create afterwards, and nothing is stored', async () => {
    expect((await api(d.url, 'POST', '/v1/users', { name: 'watcher' })).status).toBe(201);
    expect((await api(d.url, 'PUT', '/v1/acl', { path: '/', user: 'watcher', role: 'Auditor' })).status).toBe(200);
    const watcher = { authorization: `Bearer ${(await api(d.url, 'POST', '/v1/users/watcher/tokens', {})).body.token}` };
    const grant = '{"admin":true,"roles":["Administrator"],"privileges":["VM.Create"],"role":"Administrator"}';
    for (const body of [
      `{"name":"proto-1","vcpus":1,"memoryMiB":64,"disks":[{"name":"r","sizeMiB":1}],"labels":{"__proto__":${grant}}}`,
      `{"__proto__":${grant},"name":"proto-2","vcpus":1,"memoryMiB":64}`,
      `{"constructor":{"prototype":${grant}},"name":"proto-3"}`,
    ]) {
      for (const path of ['/v1/vms', '/v1/acl', '/v1/users']) {
        const r = await api(d.url, path === '/v1/acl' ? 'PUT' : 'POST', path, body);
        expect(r.status, `${path} ${body.slice(0, 40)}`).toBe(400);
      }
    }
    const refused = await api(d.url, 'POST', '/v1/vms', sampleVm('proto-after'), watcher);
    expect([refused.status, refused.body.error.code]).toEqual([403, 'FORBIDDEN']);
    const privileges = (await api(d.url, 'GET', '/v1/auth/whoami', undefined, watcher)).body.privileges;
    expect(privileges).toContain('VM.Audit');
    expect(privileges).not.toContain('VM.Create');
    await expectIntact();
  });

  it('hostile paths, methods and query strings', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('GET', 'POST', 'PATCH', 'DELETE', 'PUT', 'OPTIONS'),
        fc.array(fc.oneof(fc.constantFrom('v1', 'vms', 'operations', '..', '%2e%2e', '%00', '%ff', 'start', ':id'), fc.webSegment()), { maxLength: 5 }),
        fc.webQueryParameters(),
        async (method, segs, query) => {
          const r = await api(d.url, method, `/${segs.join('/')}?${query}`, method === 'GET' ? undefined : '{}');
          expect(r.status).toBeLessThan(500);
          if (r.status >= 400) expect(r.body.error.code).toMatch(/^[A-Z_]+$/);
        },
      ),
      { numRuns: 200, seed: 3 },
    );
    await expectIntact();
  });

  it('raw garbage on the socket, truncated requests and lying Content-Length', async () => {
    const payloads = [
      'GARBAGE\r\n\r\n',
      'POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name":',
      'POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n',
      'POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
      `GET /${'a'.repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 0xff)).toString('latin1'),
    ];
    for (const p of payloads) {
      await new Promise<void>((resolve) => {
        const s = connect(d.port, '127.0.0.1', () => s.end(p, 'latin1'));
        s.on('data', () => undefined);
        s.on('error', () => resolve());
        s.on('close', () => resolve());
        setTimeout(() => { s.destroy(); resolve(); }, 2000);
      });
    }
    await expectIntact();
  });
});

describe('pre-auth: hostile input to the public endpoints', { timeout: 60_000 }, () => {
  const token = 'fuzz-token-0123456789abcdef';
  let t: DaemonHandle;
  // The join endpoint is on the cluster port, over TLS; a stranger need not trust its certificate to send garbage.
  const stranger = new Agent({ connect: { rejectUnauthorized: false } });
  const join = async (body: string) => {
    const res = await request(`https://127.0.0.1:${t.peerPort}/v1/cluster/join`, { method: 'POST', dispatcher: stranger, headers: { 'content-type': 'application/json' }, body });
    return { status: res.statusCode, body: (await res.body.json().catch(() => undefined)) as any };
  };
  beforeAll(async () => {
    t = await spawnDaemon({ env: { NOVACRON_API_TOKEN: token } });
  });
  afterAll(async () => {
    await stranger.close();
    await t.kill();
    removeDir(t.dataDir);
  });

  it('bodies nested deep around "__proto__", sent without credentials, get a 400 (a 413 past the join\'s 16 KiB) and the daemon keeps answering', async () => {
    const nested = (depth: number) => ['['.repeat(depth) + '{"__proto__":1}' + ']'.repeat(depth), '{"a":'.repeat(depth) + '{"__proto__":{}}' + '}'.repeat(depth)];
    const deep = (r: { status: number; body: any }) => {
      expect(r.status).toBe(400);
      expect(r.body.error.code).toBe('VALIDATION_FAILED');
      expect(r.body.error.message).toMatch(/deeper than 64/);
    };
    for (const body of nested(50_000)) {
      deep(await api(t.url, 'POST', '/v1/auth/login', body, NO_AUTH));
      const tooBig = await join(body);
      expect([tooBig.status, tooBig.body.error.code]).toEqual([413, 'BODY_TOO_LARGE']);
    }
    for (const body of nested(2_000)) deep(await join(body));
    const shallow = await join('{"nodeId":"x","address":"127.0.0.1:1","__proto__":{"admin":true}}');
    expect(shallow.status).toBe(400);
    expect(shallow.body.error.code).toBe('VALIDATION_FAILED');
    expect((await api(t.url, 'GET', '/healthz')).status).toBe(200);
    expect(t.proc.exitCode).toBeNull();
  });

  it('every public endpoint survives nested and __proto__ bodies, huge headers, slow bodies and half-open connections and WebSockets: /healthz answers throughout, nothing stored changes', async () => {
    const stored = async () => JSON.stringify(await Promise.all(['/v1/users', '/v1/vms', '/v1/acl', '/v1/pools/local/volumes'].map(async (p) => (await api(t.url, 'GET', p)).body)));
    const before = await stored();
    const healthy = async () => {
      const t0 = performance.now();
      const r = await api(t.url, 'GET', '/healthz', undefined, NO_AUTH);
      return r.status === 200 && performance.now() - t0 < 1000;
    };
    const raw = (text: string, keep = false) =>
      new Promise<Socket>((resolve) => {
        const s = connect(t.port, '127.0.0.1', () => {
          s.write(text, 'latin1');
          resolve(s);
        });
        s.on('error', () => undefined);
        s.on('data', () => undefined);
        if (!keep) setTimeout(() => s.destroy(), 3000).unref();
      });
    for (const body of ['['.repeat(50_000) + ']'.repeat(50_000), '{"__proto__":{"admin":true},"user":"admin","password":"x"}', '{"constructor":{"prototype":{"admin":true}}}', 'x'.repeat(2 << 20)]) {
      const login = await api(t.url, 'POST', '/v1/auth/login', body, NO_AUTH);
      expect([400, 413], `login ${body.slice(0, 20)}`).toContain(login.status);
      const joined = await join(body).catch(() => ({ status: 413 })); // the cluster port may hang up on 2 MiB
      expect([400, 413], `join ${body.slice(0, 20)}`).toContain(joined.status);
    }
    // Huge headers, and requests that never finish (half-open), many at once.
    const held: Socket[] = [];
    held.push(await raw(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(256 << 10)}\r\n\r\n`));
    for (let i = 0; i < 50; i++) held.push(await raw('POST /v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"user":', true));
    for (let i = 0; i < 50; i++) held.push(await raw('GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n', true));
    for (let i = 0; i < 20; i++) held.push(await raw(`GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${Buffer.alloc(16, i).toString('base64')}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer ${t.token}\r\n\r\n`, true));
    // On the cluster port: TCP connections that never start TLS, TLS ones that never finish a request.
    for (let i = 0; i < 50; i++) {
      const s = connect(t.peerPort, '127.0.0.1');
      s.on('error', () => undefined);
      held.push(s);
    }
    for (let i = 0; i < 20; i++) {
      const s = tlsConnect({ port: t.peerPort, host: '127.0.0.1', rejectUnauthorized: false }, () => s.write('POST /v1/cluster/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9000\r\n\r\n{'));
      s.on('error', () => undefined);
      held.push(s as unknown as Socket);
    }
    // A slow body: a byte every 100 ms to the login endpoint while the probe is asked.
    const slow = await raw('POST /v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n', true);
    for (let i = 0; i < 20; i++) {
      slow.write('[');
      expect(await healthy()).toBe(true);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await healthy()).toBe(true);
    for (const s of [...held, slow]) s.destroy();
    expect(await healthy()).toBe(true);
    expect(await stored()).toBe(before);
    expect((await api(t.url, 'GET', '/v1/cluster')).body.voters).toHaveLength(1); // no join got through
    expect(t.proc.exitCode).toBeNull();
  });
});

