import { describe, expect, it } from 'vitest';
import { CHUNK_BYTES, FrameAssembler, packFrames } from '../../src/cluster/peer-frames.js';

/** Unpacks what the assembler returns back into individual messages. */
function unpack(out: { bytes: Buffer; batch: boolean }): Buffer[] {
  if (!out.batch) return [out.bytes];
  const msgs: Buffer[] = [];
  for (let off = 0; off < out.bytes.length; ) {
    const len = out.bytes.readUInt32BE(off);
    msgs.push(out.bytes.subarray(off + 4, off + 4 + len));
    off += 4 + len;
  }
  return msgs;
}

describe('peer frames', () => {
  it('round-trips small messages in shared frames and big ones in chunks, in order', () => {
    const small = Array.from({ length: 50 }, (_, i) => Buffer.alloc(100 + i, i));
    const big = Buffer.alloc(CHUNK_BYTES * 2 + 17, 7);
    const messages = [...small.slice(0, 25), big, ...small.slice(25)];
    const frames = packFrames(messages);
    expect(frames.length).toBe(2 + 3); // a batch, the 3 chunks of the big one, a batch
    for (const f of frames) expect(f.length).toBeLessThanOrEqual(CHUNK_BYTES + 1);
    const asm = new FrameAssembler();
    const got: Buffer[] = [];
    for (const f of frames) {
      const out = asm.push(f);
      if (out) got.push(...unpack(out));
    }
    expect(got.length).toBe(messages.length);
    got.forEach((m, i) => expect(m.equals(messages[i]!), `message ${i}`).toBe(true));
  });

  it('refuses unknown kinds and a whole message inside a chunked one', () => {
    expect(() => new FrameAssembler().push(Buffer.from([9, 1]))).toThrow(/unknown peer frame kind/);
    const asm = new FrameAssembler();
    asm.push(Buffer.from([2, 1, 2, 3]));
    expect(() => asm.push(Buffer.from([1, 1]))).toThrow(/inside a chunked/);
  });

  it('refuses a chunked message that grows past the limit, before holding all of it', () => {
    const asm = new FrameAssembler(3 * CHUNK_BYTES);
    const part = Buffer.concat([Buffer.of(2), Buffer.alloc(CHUNK_BYTES)]);
    for (let i = 0; i < 3; i++) expect(asm.push(part)).toBeUndefined();
    expect(() => asm.push(part)).toThrow(/exceeds 3145728 bytes/);
  });
});
