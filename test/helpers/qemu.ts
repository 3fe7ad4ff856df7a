/**
 * Real-QEMU test support: installs QEMU 10 (bookworm-backports) and builds the test
 * guest when missing (both scripts are idempotent and cached), and reads the guest's
 * serial console.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { authHeaders, ROOT, tlsInit } from './daemon.js';

let guest: { kernel: string; initrd: string } | undefined;

export function ensureQemuAndGuest(): { kernel: string; initrd: string } {
  if (guest) return guest;
  execFileSync('bash', [join(ROOT, 'scripts', 'setup-qemu.sh')], { stdio: 'inherit' });
  const dir = execFileSync('bash', [join(ROOT, 'scripts', 'build-test-guest.sh')], { encoding: 'utf8' }).trim().split('\n').at(-1)!;
  guest = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img') };
  return guest;
}

/** The test guest's kernel and initramfs as volumes of a daemon's `local` pool (see installGuest). */
export const GUEST_KERNEL = 'local/nc-guest-vmlinuz';
export const GUEST_INITRD = 'local/nc-guest-initrd';

/**
 * Uploads the test guest's kernel and initramfs into the daemon's `local` pool (as an
 * operator would, through the API), once per daemon; guestVm specs boot from them.
 */
export async function installGuest(url: string, headers: Record<string, string> = {}): Promise<void> {
  const g = ensureQemuAndGuest();
  for (const [ref, file] of [[GUEST_KERNEL, g.kernel], [GUEST_INITRD, g.initrd]] as const) {
    const [pool, name] = ref.split('/');
    if ((await fetch(`${url}/v1/pools/${pool}/volumes/${name}`, { ...tlsInit(url), headers: authHeaders(url, headers) } as RequestInit)).status === 200) continue; // a restarted daemon has them
    const res = await fetch(`${url}/v1/pools/${pool}/volumes/${name}/content?format=raw&content=kernel`, {
      ...tlsInit(url),
      method: 'PUT',
      headers: authHeaders(url, { ...headers, 'content-type': 'application/octet-stream' }),
      body: readFileSync(file),
    });
    const body = (await res.json()) as { error?: { code: string } };
    if (res.status !== 201 && body.error?.code !== 'VOLUME_EXISTS') throw new Error(`uploading ${file} as ${ref}: ${res.status} ${JSON.stringify(body)}`);
  }
}

export function guestVm(name: string, cmdline = '', extra: Record<string, unknown> = {}) {
  ensureQemuAndGuest();
  return {
    name,
    vcpus: 1,
    memoryMiB: 256,
    boot: { type: 'kernel', kernel: GUEST_KERNEL, initrd: GUEST_INITRD, cmdline: `console=ttyS0 quiet panic=-1 ${cmdline}`.trim() },
    ...extra,
  };
}

export function serial(dataDir: string, vmId: string): string {
  const path = join(dataDir, 'vms', vmId, 'serial.log');
  return existsSync(path) ? readFileSync(path, 'latin1') : '';
}

/**
 * Keeps what a VM's serial log last held, read every 20 ms while it exists: the source's
 * copy of a migrated VM is removed with the VM's directory once the destination runs it.
 */
export function keepSerial(dataDir: string, vmId: string): { text(): string; stop(): void } {
  let kept = serial(dataDir, vmId);
  const timer = setInterval(() => {
    const now = serial(dataDir, vmId);
    if (now.length >= kept.length) kept = now;
  }, 20);
  return { text: () => kept, stop: () => clearInterval(timer) };
}

/** Records the test guest reported as fsynced to its disk (`nc.disk=1`), in order. */
export function diskRecords(dataDir: string, vmId: string): number[] {
  return [...serial(dataDir, vmId).matchAll(/^DISK (\d+)/gm)].map((m) => Number(m[1]));
}

/** Record numbers 1..last missing from a disk image the `nc.disk=1` guest wrote (its raw bytes). */
export function missingRecords(image: Buffer, last: number): number[] {
  const missing: number[] = [];
  for (let i = 1; i <= last; i++) if (image.toString('latin1', i * 512, i * 512 + 14) !== `NCREC ${String(i).padStart(8, '0')}`) missing.push(i);
  return missing;
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
