/** A live migration as stored and served at /v1/migrations/:id (on both daemons). */
import { z } from 'zod';
import { PoolName } from '../storage/model.js';
import type { ErrorCode } from '../errors.js';
import type { Prediction } from './predict.js';

/** `copy` is a cold migration's file transfer; the others are live pre-copy's. */
export const MIGRATION_PHASES = ['plan', 'prepare', 'precopy', 'copy', 'switchover', 'cleanup', 'done'] as const;
export type MigrationPhase = (typeof MIGRATION_PHASES)[number];

export interface MigrationProgressFigures {
  /** Guest bytes the hypervisor sent (before NovaCron's compression). */
  bytesRaw: number;
  /** Bytes NovaCron put on the wire. */
  bytesWire: number;
  /** bytesRaw / bytesWire. */
  compressionRatio: number;
  /** Pre-copy rounds (dirty-bitmap syncs). */
  rounds: number;
  dirtyBytesPerSec: number;
  remainingBytes: number;
  totalBytes: number;
  predictedDowntimeMs?: number;
  /** The downtime limit QEMU works to now: it starts low and steps up toward the target. */
  downtimeLimitMs?: number;
  /** The switchover bandwidth QEMU was given (the link's measured raw rate), bytes/s. */
  switchoverBytesPerSec?: number;
  throttlePercent: number;
  /** Live storage migration: disk bytes the mirrors copied, of their current total. */
  storageCopiedBytes?: number;
  storageTotalBytes?: number;
}

export interface MigrationRecord {
  id: string;
  /** live: a running VM (pre-copy); cold: a stopped VM's files. */
  mode: 'live' | 'cold';
  vmId: string;
  vmName: string;
  role: 'source' | 'destination';
  /** Source: the target daemon's address; destination: the source node. */
  peer: string;
  state: 'running' | 'completed' | 'failed' | 'cancelled';
  phase: MigrationPhase;
  policy: MigrationPolicy;
  /** How QEMU's stream travels (live migrations; see MigrateRequest.transport). */
  transport?: StreamTransport;
  prediction?: Prediction;
  progress: MigrationProgressFigures;
  /** Set when completed: the hypervisor's figure and the measured stop → resume gap. */
  downtimeMs?: { qemu?: number; measured?: number };
  totalMs?: number;
  /** Where the time went (source side), ms: planning, destination start, QEMU's stream, confirmation. */
  timings?: { planMs?: number; prepareMs?: number; streamMs?: number; confirmMs?: number };
  /** A registered code and a message for operators. */
  error?: { code: ErrorCode; message: string };
  createdAt: string;
  updatedAt: string;
  finishedAt?: string;
}

/** A migration target given as a daemon's address rather than a cluster member. */
export function isDaemonAddress(target: string): boolean {
  return /^https?:\/\//.test(target);
}

export const MigrateRequest = z.strictObject({
  /** The target: a cluster member's id or node name, or any daemon's API address (http://host:port). */
  target: z.string().max(255).regex(/^(?:https?:\/\/[^/\s]+|[A-Za-z0-9][A-Za-z0-9._-]*)$/, 'target must be a cluster member (id or node name) or a daemon address like http://127.0.0.1:7700'),
  maxDowntimeMs: z.int().min(1).max(60_000).default(50),
  /** Cap on NovaCron's wire bytes per second, in MB/s (10^6); omitted = unlimited. */
  bandwidthMBps: z.number().positive().max(100_000).optional(),
  dryRun: z.boolean().default(false),
  /**
   * A token the target daemon accepts, for a target outside this cluster (never stored,
   * never logged). Members of the cluster accept each other's own tokens.
   */
  targetToken: z.string().min(16).max(512).optional(),
  /** Start even when the prediction misses the downtime target. */
  force: z.boolean().default(false),
  /** Parallel multifd channels. */
  channels: z.int().min(1).max(16).default(2),
  /**
   * Ceiling on the vCPU throttle of a forced migration, percent. QEMU pauses a throttled
   * vCPU 10 ms × p/(1−p) per slice, so this bounds the longest stall the guest sees:
   * 85% ≈ 57 ms, 90% = 90 ms, 99% ≈ 1 s. A lower ceiling may not converge.
   */
  maxThrottlePercent: z.int().min(1).max(99).default(85),
  /**
   * How QEMU's stream travels. `relay`: through NovaCron's page codec and link (delta
   * compression, NovaCron's bandwidth cap; any target). `direct`: QEMU to QEMU over mutual
   * TLS with the members' certificates, nothing in between (cluster members only, no local
   * disks). `auto` (default): the plan predicts both on the guest's own pages and takes
   * the faster — the relay while the link is the bottleneck, direct once the link outruns
   * the codec.
   */
  transport: z.enum(['auto', 'relay', 'direct']).default('auto'),
  /** Where volumes of local pools go on the destination, by source pool (default: the pool of the same name). */
  pools: z.record(PoolName, PoolName).refine((m) => Object.keys(m).length <= 64, 'at most 64 pools').optional(),
});
export type MigrateRequest = z.infer<typeof MigrateRequest>;
export type MigrationPolicy = Omit<MigrateRequest, 'target' | 'dryRun' | 'targetToken'>;

export type StreamTransport = 'relay' | 'direct';

export const MIG_PREFIX = 'mig/';
export const migKey = (id: string) => MIG_PREFIX + id;

export function emptyProgress(): MigrationProgressFigures {
  return { bytesRaw: 0, bytesWire: 0, compressionRatio: 1, rounds: 0, dirtyBytesPerSec: 0, remainingBytes: 0, totalBytes: 0, throttlePercent: 0 };
}
