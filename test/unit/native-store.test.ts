/**
 * The Store contract, run against the RocksDB implementation through the real native
 * addon (build → load → types → errors mapped from Rust codes to NovaError codes).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NovaError } from '../../src/errors.js';
import { RocksStore } from '../../src/native/rocks-store.js';
import { binding } from '../../src/native/binding.js';
import { prefixRange } from '../../src/store/store.js';

const dirs: string[] = [];
function dir(): string {
  const d = mkdtempSync(join(tmpdir(), 'novacron-store-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const v = (s: string) => Buffer.from(s);

describe('RocksStore (Store contract)', () => {
  it('writes atomically and reads back, across reopen', async () => {
    const path = dir();
    const s = RocksStore.open(path);
    await s.write([{ key: 'a', value: v('1') }, { key: 'b', value: v('2') }]);
    await s.write([{ key: 'a' }, { key: 'c', value: v('3') }]);
    expect(await s.get('a')).toBeUndefined();
    expect((await s.get('b'))?.toString()).toBe('2');
    await s.close();
    const again = RocksStore.open(path);
    expect(await again.get('a')).toBeUndefined();
    expect((await again.scan({ start: 'a', end: '' })).map((e) => e.key)).toEqual(['b', 'c']);
    await again.close();
  });

  it('group-commits concurrent writes and resolves them in call order', async () => {
    const s = RocksStore.open(dir());
    const order: number[] = [];
    await Promise.all(Array.from({ length: 500 }, (_, i) => s.write([{ key: `k/${String(i).padStart(4, '0')}`, value: v(String(i)) }]).then(() => order.push(i))));
    expect(order).toEqual(Array.from({ length: 500 }, (_, i) => i));
    const all = await s.scan(prefixRange('k/'));
    expect(all.length).toBe(500);
    expect((await s.scan(prefixRange('k/', { limit: 2, reverse: true }))).map((e) => e.key)).toEqual(['k/0499', 'k/0498']);
    await s.close();
  });

  it('maps Rust error codes to NovaError codes', async () => {
    const path = dir();
    const s = RocksStore.open(path);
    let err: unknown;
    try {
      RocksStore.open(path);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NovaError);
    expect((err as NovaError).code).toBe('STORE_LOCKED');
    await expect(s.write([{ key: '', value: v('x') }])).rejects.toMatchObject({ code: 'STORE_INVALID_ARGUMENT' });
    await s.close();
    await expect(s.get('a')).rejects.toMatchObject({ code: 'STORE_CLOSED' });
  });

  it('the raw binding throws and rejects with errors whose code is the Rust error code', async () => {
    const path = dir();
    const native = binding.NativeStore.open(path);
    expect(() => native.getSync(Buffer.alloc(0))).toThrow(expect.objectContaining({ code: 'STORE_INVALID_ARGUMENT', message: expect.not.stringMatching(/^STORE_/) }));
    await expect(native.write([{ key: Buffer.alloc(0), value: Buffer.from('x') }])).rejects.toMatchObject({ code: 'STORE_INVALID_ARGUMENT' });
    native.close();
    expect(() => native.getSync(Buffer.from('a'))).toThrow(expect.objectContaining({ code: 'STORE_CLOSED' }));
    expect(() => native.scan({ start: Buffer.alloc(0), end: Buffer.alloc(0) })).toThrow(expect.objectContaining({ code: 'STORE_CLOSED' }));
  });

  it('fails a batch as a whole', async () => {
    const s = RocksStore.open(dir());
    await expect(s.write([{ key: 'ok', value: v('1') }, { key: '', value: v('2') }])).rejects.toMatchObject({ code: 'STORE_INVALID_ARGUMENT' });
    expect(await s.get('ok')).toBeUndefined();
    await s.close();
  });
});
