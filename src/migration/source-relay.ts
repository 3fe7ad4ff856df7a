/**
 * Source side of the transport: QEMU migrates to a unix socket NovaCron listens on; each
 * of its connections (main + multifd) becomes a channel on the one transport connection
 * to the destination daemon. Multifd RAM pages go through the Rust page codec; all else
 * is forwarded as is.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import { NovaError } from '../errors.js';
import type { PageEncoder } from '../native/memdelta.js';
import { MultifdParser, MULTIFD_MAGIC, QEVM_MAGIC } from './multifd.js';
import { TokenBucket } from './token-bucket.js';
import { ByteQueue, CHANNEL_WINDOW, ChannelKind, encodeHeader, FrameType } from './wire.js';

export interface RelayStats {
  /** Bytes QEMU handed us. */
  rawBytes: number;
  /** Bytes we wrote to the transport (headers included). */
  wireBytes: number;
  /** Guest pages that went through the codec. */
  pages: number;
  packets: number;
}

export interface SourceRelayOptions {
  socketPath: string;
  transport: Socket;
  encoder: PageEncoder;
  /** The link's bandwidth cap (shared with the disk-mirror tunnel: one cap for the whole link). */
  bucket?: TokenBucket;
  /** Fault injection (tests): flip a byte in the first page-carrying frame from the Nth on. */
  corruptPagesFrame?: number;
  /** Called once with the first fatal error (protocol violation, socket failure). */
  onError: (err: Error) => void;
}

/**
 * Transport bytes queued in user space before QEMU's sockets are paused. Far above
 * Node's 16 KiB default: pausing on every 512 KiB packet would serialise the pipeline.
 */
const TRANSPORT_HIGH_WATER = 8 << 20;

interface Channel {
  id: number;
  socket: Socket;
  q: ByteQueue;
  /** QEMU bytes forwarded on this channel that the destination has not yet delivered. */
  unacked: number;
  parser?: MultifdParser;
  kind?: number;
}

export class SourceRelay {
  readonly stats: RelayStats = { rawBytes: 0, wireBytes: 0, pages: 0, packets: 0 };
  #opts: SourceRelayOptions;
  #server?: Server;
  #channels = new Map<number, Channel>();
  #nextId = 1;
  #blocks = new Map<string, bigint>();
  #bucket?: TokenBucket;
  #paused = { backpressure: false, bucket: false };
  #failed = false;
  #corrupted = false;

  constructor(opts: SourceRelayOptions) {
    this.#opts = opts;
    if (opts.bucket) this.#bucket = opts.bucket;
    opts.transport.on('drain', () => {
      this.#paused.backpressure = false;
      this.#flowChanged();
    });
  }

  async listen(): Promise<void> {
    rmSync(this.#opts.socketPath, { force: true });
    const server = createServer((s) => this.#accept(s));
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#opts.socketPath, () => resolve());
    });
  }

