/**
 * The VM lifecycle state machine. Every state change is written by `VmRegistry.commit`,
 * which checks it here; an illegal one is a 409 VM_INVALID_STATE.
 *
 *   pending ──► stopped ◄──────────────── stopping ◄──┐
 *                 │  ▲                                │
 *          start  ▼  │ start failed        stop/shutdown
 *              starting ──► running ──────────────────┤
 *                             │ ▲                     │
 *                       pause ▼ │ resume              │
 *                             paused ─────────────────┘
 *                             running ─► migrating ─► running | stopped
 *   any settled state ─► deleting ─► (gone);  any state ─► error (driver failure)
 *
 * - pending: created, resources not yet prepared by the driver.
 * - starting/stopping/migrating/deleting: an operation is running. Pause and resume
 *   finish before they are acknowledged, so they go straight between running and paused
 *   (as the hypervisor's own pauses do); `pausing`/`resuming` remain only for records
 *   written by earlier versions, which the reconciler settles after a restart.
 * - error: the driver reported a failure or the VM's process vanished; it can be
 *   stopped (to clean up), started again, or deleted.
 */
export const VM_STATES = [
  'pending', 'stopped', 'starting', 'running', 'pausing', 'paused',
  'resuming', 'stopping', 'migrating', 'deleting', 'error',
] as const;
export type VmState = (typeof VM_STATES)[number];

const TRANSITIONS: Record<VmState, readonly VmState[]> = {
  pending: ['stopped', 'deleting', 'error'],
  stopped: ['starting', 'deleting', 'migrating', 'error'],
  starting: ['running', 'stopped', 'error'],
  running: ['paused', 'stopping', 'migrating', 'starting', 'error'],
  pausing: ['paused', 'running', 'error'],
  paused: ['running', 'stopping', 'error'],
  resuming: ['running', 'paused', 'error'],
  stopping: ['stopped', 'running', 'error'],
  migrating: ['running', 'stopped', 'error'],
  deleting: ['error'],
  error: ['stopping', 'starting', 'deleting', 'stopped'],
};

export function canTransition(from: VmState, to: VmState): boolean {
  return TRANSITIONS[from].includes(to);
}

export function allowedTransitions(from: VmState): readonly VmState[] {
  return TRANSITIONS[from];
}
