/**
 * NovaCron's migration framing, shared by the control connection (TypeScript: hello,
 * control messages, a cold migration's files) and the live data link (Rust,
 * crates/miglink/src/wire.rs: QEMU's channels, page batches, window credit):
 *
 *   frame = type u8 | channel u16 BE | length u32 BE | payload
 */
import { NovaError } from '../errors.js';
import { ByteQueue } from '../util/byte-queue.js';

export const FRAME_HEADER_LEN = 7;
/** Largest payload accepted; a bigger length is a corrupt or hostile stream. */
export const MAX_FRAME_PAYLOAD = 64 << 20;
export const TRANSPORT_VERSION = 1;

export const FrameType = {
  /** source → destination, first frame: JSON {version, migrationId, token}. */
  Hello: 1,
  /** A QEMU connection was opened; payload: kind u8 (0 main, 1 multifd). */
  Open: 2,
  /** Bytes for a channel, forwarded as they are. */
  Data: 3,
  /** Data link only: one multifd RAM packet (u32 header length | header | codec batch). */
  Pages: 4,
  /** The QEMU side of a channel closed. */
  Eof: 5,
  /** JSON control message, either direction. */
  Control: 6,
  /** Data link only: destination → source, u32 bytes of a channel delivered to QEMU. */
  Window: 7,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** What a channel carries: QEMU's main or a multifd stream (live), or a file (cold; its name follows). */
export const ChannelKind = { Main: 0, Multifd: 1, File: 2 } as const;

export function encodeHeader(type: FrameType, channel: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER_LEN);
  h.writeUInt8(type, 0);
  h.writeUInt16BE(channel, 1);
  h.writeUInt32BE(length, 3);
  return h;
}

/**
 * Per-channel flow-control window of the data link, in bytes of QEMU's stream. Data the
 * link holds is invisible to QEMU, which counts it as sent, and it drains after the guest
 * stops at switchover: a bounded window keeps that backlog small, so QEMU's bandwidth and
 * downtime estimates stay true. Per channel, so a multifd channel parked at a sync point
 * never blocks the main channel behind it.
 *
 * Uncapped links on few cores are bound by the codec, which needs deep windows (1 MiB
 * ones cost 13–20% throughput in bench/migration); on a capped link the cap is the
 * bottleneck and ~8 ms of it is enough: 1 MiB windows at 125 MB/s cut stop→resume from
 * 85 to 55 ms (32 MiB/s dirty, 2 GiB guest) at the same total time.
 */
export const CHANNEL_WINDOW = 4 << 20;
const MIN_CAPPED_WINDOW = 1 << 20;

/** The window for a link capped at `bandwidthMBps` (MB/s on the wire), or uncapped. */
export function channelWindow(bandwidthMBps?: number): number {
  if (!bandwidthMBps) return CHANNEL_WINDOW;
  return Math.min(CHANNEL_WINDOW, Math.max(MIN_CAPPED_WINDOW, Math.round(bandwidthMBps * 1e6 * 0.008)));
}

export function controlFrame(message: ControlMessage): Buffer[] {
  const body = Buffer.from(JSON.stringify(message));
  return [encodeHeader(FrameType.Control, 0, body.length), body];
}

/** Messages on the control channel. */
export type ControlMessage =
  /** `stream: 'nbd'`: this connection tunnels one NBD client to the destination's disk export. */
  | { type: 'hello'; version: number; migrationId: string; token: string; stream?: 'nbd' }
  /** Source, every second while QEMU streams directly: still here (the destination has no link of its own to watch). */
  | { type: 'alive' }
  /** Destination: the guest runs here now (QMP RESUME time, ms since epoch). */
  | { type: 'resumed'; at: number }
  /** Destination (cold migration): every file arrived intact; the VM is stopped here. */
  | { type: 'arrived'; at: number }
  /** Either side: the migration cannot go on. */
  | { type: 'abort'; code: string; message: string };

export interface Frame {
  type: FrameType;
  channel: number;
  payload: Buffer;
}

/** Splits a byte stream into frames; throws MIGRATION_PROTOCOL on a malformed header. */
export class FrameReader {
  #q = new ByteQueue();

  push(chunk: Buffer): Frame[] {
    this.#q.push(chunk);
    const out: Frame[] = [];
    while (this.#q.length >= FRAME_HEADER_LEN) {
      const h = this.#q.peek(FRAME_HEADER_LEN);
      const type = h.readUInt8(0);
      const len = h.readUInt32BE(3);
      if (type < FrameType.Hello || type > FrameType.Window) throw new NovaError('MIGRATION_PROTOCOL', `unknown transport frame type ${type}`);
      if (len > MAX_FRAME_PAYLOAD) throw new NovaError('MIGRATION_PROTOCOL', `transport frame of ${len} bytes exceeds the ${MAX_FRAME_PAYLOAD}-byte limit`);
      if (this.#q.length < FRAME_HEADER_LEN + len) break;
      const channel = h.readUInt16BE(1);
      this.#q.take(FRAME_HEADER_LEN);
      out.push({ type: type as FrameType, channel, payload: this.#q.take(len) });
    }
    return out;
  }
}
