/**
 * Typed wrappers over the page codec (crates/memdelta). Page data stays in Buffers end to
 * end: inputs are borrowed by Rust, and outputs are written into JS-owned buffers that
 * the wrappers reuse, so steady-state encoding and decoding allocate nothing.
 */
import { availableParallelism } from 'node:os';
import { binding, callNative, type Binding } from './binding.js';

export const PAGE_SIZE = 4096;
/** Largest batch decoded at once (64 MiB of pages); larger ones fail with CODEC_INVALID_ARGUMENT. */
export const MAX_BATCH_PAGES = 16384;
/**
 * Parallel codec shards (both ends must agree; it is negotiated): one per core, at most
 * 4 — but 1 on hosts with two cores or fewer, where the guest's own vCPUs and QEMU's
 * migration thread need the other core more than the codec does (measured here).
 */
export const DEFAULT_SHARDS = availableParallelism() <= 2 ? 1 : Math.min(4, availableParallelism());

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

/** Whether page number `page` of `buf` is all zeros (a native memcmp). */
export function isZeroPage(buf: Buffer, page: number): boolean {
  return ZERO_PAGE.compare(buf, page * PAGE_SIZE, (page + 1) * PAGE_SIZE) === 0;
}

function indexBuffer(indices: BigUint64Array): Buffer {
  return Buffer.from(indices.buffer, indices.byteOffset, indices.byteLength);
}

/** What an encoder produced so far, by page kind. */
export interface EncodeStats {
  /** Pages encoded. */
  pages: number;
  /** Bytes produced, frame headers included. */
  wireBytes: number;
  zero: number;
  dup: number;
  xor: number;
  lz4: number;
  raw: number;
  sparse: number;
}

export class PageEncoder {
  #native: Binding.NativePageEncoder;
  #out = Buffer.alloc(0);
  readonly shards: number;

  /** `capacityPages`: pages remembered for deltas/duplicates; the decoder must match (and `shards`). */
  constructor(capacityPages: number, shards = 1) {
    this.#native = new binding.NativePageEncoder(capacityPages, shards);
    this.shards = shards;
  }

  /**
   * Frames for `pages` (4 KiB each) at `indices`. The result is a view of an internal
   * buffer, valid until the next call (copy it to keep it). Throws CODEC_INVALID_ARGUMENT
   * on a size mismatch.
   */
  encode(indices: BigUint64Array, pages: Buffer): Buffer {
    const need = binding.maxEncodedLen(indices.length, this.shards);
    if (this.#out.length < need) this.#out = Buffer.allocUnsafe(need);
    const n = callNative(() => this.#native.encodeInto(indexBuffer(indices), pages, this.#out));
    return this.#out.subarray(0, n);
  }

  stats(): EncodeStats {
    return this.#native.stats();
  }
}

export class PageDecoder {
  #native: Binding.NativePageDecoder;
  #indices = Buffer.alloc(0);
  #pages = Buffer.alloc(0);

  constructor(capacityPages: number, shards = 1) {
    this.#native = new binding.NativePageDecoder(capacityPages, shards);
  }

  /**
   * Decodes a batch; throws CODEC_* (and applies nothing) on a corrupt or inconsistent
   * one. The result views internal buffers, valid until the next call.
   */
  decode(frames: Buffer): { indices: BigUint64Array; pages: Buffer } {
    // The batch header states its page count (bytes 4..8); the decoder checks it against
    // the frames, and a batch lists one shard byte per page, so its length bounds it too.
    const maxPages = Math.min(frames.length >= 8 ? frames.readUInt32LE(4) : 0, frames.length, MAX_BATCH_PAGES);
    if (this.#indices.length < maxPages * 8) this.#indices = Buffer.alloc(maxPages * 8);
    if (this.#pages.length < maxPages * PAGE_SIZE) this.#pages = Buffer.allocUnsafe(maxPages * PAGE_SIZE);
    const n = callNative(() => this.#native.decodeInto(frames, this.#indices, this.#pages));
    return {
      indices: new BigUint64Array(this.#indices.buffer, this.#indices.byteOffset, n),
      pages: this.#pages.subarray(0, n * PAGE_SIZE),
    };
  }
}
