/**
 * The hypervisor driver contract (src/vm/driver.ts), one suite run against every driver:
 * the sim driver, and the QEMU driver with the real test guest (TCG here). A new driver
 * joins by adding a row to DRIVERS. What a driver may lack is declared in its row, not
 * skipped: a driver whose VMs do not outlive it must say so, and is held to that.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DriverEvent, HypervisorDriver } from '../../src/vm/driver.js';
import { QemuDriver } from '../../src/vm/drivers/qemu.js';
import { SimDriver } from '../../src/vm/drivers/sim.js';
import { newId } from '../../src/ids.js';
import type { VmRecord } from '../../src/vm/record.js';
import { CreateVmRequest } from '../../src/vm/spec.js';
import { removeDir, tempDataDir } from '../helpers/daemon.js';
import { ensureQemuAndGuest, GUEST_INITRD, GUEST_KERNEL, guestVm, killGuests } from '../helpers/qemu.js';
import { openTestStorage, uploadFile } from '../helpers/storage.js';
import type { VmStorage } from '../../src/vm/media.js';

const log = pino({ level: 'silent' });

interface DriverRow {
  /** A fresh driver over `dataDir` (called again over the same directory to model a daemon restart). */
  make(dataDir: string, storage: VmStorage): HypervisorDriver;
  /** A VM spec this driver can run. */
  spec(name: string): unknown;
  /** Its VMs keep running after the driver instance is gone, and a new instance reattaches. */
  outlivesProcess: boolean;
  /** It keeps files for a VM (a directory with sockets and logs) that `destroy` must remove. */
  vmDir?: (dataDir: string, vmId: string) => string;
}

const DRIVERS: Array<[string, DriverRow]> = [
  ['sim', { make: () => new SimDriver(), spec: (name) => ({ name, vcpus: 1, memoryMiB: 64, disks: [{ name: 'root', sizeMiB: 8 }] }), outlivesProcess: false }],
  [
    'qemu',
    {
      make: (dataDir, storage) => new QemuDriver({ dataDir, log, media: (vm) => storage.media(vm) }),
      spec: (name) => guestVm(name, '', { disks: [{ name: 'data', sizeMiB: 8 }] }),
      outlivesProcess: true,
      vmDir: (dataDir, vmId) => join(dataDir, 'vms', vmId),
    },
  ],
];

describe.each(DRIVERS)('driver contract: %s', (name, row) => {
  let dataDir: string;
  let driver: HypervisorDriver;
  let storage: Awaited<ReturnType<typeof openTestStorage>>;
  const events: DriverEvent[] = [];

  beforeAll(async () => {
    dataDir = tempDataDir();
    storage = await openTestStorage(dataDir);
    if (name === 'qemu') {
      const g = ensureQemuAndGuest();
      await uploadFile(storage.storage, 'local', GUEST_KERNEL.split('/')[1]!, g.kernel, { content: 'kernel' });
      await uploadFile(storage.storage, 'local', GUEST_INITRD.split('/')[1]!, g.initrd, { content: 'kernel' });
    }
    driver = fresh();
  }, 300_000);
  function fresh(): HypervisorDriver {
    const d = row.make(dataDir, storage.vmStorage);
    d.events.on('event', (ev: DriverEvent) => events.push(ev));
    return d;
  }
  afterAll(async () => {
    await driver?.close();
    await storage?.close();
    killGuests(dataDir);
    removeDir(dataDir);
  });

  /** A VM record whose volumes exist, as the VM service makes them before the driver's create. */
  async function record(spec: unknown): Promise<VmRecord> {
    const { name: vmName, ...rest } = CreateVmRequest.parse(spec);
    const now = new Date().toISOString();
    const vm: VmRecord = { id: newId('vm'), name: vmName, spec: storage.vmStorage.normalize(rest), state: 'stopped', node: 'contract', generation: 1, createdAt: now, updatedAt: now };
    await storage.vmStorage.provision(vm);
    return vm;
  }

  it('start, pause, resume and stop each resolve once done, as inspect then reports, with no unexpected exit', { timeout: 120_000 }, async () => {
    const vm = await record(row.spec('life'));
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
    await driver.destroy(vm);
  });

  it('a running VM outlives the driver instance exactly when the driver says it does', { timeout: 120_000 }, async () => {
    const vm = await record(row.spec('outlive'));
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
    await driver.destroy(vm);
  });

  it('destroy stops a running VM and removes what the driver made for it, and never its volumes', { timeout: 120_000 }, async () => {
    const vm = await record(row.spec('gone'));
    await driver.create(vm);
    await driver.start(vm);
    const dir = row.vmDir?.(dataDir, vm.id);
    if (dir) expect(existsSync(dir)).toBe(true);
    const volumes = storage.vmStorage.media(vm).disks.map((d) => d.path);
    expect(volumes.length).toBeGreaterThan(0);
    await driver.destroy(vm);
    expect(await driver.inspect(vm.id)).toBeUndefined();
    if (dir) expect(existsSync(dir), dir).toBe(false);
    for (const f of volumes) expect(existsSync(f), `volume ${f} is the storage service's`).toBe(true);
    expect(events.filter((e) => e.vmId === vm.id && e.type === 'exited' && !e.expected)).toEqual([]);
  });
});
