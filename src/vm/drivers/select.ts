import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { Logger } from 'pino';
import { NovaError } from '../../errors.js';
import type { HypervisorDriver, MediaResolver } from '../driver.js';
import { SimDriver, type SimDriverOptions } from './sim.js';
import { QemuDriver } from './qemu.js';

export function findOnPath(cmd: string, path = process.env.PATH ?? ''): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const full = join(dir, cmd);
    try {
      accessSync(full, constants.X_OK);
      return full;
    } catch {
      /* keep looking */
    }
  }
  return undefined;
}

/**
 * Chooses the hypervisor driver. `auto` means QEMU when `qemu-system-x86_64` and
 * `qemu-img` exist, else the simulator with a loud warning.
 */
export function selectDriver(kind: 'auto' | 'qemu' | 'sim', opts: { sim: SimDriverOptions; dataDir: string; log: Logger; media: MediaResolver }): HypervisorDriver {
  if (kind === 'sim') return new SimDriver({ ...opts.sim, runDir: join(opts.dataDir, 'run') });
  const qemu = findOnPath('qemu-system-x86_64');
  const img = findOnPath('qemu-img');
  if (qemu && img) return new QemuDriver({ dataDir: opts.dataDir, log: opts.log, binary: qemu, imgBinary: img, media: opts.media });
  if (kind === 'qemu') {
    throw new NovaError('DRIVER_UNAVAILABLE', `the qemu driver needs qemu-system-x86_64 and qemu-img on PATH (missing: ${[!qemu && 'qemu-system-x86_64', !img && 'qemu-img'].filter(Boolean).join(', ')}); run scripts/setup-qemu.sh`);
  }
  opts.log.warn('!!! qemu-system-x86_64/qemu-img not found: using the SIMULATED driver; VMs are NOT real');
  return new SimDriver({ ...opts.sim, runDir: join(opts.dataDir, 'run') });
}
