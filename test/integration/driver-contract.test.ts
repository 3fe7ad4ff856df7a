/**
 * The hypervisor driver contract (src/vm/driver.ts), one suite run against every driver:
 * the sim driver, and the QEMU driver with the real test guest (TCG here). A new driver
 * joins by adding a row to DRIVERS. What a driver may lack is declared in its row, not
 * skipped: a driver whose VMs do not outlive it must say so, and is held to that.
 */
import { existsSync } from 'node:fs';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DriverEvent, HypervisorDriver } from '../../src/vm/driver.js';
import { QemuDriver } from '../../src/vm/drivers/qemu.js';
import { SimDriver } from '../../src/vm/drivers/sim.js';
import { newId } from '../../src/ids.js';
import type { VmRecord } from '../../src/vm/record.js';
import { CreateVmRequest } from '../../src/vm/spec.js';
import { removeDir, tempDataDir } from '../helpers/daemon.js';
import { ensureQemuAndGuest, guestVm, killGuests } from '../helpers/qemu.js';

const log = pino({ level: 'silent' });

interface DriverRow {
  /** A fresh driver over `dataDir` (called again over the same directory to model a daemon restart). */
  make(dataDir: string): HypervisorDriver;
  /** A VM spec this driver can run. */
  spec(name: string): unknown;
  /** Its VMs keep running after the driver instance is gone, and a new instance reattaches. */
  outlivesProcess: boolean;
  /** It makes files for a VM (disk images) that `destroy` must remove, or keep with keepDisks. */
  makesFiles: boolean;
}

const DRIVERS: Array<[string, DriverRow]> = [
  ['sim', { make: () => new SimDriver(), spec: (name) => ({ name, vcpus: 1, memoryMiB: 64, disks: [{ name: 'root', sizeMiB: 8 }] }), outlivesProcess: false, makesFiles: false }],
  [
    'qemu',
    {
      make: (dataDir) => new QemuDriver({ dataDir, log }),
      spec: (name) => guestVm(name, '', { disks: [{ name: 'data', sizeMiB: 8 }] }),
      outlivesProcess: true,
      makesFiles: true,
    },
  ],
];

function record(spec: unknown): VmRecord {
  const { name, ...rest } = CreateVmRequest.parse(spec);
  const now = new Date().toISOString();
  return { id: newId('vm'), name, spec: rest, state: 'stopped', node: 'contract', generation: 1, createdAt: now, updatedAt: now };
}

describe.each(DRIVERS)('driver contract: %s', (name, row) => {
  let dataDir: string;
  let driver: HypervisorDriver;
  const events: DriverEvent[] = [];

  beforeAll(() => {
    if (name === 'qemu') ensureQemuAndGuest();
    dataDir = tempDataDir();
    driver = fresh();
  }, 300_000);
  function fresh(): HypervisorDriver {
    const d = row.make(dataDir);
    d.events.on('event', (ev: DriverEvent) => events.push(ev));
    return d;
  }
  afterAll(async () => {
    await driver?.close();
    killGuests(dataDir);
    removeDir(dataDir);
  });

  it('start, pause, resume and stop each resolve once done, as inspect then reports, with no unexpected exit', { timeout: 120_000 }, async () => {
    const vm = record(row.spec('life'));
    await driver.create(vm);
    expect(await driver.inspect(vm.id)).toBeUndefined();
    expect((await driver.start(vm)).status).toBe('running');
    expect((await driver.inspect(vm.id))?.status).toBe('running');
    await driver.pause(vm.id);
    expect((await driver.inspect(vm.id))?.status).toBe('paused');
    await driver.resume(vm.id);
    expect((await driver.inspect(vm.id))?.status).toBe('running');
    await driver.stop(vm.id);
    expect(await driver.inspect(vm.id)).toBeUndefined();
    expect(events.filter((e) => e.vmId === vm.id && e.type === 'exited' && !e.expected)).toEqual([]);
    await driver.destroy(vm, { keepDisks: false });
  });

  it('a running VM outlives the driver instance exactly when the driver says it does', { timeout: 120_000 }, async () => {
    const vm = record(row.spec('outlive'));
    await driver.create(vm);
    await driver.start(vm);
    await driver.close(); // the daemon goes away...
    driver = fresh(); // ...and a new one starts over the same data dir
    const seen = await driver.inspect(vm.id);
    if (row.outlivesProcess) {
      expect(seen?.status).toBe('running');
      await driver.stop(vm.id); // the new instance controls what it reattached to
    } else {
      expect(seen).toBeUndefined();
    }
    expect(await driver.inspect(vm.id)).toBeUndefined();
    await driver.destroy(vm, { keepDisks: false });
  });

  it('destroy stops a running VM and removes what create made; with keepDisks the disk images stay', { timeout: 120_000 }, async () => {
    const kept = record(row.spec('kept'));
    const gone = record(row.spec('gone'));
    for (const vm of [kept, gone]) {
      await driver.create(vm);
      await driver.start(vm);
    }
    const files = (vm: VmRecord) => driver.vmFiles?.(vm).map((f) => f.path) ?? [];
    if (row.makesFiles) {
      expect(files(kept).length).toBeGreaterThan(0);
      for (const f of [...files(kept), ...files(gone)]) expect(existsSync(f), f).toBe(true);
    } else {
      expect(files(kept)).toEqual([]);
    }
    await driver.destroy(kept, { keepDisks: true });
    await driver.destroy(gone, { keepDisks: false });
    for (const vm of [kept, gone]) expect(await driver.inspect(vm.id)).toBeUndefined();
    for (const f of files(kept)) expect(existsSync(f), `kept ${f}`).toBe(true);
    for (const f of files(gone)) expect(existsSync(f), `removed ${f}`).toBe(false);
    expect(events.filter((e) => (e.vmId === kept.id || e.vmId === gone.id) && e.type === 'exited' && !e.expected)).toEqual([]);
  });
});
