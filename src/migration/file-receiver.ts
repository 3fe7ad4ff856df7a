/**
 * Destination side of a cold migration: the stopped VM's files (disk images it owns, its
 * checkpoint) arrive one channel each and are written where this host's driver keeps
 * them. Only announced files are accepted, each written once, never past its size.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { NovaError } from '../errors.js';
import { ChannelKind, FrameType, type Frame } from './wire.js';

export interface FileReceiverOptions {
  files: ReadonlyArray<{ name: string; size: number }>;
  /** Where `name` goes on this host (its directory exists). */
  pathOf: (name: string) => string;
  pauseTransport: (pause: boolean) => void;
  onDone: () => void;
  onError: (err: Error) => void;
}

interface Incoming {
  name: string;
  size: number;
  written: number;
  out: WriteStream;
}

export class FileReceiver {
  readonly stats = { wireBytes: 0, rawBytes: 0 };
  #opts: FileReceiverOptions;
  #channels = new Map<number, Incoming>();
  #opened = new Set<string>();
  #finished = 0;
  /** Files whose write buffer is full; the transport is paused while any is. */
  #blocked = new Set<WriteStream>();

  constructor(opts: FileReceiverOptions) {
    this.#opts = opts;
    if (opts.files.length === 0) queueMicrotask(opts.onDone);
  }

  apply(f: Frame): void {
    this.stats.wireBytes += f.payload.length + 7;
    switch (f.type) {
      case FrameType.Open: {
        const name = f.payload.subarray(1).toString();
        const spec = this.#opts.files.find((x) => x.name === name);
        if (f.payload[0] !== ChannelKind.File || !spec) throw new NovaError('MIGRATION_PROTOCOL', `unannounced file "${name}"`);
        if (this.#opened.has(name) || this.#channels.has(f.channel)) throw new NovaError('MIGRATION_PROTOCOL', `file "${name}" sent twice`);
        this.#opened.add(name);
        // 'wx': never overwrite something already on this host.
        const out = createWriteStream(this.#opts.pathOf(name), { flags: 'wx', highWaterMark: 8 << 20 });
        out.on('error', (err) => this.#opts.onError(new NovaError('MIGRATION_FAILED', `writing ${name}: ${err.message}`)));
        this.#channels.set(f.channel, { name, size: spec.size, written: 0, out });
        return;
      }
      case FrameType.Data: {
        const file = this.#file(f.channel);
        file.written += f.payload.length;
        if (file.written > file.size) throw new NovaError('MIGRATION_PROTOCOL', `file "${file.name}" is longer than announced (${file.size} bytes)`);
        this.stats.rawBytes += f.payload.length;
        if (!file.out.write(f.payload) && !this.#blocked.has(file.out)) {
          // Disk slower than the network: stop reading until this file catches up. A
          // stream ended meanwhile never drains; its finish unblocks it instead.
          if (this.#blocked.size === 0) this.#opts.pauseTransport(true);
          this.#blocked.add(file.out);
          const unblock = () => {
            if (this.#blocked.delete(file.out) && this.#blocked.size === 0) this.#opts.pauseTransport(false);
          };
          file.out.once('drain', unblock);
          file.out.once('finish', unblock);
          file.out.once('close', unblock);
        }
        return;
      }
      case FrameType.Eof: {
        const file = this.#file(f.channel);
        this.#channels.delete(f.channel);
        if (file.written !== file.size) throw new NovaError('MIGRATION_PROTOCOL', `file "${file.name}" ended at ${file.written} of ${file.size} bytes`);
        file.out.end(() => {
          if (++this.#finished === this.#opts.files.length) this.#opts.onDone();
        });
        return;
      }
      default:
        throw new NovaError('MIGRATION_PROTOCOL', `unexpected frame type ${f.type} in a cold migration`);
    }
  }

  close(): void {
    for (const f of this.#channels.values()) f.out.destroy();
    this.#channels.clear();
  }

  #file(channel: number): Incoming {
    const f = this.#channels.get(channel);
    if (!f) throw new NovaError('MIGRATION_PROTOCOL', `frame for unknown channel ${channel}`);
    return f;
  }
}
