/**
 * Any member answers for any VM: in a three-member cluster with an API token, requests
 * about a VM, its operations and its console sent to a member that does not run it are
 * answered by the member that does; GET /v1/vms lists the whole cluster.
 */
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, NO_AUTH, sampleVm, wsTls } from '../helpers/daemon.js';
import { TestCluster } from '../helpers/cluster.js';

const TOKEN = 'forwarding-test-token-0123456789';
let c: TestCluster;
const url = (i: number) => c.members[i]!.url;
const call = (i: number, method: string, path: string, body?: unknown) => api(url(i), method, path, body, c.headers);

async function settle(i: number, opId: string): Promise<any> {
  for (;;) {
    const r = await call(i, 'GET', `/v1/operations/${opId}`);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    if (r.body.state !== 'running') return r.body;
    await new Promise((res) => setTimeout(res, 25));
  }
}

beforeAll(async () => {
  c = await TestCluster.start(3, undefined, { apiToken: TOKEN });
  // Forwarding finds members through the inventory, which a member joins by publishing
  // its host record (a just-promoted learner's first write may wait for a retry).
  await c.waitFor(async () => {
    for (let i = 0; i < 3; i++) if ((await call(i, 'GET', '/v1/cluster/hosts?consistency=stale')).body.items?.length !== 3) return false;
    return true;
  }, 'every host in every member\'s inventory');
}, 120_000);
afterAll(async () => {
  await c?.close();
});

