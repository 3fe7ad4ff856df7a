/** The storage service in-process: crash leftovers on open, upload progress events, POOL_FULL for clones, file modes. */
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { NovaEvent } from '../../src/events/types.js';
import { PoolDef } from '../../src/storage/model.js';
import { openTestStorage } from '../helpers/storage.js';
import { EventLog } from '../../src/events/log.js';
import { RocksStore } from '../../src/native/rocks-store.js';
import { StorageService } from '../../src/storage/service.js';
import { HostPathEntry } from '../../src/storage/model.js';
import { pino } from 'pino';

const dirs: string[] = [];
const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function open(pools: PoolDef[] = [], dataDir = mkdtempSync(join(tmpdir(), 'novacron-storage-'))) {
  dirs.push(dataDir);
  const s = await openTestStorage(dataDir, pools);
  closers.push(s.close);
  return { ...s, dataDir };
}

describe('storage service', () => {
  it('on open, drops staging files a crash left and metadata whose volume was never made', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'novacron-storage-'));
    const local = join(dataDir, 'pools', 'local');
    mkdirSync(join(local, '.novacron', 'volumes'), { recursive: true });
    writeFileSync(join(local, '.stage-half-upload-0a0b0c0d'), 'partial');
    writeFileSync(join(local, '.novacron', 'volumes', '.stage-meta.json-01020304'), '{');
    const now = new Date().toISOString();
    writeFileSync(join(local, '.novacron', 'volumes', 'never-made.json'), JSON.stringify({ name: 'never-made', format: 'raw', content: 'disk', sizeBytes: 1, tenant: 'default', createdAt: now, updatedAt: now }));
    const { storage } = await open([], dataDir);
    expect(readdirSync(local).filter((f) => f.startsWith('.stage-'))).toEqual([]);
    expect(readdirSync(join(local, '.novacron', 'volumes'))).toEqual([]);
    expect(storage.find('local/never-made')).toBeUndefined();
  });

  it('volumes and their metadata are readable by root only', async () => {
    const { storage, dataDir } = await open();
    await storage.create('local', { name: 'q', sizeMiB: 1, format: 'qcow2', content: 'disk', tenant: 'default' });
    await storage.create('local', { name: 'r', sizeMiB: 1, format: 'raw', content: 'disk', tenant: 'default' });
    const local = join(dataDir, 'pools', 'local');
    for (const f of ['q', 'r', '.novacron/volumes/q.json']) expect((statSync(join(local, f)).mode & 0o777).toString(8), f).toBe('600');
    expect((statSync(join(local, '.novacron')).mode & 0o777).toString(8)).toBe('700');
  });

  it('an upload reports volume.progress events at least once a second while it streams', async () => {
    const { storage, events } = await open();
    const seen: NovaEvent[] = [];
    events.subscribe({ types: ['volume.progress'] }, (e) => seen.push(e));
    async function* slow() {
      for (let i = 0; i < 5; i++) {
        yield Buffer.alloc(256 << 10, i);
        await new Promise((r) => setTimeout(r, 600));
      }
    }
    const v = await storage.upload('local', 'slow', { format: 'raw', content: 'disk', tenant: 'default' }, slow(), 5 * (256 << 10));
    expect(v.sizeBytes).toBe(5 * (256 << 10));
    expect(seen.length).toBeGreaterThanOrEqual(2);
    expect(seen[0]!.data).toMatchObject({ pool: 'local', volume: 'slow', action: 'upload', totalBytes: 5 * (256 << 10) });
    expect(seen.map((e) => e.data.bytes as number)).toEqual([...seen.map((e) => e.data.bytes as number)].sort((a, b) => a - b));
  });

  it('a full copy that does not fit is POOL_FULL and leaves nothing in the target pool', async () => {
    const { storage, dataDir } = await open([PoolDef.parse({ name: 'tiny', path: 'tiny', capacityGiB: 4 / 1024 })]);
    const data = Buffer.alloc(8 << 20, 9);
    async function* body() {
      yield data;
    }
    await storage.upload('local', 'big', { format: 'raw', content: 'disk', tenant: 'default' }, body(), data.length);
    await expect(storage.clone('local/big', { name: 'copy', pool: 'tiny', linked: false })).rejects.toMatchObject({ code: 'POOL_FULL' });
    expect(storage.find('tiny/copy')).toBeUndefined();
    expect(existsSync(join(dataDir, 'tiny', 'copy'))).toBe(false);
  });

  it('a listed host path is a volume of the host pool only while it resolves to what it did at start', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'novacron-storage-'));
    dirs.push(dataDir);
    writeFileSync(join(dataDir, 'disk-a.raw'), Buffer.alloc(1 << 20));
    writeFileSync(join(dataDir, 'disk-b.raw'), Buffer.alloc(1 << 20));
    symlinkSync(join(dataDir, 'disk-a.raw'), join(dataDir, 'current'));
    const store = RocksStore.open(join(dataDir, 'store'));
    closers.push(() => store.close());
    const events = await EventLog.open(store);
    const hostPaths = [HostPathEntry.parse({ path: join(dataDir, 'current'), name: 'current' })];
    const storage = await StorageService.open({ dataDir, pools: [], events, log: pino({ level: 'silent' }), hostPaths });
    expect(storage.open('host/current', { tenant: 'default', content: ['disk'], write: true }).target.path).toBe(join(dataDir, 'disk-a.raw'));
    unlinkSync(join(dataDir, 'current'));
    symlinkSync(join(dataDir, 'disk-b.raw'), join(dataDir, 'current'));
    expect(() => storage.open('host/current', { tenant: 'default', content: ['disk'], write: true })).toThrow(expect.objectContaining({ code: 'VOLUME_PATH_REFUSED' }));
    expect(HostPathEntry.parse('/dev/vg0/data')).toMatchObject({ name: 'dev-vg0-data', format: 'raw', tenant: 'default' });
    expect(HostPathEntry.safeParse('relative/path').success).toBe(false);
  });
});
