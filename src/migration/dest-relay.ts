/**
 * Destination side of the transport: each channel opened by the source becomes a
 * connection to the destination QEMU's incoming socket, fed byte-exact what the source
 * QEMU wrote — RAM packets are rebuilt from their verbatim header and the decoded pages.
 * A frame the codec rejects is never applied: the migration aborts instead.
 */
import { connect, type Socket } from 'node:net';
import { NovaError } from '../errors.js';
import type { PageDecoder } from '../native/memdelta.js';
import { normalPages } from './multifd.js';
import { FrameType, type Frame } from './wire.js';

/**
 * Safety net: bytes queued towards QEMU before the transport stops reading. The source
 * honours per-channel windows, so a well-behaved stream never gets near it.
 */
const MAX_QUEUED = 256 << 20;

export interface DestRelayOptions {
  /** QEMU's incoming unix socket. */
  qemuSocket: string;
  decoder: PageDecoder;
  /** Stop/resume reading the transport (backpressure from QEMU). */
  pauseTransport: (pause: boolean) => void;
  /** `bytes` of `channel` reached QEMU's socket: return them to the source's window. */
  grant: (channel: number, bytes: number) => void;
  onError: (err: Error) => void;
}

export class DestRelay {
  readonly stats = { wireBytes: 0, rawBytes: 0, pages: 0 };
  #opts: DestRelayOptions;
  #channels = new Map<number, Socket>();
  #paused = false;
  #failed = false;

  constructor(opts: DestRelayOptions) {
    this.#opts = opts;
  }

  /** Applies one transport frame (anything but Hello/Control). Throws on a bad one. */
  apply(f: Frame): void {
    if (this.#failed) return;
    this.stats.wireBytes += f.payload.length + 7;
    switch (f.type) {
      case FrameType.Open: {
        if (this.#channels.has(f.channel)) throw new NovaError('MIGRATION_PROTOCOL', `channel ${f.channel} opened twice`);
        const s = connect(this.#opts.qemuSocket);
        s.on('error', (err) => this.#fail(new NovaError('MIGRATION_TRANSPORT', `destination QEMU channel ${f.channel}: ${err.message}`)));
        s.on('drain', () => this.#checkFlow());
        this.#channels.set(f.channel, s);
        return;
      }
      case FrameType.Data:
        this.#write(f.channel, f.payload);
        return;
      case FrameType.Pages: {
        const hlen = f.payload.readUInt32BE(0);
        if (4 + hlen > f.payload.length) throw new NovaError('MIGRATION_PROTOCOL', `pages frame header length ${hlen} overruns the frame`);
        const header = f.payload.subarray(4, 4 + hlen);
        const want = normalPages(header);
        let pages = Buffer.alloc(0);
        if (want > 0) {
          const decoded = this.#opts.decoder.decode(f.payload.subarray(4 + hlen));
          if (decoded.indices.length !== want) throw new NovaError('MIGRATION_PROTOCOL', `packet announces ${want} pages, frames hold ${decoded.indices.length}`);
          pages = Buffer.from(decoded.pages); // the decoder reuses its buffer
        }
        this.stats.pages += want;
        this.#write(f.channel, header);
        if (pages.length > 0) this.#write(f.channel, pages);
        return;
      }
      case FrameType.Eof:
        this.#channel(f.channel).end();
        this.#channels.delete(f.channel);
        return;
      default:
        throw new NovaError('MIGRATION_PROTOCOL', `unexpected frame type ${f.type} on channel ${f.channel}`);
    }
  }

  close(): void {
    for (const s of this.#channels.values()) s.destroy();
    this.#channels.clear();
  }

  #channel(id: number): Socket {
    const s = this.#channels.get(id);
    if (!s) throw new NovaError('MIGRATION_PROTOCOL', `frame for unknown channel ${id}`);
    return s;
  }

  #write(id: number, bytes: Buffer): void {
    this.#channel(id).write(bytes, (err) => {
      if (!err && !this.#failed) this.#opts.grant(id, bytes.length);
    });
    this.stats.rawBytes += bytes.length;
    this.#checkFlow();
  }

  #checkFlow(): void {
    let queued = 0;
    for (const s of this.#channels.values()) queued += s.writableLength;
    const pause = queued > MAX_QUEUED;
    if (pause !== this.#paused) {
      this.#paused = pause;
      this.#opts.pauseTransport(pause);
    }
  }

  #fail(err: Error): void {
    if (this.#failed) return;
    this.#failed = true;
    this.close();
    this.#opts.onError(err);
  }
}
