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
  #blocked = 0;

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
        const out = createWriteStream(this.#opts.pathOf(name), { flags: 'wx' });
        out.on('error', (err) => this.#opts.onError(new NovaError('MIGRATION_FAILED', `writing ${name}: ${err.message}`)));
        this.#channels.set(f.channel, { name, size: spec.size, written: 0, out });
        return;
      }
      case FrameType.Data: {
        const file = this.#file(f.channel);
        file.written += f.payload.length;
        if (file.written > file.size) throw new NovaError('MIGRATION_PROTOCOL', `file "${file.name}" is longer than announced (${file.size} bytes)`);
        this.stats.rawBytes += f.payload.length;
        if (!file.out.write(f.payload)) {
          // Disk slower than the network: stop reading until this file catches up.
          if (this.#blocked++ === 0) this.#opts.pauseTransport(true);
          file.out.once('drain', () => {
            if (--this.#blocked === 0) this.#opts.pauseTransport(false);
          });
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
