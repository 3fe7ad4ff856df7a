/**
 * Raft traffic between daemons: binary WebSocket messages on the cluster port's `/v1/cluster/peer`, each
 * one byte of kind followed by payload. A Raft message larger than one chunk (a
 * snapshot carries the whole state) is streamed as chunks and reassembled, so no frame
 * exceeds `CHUNK_BYTES` and a snapshot never needs one giant buffer on the wire.
 */
import { timingSafeEqual } from 'node:crypto';
import { NovaError } from '../errors.js';

export const PEER_PATH = '/v1/cluster/peer';
export const CHUNK_BYTES = 1 << 20;
/** Largest reassembled message accepted (a snapshot of the whole control-plane state). */
export const MAX_MESSAGE_BYTES = 512 << 20;

export const enum FrameKind {
  /** A whole Raft message. */
  Message = 1,
  /** Part of a Raft message; more parts follow. */
  Part = 2,
  /** The last part of a Raft message. */
  LastPart = 3,
  /** Several small Raft messages, each `[u32 BE length][message]`. */
  Batch = 4,
}

/** Handshake headers a dialing peer sends with the upgrade request (its member id must be its certificate's). */
export const HEADERS = {
  cluster: 'x-novacron-cluster',
  member: 'x-novacron-member',
  address: 'x-novacron-peer-address',
} as const;

/**
 * Packs messages into as few frames as possible: small ones share Batch frames (one
 * WebSocket send and one native step call for a Ready's worth of traffic), a message
 * too big for a frame is chunked on its own.
 */
export function packFrames(messages: Buffer[]): Buffer[] {
  const frames: Buffer[] = [];
  let group: Buffer[] = [];
  let size = 1;
  const flush = () => {
    if (group.length === 0) return;
    const frame = Buffer.allocUnsafe(size);
    frame[0] = FrameKind.Batch;
    let off = 1;
    for (const m of group) {
      frame.writeUInt32BE(m.length, off);
      m.copy(frame, off + 4);
      off += 4 + m.length;
    }
    frames.push(frame);
    group = [];
    size = 1;
  };
  for (const m of messages) {
    if (m.length + 4 > CHUNK_BYTES) {
      flush();
      frames.push(...toFrames(m));
      continue;
    }
    if (size + 4 + m.length > CHUNK_BYTES) flush();
    group.push(m);
    size += 4 + m.length;
  }
  flush();
  return frames;
}

/** Splits one encoded Raft message into frames. */
export function toFrames(bytes: Buffer): Buffer[] {
  if (bytes.length <= CHUNK_BYTES) return [Buffer.concat([Buffer.of(FrameKind.Message), bytes])];
  const frames: Buffer[] = [];
  for (let off = 0; off < bytes.length; off += CHUNK_BYTES) {
    const end = Math.min(off + CHUNK_BYTES, bytes.length);
    frames.push(Buffer.concat([Buffer.of(end === bytes.length ? FrameKind.LastPart : FrameKind.Part), bytes.subarray(off, end)]));
  }
  return frames;
}

/** Reassembles frames from one connection into Raft messages. */
export class FrameAssembler {
  #parts: Buffer[] = [];
  #size = 0;

  constructor(private readonly maxMessageBytes = MAX_MESSAGE_BYTES) {}

  /**
   * Returns a complete message (`batch` when it holds several, length-prefixed), or
   * undefined while parts are outstanding. Throws on a protocol violation.
   */
  push(frame: Buffer): { bytes: Buffer; batch: boolean } | undefined {
    if (frame.length < 2) throw new NovaError('RAFT_BAD_MESSAGE', 'empty peer frame');
    const kind = frame[0];
    const payload = frame.subarray(1);
    if (kind === FrameKind.Message || kind === FrameKind.Batch) {
      if (this.#parts.length > 0) throw new NovaError('RAFT_BAD_MESSAGE', 'whole message inside a chunked one');
      return { bytes: payload, batch: kind === FrameKind.Batch };
    }
    if (kind !== FrameKind.Part && kind !== FrameKind.LastPart) throw new NovaError('RAFT_BAD_MESSAGE', `unknown peer frame kind ${kind}`);
    this.#size += payload.length;
    if (this.#size > this.maxMessageBytes) throw new NovaError('RAFT_BAD_MESSAGE', `peer message exceeds ${this.maxMessageBytes} bytes`);
    this.#parts.push(Buffer.from(payload)); // uWS reuses its buffer after the handler returns.
    if (kind === FrameKind.Part) return undefined;
    const whole = Buffer.concat(this.#parts);
    this.#parts = [];
    this.#size = 0;
    return { bytes: whole, batch: false };
  }
}

/** What the cluster port's peer route (cluster-port.ts) needs of the cluster. */
export interface PeerEndpoint {
  clusterId: string;
  /** Steps a message from member `from` (the connection's certificate) into Raft; throws a NovaError for a bad one or another sender. */
  step(bytes: Buffer, from: number): void;
  /** Steps length-prefixed messages from member `from`; throws at the first bad one. */
  stepBatch(bytes: Buffer, from: number): void;
  /** A peer announced where it listens. */
  peerAddress(id: number, address: string): void;
  /** Counts refused messages (metrics). */
  refused(reason: string): void;
}

/** Constant-time comparison of a presented cluster secret. */
export function secretMatches(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}
