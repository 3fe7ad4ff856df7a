/**
 * The plan's choice of path for QEMU's stream (migration/predict.ts `choosePath`), from
 * the model's predictions for the relay (page codec: compresses, but no faster than the
 * codec) and a direct stream (no compression, as fast as the cipher): the relay while the
 * link is the bottleneck, direct once the link outruns the codec.
 */
import { describe, expect, it } from 'vitest';
import { choosePath, predict, type PredictionInput } from '../../src/migration/predict.js';
import { relayRawBytesPerSec, samplePlan } from '../../src/migration/service.js';

const GiB = 1 << 30;
/** A 1 GiB guest dirtying 32 MiB/s whose pages the codec halves (its re-sends to a quarter), at 400 MB/s; the cipher runs at 1 GB/s. */
function paths(wireMBps: number | undefined, over: Partial<PredictionInput> = {}) {
  const common = { memoryBytes: GiB, dirtyBytesPerSec: 32 << 20, maxDowntimeMs: 50, ...(wireMBps ? { wireBytesPerSec: wireMBps * 1e6 } : {}), ...over };
  return [
    { transport: 'relay' as const, prediction: predict({ firstRatio: 2, resendRatio: 4, pathRawBytesPerSec: 400e6, ...common }) },
    { transport: 'direct' as const, prediction: predict({ firstRatio: 1, resendRatio: 1, pathRawBytesPerSec: 1e9, ...common }) },
  ];
}

describe('choosing the path of a live migration stream', () => {
  it('on a 1 GbE link (125 MB/s) the relay is chosen: it compresses, and the link is the bottleneck', () => {
    const p = choosePath(paths(125), 'auto');
    expect(p.transport).toBe('relay');
    expect(p.alternatives).toEqual([expect.objectContaining({ transport: 'direct' })]);
    expect(p.totalMs).toBeLessThan(p.alternatives![0]!.totalMs);
  });

  it('on 10 GbE (1,250 MB/s) and on an unlimited link a direct stream is chosen: the link outruns the codec', () => {
    for (const link of [1250, undefined]) {
      const p = choosePath(paths(link), 'auto');
      expect(p.transport, `link ${link}`).toBe('direct');
      expect(p.alternatives).toEqual([expect.objectContaining({ transport: 'relay' })]);
      expect(p.totalMs).toBeLessThan(p.alternatives![0]!.totalMs);
    }
  });

  it('a path that converges wins over a faster-looking one that does not', () => {
    // 300 MB/s of dirtying on a 200 MB/s link: raw, a direct stream re-sends slower than the
    // guest dirties; the relay's re-sends, compressed 4×, carry 400 MB/s (its codec's speed).
    const candidates = paths(200, { dirtyBytesPerSec: 300e6 });
    expect(candidates[0]!.prediction.converges).toBe(true);
    expect(candidates[1]!.prediction.converges).toBe(false);
    expect(choosePath(candidates, 'auto').transport).toBe('relay');
  });

  it('a path asked for is taken even when the other is predicted faster, and the other is still reported', () => {
    const p = choosePath(paths(125), 'direct');
    expect(p.transport).toBe('direct');
    expect(p.alternatives![0]!.transport).toBe('relay');
    expect(p.alternatives![0]!.totalMs).toBeLessThan(p.totalMs);
  });

  it('with the relay as the only path open (a target outside the cluster, local disks), auto takes it and reports no alternative', () => {
    const p = choosePath([paths(undefined)[0]!], 'auto');
    expect(p.transport).toBe('relay');
    expect(p.alternatives).toBeUndefined();
  });
});

describe("where the plan samples a guest's RAM", () => {
  it('spreads its chunks evenly over the low RAM, every one inside the guest and below 2 GiB (the limit was once 2 << 30, negative in JavaScript, so all but the first chunk read past the guest)', () => {
    const MiB = 1 << 20;
    expect(samplePlan(1024 * MiB)).toEqual({ chunk: 128 << 10, offsets: Array.from({ length: 32 }, (_, i) => i * 32 * MiB) });
    for (const mib of [256, 3072, 16384]) {
      const { chunk, offsets } = samplePlan(mib * MiB);
      for (const off of offsets) {
        expect(off % 4096).toBe(0);
        expect(off).toBeGreaterThanOrEqual(0);
        expect(off + chunk).toBeLessThanOrEqual(Math.min(mib * MiB, 2 ** 31));
      }
      expect(new Set(offsets).size).toBe(offsets.length);
    }
  });
});

describe("the relay's throughput in the plan", () => {
  it('keeps up with a link slower than half the codec (the link paces QEMU), and drops to 0.15 of the codec once the link outruns that (QEMU contends with the codec for the cores)', () => {
    const codec = 600e6;
    expect(relayRawBytesPerSec(codec, 125e6 * 2)).toBe(300e6);
    expect(relayRawBytesPerSec(codec, 1250e6 * 2)).toBeCloseTo(90e6);
    expect(relayRawBytesPerSec(codec, Infinity)).toBeCloseTo(90e6);
  });
});
