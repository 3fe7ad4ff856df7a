#!/usr/bin/env node
// Baseline for bench/api: a plain node:http server serving the same routes from the
// same store through the same VmService (and its JSON cache) as the daemon. Only the
// HTTP stack differs, so the ratio measures what uWS + NovaCron's front end buy.
import { createServer } from 'node:http';
import { join, resolve } from 'node:path';
import { pino } from 'pino';
import { RocksStore } from '../../dist/native/rocks-store.js';
import { EventLog } from '../../dist/events/log.js';
import { VmService } from '../../dist/vm/service.js';
import { SimDriver } from '../../dist/vm/drivers/sim.js';
import { StorageService } from '../../dist/storage/service.js';
import { VmStorage } from '../../dist/vm/media.js';

const dataDir = resolve(process.argv[2] ?? './data');
const store = RocksStore.open(join(dataDir, 'store'));
const events = await EventLog.open(store);
const log = pino({ level: 'warn' });
// The same storage service the daemon has over the same data directory (the seeded VMs' volumes).
const storage = new VmStorage(await StorageService.open({ dataDir, pools: [], events, log }));
const vms = await VmService.open({ store, events, driver: new SimDriver(), storage, nodeId: 'baseline', log, dataDir });

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  try {
    if (url.pathname === '/v1/vms') {
      const limit = Number(url.searchParams.get('limit') ?? 100);
      const cursor = url.searchParams.get('cursor') ?? undefined;
      const page = vms.list({ limit, ...(cursor ? { cursor } : {}) });
      let body = `{"items":[${page.items.map((v) => vms.getJson(v.id)).join(',')}]`;
      if (page.nextCursor) body += `,"nextCursor":${JSON.stringify(page.nextCursor)}`;
      body += `,"total":${page.total}}`;
      res.writeHead(200, { 'content-type': 'application/json' }).end(body);
    } else if (url.pathname.startsWith('/v1/vms/')) {
      res.writeHead(200, { 'content-type': 'application/json' }).end(vms.getJson(decodeURIComponent(url.pathname.slice(8))));
    } else {
      res.writeHead(404).end();
    }
  } catch (e) {
    res.writeHead(e.status ?? 500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: e.code ?? 'INTERNAL', message: e.message } }));
  }
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => console.error(`baseline listening on http://127.0.0.1:${server.address().port}`));
process.on('SIGTERM', () => {
  server.close(async () => {
    await store.close();
    process.exit(0);
  });
  server.closeAllConnections();
});
