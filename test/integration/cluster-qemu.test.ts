/**
 * A three-member cluster on the QEMU driver, with real guests: a guest's serial console
 * is read through a member that does not run it (the WebSocket relay carries the guest's
 * bytes); a live migration between members named by id holds the VM's cluster lock
 * (seen from the third member, which cannot start work on the VM meanwhile) and leaves
 * every member's inventory pointing at the destination, where the guest runs on. With no
 * bandwidth cap the plan streams QEMU to QEMU over mutual TLS instead of through the relay.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, authHeaders, waitOp, wsTls } from '../helpers/daemon.js';
import { TestCluster } from '../helpers/cluster.js';
import { ensureQemuAndGuest, guestVm, heartbeats, installGuest, keepSerial, killGuests, serial, waitUntil } from '../helpers/qemu.js';

let c: TestCluster;
const BOOT_MS = 120_000;

beforeAll(async () => {
  ensureQemuAndGuest();
  c = await TestCluster.start(3, undefined, { args: ['--driver', 'qemu'] });
  for (const m of c.members) await installGuest(m.url);
  await c.waitFor(async () => {
    for (const m of c.members) if ((await api(m.url, 'GET', '/v1/cluster/hosts?consistency=stale')).body.items?.length !== 3) return false;
    return true;
  }, 'all three hosts in every inventory');
}, 300_000);
afterAll(async () => {
  await c?.close();
  for (const m of c?.members ?? []) {
    killGuests(m.dataDir);
  }
});

/** Where each member's inventory places `vmId` (member ids, in member order). */
async function placements(vmId: string): Promise<Array<number | undefined>> {
  return Promise.all(
    c.members.map(async (m) => {
      const r = await api(m.url, 'GET', '/v1/cluster/vms');
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      return (r.body.items as Array<{ vmId: string; member: number }>).find((p) => p.vmId === vmId)?.member;
    }),
  );
}

