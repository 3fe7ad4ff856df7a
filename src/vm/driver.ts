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

/** A disk as the hypervisor opens it: a volume resolved and checked by the storage service. */
export interface DiskMedia {
  name: string;
  path: string;
  /** Always explicit: QEMU never probes a volume's format. */
  format: 'qcow2' | 'raw';
  bus: 'virtio' | 'scsi' | 'ide';
  readOnly: boolean;
  /** The volume, `pool/name`. */
  ref: string;
  /** Made with the VM. */
  owned: boolean;
  /** A qcow2 overlay on a base volume (a migration copies only the overlay's own data). */
  backed: boolean;
  /** In a pool every host sees (a migration copies nothing). */
  shared: boolean;
}

/** Everything a VM's hypervisor process opens, resolved from its spec's volumes. */
export interface VmMedia {
  disks: DiskMedia[];
  cdrom?: string;
  /** The cloud-init NoCloud seed (an ISO labelled cidata), as a second CD-ROM. */
  cidata?: string;
  kernel?: string;
  initrd?: string;
}

/** Resolves a VM's volumes for its hypervisor (VmStorage.media: every open checked). */
export type MediaResolver = (vm: VmRecord) => VmMedia;

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
   * Host-specific problems with a spec (more memory than the host has, no hugetlbfs),
   * checked before anything is created; each entry is a human-readable problem (→ 422).
   */
  validate?(spec: VmSpec): string[];
  /** Path of the unix socket carrying the VM's serial console, if it has one now. */
  consoleSocket?(vmId: string): string | undefined;
  /** Path of the unix socket of the VM's VNC server, if it has one now. */
  vncSocket?(vmId: string): string | undefined;
  /** Prepares what the hypervisor keeps for a new VM (its directory); its volumes exist already. */
  create(vm: VmRecord): Promise<void>;
  /** Starts the VM; with `restoreFrom`, from a checkpoint file instead of a cold boot. */
  start(vm: VmRecord, opts?: { restoreFrom?: string }): Promise<DriverInstanceState>;
  /** Saves RAM and device state to `path`, then ends the VM process. */
  checkpoint?(vmId: string, path: string): Promise<{ sizeBytes: number }>;
  /** Adds a disk (its volume exists) to a VM's hardware; `running` asks for a hot-plug. */
  attachDisk?(vm: VmRecord, disk: DiskMedia, running: boolean): Promise<void>;
  /** Moves disks of running VMs to other files (another pool's volume). */
  diskMover?: DiskMover;
  /** An internal snapshot of one disk of a running VM (qcow2), taken or deleted through the hypervisor. */
  diskSnapshot?(vmId: string, disk: string, op: 'create' | 'delete', name: string): Promise<void>;
  /** Grows a disk of a running VM to `sizeBytes` (the guest sees the new size). */
  resizeDisk?(vmId: string, disk: string, sizeBytes: number): Promise<void>;
  /** Resource usage of a running VM, or undefined when it is not running. */
  stats?(vmId: string): Promise<VmStats | undefined>;
  /** Internal disk snapshots (qcow2); absent when the driver has none. */
  snapshots?: DiskSnapshots;
  /** Where this driver keeps a VM's checkpoint file. */
  checkpointPath?(vmId: string): string;
  /** Where this host keeps file `name` of VM `vmId` (its directory is created): a checkpoint arriving by migration. */
  vmFilePath?(vmId: string, name: string): string;
  /** Live migration primitives; absent when the driver cannot migrate running VMs. */
  migration?: LiveMigration;
  /** Force stop: the process is killed. */
  stop(vmId: string): Promise<void>;
  /** ACPI power-off, forced after `timeoutMs`. Resolves with whether force was needed. */
  shutdown(vmId: string, opts: ShutdownOptions): Promise<{ forced: boolean }>;
  pause(vmId: string): Promise<void>;
  resume(vmId: string): Promise<void>;
  reboot(vmId: string): Promise<void>;
  /**
   * Removes what the driver made for the VM (stopping it first if it still runs): its
   * directory, checkpoint, sockets and logs. Volumes are the storage service's.
   */
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

