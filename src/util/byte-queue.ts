/**
 * A FIFO of received chunks that hands out exact byte counts. Reads that fall inside one
 * chunk are views (no copy); only reads spanning chunks are copied.
 */
export class ByteQueue {
  #chunks: Buffer[] = [];
  #head = 0; // read offset into #chunks[0]
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Reads a big-endian u32 at `offset` without consuming (caller checked length). */
  peekU32(offset: number): number {
    const b = this.peek(offset + 4);
    return b.readUInt32BE(offset);
  }

  /** The first `n` bytes without consuming them. */
  peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length - this.#head >= n) return first.subarray(this.#head, this.#head + n);
    return this.#gather(n, false);
  }

  take(n: number): Buffer {
    if (n > this.length) throw new RangeError(`take(${n}) with ${this.length} queued`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.#chunks[0]!;
    if (first.length - this.#head >= n) {
      const out = first.subarray(this.#head, this.#head + n);
      this.#advance(n);
      return out;
    }
    return this.#gather(n, true);
  }

  #gather(n: number, consume: boolean): Buffer {
    const out = Buffer.allocUnsafe(n);
    let copied = 0;
    let i = 0;
    let off = this.#head;
    while (copied < n) {
      const c = this.#chunks[i]!;
      const len = Math.min(c.length - off, n - copied);
      c.copy(out, copied, off, off + len);
      copied += len;
      i++;
      off = 0;
    }
    if (consume) this.#advance(n);
    return out;
  }

  #advance(n: number): void {
    this.length -= n;
    while (n > 0) {
      const first = this.#chunks[0]!;
      const left = first.length - this.#head;
      if (n < left) {
        this.#head += n;
        return;
      }
      n -= left;
      this.#chunks.shift();
      this.#head = 0;
    }
  }
}
