/**
 * The `Store` contract (src/store/store.ts), one suite run against every implementation:
 * the local RocksDB store and the Raft-replicated store of a one-member cluster. A new
 * implementation joins by adding a factory below.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ReplicatedStore } from '../../src/cluster/replicated-store.js';
import { RaftNode } from '../../src/native/raft-node.js';
import { RocksStore } from '../../src/native/rocks-store.js';
import { prefixRange, type Store } from '../../src/store/store.js';

interface Opened {
  store: Store;
  /** Closes the store (and what backs it) so `reopen` can open the same data. */
  shutdown(): Promise<void>;
  reopen(): Promise<Opened>;
}

const dirs: string[] = [];
const open: Opened[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'novacron-contract-'));
  dirs.push(d);
  return d;
}
afterEach(async () => {
  for (const o of open.splice(0)) await o.shutdown().catch(() => undefined);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function rocks(dir = tempDir()): Promise<Opened> {
  const store = RocksStore.open(dir);
  const o: Opened = { store, shutdown: () => store.close(), reopen: async () => (await o.shutdown(), rocks(dir)) };
  open.push(o);
  return Promise.resolve(o);
}

async function replicated(dir?: string): Promise<Opened> {
  const path = dir ?? tempDir();
  if (!dir) RaftNode.bootstrap(path, 1, '127.0.0.1:1');
  const node = RaftNode.start(path, { id: 1, tickMs: 10 }, () => undefined);
  node.campaign();
  const store = new ReplicatedStore(node, { retryForMs: 5000 });
  let stopped = false;
  const o: Opened = {
    store,
    shutdown: async () => {
      await store.close();
      if (!stopped) node.stop();
      stopped = true;
    },
    reopen: async () => (await o.shutdown(), replicated(path)),
  };
  open.push(o);
  return o;
}

const v = (s: string) => Buffer.from(s);

const IMPLEMENTATIONS: Array<[string, () => Promise<Opened>]> = [
  ['RocksStore', () => rocks()],
  ['ReplicatedStore (one member)', () => replicated()],
];

describe.each(IMPLEMENTATIONS)('Store contract: %s', (_name, make) => {
  it('applies a batch atomically: puts and deletes together, visible to the next read', async () => {
    const { store } = await make();
    await store.write([{ key: 'a', value: v('1') }, { key: 'b', value: v('2') }]);
    await store.write([{ key: 'a' }, { key: 'c', value: v('3') }]);
    expect(await store.get('a')).toBeUndefined();
    expect((await store.get('b'))?.toString()).toBe('2');
    expect((await store.scan({ start: '', end: '' })).map((e) => [e.key, e.value.toString()])).toEqual([['b', '2'], ['c', '3']]);
  });

  it('refuses a batch with an empty key as a whole (STORE_INVALID_ARGUMENT), writing none of it', async () => {
    const { store } = await make();
    await expect(store.write([{ key: 'ok', value: v('1') }, { key: '', value: v('2') }])).rejects.toMatchObject({ code: 'STORE_INVALID_ARGUMENT' });
    expect(await store.get('ok')).toBeUndefined();
  });

  it('resolves concurrent writes in call order, each visible once resolved', async () => {
    const { store } = await make();
    const order: number[] = [];
    await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        store.write([{ key: `k/${String(i).padStart(3, '0')}`, value: v(String(i)) }]).then(async () => {
          order.push(i);
          expect((await store.get(`k/${String(i).padStart(3, '0')}`))?.toString()).toBe(String(i));
        }),
      ),
    );
    expect(order).toEqual(Array.from({ length: 100 }, (_, i) => i));
  });

  it('scans ranges bytewise as UTF-8: bounds, limit, reverse, prefixes', async () => {
    const { store } = await make();
    const keys = ['a', 'a/1', 'a/2', 'a/3', 'b', 'é', 'z'];
    await store.write(keys.map((key) => ({ key, value: v(key) })));
    expect((await store.scan(prefixRange('a/'))).map((e) => e.key)).toEqual(['a/1', 'a/2', 'a/3']);
    expect((await store.scan(prefixRange('a/', { limit: 2, reverse: true }))).map((e) => e.key)).toEqual(['a/3', 'a/2']);
    expect((await store.scan({ start: 'a/2', end: 'b' })).map((e) => e.key)).toEqual(['a/2', 'a/3']); // end exclusive
    expect((await store.scan({ start: 'b', end: '' })).map((e) => e.key)).toEqual(['b', 'z', 'é']); // 'é' is 0xC3 0xA9 > 'z'
    expect((await store.scan({ start: '', end: '', limit: 1 })).map((e) => e.key)).toEqual(['a']);
  });

  it('keeps values as exact bytes', async () => {
    const { store } = await make();
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await store.write([{ key: 'bin', value: bytes }, { key: 'empty', value: Buffer.alloc(0) }]);
    expect(await store.get('bin')).toEqual(bytes);
    expect((await store.get('empty'))?.length).toBe(0);
  });

  it('keeps every resolved write across close and reopen', async () => {
    const first = await make();
    await first.store.write([{ key: 'kept', value: v('yes') }, { key: 'gone', value: v('x') }]);
    await first.store.write([{ key: 'gone' }]);
    const again = await first.reopen();
    expect((await again.store.get('kept'))?.toString()).toBe('yes');
    expect(await again.store.get('gone')).toBeUndefined();
  });

  it('fails every call after close with STORE_CLOSED', async () => {
    const o = await make();
    await o.store.close();
    await expect(o.store.get('a')).rejects.toMatchObject({ code: 'STORE_CLOSED' });
    await expect(o.store.write([{ key: 'a', value: v('1') }])).rejects.toMatchObject({ code: 'STORE_CLOSED' });
    await expect(o.store.scan({ start: '', end: '' })).rejects.toMatchObject({ code: 'STORE_CLOSED' });
  });
});
