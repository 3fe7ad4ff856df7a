// Bare-QEMU baselines start from the driver's own command line (src/vm/drivers/qemu.ts
// `qemuArgs`), so a bench compares NovaCron with QEMU running the very same machine.
import { qemuArgs } from '../../dist/vm/drivers/qemu.js';
import { CreateVmRequest } from '../../dist/vm/spec.js';
import { readFileSync } from 'node:fs';
import { AUTH } from './daemon.mjs';

/** The test guest's kernel and initramfs as volumes of a daemon's local pool (installGuest uploads them). */
export const GUEST = { kernel: 'local/nc-guest-vmlinuz', initrd: 'local/nc-guest-initrd' };

/** Uploads the guest's kernel and initramfs files into the daemon's local pool (once per daemon). */
export async function installGuest(url, files) {
  for (const role of ['kernel', 'initrd']) {
    const [pool, name] = GUEST[role].split('/');
    const res = await fetch(`${url}/v1/pools/${pool}/volumes/${name}/content?format=raw&content=kernel`, { method: 'PUT', headers: AUTH, body: readFileSync(files[role]) });
    const body = await res.json();
    if (res.status !== 201 && body.error?.code !== 'VOLUME_EXISTS') throw new Error(`uploading ${files[role]}: ${res.status} ${JSON.stringify(body)}`);
  }
}

/**
 * qemu-system-x86_64's arguments for `spec` (as the API takes it; defaults filled in by
 * the same schema), its sockets and serial log in `dir`, booting the kernel and initrd
 * files the daemon's volumes hold; unpaused, as no daemon resumes it.
 */
/** `id` (default from `name`) sets the machine's UUID: a migration's destination must have its source's (multifd checks it). */
export function bareQemuArgs(name, spec, { accel, dir, kernel, initrd, id = `vm-bench-${name}` }) {
  const { name: _, ...parsed } = CreateVmRequest.parse({ name, ...spec });
  const now = new Date().toISOString();
  const vm = { id, name, spec: parsed, state: 'stopped', node: 'bench', generation: 1, createdAt: now, updatedAt: now };
  if (parsed.disks.length > 0) throw new Error('bench guests have no disks');
  return qemuArgs(vm, { accel, dir, media: { disks: [], kernel, initrd }, hugepagesPath: '/dev/hugepages' }).filter((a) => a !== '-S');
}