describe('a three-member cluster running real guests', { timeout: 300_000 }, () => {
  it("a guest's console is read through another member: its heartbeat lines arrive over the relay", async () => {
    const [owner, other] = [c.members[0]!.url, c.members[1]!.url];
    const created = await api(owner, 'POST', '/v1/vms', guestVm('relayed'));
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    expect((await waitOp(owner, (await api(owner, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    await c.waitFor(async () => (await api(other, 'GET', `/v1/vms/${id}`)).status === 200, 'the VM placed in the inventory');

    const ws = new WebSocket(`${other.replace('http', 'ws')}/v1/vms/${id}/console`, { ...wsTls(other), headers: authHeaders(other) });
    let text = '';
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      expect(isBinary).toBe(true);
      text += data.toString('latin1');
    });
    await new Promise<void>((resolve, reject) => {
      ws.on('error', reject);
      const t = setInterval(() => {
        if ((text.match(/HB \d+ /g) ?? []).length >= 3) {
          clearInterval(t);
          resolve();
        }
      }, 50);
      setTimeout(() => reject(new Error(`no heartbeats through the relay; got ${JSON.stringify(text.slice(-200))}`)), 90_000).unref();
    });
    ws.close();

    const stop = await api(other, 'POST', `/v1/vms/${id}/stop`);
    expect(stop.status).toBe(202);
    expect((await waitOp(other, stop.body.id)).state).toBe('succeeded');
    expect((await api(owner, 'GET', `/v1/vms/${id}`)).body.state).toBe('stopped');
  });

  it('live migration by member id: the third member sees the VM lock held by the source and cannot start work on the VM meanwhile; then every inventory places it on the destination, where its heartbeat goes on and its working set verifies', async () => {
    const [src, dst, third] = c.members;
    const ids = c.members.map((m) => m.id!);
    const created = await api(src!.url, 'POST', '/v1/vms', guestVm('cluster-mig', 'nc.dirty_mib=32 nc.rate=2 nc.model=random nc.verify_every=1'));
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    expect((await waitOp(src!.url, (await api(src!.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    await waitUntil(() => /VERIFY ok/.test(serial(src!.dataDir, id)), BOOT_MS, 'guest up with its working set verified');
    await c.waitFor(async () => (await placements(id)).every((m) => m === ids[0]), 'every inventory to place the VM on its first member');
    const lock = `/v1/cluster/locks/vm%2F${id}`;
    expect((await api(third!.url, 'GET', lock)).body).toMatchObject({ held: false });

    // The source's copy of the serial log goes with its VM directory once the guest has moved.
    const before = keepSerial(src!.dataDir, id);
    // 32 MiB of random pages at 8 MB/s: seconds of streaming to look at.
    const mig = await api(src!.url, 'POST', `/v1/vms/${id}/migrate`, { target: String(ids[1]), bandwidthMBps: 8, force: true });
    expect(mig.status, JSON.stringify(mig.body)).toBe(202);
    for (let i = 0; ; i++) {
      const m = (await api(src!.url, 'GET', `/v1/migrations/${mig.body.id}`)).body;
      if (m.progress?.bytesWire > 1 << 20) break;
      if (m.state !== 'running' || i > 600) throw new Error(`the migration never got going: ${JSON.stringify(m)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    // Mid-stream, seen from the member that takes no part: the source holds the VM's lock,
    // and work on the VM asked through this member is refused by whichever side of the
    // migration the inventory names at that moment (the destination lists its arriving copy).
    expect((await api(third!.url, 'GET', lock)).body).toMatchObject({ held: true, holder: `member-${ids[0]}` });
    const refused = await api(third!.url, 'POST', `/v1/vms/${id}/stop`);
    expect(refused.status, JSON.stringify(refused.body)).toBe(409);
    expect(refused.body.error.code).toBe('VM_BUSY');
    expect([String(ids[0]), String(ids[1])]).toContain(refused.headers.get('x-novacron-member'));
    expect((await api(dst!.url, 'POST', `/v1/vms/${id}/pause`)).body.error.code).toBe('VM_BUSY');

    let done: any;
    await c.waitFor(async () => (done = (await api(src!.url, 'GET', `/v1/migrations/${mig.body.id}`)).body).state !== 'running', 'the migration to end', 180_000);
    before.stop();
    expect(done, JSON.stringify(done)).toMatchObject({ state: 'completed', role: 'source', downtimeMs: { measured: expect.any(Number) } });
    await c.waitFor(async () => (await placements(id)).every((m) => m === ids[1]), 'every inventory to place the VM on the destination', 10_000);
    await c.waitFor(async () => (await api(third!.url, 'GET', lock)).body.held === false, 'the VM lock to be given back', 10_000);
    const sides = (await api(third!.url, 'GET', `/v1/cluster/migrations?vm=${id}&state=completed`)).body.items;
    expect(sides.map((m: { role: string; member: number }) => [m.role, m.member]).sort()).toEqual([['destination', ids[1]], ['source', ids[0]]]);

    // The guest runs on the destination: counting on from where it was, its working set intact.
    const last = Math.max(...[...before.text().matchAll(/^HB (\d+) /gm)].map((m) => Number(m[1])));
    await waitUntil(() => heartbeats(dst!.dataDir, id).some((n) => n > last + 3), 30_000, 'heartbeats continuing on the destination');
    await waitUntil(() => /VERIFY ok/.test(serial(dst!.dataDir, id)), 30_000, 'the working set verifying on the destination');
    expect(serial(dst!.dataDir, id)).not.toContain('VERIFY FAIL');
    const vm = await api(third!.url, 'GET', `/v1/vms/${id}`);
    expect(vm.body.state).toBe('running');
    expect(vm.headers.get('x-novacron-member')).toBe(String(ids[1]));

    // And work on it goes to its new member, from anywhere.
    const stop = await api(src!.url, 'POST', `/v1/vms/${id}/stop`);
    expect(stop.status, JSON.stringify(stop.body)).toBe(202);
    expect((await waitOp(src!.url, stop.body.id)).state).toBe('succeeded');
    expect((await api(dst!.url, 'GET', `/v1/vms/${id}`)).body.state).toBe('stopped');
  });

  it("with no bandwidth cap the plan streams QEMU to QEMU over mutual TLS: the record names the direct path with the relay weighed beside it, the wire carries QEMU's bytes as they are, and the guest runs on at the destination with its working set intact; on a 20 MB/s link, slower than the codec, the plan keeps the relay", async () => {
    const [, src, dst] = c.members;
    // Mixed content (random, half-compressible, text and sparse pages): the codec has something to win.
    const created = await api(src!.url, 'POST', '/v1/vms', guestVm('direct-mig', 'nc.dirty_mib=32 nc.rate=2 nc.model=mixed nc.verify_every=1'));
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    expect((await waitOp(src!.url, (await api(src!.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    await waitUntil(() => /VERIFY ok/.test(serial(src!.dataDir, id)), BOOT_MS, 'guest up with its working set verified');

    // On a link slower than the codec the link is the bottleneck: the relay, which never sends more, is planned.
    const capped = await api(src!.url, 'POST', `/v1/vms/${id}/migrate`, { target: String(dst!.id), bandwidthMBps: 20, dryRun: true, force: true });
    expect(capped.status, JSON.stringify(capped.body)).toBe(200);
    expect(capped.body.prediction).toMatchObject({ transport: 'relay', alternatives: [{ transport: 'direct' }] });

    const before = keepSerial(src!.dataDir, id);
    const mig = await api(src!.url, 'POST', `/v1/vms/${id}/migrate`, { target: String(dst!.id), force: true });
    expect(mig.status, JSON.stringify(mig.body)).toBe(202);
    expect(mig.body).toMatchObject({ transport: 'direct', prediction: { transport: 'direct', alternatives: [{ transport: 'relay' }] } });
    expect(mig.body.prediction.totalMs).toBeLessThan(mig.body.prediction.alternatives[0].totalMs);
    let done: any;
    await c.waitFor(async () => (done = (await api(src!.url, 'GET', `/v1/migrations/${mig.body.id}`)).body).state !== 'running', 'the migration to end', 180_000);
    before.stop();
    expect(done, JSON.stringify(done)).toMatchObject({ state: 'completed', transport: 'direct', downtimeMs: { measured: expect.any(Number) } });
    // Nothing compresses a direct stream: the wire carries QEMU's bytes, and at least the working set crossed.
    expect(done.progress.bytesWire).toBe(done.progress.bytesRaw);
    expect(done.progress.bytesRaw).toBeGreaterThan(32 << 20);
    const arrived = (await api(dst!.url, 'GET', `/v1/migrations/${mig.body.id}`)).body;
    expect(arrived).toMatchObject({ role: 'destination', state: 'completed', transport: 'direct' });
    // The key only lived in the VM directory for QEMU to load it.
    expect(existsSync(join(dst!.dataDir, 'vms', id, 'migration-tls'))).toBe(false);

    const last = Math.max(...[...before.text().matchAll(/^HB (\d+) /gm)].map((m) => Number(m[1])));
    await waitUntil(() => heartbeats(dst!.dataDir, id).some((n) => n > last + 3), 30_000, 'heartbeats continuing on the destination');
    await waitUntil(() => /VERIFY ok/.test(serial(dst!.dataDir, id)), 30_000, 'the working set verifying on the destination');
    expect(serial(dst!.dataDir, id)).not.toContain('VERIFY FAIL');
    expect((await api(dst!.url, 'GET', `/v1/vms/${id}`)).body.state).toBe('running');
    const stop = await api(dst!.url, 'POST', `/v1/vms/${id}/stop`);
    expect((await waitOp(dst!.url, stop.body.id)).state).toBe('succeeded');
  });
});
