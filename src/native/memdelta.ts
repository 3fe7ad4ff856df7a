/**
 * Typed wrappers over the page codec (crates/memdelta). Page data stays in Buffers end to
 * end: inputs are borrowed by Rust, outputs are handed over without copying.
 */
import { binding, callNative, type Binding } from './binding.js';

export const PAGE_SIZE = 4096;

function indexBuffer(indices: BigUint64Array): Buffer {
  return Buffer.from(indices.buffer, indices.byteOffset, indices.byteLength);
}

export class PageEncoder {
  #native: Binding.PageEncoder;

  /** `capacityPages`: pages remembered for deltas/duplicates; the decoder must match. */
  constructor(capacityPages: number) {
    this.#native = new binding.PageEncoder(capacityPages);
  }

  /** Frames for `pages` (4 KiB each) at `indices`. Throws CODEC_INVALID_ARGUMENT on size mismatch. */
  encode(indices: BigUint64Array, pages: Buffer): Buffer {
    return callNative(() => this.#native.encode(indexBuffer(indices), pages));
  }

  stats(): Binding.BindingEncodeStats {
    return this.#native.stats();
  }
}

export class PageDecoder {
  #native: Binding.PageDecoder;

  constructor(capacityPages: number) {
    this.#native = new binding.PageDecoder(capacityPages);
  }

  /** Decodes a batch; throws CODEC_* (and applies nothing) on a corrupt or inconsistent one. */
  decode(frames: Buffer): { indices: BigUint64Array; pages: Buffer } {
    const out = callNative(() => this.#native.decode(frames));
    const indices = new BigUint64Array(out.indices.buffer, out.indices.byteOffset, out.indices.byteLength / 8);
    return { indices, pages: out.pages };
  }
}
