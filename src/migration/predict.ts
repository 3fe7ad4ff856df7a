/**
 * Dry-run prediction: will pre-copy converge within the downtime target, and how long
 * will it take? A round-by-round model of pre-copy fed with measured inputs: the
 * guest's dirty rate (QEMU calc-dirty-rate) and the codec's ratio on a sample of the
 * guest's own pages — first sends and re-sends (deltas) measured separately.
 */
import type { StreamTransport } from './record.js';

export interface PredictionInput {
  /** Guest RAM that is not zero (zero pages cost QEMU only their offsets). */
  memoryBytes: number;
  dirtyBytesPerSec: number;
  /** raw / wire for pages sent the first time. */
  firstRatio: number;
  /** raw / wire for re-sent (dirtied) pages. */
  resendRatio: number;
  /** Wire bandwidth cap, bytes/s; undefined = no cap. */
  wireBytesPerSec?: number;
  /** Raw bytes/s the path sustains without a cap (hypervisor + relay). */
  pathRawBytesPerSec: number;
  maxDowntimeMs: number;
  /** Live storage migration: allocated bytes of the local disks the mirrors copy first. */
  diskBytes?: number;
}

export interface Prediction {
  /** The path the plan takes for QEMU's stream (live migrations; see `choosePath`). */
  transport?: StreamTransport;
  /** The other paths the plan weighed, with what it predicted for each. */
  alternatives?: Array<{ transport: StreamTransport; converges: boolean; downtimeMs: number; totalMs: number }>;
  converges: boolean;
  /** Downtime of the final round, ms (Infinity when it does not converge). */
  downtimeMs: number;
  totalMs: number;
  rounds: number;
  bytesRaw: number;
  bytesWire: number;
  /** vCPU throttle needed for the dirty rate to fall below the transfer rate, percent. */
  throttleNeededPercent: number;
  /** Time the disk mirrors need before RAM pre-copy starts (included in totalMs). */
  diskMs: number;
  inputs: PredictionInput;
}

/** Within this share of each other, the relay wins: it puts fewer bytes on the network. */
const TIE_SHARE = 0.05;

/**
 * The path for QEMU's stream, from a prediction for each path open to this migration:
 * `asked` when it is one of them, else (`auto`) the one that converges, and of those the
 * faster; when none converges, the one that needs the least throttle.
 */
export function choosePath(candidates: Array<{ transport: StreamTransport; prediction: Prediction }>, asked: StreamTransport | 'auto'): Prediction {
  const better = (a: Prediction, b: Prediction): boolean => {
    if (a.converges !== b.converges) return a.converges;
    if (!a.converges) return a.throttleNeededPercent < b.throttleNeededPercent;
    return a.totalMs < b.totalMs * (1 - TIE_SHARE);
  };
  let chosen = candidates.find((c) => c.transport === asked) ?? candidates[0]!;
  if (asked === 'auto') for (const c of candidates) if (better(c.prediction, chosen.prediction)) chosen = c;
  const alternatives = candidates
    .filter((c) => c !== chosen)
    .map(({ transport, prediction: p }) => ({ transport, converges: p.converges, downtimeMs: p.downtimeMs, totalMs: p.totalMs }));
  return { ...chosen.prediction, transport: chosen.transport, ...(alternatives.length > 0 ? { alternatives } : {}) };
}

/** Fixed cost of the stop-and-copy phase beyond RAM (device state, handshakes). */
const SWITCHOVER_OVERHEAD_MS = 5;
const MAX_ROUNDS = 30;

export function predict(inp: PredictionInput): Prediction {
  const rawRate = (ratio: number) => Math.min(inp.pathRawBytesPerSec, inp.wireBytesPerSec ? inp.wireBytesPerSec * ratio : Infinity);
  const firstRate = rawRate(inp.firstRatio);
  const resendRate = rawRate(inp.resendRatio);
  let toSend = inp.memoryBytes;
  let rate = firstRate;
  let ratio = inp.firstRatio;
  let totalMs = 0;
  let bytesRaw = 0;
  let bytesWire = 0;
  let rounds = 0;
  let converges = false;
  let downtimeMs = Infinity;
  while (rounds < MAX_ROUNDS) {
    const ms = (toSend / rate) * 1000;
    if (rounds > 0 && ms + SWITCHOVER_OVERHEAD_MS <= inp.maxDowntimeMs) {
      converges = true;
      downtimeMs = ms + SWITCHOVER_OVERHEAD_MS;
      totalMs += downtimeMs;
      bytesRaw += toSend;
      bytesWire += toSend / ratio;
      break;
    }
    totalMs += ms;
    bytesRaw += toSend;
    bytesWire += toSend / ratio;
    rounds++;
    const next = Math.min(inp.memoryBytes, inp.dirtyBytesPerSec * (ms / 1000));
    if (rounds > 1 && next >= toSend) break; // not shrinking: pre-copy alone never ends
    toSend = next;
    rate = resendRate;
    ratio = inp.resendRatio;
  }
  // Disk data is not page-coded: it crosses the link as it is, before RAM pre-copy.
  const diskMs = inp.diskBytes ? (inp.diskBytes / Math.min(inp.pathRawBytesPerSec, inp.wireBytesPerSec ?? Infinity)) * 1000 : 0;
  totalMs += diskMs;
  const throttleNeededPercent = inp.dirtyBytesPerSec <= 0 ? 0 : Math.max(0, Math.min(99, Math.ceil((1 - (resendRate * 0.9) / inp.dirtyBytesPerSec) * 100)));
  return { converges, downtimeMs, totalMs, rounds, bytesRaw, bytesWire, throttleNeededPercent: converges ? 0 : throttleNeededPercent, diskMs, inputs: inp };
}
