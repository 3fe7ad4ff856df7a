/**
 * Chooses the accelerator by probing, not by checking that /dev/kvm exists:
 * 1. /dev/kvm must open read-write;
 * 2. the CPU must expose hardware virtualisation (vmx/svm) — software KVM devices
 *    such as PVM (kvm_pvm, no VT-x) run only specially built guest kernels and hang on
 *    a normal Linux guest;
 * 3. QEMU must actually execute guest code under KVM: a 512-byte boot sector writes to
 *    an isa-debug-exit port and QEMU must exit with the matching status.
 * Any failure means TCG, with the reason reported in the VM's runtime status.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface AccelChoice {
  accel: 'kvm' | 'tcg';
  reason: string;
}

let cached: Promise<AccelChoice> | undefined;

export function probeAccelerator(qemuBinary: string, force?: 'kvm' | 'tcg'): Promise<AccelChoice> {
  if (force) return Promise.resolve({ accel: force, reason: 'configured' });
  return (cached ??= probe(qemuBinary));
}

async function probe(qemuBinary: string): Promise<AccelChoice> {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { accel: 'tcg', reason: '/dev/kvm is missing or not accessible' };
  }
  const flags = readFileSync('/proc/cpuinfo', 'utf8');
  if (!/^flags\s*:.*\b(vmx|svm)\b/m.test(flags)) {
    return { accel: 'tcg', reason: '/dev/kvm exists but the CPU has no vmx/svm (software KVM such as PVM cannot run standard guests)' };
  }
  const dir = mkdtempSync(join(tmpdir(), 'novacron-kvm-probe-'));
  try {
    const sector = Buffer.alloc(512);
    Buffer.from([0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]).copy(sector); // mov al,0x31; out 0xf4,al; hlt; jmp $
    sector[510] = 0x55;
    sector[511] = 0xaa;
    writeFileSync(join(dir, 'boot.img'), sector);
    const code = await new Promise<number | null>((resolve) => {
      const p = spawn(qemuBinary, ['-machine', 'pc,accel=kvm', '-display', 'none', '-nodefaults', '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04', '-drive', `file=${join(dir, 'boot.img')},format=raw,if=ide`], { stdio: 'ignore' });
      const timer = setTimeout(() => p.kill('SIGKILL'), 5000);
      p.on('exit', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
      p.on('error', () => resolve(null));
    });
    return code === 0x63 ? { accel: 'kvm', reason: 'KVM executed the probe guest' } : { accel: 'tcg', reason: `KVM probe guest did not run (exit ${code})` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
