import { randomBytes } from 'node:crypto';
import type { VmSpec } from './spec.js';
import type { VmState } from './state.js';

/** A VM as stored and served by the API. */
export interface VmRecord {
  id: string;
  name: string;
  spec: VmSpec;
  state: VmState;
  /** Why the VM is in `error` (or the last failure), for operators. */
  stateReason?: string;
  /** A saved RAM + device state; the next start (or restore) resumes from it. */
  checkpoint?: { path: string; createdAt: string; sizeBytes: number };
  /** The node that owns the VM. */
  node: string;
  /** Incremented on every change; clients can use it for optimistic checks. */
  generation: number;
  createdAt: string;
  updatedAt: string;
  /** Set on the destination while the VM is arriving by live migration. */
  incoming?: { migrationId: string; source: string };
  /** Driver-reported runtime facts (accelerator, pid, ...). */
  runtime?: Record<string, unknown>;
}

let lastMs = 0;
let counter = 0;
/**
 * Time-ordered ids (`vm-` + 12 hex ms + 4 hex counter + 8 hex random), so listing in id
 * order is listing in creation order and pagination cursors are stable.
 */
export function newId(prefix: string): string {
  const now = Date.now();
  counter = now === lastMs ? counter + 1 : 0;
  lastMs = now;
  return `${prefix}-${now.toString(16).padStart(12, '0')}${(counter & 0xffff).toString(16).padStart(4, '0')}${randomBytes(4).toString('hex')}`;
}
