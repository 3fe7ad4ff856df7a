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
  /** A template: never started; its volumes are read-only; new VMs are made from it. */
  template?: true;
  /** Driver-reported runtime facts (accelerator, pid, ...). */
  runtime?: Record<string, unknown>;
}