  close(): void {
    this.#server?.close();
    for (const ch of this.#channels.values()) ch.socket.destroy();
    this.#channels.clear();
    rmSync(this.#opts.socketPath, { force: true });
  }

  #accept(socket: Socket): void {
    const ch: Channel = { id: this.#nextId++, socket, q: new ByteQueue(), unacked: 0 };
    this.#channels.set(ch.id, ch);
    if (this.#paused.backpressure || this.#paused.bucket) socket.pause();
    socket.on('data', (chunk: Buffer) => {
      this.stats.rawBytes += chunk.length;
      ch.q.push(chunk);
      try {
        this.#drain(ch);
      } catch (err) {
        this.#fail(err as Error);
      }
      if (starved(ch)) socket.pause();
    });
    socket.on('end', () => {
      if (ch.q.length > 0 && !this.#failed) this.#fail(new NovaError('MIGRATION_PROTOCOL', `QEMU channel ${ch.id} ended inside a packet (${ch.q.length} bytes left)`));
      this.#send(encodeHeader(FrameType.Eof, ch.id, 0));
      this.#channels.delete(ch.id);
    });
    socket.on('error', (err) => this.#fail(new NovaError('MIGRATION_TRANSPORT', `QEMU channel ${ch.id}: ${err.message}`)));
  }

  #drain(ch: Channel): void {
    if (ch.kind === undefined) {
      if (ch.q.length < 4) return;
      const magic = ch.q.peekU32(0);
      if (magic === QEVM_MAGIC) ch.kind = ChannelKind.Main;
      else if (magic === MULTIFD_MAGIC) {
        ch.kind = ChannelKind.Multifd;
        ch.parser = new MultifdParser(this.#blocks);
      } else throw new NovaError('MIGRATION_PROTOCOL', `QEMU opened a channel with unknown magic 0x${magic.toString(16)}`);
      this.#send(encodeHeader(FrameType.Open, ch.id, 1), Buffer.of(ch.kind));
    }
    if (!ch.parser) {
      const bytes = ch.q.take(ch.q.length);
      ch.unacked += bytes.length;
      this.#send(encodeHeader(FrameType.Data, ch.id, bytes.length), bytes);
      return;
    }
    for (let item = ch.parser.next(ch.q); item; item = ch.parser.next(ch.q)) {
      if (item.kind === 'opaque') {
        ch.unacked += item.bytes.length;
        this.#send(encodeHeader(FrameType.Data, ch.id, item.bytes.length), item.bytes);
        continue;
      }
      ch.unacked += item.header.length + item.pages.length;
      // The encoder's output is a view of its scratch buffer; the socket keeps what it
      // is given until flushed, so hand it a copy.
      const frames = item.indices.length > 0 ? Buffer.from(this.#opts.encoder.encode(item.indices, item.pages)) : Buffer.alloc(0);
      if (this.#opts.corruptPagesFrame !== undefined && this.stats.packets + 1 >= this.#opts.corruptPagesFrame && frames.length > 0 && !this.#corrupted) {
        this.#corrupted = corruptFirstChecksum(frames);
      }
      const len = Buffer.allocUnsafe(4);
      len.writeUInt32BE(item.header.length);
      this.#send(encodeHeader(FrameType.Pages, ch.id, 4 + item.header.length + frames.length), len, item.header, frames);
      this.stats.pages += item.indices.length;
      this.stats.packets++;
    }
  }

  #send(...parts: Buffer[]): void {
    if (this.#failed) return;
    const t = this.#opts.transport;
    let n = 0;
    for (const p of parts) {
      t.write(p);
      n += p.length;
    }
    this.stats.wireBytes += n;
    if (t.writableLength > TRANSPORT_HIGH_WATER && !this.#paused.backpressure) {
      this.#paused.backpressure = true;
      this.#flowChanged();
    }
    const wait = this.#bucket?.spend(n) ?? 0;
    if (wait > 0 && !this.#paused.bucket) {
      this.#paused.bucket = true;
      this.#flowChanged();
      setTimeout(() => {
        this.#paused.bucket = false;
        this.#flowChanged();
      }, wait);
    }
  }

  /** The destination delivered `bytes` of `channel` to its QEMU. */
  grant(channel: number, bytes: number): void {
    const ch = this.#channels.get(channel);
    if (!ch) return;
    ch.unacked -= bytes;
    this.#flowChanged();
  }

  /** Reads from QEMU only while the transport keeps up, the cap allows and the channel's window is open. */
  #flowChanged(): void {
    const stop = this.#paused.backpressure || this.#paused.bucket;
    for (const ch of this.#channels.values()) {
      if (stop || starved(ch)) ch.socket.pause();
      else ch.socket.resume();
    }
  }

  #fail(err: Error): void {
    if (this.#failed) return;
    this.#failed = true;
    this.close();
    this.#opts.onError(err);
  }
}

/**
 * A channel's window is full: what the destination has not delivered plus what waits
 * here reaches CHANNEL_WINDOW. Never while nothing is in flight, so a packet larger than
 * the window can still be read whole (its delivery then reopens the window).
 */
function starved(ch: Channel): boolean {
  return ch.unacked > 0 && ch.unacked + ch.q.length >= CHANNEL_WINDOW;
}

/** Fault injection: flips a byte of the first frame's page checksum in a codec batch. */
function corruptFirstChecksum(batch: Buffer): boolean {
  if (batch.length < 8) return false;
  const shards = batch[3]!;
  let at = 8 + batch.readUInt32LE(4);
  for (let s = 0; s < shards && at + 4 <= batch.length; s++) {
    const len = batch.readUInt32LE(at);
    if (len >= 24) {
      batch[at + 4 + 12]! ^= 0xff; // frame header: magic 2, version 1, kind 1, index 8, then the hash
      return true;
    }
    at += 4 + len;
  }
  return false;
}