describe('any member answers for any VM', { timeout: 60_000 }, () => {
  it('GET, PATCH, actions and operation polls through members that do not run the VM are answered by the one that does, from the moment its create is answered', async () => {
    const created = await call(0, 'POST', '/v1/vms', sampleVm('fw-1'));
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    // No waiting for the inventory: the create was answered once every member can find the VM.
    const [byId1, byName2] = await Promise.all([call(1, 'GET', `/v1/vms/${id}`), call(2, 'GET', '/v1/vms/fw-1')]);
    expect([byId1.status, byName2.status]).toEqual([200, 200]);

    const direct = await call(0, 'GET', `/v1/vms/${id}`);
    for (const ref of [id, 'fw-1']) {
      const via = await call(1, 'GET', `/v1/vms/${ref}`);
      expect(via.status).toBe(200);
      expect(via.body).toEqual(direct.body);
      expect(via.headers.get('x-novacron-member')).toBe(String(c.members[0]!.id));
    }
    expect(direct.headers.get('x-novacron-member')).toBeNull(); // answered locally: no hop

    const patched = await call(1, 'PATCH', `/v1/vms/${id}`, { vcpus: 3 });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    expect((await call(0, 'GET', `/v1/vms/${id}`)).body.spec.vcpus).toBe(3);

    const start = await call(2, 'POST', `/v1/vms/${id}/start`);
    expect(start.status).toBe(202);
    expect(start.headers.get('location')).toBe(`/v1/operations/${start.body.id}`);
    expect((await settle(2, start.body.id)).state).toBe('succeeded'); // the member that forwarded it knows the operation's owner
    expect((await call(1, 'GET', `/v1/operations/${start.body.id}`)).body).toMatchObject({ id: start.body.id, state: 'succeeded' }); // one that did not asks around
    expect((await call(0, 'GET', `/v1/vms/${id}`)).body.state).toBe('running');

    const busy = await call(1, 'POST', `/v1/vms/${id}/start`);
    expect(busy.status).toBe(409); // the owner's own error comes back as it is
    expect(busy.body.error.code).toBe('VM_INVALID_STATE');

    const removed = await call(1, 'DELETE', `/v1/vms/${id}?force=true`);
    expect(removed.status).toBe(202);
    expect((await settle(1, removed.body.id)).state).toBe('succeeded');
    expect((await call(0, 'GET', `/v1/vms/${id}`)).status).toBe(404);
  });

  it('identities are the cluster\'s: a user and token made on one member work on every member, and a revoked token or disabled user is refused everywhere within a second', async () => {
    expect((await call(0, 'POST', '/v1/users', { name: 'roamer' })).status).toBe(201);
    expect((await call(0, 'PUT', '/v1/acl', { path: '/', user: 'roamer', role: 'Auditor' })).status).toBe(200);
    const t = await call(0, 'POST', '/v1/users/roamer/tokens', {});
    const roamer = { authorization: `Bearer ${t.body.token}` };
    const everywhere = async (status: number) => (await Promise.all([0, 1, 2].map((i) => api(url(i), 'GET', '/v1/auth/whoami', undefined, roamer)))).every((r) => r.status === status);
    const within = async (what: string, status: number) => {
      const t0 = Date.now();
      while (!(await everywhere(status))) {
        if (Date.now() - t0 > 1000) throw new Error(`${what} took more than a second on some member`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await within('the new token', 200);
    // Each member's own admin token is every member's too.
    expect((await api(url(1), 'GET', '/v1/auth/whoami', undefined, { authorization: `Bearer ${c.members[2]!.daemon!.token}` })).body.user).toBe('admin');
    expect((await call(1, 'DELETE', `/v1/users/roamer/tokens/${t.body.id}`)).status).toBe(204);
    await within('revocation', 401);
    const t2 = await call(2, 'POST', '/v1/users/roamer/tokens', {});
    roamer.authorization = `Bearer ${t2.body.token}`;
    await within('the second token', 200);
    expect((await call(1, 'PATCH', '/v1/users/roamer', { disabled: true })).status).toBe(200);
    await within('disabling the user', 401);
  });

  it('a tenant quota holds cluster-wide under concurrent creates through every member: never over, QUOTA_EXCEEDED naming what is over, room again once a VM goes', async () => {
    expect((await call(0, 'PUT', '/v1/tenants/race/quota', { vms: 3, memoryMiB: 4096 })).status).toBe(200);
    // Each member applies a new limit once it has replicated it (a linearizable read here waits for that).
    for (const i of [1, 2]) expect((await call(i, 'GET', '/v1/tenants/race/quota')).body.limits.vms).toBe(3);
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => call(i % 3, 'POST', '/v1/vms', sampleVm(`race-${i}`, { tenant: 'race' }))));
    const made = results.filter((r) => r.status === 201);
    const refused = results.filter((r) => r.status !== 201);
    expect(made.length).toBe(3);
    for (const r of refused) {
      expect(r.status, JSON.stringify(r.body)).toBe(403);
      expect(r.body.error).toMatchObject({ code: 'QUOTA_EXCEEDED', details: { tenant: 'race', over: [{ resource: 'vms', limit: 3, used: 3, requested: 1 }] } });
    }
    const quota = await call(1, 'GET', '/v1/tenants/race/quota');
    expect(quota.body).toMatchObject({ limits: { vms: 3, memoryMiB: 4096 }, usage: { vms: 3, memoryMiB: 3 * 512 } });
    // Memory: 3 x 512 MiB used of 4096; a VM of 4096 MiB is over on memory only... and on count.
    const big = await call(2, 'POST', '/v1/vms', sampleVm('race-big', { tenant: 'race', memoryMiB: 4096 }));
    expect(big.body.error.details.over.map((o: any) => o.resource).sort()).toEqual(['memoryMiB', 'vms']);
    // One goes: once the inventory drops it, there is room for one more.
    const gone = made[0]!.body;
    const owner = [0, 1, 2].find((i) => results.indexOf(made[0]!) % 3 === i)!;
    await settle(owner, (await call(owner, 'DELETE', `/v1/vms/${gone.id}`)).body.id);
    await c.waitFor(async () => (await call(0, 'GET', '/v1/tenants/race/quota')).body.usage.vms === 2, 'the deleted VM to leave the usage');
    expect((await call(1, 'POST', '/v1/vms', sampleVm('race-again', { tenant: 'race' }))).status).toBe(201);
    expect((await call(2, 'POST', '/v1/vms', sampleVm('race-over', { tenant: 'race' }))).status).toBe(403);
    expect((await call(0, 'DELETE', '/v1/tenants/race/quota')).status).toBe(204);
    expect((await call(0, 'POST', '/v1/vms', sampleVm('race-free', { tenant: 'race' }))).status).toBe(201);
    // Leave the members as the other tests expect them: no VMs of this test anywhere.
    for (const vm of (await call(0, 'GET', '/v1/vms?tenant=race&limit=1000')).body.items) {
      const op = await call(0, 'DELETE', `/v1/vms/${vm.id}`);
      expect(op.status, JSON.stringify(op.body)).toBe(202);
      await settle(0, op.body.id);
    }
  });

  it('a tenant disk quota per pool holds cluster-wide: concurrent volume creates through every member never provision more than it allows', async () => {
    expect((await call(0, 'PUT', '/v1/tenants/disky/quota', { diskGiB: { local: 1 } })).status).toBe(200);
    for (const i of [1, 2]) expect((await call(i, 'GET', '/v1/tenants/disky/quota')).body.limits.diskGiB.local).toBe(1);
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => call(i % 3, 'POST', '/v1/pools/local/volumes', { name: `disky-${i}`, sizeMiB: 300, tenant: 'disky' })));
    const made = results.filter((r) => r.status === 201);
    // Never over: at most 3 x 300 MiB fit in 1 GiB. (An admission also counts until it
    // expires, so under contention fewer may be admitted; never more.)
    expect(made.length).toBeGreaterThanOrEqual(1);
    expect(made.length).toBeLessThanOrEqual(3);
    for (const r of results.filter((x) => x.status !== 201)) {
      expect(r.status, JSON.stringify(r.body)).toBe(403);
      expect(r.body.error).toMatchObject({ code: 'QUOTA_EXCEEDED', details: { over: [{ resource: 'diskGiB', pool: 'local', limit: 1 }] } });
    }
    // A VM's new disk counts too; the refused VM leaves nothing behind.
    const vm = await call(1, 'POST', '/v1/vms', sampleVm('disky-vm', { tenant: 'disky', disks: [{ name: 'root', sizeMiB: 512 }] }));
    expect(vm.body.error?.code).toBe('QUOTA_EXCEEDED');
    expect((await call(1, 'GET', '/v1/vms/disky-vm')).status).toBe(404);
    // Another pool is not limited.
    expect((await call(0, 'GET', '/v1/tenants/disky/quota')).body.usage.diskBytes.local).toBeGreaterThanOrEqual(900 * 2 ** 20);
    expect((await call(0, 'DELETE', '/v1/tenants/disky/quota')).status).toBe(204);
    for (const [i, r] of results.entries()) if (r.status === 201) expect((await call(i % 3, 'DELETE', `/v1/pools/local/volumes/disky-${i}`)).status).toBe(204);
  });

  it('a VM no member has is a 404 from the member asked, without a hop', async () => {
    const r = await call(1, 'GET', '/v1/vms/vm-nowhere');
    expect(r.status).toBe(404);
    expect(r.body.error.code).toBe('VM_NOT_FOUND');
    expect(r.headers.get('x-novacron-member')).toBeNull();
    const unauthenticated = await api(url(1), 'GET', '/v1/vms/vm-nowhere', undefined, NO_AUTH);
    expect(unauthenticated.status).toBe(401);
  });

  it('GET /v1/vms lists every member\'s VMs in id order, pages across members, and ?member= narrows it', async () => {
    const a = (await call(0, 'POST', '/v1/vms', sampleVm('list-a'))).body;
    const b = (await call(2, 'POST', '/v1/vms', sampleVm('list-b'))).body;
    const all = await call(1, 'GET', '/v1/vms?limit=1000');
    expect(all.status).toBe(200);
    const names = all.body.items.map((v: any) => v.name);
    expect(names).toEqual(expect.arrayContaining(['list-a', 'list-b']));
    expect(all.body.items.map((v: any) => v.id)).toEqual([...all.body.items.map((v: any) => v.id)].sort());
    expect(all.body.total).toBe(all.body.items.length);

    const first = await call(1, 'GET', '/v1/vms?limit=1');
    expect(first.body.items).toHaveLength(1);
    const second = await call(1, 'GET', `/v1/vms?limit=1000&cursor=${first.body.nextCursor}`);
    expect([...first.body.items, ...second.body.items].map((v: any) => v.id)).toEqual(all.body.items.map((v: any) => v.id));

    const onlyA = await call(1, 'GET', `/v1/vms?member=${c.members[0]!.id}`);
    expect(onlyA.body.items.map((v: any) => v.id)).toContain(a.id);
    expect(onlyA.body.items.map((v: any) => v.id)).not.toContain(b.id);
    const local = await call(1, 'GET', '/v1/vms?scope=local');
    expect(local.body.items).toEqual([]);
  });

  it('the console WebSocket of a VM on another member is relayed to it: the owner\'s close code and reason arrive', async () => {
    const vm = (await call(0, 'POST', '/v1/vms', sampleVm('fw-console'))).body;
    const close = (i: number) =>
      new Promise<{ code: number; reason: string }>((resolve, reject) => {
        const ws = new WebSocket(`${url(i).replace('http', 'ws')}/v1/vms/${vm.id}/console`, { ...wsTls(url(0)), headers: c.headers });
        let failure = '';
        ws.on('error', (err) => (failure = err.message));
        ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() || failure }));
        ws.on('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
      });
    const direct = await close(0);
    expect(direct.code).toBe(4409); // the sim driver has no serial console
    expect(await close(1)).toEqual(direct);
  });

  it('a migration started and followed through a third member is the source\'s, and the VM then answers from its new member', async () => {
    const vm = (await call(0, 'POST', '/v1/vms', sampleVm('fw-move'))).body;
    const mig = await call(2, 'POST', `/v1/vms/${vm.id}/migrate`, { target: String(c.members[1]!.id) });
    expect(mig.status, JSON.stringify(mig.body)).toBe(202);
    expect(mig.headers.get('x-novacron-member')).toBe(String(c.members[0]!.id));
    await c.waitFor(async () => (await call(2, 'GET', `/v1/migrations/${mig.body.id}`)).body.state === 'completed', 'the migration, followed through member 2');
    const viaThird = await call(2, 'GET', `/v1/migrations/${mig.body.id}`);
    expect(viaThird.body).toEqual((await call(0, 'GET', `/v1/migrations/${mig.body.id}`)).body); // the source's record
    expect(viaThird.body.role).toBe('source');
    await c.waitFor(async () => (await call(2, 'GET', `/v1/vms/${vm.id}`)).headers.get('x-novacron-member') === String(c.members[1]!.id), 'the VM answered by its new member');
    expect((await call(2, 'GET', `/v1/vms/${vm.id}`)).body).toMatchObject({ id: vm.id, name: 'fw-move' });
  });

  it('telemetry for a VM on another member is relayed from it; a VM no member has closes with 4404 VM_NOT_FOUND', async () => {
    const vm = (await call(0, 'POST', '/v1/vms', sampleVm('fw-tele'))).body;
    const { unpack } = await import('msgpackr');
    const frame = await new Promise<any>((resolve, reject) => {
      const ws = new WebSocket(`${url(1).replace('http', 'ws')}/v1/telemetry?vmId=${vm.id}`, { ...wsTls(url(0)), headers: c.headers });
      ws.on('message', (data: Buffer) => {
        resolve(unpack(data));
        ws.close();
      });
      ws.on('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
      setTimeout(() => reject(new Error('no telemetry frame through the relay')), 10_000).unref();
    });
    expect(frame).toMatchObject({ type: 'samples', intervalMs: expect.any(Number), samples: expect.any(Array) });
    const refused = await new Promise<{ code: number; reason: string }>((resolve) => {
      const ws = new WebSocket(`${url(1).replace('http', 'ws')}/v1/telemetry?vmId=vm-nowhere`, { ...wsTls(url(0)), headers: c.headers });
      ws.on('unexpected-response', (_req, res) => resolve({ code: res.statusCode ?? 0, reason: 'HTTP' }));
      ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    expect(refused.code).toBe(4404); // Accepted before the lookup, then closed (see ws-relay.ts).
    expect(refused.reason).toMatch(/^VM_NOT_FOUND: /);
  });

  // Last: it kills a member.
  it('a request about a VM whose member does not answer is 502 CLUSTER_MEMBER_UNREACHABLE, from the member asked', async () => {
    const vm = (await call(0, 'POST', '/v1/vms', sampleVm('fw-gone'))).body;
    await c.kill(0);
    const r = await call(1, 'GET', `/v1/vms/${vm.id}`);
    expect(r.status).toBe(502);
    expect(r.body.error.code).toBe('CLUSTER_MEMBER_UNREACHABLE');
    expect(r.body.error.details).toEqual({ member: c.members[0]!.id });
  });
});
