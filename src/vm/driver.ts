/**
 * The hypervisor driver contract. A driver turns lifecycle requests into real (or
 * simulated) VM processes; the VM service owns state, persistence and events.
 *
 * Contract:
 * - Every method is async and resolves when the hypervisor has *done* the thing (the
 *   guest is running, paused, gone...), or rejects with a `DriverError` carrying the
 *   hypervisor's own message.
 * - Drivers emit `DriverEvent`s for things nobody asked for: a guest powering itself
 *   off, a process crashing, a guest-initiated reset.
 * - VM processes may outlive the daemon: after a restart, `inspect` reports what is
 *   actually running so the service can reconcile stored state (reattach).
 */
import type { EventEmitter } from 'node:events';
import type { VmRecord } from './record.js';
import type { VmSpec } from './spec.js';

export type DriverName = 'sim' | 'qemu';

export interface DriverInstanceState {
  /** What the hypervisor says the guest is doing. */
  status: 'running' | 'paused' | 'stopped';
  runtime?: Record<string, unknown>;
}

export type DriverEvent =
  | { type: 'exited'; vmId: string; reason: string; expected: boolean }
  | { type: 'guest-shutdown'; vmId: string }
  | { type: 'guest-reset'; vmId: string }
  | { type: 'paused'; vmId: string; reason: string }
  | { type: 'resumed'; vmId: string };

export interface ShutdownOptions {
  /** How long to wait for the guest to power off before forcing. */
  timeoutMs: number;
}

export interface HypervisorDriver {
  readonly name: DriverName;
  /** Emits 'event' with a DriverEvent. */
  readonly events: EventEmitter;
  /**
   * Host-specific problems with a spec (missing kernel, more memory than the host has),
   * checked before anything is created; each entry is a human-readable problem (→ 422).
   */
  validate?(spec: VmSpec): string[];
  /** Path of the unix socket carrying the VM's serial console, if it has one now. */
  consoleSocket?(vmId: string): string | undefined;
  /** Path of the unix socket of the VM's VNC server, if it has one now. */
  vncSocket?(vmId: string): string | undefined;
  /** Prepares resources for a new VM (disk images...). */
  create(vm: VmRecord): Promise<void>;
  /** Starts the VM; with `restoreFrom`, from a checkpoint file instead of a cold boot. */
  start(vm: VmRecord, opts?: { restoreFrom?: string }): Promise<DriverInstanceState>;
  /** Saves RAM and device state to `path`, then ends the VM process. */
  checkpoint?(vmId: string, path: string): Promise<{ sizeBytes: number }>;
  /** Adds a disk to a VM's hardware; `running` asks for a hot-plug. */
  attachDisk?(vm: VmRecord, disk: import('./spec.js').DiskSpec, running: boolean): Promise<void>;
  /** Resource usage of a running VM, or undefined when it is not running. */
  stats?(vmId: string): Promise<VmStats | undefined>;
  /** Internal disk snapshots (qcow2); absent when the driver has none. */
  snapshots?: DiskSnapshots;
  /** Where this driver keeps a VM's checkpoint file. */
  checkpointPath?(vmId: string): string;
  /** Force stop: the process is killed. */
  stop(vmId: string): Promise<void>;
  /** ACPI power-off, forced after `timeoutMs`. Resolves with whether force was needed. */
  shutdown(vmId: string, opts: ShutdownOptions): Promise<{ forced: boolean }>;
  pause(vmId: string): Promise<void>;
  resume(vmId: string): Promise<void>;
  reboot(vmId: string): Promise<void>;
  /** Removes everything the driver made for the VM (it is stopped). */
  destroy(vm: VmRecord): Promise<void>;
  /** What is really there for this VM now, or undefined if nothing is running. */
  inspect(vmId: string): Promise<DriverInstanceState | undefined>;
  close(): Promise<void>;
}

export interface VmStats {
  /** Guest CPU time summed over vCPU threads, seconds. */
  cpuSeconds: number;
  /** Resident memory of the hypervisor process, bytes. */
  memoryRssBytes: number;
  disks: Array<{ name: string; readBytes: number; writeBytes: number; readOps: number; writeOps: number }>;
}

export interface DiskSnapshot {
  name: string;
  createdAt: string;
  /** Guest-visible state size saved with it (0 for disk-only snapshots). */
  vmStateBytes: number;
  /** Disks that carry this snapshot. */
  disks: string[];
}

/**
 * Internal qcow2 snapshots across all of a VM's disks. `create`/`remove` work on running
 * VMs (through QMP) and stopped ones (qemu-img); `revert` needs the VM stopped.
 */
export interface DiskSnapshots {
  list(vm: VmRecord, running: boolean): Promise<DiskSnapshot[]>;
  create(vm: VmRecord, name: string, running: boolean): Promise<void>;
  revert(vm: VmRecord, name: string): Promise<void>;
  remove(vm: VmRecord, name: string, running: boolean): Promise<void>;
}

/** A hypervisor-side failure; `message` is the hypervisor's own words. */
export class DriverError extends Error {
  constructor(
    readonly op: string,
    message: string,
  ) {
    super(message);
    this.name = 'DriverError';
  }
}
