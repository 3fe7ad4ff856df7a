/**
 * Power loss, not kill -9: members' data directories live on lossyfs (see
 * helpers/power-loss.ts), which drops every byte not fsynced when it loses power. A
 * write acknowledged before RocksDB fsynced its WAL would be lost here, where a kill -9
 * (whose page cache survives) cannot show it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { api, sampleVm } from '../helpers/daemon.js';
import { TEST_RAFT, TestCluster, expectAllPresent, writeLoad, sleep } from '../helpers/cluster.js';
import { LossyDisk } from '../helpers/power-loss.js';

let cluster: TestCluster | undefined;
let disk: LossyDisk | undefined;
afterEach(async () => {
  await cluster?.close();
  await disk?.close();
  cluster = disk = undefined;
});

/** Every member and the disk lose power at once; then the disk and every member come back. */
async function powerCycle(c: TestCluster, d: LossyDisk): Promise<void> {
  const members = c.live();
  // A written, never-synced file: gone after the power loss, or this run proves nothing.
  const canary = join(d.root, 'canary');
  const fd = openSync(canary, 'w');
  writeSync(fd, 'unsynced');
  closeSync(fd);
  await Promise.all(members.map((i) => c.kill(i)));
  await d.powerLoss();
  await d.powerOn();
  expect(readFileSync(canary, 'utf8'), 'lossyfs kept unsynced data: it is not dropping anything').toBe('');
  for (const i of members) await c.startMember(i);
  await c.leader();
}

/** Creates VMs one after another until stopped; the ids of those acknowledged (201). */
function vmCreator(c: TestCluster, prefix: string) {
  const created = new Map<string, string>();
  let running = true;
  const loop = (async () => {
    for (let n = 0; running; n++) {
      // No answer (the power is out) is no acknowledgement; wait a moment instead of spinning.
      const r = await api(c.members[0]!.url, 'POST', '/v1/vms', sampleVm(`${prefix}-${n}`)).catch(() => undefined);
      if (r?.status === 201) created.set(r.body.id, r.body.name);
      else await sleep(20);
    }
  })();
  return {
    created,
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

describe('power loss', { timeout: 180_000 }, () => {
  it('a single member loses no acknowledged write when the power fails: every acknowledged key and every VM whose creation was acknowledged is there after the reboot', async () => {
    disk = await LossyDisk.mount();
    cluster = await TestCluster.start(1, TEST_RAFT, { dataRoot: disk.root });
    // Writes cut by the power loss and refused during the reboot are unacknowledged, not
    // failures of the test (any share may fail); the floor on acknowledged writes is the check.
    const load = writeLoad(cluster, 8, 'power', 1);
    const vms = vmCreator(cluster, 'power-vm');
    await sleep(3000);
    // The power fails under load: nothing is stopped first.
    await powerCycle(cluster, disk);
    await load.stop();
    await vms.stop();
    expect(load.acked.size, JSON.stringify(load.report)).toBeGreaterThan(50);
    expect(vms.created.size).toBeGreaterThan(3);
    await expectAllPresent(cluster, load.acked);
    for (const [id, name] of vms.created) {
      const r = await api(cluster.members[0]!.url, 'GET', `/v1/vms/${id}`);
      expect(r.status, `VM ${name} (${id}) was acknowledged and is gone: ${JSON.stringify(r.body)}`).toBe(200);
      expect(r.body.name).toBe(name);
    }
  });

  it('three members losing power at once lose no acknowledged write: after the reboot every acknowledged key is on every member', async () => {
    disk = await LossyDisk.mount();
    cluster = await TestCluster.start(3, TEST_RAFT, { dataRoot: disk.root });
    const load = writeLoad(cluster, 8, 'power3', 1);
    await sleep(3000);
    await powerCycle(cluster, disk);
    await load.stop();
    expect(load.acked.size, JSON.stringify(load.report)).toBeGreaterThan(50);
    await expectAllPresent(cluster, load.acked);
  });
});
