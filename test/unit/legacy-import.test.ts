/**
 * VMs stored before storage pools (specs naming host paths) are imported once when the
 * VM service opens: their files become volumes of the `imported` pool and their specs
 * name those volumes; a VM using a device is put in `error` instead.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pack } from 'msgpackr';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { EventLog } from '../../src/events/log.js';
import { RocksStore } from '../../src/native/rocks-store.js';
import { StorageService } from '../../src/storage/service.js';
import { SimDriver } from '../../src/vm/drivers/sim.js';
import { VmStorage } from '../../src/vm/media.js';
import { VmService } from '../../src/vm/service.js';

const log = pino({ level: 'silent' });
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const legacyRecord = (id: string, spec: Record<string, unknown>) => {
  const now = new Date().toISOString();
  return { id, name: id.slice(-6), spec: { vcpus: 1, memoryMiB: 64, memoryBacking: 'anonymous', nics: [], labels: {}, tenant: 'default', ...spec }, state: 'stopped', node: 'n1', generation: 3, createdAt: now, updatedAt: now };
};

async function open(dataDir: string) {
  const store = RocksStore.open(join(dataDir, 'store'));
  const events = await EventLog.open(store);
  const storage = await StorageService.open({ dataDir, pools: [], events, log });
  const vmStorage = new VmStorage(storage);
  const vms = await VmService.open({ store, events, driver: new SimDriver(), storage: vmStorage, nodeId: 'n1', log, dataDir });
  return { store, storage, vmStorage, vms };
}

describe('importing VMs from before storage pools', () => {
  it('moves owned disks into the imported pool, hard-links files used in place, rebases clones, and rewrites the spec', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'novacron-legacy-'));
    dirs.push(dataDir);
    const host = join(dataDir, 'host-files');
    mkdirSync(host);
    const id = 'vm-0000000000000000000000aa';
    const vmDir = join(dataDir, 'vms', id);
    mkdirSync(vmDir, { recursive: true });
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(vmDir, 'disk-root.qcow2'), '8M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', join(host, 'shared.raw'), '4M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(host, 'base.qcow2'), '16M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(host, 'base.qcow2'), '-F', 'qcow2', join(vmDir, 'disk-clone.qcow2')]);
    writeFileSync(join(host, 'vmlinuz'), Buffer.alloc(4096, 1));
    writeFileSync(join(host, 'media.iso'), Buffer.alloc(8192, 2));
    const spec = {
      disks: [
        { name: 'root', sizeMiB: 8, format: 'qcow2', clone: false, bus: 'virtio', readOnly: false },
        { name: 'shared', image: join(host, 'shared.raw'), format: 'raw', clone: false, bus: 'virtio', readOnly: true },
        { name: 'clone', image: join(host, 'base.qcow2'), format: 'qcow2', clone: true, bus: 'virtio', readOnly: false },
      ],
      boot: { type: 'kernel', kernel: join(host, 'vmlinuz'), cmdline: 'console=ttyS0' },
      cdrom: join(host, 'media.iso'),
    };
    const devId = 'vm-0000000000000000000000bb';
    const store = RocksStore.open(join(dataDir, 'store'));
    await store.write([
      { key: `vm/${id}`, value: pack(legacyRecord(id, spec)) },
      { key: `vm/${devId}`, value: pack(legacyRecord(devId, { disks: [{ name: 'h', image: '/dev/null', format: 'raw', clone: false, bus: 'virtio', readOnly: false }], boot: { type: 'disk' } })) },
    ]);
    await store.close();

    const s = await open(dataDir);
    try {
      const vm = s.vms.get(id);
      expect(vm.state).toBe('stopped');
      const kernelRef = (vm.spec.boot as { kernel: string }).kernel;
      expect(vm.spec.disks).toMatchObject([
        { name: 'root', pool: 'imported', format: 'qcow2' },
        { name: 'shared', volume: expect.stringMatching(/^imported\/img-[0-9a-f]{16}$/), readOnly: true },
        { name: 'clone', pool: 'imported', format: 'qcow2' },
      ]);
      expect(kernelRef).toMatch(/^imported\/img-/);
      expect(vm.spec.cdrom).toMatch(/^imported\/img-/);
      const pool = join(dataDir, 'pools', 'imported');
      // The VM's own disk moved; the shared image is the same inode, linked.
      expect(existsSync(join(vmDir, 'disk-root.qcow2'))).toBe(false);
      expect(s.storage.find(`imported/${id}-root`)).toMatchObject({ owner: id, format: 'qcow2', sizeBytes: 8 << 20 });
      const sharedRef = vm.spec.disks[1]!.volume!;
      expect(statSync(join(pool, sharedRef.split('/')[1]!)).ino).toBe(statSync(join(host, 'shared.raw')).ino);
      // The clone's base is a volume too, and the overlay's header now names it there.
      const clone = s.storage.get(`imported/${id}-clone`);
      expect(clone.backing).toMatch(/^imported\/img-/);
      const info = JSON.parse(execFileSync('qemu-img', ['info', '-U', '-f', 'qcow2', '--output=json', join(pool, `${id}-clone`)], { encoding: 'utf8' }));
      expect(info['backing-filename']).toBe(join(pool, clone.backing!.split('/')[1]!));
      // Everything resolves through the pool's checks now.
      const media = s.vmStorage.media(vm);
      expect(media.disks.map((d) => d.path.startsWith(`${pool}/`))).toEqual([true, true, true]);
      expect(media.kernel?.startsWith(`${pool}/`)).toBe(true);
      // A VM that used a device is not imported: it is in error, saying why.
      expect(s.vms.get(devId)).toMatchObject({ state: 'error', stateReason: expect.stringContaining('/dev/null is not a regular file') });
    } finally {
      await s.vms.drain();
      await s.store.close();
    }

    // Once imported, a restart changes nothing.
    const again = await open(dataDir);
    try {
      expect(again.vms.get(id).generation).toBe(s.vms.get(id).generation);
    } finally {
      await again.store.close();
    }
  });
});
