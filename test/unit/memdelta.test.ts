import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { NovaError } from '../../src/errors.js';
import { PAGE_SIZE, PageDecoder, PageEncoder } from '../../src/native/memdelta.js';

const idx = (...n: number[]) => BigUint64Array.from(n.map(BigInt));

describe('page codec through the native binding', () => {
  it('round-trips mixed pages and shrinks small changes to a few bytes', () => {
    const enc = new PageEncoder(1024);
    const dec = new PageDecoder(1024);
    const a = randomBytes(PAGE_SIZE);
    const batch1 = Buffer.concat([Buffer.alloc(PAGE_SIZE), a, Buffer.alloc(PAGE_SIZE, 'novacron ')]);
    const out1 = dec.decode(Buffer.from(enc.encode(idx(0, 1, 2), batch1)));
    expect([...out1.indices]).toEqual([0n, 1n, 2n]);
    expect(out1.pages.equals(batch1)).toBe(true);

    const b = Buffer.from(a);
    b[17] = b[17]! ^ 0xff;
    // Page 9 gets page 1's content (a dup), then page 1 changes by one byte (an xor delta).
    const frames = enc.encode(idx(9, 1), Buffer.concat([a, b]));
    expect(frames.length).toBeLessThan(100);
    const out2 = dec.decode(frames);
    expect(out2.pages.equals(Buffer.concat([a, b]))).toBe(true);
    expect(enc.stats()).toMatchObject({ pages: 5, zero: 1, dup: 1, xor: 1, lz4: 1, raw: 1 });
  });

  it('maps Rust codec errors to NovaError codes and applies nothing', () => {
    const enc = new PageEncoder(16);
    const frames = Buffer.from(enc.encode(idx(3), randomBytes(PAGE_SIZE)));
    frames[frames.length - 1] = frames[frames.length - 1]! ^ 1;
    const dec = new PageDecoder(16);
    expect(() => dec.decode(frames)).toThrow(NovaError);
    try {
      dec.decode(frames);
    } catch (e) {
      expect((e as NovaError).code).toBe('CODEC_CHECKSUM');
    }
    expect(() => enc.encode(idx(1, 2), Buffer.alloc(PAGE_SIZE))).toThrow(expect.objectContaining({ code: 'CODEC_INVALID_ARGUMENT' }));
    expect(() => dec.decode(frames.subarray(0, 10))).toThrow(expect.objectContaining({ code: 'CODEC_TRUNCATED' }));
  });
});
