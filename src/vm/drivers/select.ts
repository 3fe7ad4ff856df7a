import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { Logger } from 'pino';
import { NovaError } from '../../errors.js';
import type { HypervisorDriver } from '../driver.js';
import { SimDriver, type SimDriverOptions } from './sim.js';

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
 * Chooses the hypervisor driver. `auto` means QEMU when `qemu-system-x86_64` exists.
 * The QEMU driver is not part of this build yet, so `qemu` is refused with a clear
 * error and `auto` falls back to the simulator with a loud warning either way.
 */
export function selectDriver(kind: 'auto' | 'qemu' | 'sim', sim: SimDriverOptions, log: Logger): HypervisorDriver {
  if (kind === 'sim') return new SimDriver(sim);
  const qemu = findOnPath('qemu-system-x86_64');
  if (kind === 'qemu') {
    throw new NovaError('DRIVER_UNAVAILABLE', 'the qemu driver is not available in this build yet; use --driver sim');
  }
  log.warn(
    { qemu: qemu ?? null },
    qemu
      ? '!!! qemu-system-x86_64 found, but the qemu driver is not available in this build: using the SIMULATED driver; VMs are NOT real'
      : '!!! qemu-system-x86_64 not found: using the SIMULATED driver; VMs are NOT real',
  );
  return new SimDriver(sim);
}
