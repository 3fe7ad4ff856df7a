/**
 * Forwarding with real VMs: in a two-member cluster on the QEMU driver, a guest's serial
 * console is read through the member that does not run it (the WebSocket relay carries
 * the guest's bytes), and the guest is stopped through that member.
 */
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, authHeaders, waitOp, wsTls } from '../helpers/daemon.js';
import { TestCluster } from '../helpers/cluster.js';
import { ensureQemuAndGuest, guestVm, installGuest, killGuests } from '../helpers/qemu.js';

let c: TestCluster;

beforeAll(async () => {
  ensureQemuAndGuest();
  c = await TestCluster.start(2, undefined, { args: ['--driver', 'qemu'] });
  for (const m of c.members) await installGuest(m.url);
  await c.waitFor(async () => {
    for (let i = 0; i < 2; i++) if ((await api(c.members[i]!.url, 'GET', '/v1/cluster/hosts?consistency=stale')).body.items?.length !== 2) return false;
    return true;
  }, 'both hosts in both inventories');
}, 300_000);
afterAll(async () => {
  await c?.close();
  for (const m of c?.members ?? []) {
    killGuests(m.dataDir);
  }
});

describe('forwarding to a member running a real guest', { timeout: 180_000 }, () => {
  it("a guest's console is read through the other member: its heartbeat lines arrive over the relay", async () => {
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
});
