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
import type { NovaEvent } from '../../src/events/types.js';

const log = pino({ level: 'silent' });
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(driver = new SimDriver(), dir = mkdtempSync(join(tmpdir(), 'novacron-svc-'))) {
  const store = RocksStore.open(dir);
  const events = await EventLog.open(store);
  const vms = await VmService.open({ store, events, driver, nodeId: 'n1', log });
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

const spec = (name: string) => ({ name, vcpus: 1, memoryMiB: 64, memoryBacking: 'anonymous' as const, disks: [{ name: 'r', sizeMiB: 1, format: 'qcow2' as const, clone: false, bus: 'virtio' as const, readOnly: false }], nics: [], boot: { type: 'disk' as const }, labels: {}, tenant: 'default' });

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

  it('a request right after an operation finishes waits for the cluster lock hand-back instead of VM_BUSY', async () => {
    const { vms } = await setup();
    let held = 0;
    vms.useLockGuard({
      hold: async () => {
        held++;
        return async () => {
          await new Promise((r) => setTimeout(r, 150)); // a slow replicated release
          held--;
        };
      },
    });
    const vm = await vms.create(spec('e'));
    await settle(vms, (await vms.requestAction(vm.id, 'start')).id);
    expect((await settle(vms, (await vms.requestAction(vm.id, 'stop')).id)).state).toBe('succeeded');
    expect(held).toBe(1); // the stop's lock is still being handed back
    expect((await vms.patch(vm.id, { vcpus: 2 })).spec.vcpus).toBe(2);
    expect(held).toBe(0);
    const started = await vms.requestAction(vm.id, 'start');
    expect((await settle(vms, started.id)).state).toBe('succeeded');
    await expect(vms.addDisk(vm.id, { ...spec('x').disks[0]!, name: 'extra' })).rejects.toMatchObject({ code: 'VM_INVALID_STATE' }); // sim cannot hot-plug; not VM_BUSY
  });

  it('the sim driver scales to 10,000 VMs', async () => {
    const { vms, driver } = await setup();
    const N = 10_000;
    let next = 0;
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (next < N) {
        const vm = await vms.create(spec(`s-${next++}`));
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
});
