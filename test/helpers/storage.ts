/** An in-process storage service over a test data directory (for driver and service tests). */
import { createReadStream, statSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { EventLog } from '../../src/events/log.js';
import { RocksStore } from '../../src/native/rocks-store.js';
import { StorageService } from '../../src/storage/service.js';
import type { PoolDef } from '../../src/storage/model.js';
import { VmStorage } from '../../src/vm/media.js';

export async function openTestStorage(dataDir: string, pools: PoolDef[] = []) {
  const store = RocksStore.open(join(dataDir, 'storage-store'));
  const events = await EventLog.open(store);
  const storage = await StorageService.open({ dataDir, pools, events, log: pino({ level: 'silent' }) });
  return { storage, vmStorage: new VmStorage(storage), events, close: () => store.close() };
}

/** Uploads a host file as a volume, as the API's upload would. */
export async function uploadFile(storage: StorageService, pool: string, name: string, file: string, q: { format?: 'raw' | 'qcow2'; content?: 'disk' | 'iso' | 'kernel' } = {}) {
  const body = createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>;
  return storage.upload(pool, name, { format: q.format ?? 'raw', content: q.content ?? 'disk', tenant: 'default' }, body, statSync(file).size);
}
