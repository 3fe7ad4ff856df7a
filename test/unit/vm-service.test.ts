/** VmService with the sim driver over a real RocksStore (in-process, fast). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { EventLog } from '../../src/events/log.js';
import { RocksStore } from '../../src/native/rocks-store.js';
import { SimDriver } from '../../src/vm/drivers/sim.js';
import { VmService } from '../../src/vm/service.js';
import { ACTIONS } from '../../src/vm/actions.js';
import { canTransition } from '../../src/vm/state.js';
import { LINGER_MS } from '../../src/vm/claims.js';
import { OPERATION_KINDS } from '../../src/operations/operation.js';
import { LockService } from '../../src/cluster/locks.js';
import { NovaError } from '../../src/errors.js';
import type { RaftNode } from '../../src/native/raft-node.js';
import type { NovaEvent } from '../../src/events/types.js';
import { StorageService } from '../../src/storage/service.js';
import { VmStorage } from '../../src/vm/media.js';

const log = pino({ level: 'silent' });
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(driver = new SimDriver(), dir = mkdtempSync(join(tmpdir(), 'novacron-svc-'))) {
  const store = RocksStore.open(dir);
  const events = await EventLog.open(store);
  const storage = new VmStorage(await StorageService.open({ dataDir: dir, pools: [], events, log }));
  const vms = await VmService.open({ store, events, driver, storage, nodeId: 'n1', log });
  const seen: NovaEvent[] = [];
  events.subscribe({}, (e) => seen.push(e));
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await vms.drain();
    await store.close();
  };
  cleanups.push(async () => {
    await close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { store, events, vms, driver, seen, dir, close };
}

const spec = (name: string) => ({ name, vcpus: 1, memoryMiB: 64, memoryBacking: 'anonymous' as const, disks: [{ name: 'r', sizeMiB: 1, format: 'qcow2' as const, bus: 'virtio' as const, readOnly: false }], nics: [], boot: { type: 'disk' as const }, labels: {}, tenant: 'default' });

async function settle(vms: VmService, opId: string) {
  for (;;) {
    const op = await vms.getOperation(opId);
    if (op.state !== 'running') return op;
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe('VmService', () => {
  it('moves a VM to error when its process dies unexpectedly', async () => {
    const { vms, driver, seen } = await setup();
    const vm = await vms.create(spec('a'));
    await settle(vms, (await vms.requestAction(vm.id, 'start')).id);
    driver.crash(vm.id, 'killed by signal 9');
    await expect.poll(() => vms.get(vm.id).state).toBe('error');
    expect(vms.get(vm.id).stateReason).toBe('VM process exited unexpectedly: killed by signal 9');
    expect(seen.at(-1)).toMatchObject({ type: 'vm.state', data: { from: 'running', to: 'error' } });
  });

  it('records a guest-initiated power-off as stopped', async () => {
    const { vms, driver } = await setup();
    const vm = await vms.create(spec('b'));
    await settle(vms, (await vms.requestAction(vm.id, 'start')).id);
    driver.guestPowerOff(vm.id);
    await expect.poll(() => vms.get(vm.id).state).toBe('stopped');
  });

  it('injected failures by probability leave consistent state', async () => {
    let n = 0;
    const { vms } = await setup(new SimDriver({ failureRate: { pause: 1 }, random: () => (n++ % 2) / 2 }));
    const vm = await vms.create(spec('c'));
    await settle(vms, (await vms.requestAction(vm.id, 'start')).id);
    const op = await settle(vms, (await vms.requestAction(vm.id, 'pause')).id);
    expect(op.state).toBe('failed');
    expect(vms.get(vm.id).state).toBe('running'); // inspect says still running
  });

  it('persists everything: a reopened service sees the same VMs and events', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'novacron-svc-'));
    const first = await setup(new SimDriver(), dir);
    const vm = await first.vms.create(spec('d'));
    await first.vms.patch(vm.id, { vcpus: 3 });
    const last = first.events.lastSeq;
    await first.close();
    const second = await setup(new SimDriver(), dir);
    expect(second.vms.get('d')).toMatchObject({ id: vm.id, spec: { vcpus: 3 }, state: 'stopped' });
    expect(second.events.lastSeq).toBe(last);
    const replay = await second.events.readAfter(0, 100);
    expect(replay.map((e) => e.seq)).toEqual(Array.from({ length: last }, (_, i) => i + 1));
  });

  it('operations in a row take the VM\'s cluster lock once (it is kept LINGER_MS after each); a request while it is given back waits for that instead of VM_BUSY', async () => {
    const { vms } = await setup();
    let holds = 0;
    let held = 0;
    vms.useLockGuard({
      hold: async () => {
        holds++;
        held++;
        return {
          token: holds,
          lost: new AbortController().signal,
          release: async () => {
            await new Promise((r) => setTimeout(r, 150)); // a slow replicated release
            held--;
          },
        };
      },
    });
    const vm = await vms.create(spec('e'));
    await settle(vms, (await vms.requestAction(vm.id, 'start')).id);
    expect((await settle(vms, (await vms.requestAction(vm.id, 'stop')).id)).state).toBe('succeeded');
    await settle(vms, (await vms.requestAction(vm.id, 'start')).id);
    await settle(vms, (await vms.requestAction(vm.id, 'stop')).id);
    expect(holds).toBe(1); // one lock for four operations in a row
    expect(held).toBe(1);
    await new Promise((r) => setTimeout(r, LINGER_MS + 50));
    expect(held).toBe(1); // being handed back now
    expect((await vms.patch(vm.id, { vcpus: 2 })).spec.vcpus).toBe(2);
    expect(held).toBe(0);
    expect((await settle(vms, (await vms.requestAction(vm.id, 'start')).id)).state).toBe('succeeded');
    expect(holds).toBe(2);
  });

  it('the sim driver scales to 10,000 VMs', async () => {
    const { vms, driver } = await setup();
    const N = 10_000;
    let next = 0;
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (next < N) {
        const vm = await vms.create({ ...spec(`s-${next++}`), disks: [{ ...spec('x').disks[0]!, format: 'raw' }] });
        await settle(vms, (await vms.requestAction(vm.id, 'start')).id);
      }
    }));
    expect(vms.size).toBe(N);
    expect(driver.runningCount).toBe(N);
    expect(vms.countByState().running).toBe(N);
    const page = vms.list({ limit: 1000, state: ['running'] });
    expect(page.items.length).toBe(1000);
    expect(page.nextCursor).toBeDefined();
  }, 120_000);

  it('an operation whose cluster lease is lost mid-way fails with LOCK_FENCED and the VM settles to what the hypervisor reports', async () => {
    const { vms } = await setup(new SimDriver({ latencyMs: { start: 200 } }));
    const leases: AbortController[] = [];
    vms.useLockGuard({
      hold: async () => {
        const lost = new AbortController();
        leases.push(lost);
        return { token: leases.length, lost: lost.signal, release: async () => undefined };
      },
    });
    const vm = await vms.create(spec('f'));
    const op = await vms.requestAction(vm.id, 'start');
    leases[0]!.abort();
    const done = await settle(vms, op.id);
    expect(done.state).toBe('failed');
    expect(done.error?.code).toBe('LOCK_FENCED');
    expect(vms.get(vm.id).state).toBe('running'); // the sim did start it: the record follows the hypervisor
  });

  it('a failed store write leaves the VM record in memory as it was', async () => {
    const { vms, events } = await setup();
    const vm = await vms.create(spec('g'));
    const commit = events.commit.bind(events);
    events.commit = async () => {
      throw new NovaError('STORE_IO', 'disk full');
    };
    await expect(vms.patch(vm.id, { vcpus: 4 })).rejects.toMatchObject({ code: 'STORE_IO' });
    await expect(vms.requestAction(vm.id, 'start')).rejects.toMatchObject({ code: 'STORE_IO' });
    events.commit = commit;
    expect(vms.get(vm.id)).toEqual(vm);
    expect(JSON.parse(vms.getJson(vm.id))).toEqual(vm);
  });

  it('a raw system error from the driver reaches the operation record as INTERNAL, without its message', async () => {
    class Faulty extends SimDriver {
      override async start(): Promise<never> {
        throw Object.assign(new Error("ENOENT: no such file or directory, open '/var/secret/vm.img'"), { code: 'ENOENT' });
      }
    }
    const { vms } = await setup(new Faulty());
    const vm = await vms.create(spec('h'));
    const done = await settle(vms, (await vms.requestAction(vm.id, 'start')).id);
    expect(done.state).toBe('failed');
    expect(done.error).toEqual({ code: 'INTERNAL', message: 'internal error (see the daemon log)' });
    expect(vms.get(vm.id).state).toBe('stopped');
  });
});

describe('lifecycle actions', () => {
  it('every action starts only from states with a legal transition into its running state', () => {
    for (const kind of OPERATION_KINDS) {
      const { from, during } = ACTIONS[kind];
      expect(from.length, kind).toBeGreaterThan(0);
      if (during) for (const s of from) expect(canTransition(s, during), `${kind}: ${s} → ${during}`).toBe(true);
    }
  });
});

describe('LockService.hold', () => {
  function fakeNode(acquire: () => Promise<unknown>): RaftNode {
    return { acquire, release: async () => ({ kind: 'released' }) } as unknown as RaftNode;
  }

  it('marks the lease lost at once when another holder has the lock', async () => {
    let calls = 0;
    const locks = new LockService(fakeNode(async () => (calls++ === 0 ? { kind: 'granted', token: 7, expiresMs: Date.now() + 300 } : { kind: 'held', holder: 'member-2', token: 9 })), 10);
    const held = await locks.hold('vm/x', 'member-1', 300);
    await expect.poll(() => held.lost.aborted, { timeout: 2000 }).toBe(true);
    expect((held.lost.reason as NovaError).code).toBe('LOCK_FENCED');
    expect((held.lost.reason as NovaError).message).toMatch(/taken by member-2/);
    expect(calls).toBe(2);
    await held.release();
  });

  it('marks the lease lost at its expiry when renewals keep failing, and not before', async () => {
    let calls = 0;
    const granted = Date.now();
    const locks = new LockService(fakeNode(async () => {
      if (calls++ === 0) return { kind: 'granted', token: 7, expiresMs: granted + 400 };
      throw new NovaError('RAFT_NO_LEADER');
    }), 10);
    const held = await locks.hold('vm/x', 'member-1', 400);
    await expect.poll(() => held.lost.aborted, { timeout: 2000 }).toBe(true);
    expect(Date.now() - granted).toBeGreaterThanOrEqual(390);
    expect((held.lost.reason as NovaError).message).toMatch(/expired/);
    await held.release();
  });

  it('keeps the lease while renewals succeed with the same token', async () => {
    const locks = new LockService(fakeNode(async () => ({ kind: 'granted', token: 7, expiresMs: Date.now() + 150 })), 10);
    const held = await locks.hold('vm/x', 'member-1', 150);
    await new Promise((r) => setTimeout(r, 600));
    expect(held.lost.aborted).toBe(false);
    await held.release();
  });
});
