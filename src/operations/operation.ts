import type { ErrorCode } from '../errors.js';
import { newId } from '../ids.js';

export const OPERATION_KINDS = ['start', 'stop', 'shutdown', 'pause', 'resume', 'reboot', 'delete', 'checkpoint', 'restore', 'move-disk'] as const;
export type OperationKind = (typeof OPERATION_KINDS)[number];

/** A long-running request, returned with 202 and pollable at /v1/operations/:id. */
export interface OperationRecord {
  id: string;
  kind: OperationKind;
  vmId: string;
  state: 'running' | 'succeeded' | 'failed';
  /** `detail`: figures of a long copy (bytes copied, total, rate). */
  progress: { percent: number; message: string; detail?: Record<string, number> };
  /** A registered code (never a raw system error such as ENOENT) and a message for operators. */
  error?: { code: ErrorCode; message: string };
  result?: Record<string, unknown>;
  createdAt: string;
  updatedAt: string;
  finishedAt?: string;
}

export const OP_PREFIX = 'op/';
export const opKey = (id: string) => OP_PREFIX + id;

export function newOperation(kind: OperationKind, vmId: string): OperationRecord {
  const now = new Date().toISOString();
  return { id: newId('op'), kind, vmId, state: 'running', progress: { percent: 0, message: `${kind} requested` }, createdAt: now, updatedAt: now };
}
