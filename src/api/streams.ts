/**
 * Streaming request and response bodies on uWS, with backpressure both ways: an upload
 * pauses the socket while more than HIGH_WATER bytes wait for the handler; a download
 * sends with `tryEnd` and waits for `onWritable` when the socket is full (the pattern of
 * uWS's own VideoStreamer example).
 */
import type { Readable } from 'node:stream';
import { NovaError } from '../errors.js';
import type { UWS } from './uws.js';

const HIGH_WATER = 8 << 20;
const LOW_WATER = 1 << 20;

/** A request body as an async iterable of chunks (copied out of uWS's buffers). */
export class BodyStream implements AsyncIterable<Buffer> {
  #chunks: Buffer[] = [];
  #queued = 0;
  #ended = false;
  #failure: Error | undefined;
  #wake: (() => void) | undefined;
  #paused = false;
  /** The response was written (or the client went away): `res` must not be touched any more. */
  #done = false;

  constructor(private readonly res: UWS.HttpResponse) {}

  /** The exchange is over (answered early, e.g. a refused upload, or aborted): stop driving the socket. */
  close(): void {
    this.#done = true;
    this.#chunks = [];
    this.#queued = 0;
    if (!this.#failure) this.#failure = new Error('the response was already sent');
    this.#notify();
  }

  push(chunk: ArrayBuffer, isLast: boolean): void {
    if (this.#failure || this.#done) return;
    const copy = Buffer.from(chunk.slice(0));
    if (copy.length > 0) {
      this.#chunks.push(copy);
      this.#queued += copy.length;
    }
    if (isLast) this.#ended = true;
    if (!this.#ended && this.#queued > HIGH_WATER && !this.#paused && !this.#done) {
      this.#paused = true;
      this.res.pause();
    }
    this.#notify();
  }

  /**
   * The handler refused without reading the whole body: read the rest and drop it (at
   * most `limit` bytes), so the client gets the answer rather than a reset connection.
   */
  async drain(limit: number): Promise<void> {
    let dropped = 0;
    for (;;) {
      if (this.#failure || this.#done) return;
      for (const c of this.#chunks.splice(0)) dropped += c.length;
      this.#queued = 0;
      if (this.#paused) {
        this.#paused = false;
        this.res.resume();
      }
      if (this.#ended || dropped > limit) return;
      await new Promise<void>((r) => (this.#wake = r));
    }
  }

  /** The client went away: the consumer's next read throws. */
  fail(err: Error): void {
    this.#failure = err;
    this.#notify();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      if (this.#failure) throw this.#failure;
      const next = this.#chunks.shift();
      if (next) {
        this.#queued -= next.length;
        if (this.#paused && this.#queued < LOW_WATER && !this.#failure && !this.#done) {
          this.#paused = false;
          this.res.resume();
        }
        yield next;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((r) => (this.#wake = r));
    }
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}

/**
 * Sends `stream` (exactly `size` bytes) as the response body. Resolves when all was
 * sent, or when the client aborted (`aborted()` true); the stream is destroyed then.
 */
export async function sendStream(res: UWS.HttpResponse, size: number, stream: Readable, aborted: () => boolean, onAbort: (fn: () => void) => void): Promise<void> {
  let writable: ((offset: number) => void) | undefined;
  onAbort(() => {
    stream.destroy();
    writable?.(-1);
  });
  try {
    for await (const data of stream) {
      if (aborted()) return;
      let chunk = data as Buffer;
      let start = res.getWriteOffset();
      for (;;) {
        let ok = false;
        let done = false;
        res.cork(() => ([ok, done] = res.tryEnd(chunk, size)));
        if (done) return;
        if (ok) break;
        // Socket full: wait until it drains, then send what it did not take.
        const offset = await new Promise<number>((resolve) => {
          writable = resolve;
          res.onWritable((o) => {
            writable = undefined;
            resolve(o);
            return true;
          });
        });
        if (offset < 0 || aborted()) return;
        chunk = chunk.subarray(offset - start);
        start = offset;
      }
    }
    if (!aborted() && res.getWriteOffset() < size) throw new NovaError('INTERNAL', `stream ended after ${res.getWriteOffset()} of ${size} bytes`);
  } finally {
    stream.destroy();
  }
}