/** Moving a running VM's disk to another file while the guest uses it. */
export interface DiskMover {
  /**
   * Copies the disk into `target` while the guest keeps writing, then pivots the guest
   * onto it. Resolves once the guest's disk is the target; rejects (the disk still the
   * source) on failure or when `signal` aborts before the pivot.
   */
  move(
    vmId: string,
    disk: string,
    target: { path: string; format: 'qcow2' | 'raw' },
    opts: { bytesPerSec?: number; signal: AbortSignal; onProgress(p: { copiedBytes: number; totalBytes: number }): void },
  ): Promise<void>;
  /** The file the running VM's disk is on now. */
  currentFile(vmId: string, disk: string): Promise<string | undefined>;
  /** Drops a move a previous daemon left in the hypervisor; the disk stays where it is. */
  abandon(vmId: string, disk: string): Promise<void>;
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

/**
 * Where an outgoing migration stands, in the engine's terms; each driver maps its
 * hypervisor's own states onto these (QEMU's mapping: `migrationStatus` in
 * vm/qemu/migration.ts).
 * - `none`: no migration; `setup`: not streaming yet
 * - `precopy`: RAM streams while the guest runs
 * - `paused-for-disks`: the guest is paused before its device state is sent, until
 *   `continueSwitchover` (disks being mirrored catch up meanwhile)
 * - `switchover`: the guest is stopped; the last pages and device state are sent
 * - `cancelling`, then `cancelled`; `completed`; `failed`
 */
export type MigrationStatus = 'none' | 'setup' | 'precopy' | 'paused-for-disks' | 'switchover' | 'cancelling' | 'cancelled' | 'completed' | 'failed';

/** What the source hypervisor reports about an outgoing migration. */
export interface MigrationProgress {
  status: MigrationStatus;
  transferredBytes: number;
  remainingBytes: number;
  totalBytes: number;
  /** Guest dirty rate measured by the hypervisor during the last round, bytes/s. */
  dirtyBytesPerSec: number;
  /** Completed dirty-bitmap syncs (pre-copy rounds). */
  rounds: number;
  expectedDowntimeMs?: number;
  /** Set once completed: the hypervisor's own downtime figure. */
  downtimeMs?: number;
  totalTimeMs?: number;
  /** vCPU throttle applied to converge, percent. */
  throttlePercent: number;
  error?: string;
}

/**
 * Mutual TLS between the two hypervisors of a direct migration: the cluster CA and this
 * member's certificate and key (PEM). The destination admits only the source member's
 * certificate (`peerIdentity`: its subject, `CN=member-<id>`); the source checks the
 * destination's certificate names `hostname`.
 */
export interface StreamTls {
  caPem: string;
  certPem: string;
  keyPem: string;
}

/**
 * Where a live migration's stream goes: NovaCron's relay (a unix socket it listens on:
 * page codec, NovaCron's link), or straight to the destination's hypervisor over TLS
 * (its own multifd, nothing in between) when the link outruns any encoding.
 */
export type StreamTarget = { kind: 'relay'; socketPath: string } | { kind: 'direct'; host: string; port: number; tls: StreamTls; hostname: string };

/** What a prepared destination listens on: the relay's unix socket, or a TCP port for a direct stream. */
export type StreamListener = { kind: 'relay'; socketPath: string } | { kind: 'direct'; port: number };

/** Destination of a direct stream: where to listen, the TLS material, and the one certificate subject admitted. */
export interface DirectIncoming {
  host: string;
  /** Ports to listen on (the first free one); absent: any free port. */
  ports?: { from: number; to: number };
  tls: StreamTls;
  peerIdentity: string;
}

export interface OutgoingParams {
  to: StreamTarget;
  /** Direct streams only (the relay caps its own link): the hypervisor's bandwidth cap, bytes/s. */
  maxBytesPerSec?: number;
  channels: number;
  downtimeLimitMs: number;
  /** Let the hypervisor throttle vCPUs when pre-copy does not converge. */
  autoConverge: boolean;
  /** The throttle never goes above this, percent (bounds each vCPU pause). */
  maxThrottlePercent: number;
  /** Stop at pre-switchover (guest paused, device state not yet sent) until `continueSwitchover`. */
  pauseBeforeSwitchover: boolean;
}

/** A local disk copied during a live migration. */
export interface MirroredDisk {
  name: string;
  /** `top`: only the overlay's own data (the base image exists on both hosts); `full`: everything. */
  sync: 'full' | 'top';
}

export interface MirrorProgress {
  /** Every mirror has caught up and now copies guest writes as they happen. */
  ready: boolean;
  copiedBytes: number;
  totalBytes: number;
}

/**
 * Live storage migration: the destination serves its fresh copies of the VM's local
 * disks over NBD on a unix socket (which NovaCron tunnels), the source mirrors into it.
 */
export interface StorageMigration {
  /** Destination (after prepareIncoming): serve these disks, writable, on the returned socket. */
  exportDisks(vmId: string, disks: string[]): Promise<string>;
  /** Destination: stop serving (the guest runs here, or the migration failed). */
  unexportDisks(vmId: string): Promise<void>;
  /** Source: mirror each disk to the export of the same name behind `socketPath`. */
  startMirrors(vmId: string, disks: MirroredDisk[], socketPath: string): Promise<void>;
  mirrorProgress(vmId: string): Promise<MirrorProgress>;
  /** Source, guest paused at pre-switchover: copy what is left and end the mirrors; what they copied in the end. */
  completeMirrors(vmId: string, timeoutMs: number): Promise<Pick<MirrorProgress, 'copiedBytes' | 'totalBytes'>>;
  /** Source: abandon the mirrors; the source disks stay authoritative. */
  cancelMirrors(vmId: string): Promise<void>;
  /** Source: bytes the disks' images hold (what a full mirror copies), for predictions. */
  allocatedBytes(vmId: string, disks: string[]): Promise<number>;
}

/**
 * The hypervisor half of a live migration. NovaCron's relay carries the stream; the
 * hypervisor tracks dirty pages and saves/loads device state.
 */
export interface LiveMigration {
  /** Why this VM cannot be migrated by NovaCron's transport, or undefined. */
  unsupported(vmId: string): Promise<string | undefined>;
  /** The hypervisors can stream to each other directly over mutual TLS (`StreamTarget` `direct`). */
  readonly direct?: boolean;
  /** Destination: starts the VM's process waiting for a stream: from the relay, or (`direct`) from the source's hypervisor. */
  prepareIncoming(vm: VmRecord, channels: number, direct?: DirectIncoming): Promise<{ listen: StreamListener; runtime: Record<string, unknown> }>;
  /** Destination: resolves when the guest runs here (RESUME time, ms since epoch). */
  waitIncoming(vmId: string, timeoutMs: number): Promise<{ resumedAt: number }>;
  /** Source: starts streaming the running VM to `params.socketPath`. */
  startOutgoing(vmId: string, params: OutgoingParams): Promise<void>;
  progress(vmId: string): Promise<MigrationProgress>;
  /**
   * Source: resolves when the migration's status may have changed (QEMU's MIGRATION
   * event), or after `maxMs`. Lets the engine act at pre-switchover — the guest is
   * already paused there — without polling faster.
   */
  statusChange(vmId: string, maxMs: number): Promise<void>;
  /** Source: stops an outgoing migration; the guest keeps running here. */
  cancelOutgoing(vmId: string): Promise<void>;
  /** Source: after a completed stream the destination did not take over — run here again. */
  resumeHere(vmId: string): Promise<void>;
  /** When the source guest was stopped for switchover (ms since epoch). */
  stoppedAt(vmId: string): Promise<number | undefined>;
  /** Guest dirty rate measured over `ms` milliseconds, bytes/s (for dry-run predictions). */
  measureDirtyRate(vmId: string, ms: number): Promise<number>;
  /** A copy of `bytes` of guest RAM from `offset` (guest-physical), for codec sampling. */
  sampleMemory(vmId: string, offset: number, bytes: number): Promise<Buffer>;
  /** Source, at pre-switchover: go on and send the device state. */
  continueSwitchover(vmId: string): Promise<void>;
  /**
   * Source, mid-flight: switch over once the rest fits in `downtimeLimitMs` at
   * `bytesPerSec` (raw bytes; when omitted, the hypervisor's own estimate).
   */
  tuneSwitchover(vmId: string, s: { downtimeLimitMs: number; bytesPerSec?: number }): Promise<void>;
  /** Present when the driver can move local disks of a running VM. */
  storage?: StorageMigration;
}
