/** The pools' tiering rules: which disks they move, when, and how (one background move at a time, at the pool's rate). */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { DiskPolicyEngine, type PolicyHost } from '../../src/vm/disk-policy.js';
import { PoolPolicy } from '../../src/storage/model.js';
import type { VmRecord } from '../../src/vm/record.js';

const DAY = 86_400_000;
const vm = (id: string, pool: string, state: VmRecord['state'] = 'running'): VmRecord => ({
  id, name: id, state, node: 'n', generation: 1, createdAt: '', updatedAt: '',
  spec: { vcpus: 1, memoryMiB: 64, memoryBacking: 'anonymous', disks: [{ name: 'data', pool, sizeMiB: 8, format: 'qcow2', bus: 'virtio', readOnly: false }], nics: [], boot: { type: 'disk' }, labels: {}, tenant: 'default' },
});

function setup(vms: VmRecord[], policies: Record<string, unknown>) {
  let now = 1_000_000;
  const ops = new Map<string, number>();
  const moves: Array<{ vm: string; disk: string; pool: string; bandwidthMBps: number }> = [];
  let done = false;
  const host: PolicyHost = {
    vms: () => vms.values(),
    stats: async (v) => ({ cpuSeconds: 0, memoryRssBytes: 0, disks: [{ name: 'data', readBytes: 0, writeBytes: 0, readOps: ops.get(v.id) ?? 0, writeOps: 0 }] }),
    defaultPool: 'local',
    policy: (pool) => (policies[pool] ? PoolPolicy.parse(policies[pool]) : undefined),
    hasPool: (pool) => ['local', 'fast', 'cold'].includes(pool),
    moveDisk: async (v, disk, to) => {
      moves.push({ vm: v.id, disk, ...to });
      return { id: `op-${moves.length}` };
    },
    operationDone: async () => done,
  };
  const engine = new DiskPolicyEngine(host, pino({ level: 'silent' }), () => now);
  return { engine, moves, ops, advance: (ms: number) => (now += ms), finish: () => (done = true) };
}

describe('disk policy engine', () => {
  it('moves a disk with no I/O for the rule\'s days to the colder pool, and not before', async () => {
    const s = setup([vm('vm-a', 'local')], { local: { moveAfterIdleDays: { days: 7, to: 'cold' } } });
    s.ops.set('vm-a', 10);
    await s.engine.sample();
    s.advance(6 * DAY);
    await s.engine.sample(); // no new ops: idle since the first sample
    expect(s.engine.plan()).toEqual([]);
    s.advance(1 * DAY);
    expect(s.engine.plan()).toMatchObject([{ vmId: 'vm-a', disk: 'data', from: 'local/vm-a-data', to: 'cold/vm-a-data', bandwidthMBps: 50 }]);
    // I/O makes it active again.
    s.ops.set('vm-a', 11);
    await s.engine.sample();
    expect(s.engine.plan()).toEqual([]);
  });

  it('moves a disk above the IOPS threshold for the rule\'s minutes to the faster pool, hot moves first', async () => {
    const s = setup([vm('vm-idle', 'local'), vm('vm-busy', 'local')], { local: { moveWhenIopsAbove: { iops: 100, to: 'fast', forMinutes: 5 }, moveAfterIdleDays: { days: 1, to: 'cold' }, bandwidthMBps: 20 } });
    await s.engine.sample();
    for (let m = 1; m <= 5; m++) {
      s.advance(60_000);
      s.ops.set('vm-busy', m * 60 * 500); // 500 IOPS
      await s.engine.sample();
      s.engine.plan();
    }
    s.advance(DAY);
    s.ops.set('vm-busy', 5 * 60 * 500 + 86_400 * 500);
    await s.engine.sample();
    const plan = s.engine.plan();
    expect(plan.map((p) => [p.vmId, p.to])).toEqual([['vm-busy', 'fast/vm-busy-data'], ['vm-idle', 'cold/vm-idle-data']]);
    expect(plan[0]).toMatchObject({ bandwidthMBps: 20, reason: expect.stringContaining('above 100') });
  });

  it('starts one background move at a time, at the pool\'s rate, and only to pools that exist', async () => {
    const s = setup([vm('vm-1', 'local'), vm('vm-2', 'local'), vm('vm-3', 'other')], { local: { moveAfterIdleDays: { days: 1, to: 'cold' }, bandwidthMBps: 10 }, other: { moveAfterIdleDays: { days: 1, to: 'nowhere' } } });
    await s.engine.sample();
    s.advance(2 * DAY);
    expect(s.engine.plan().map((p) => p.vmId)).toEqual(['vm-1', 'vm-2']); // vm-3's target pool does not exist
    await s.engine.tick();
    await s.engine.tick(); // the first move still runs: no second one
    expect(s.moves).toEqual([{ vm: 'vm-1', disk: 'data', pool: 'cold', bandwidthMBps: 10 }]);
    s.finish();
    await new Promise((r) => setTimeout(r, 1100));
    await s.engine.tick();
    expect(s.moves.length).toBe(2);
  });
});
