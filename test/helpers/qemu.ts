/**
 * Real-QEMU test support: installs QEMU 10 (bookworm-backports) and builds the test
 * guest when missing (both scripts are idempotent and cached), and reads the guest's
 * serial console.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './daemon.js';

let guest: { kernel: string; initrd: string } | undefined;

export function ensureQemuAndGuest(): { kernel: string; initrd: string } {
  if (guest) return guest;
  execFileSync('bash', [join(ROOT, 'scripts', 'setup-qemu.sh')], { stdio: 'inherit' });
  const dir = execFileSync('bash', [join(ROOT, 'scripts', 'build-test-guest.sh')], { encoding: 'utf8' }).trim().split('\n').at(-1)!;
  guest = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img') };
  return guest;
}

export function guestVm(name: string, cmdline = '', extra: Record<string, unknown> = {}) {
  const g = ensureQemuAndGuest();
  return {
    name,
    vcpus: 1,
    memoryMiB: 256,
    boot: { type: 'kernel', kernel: g.kernel, initrd: g.initrd, cmdline: `console=ttyS0 quiet panic=-1 ${cmdline}`.trim() },
    ...extra,
  };
}

export function serial(dataDir: string, vmId: string): string {
  const path = join(dataDir, 'vms', vmId, 'serial.log');
  return existsSync(path) ? readFileSync(path, 'latin1') : '';
}

/** Heartbeat counters seen on the console, in order. */
export function heartbeats(dataDir: string, vmId: string): number[] {
  return [...serial(dataDir, vmId).matchAll(/^HB (\d+) /gm)].map((m) => Number(m[1]));
}

export async function waitUntil(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Kills the QEMU processes of VMs under `dataDir` (they outlive their daemon by design). */
export function killGuests(dataDir: string): void {
  try {
    execFileSync('pkill', ['-9', '-f', `${dataDir}/vms/`]);
  } catch {
    /* none left */
  }
}
