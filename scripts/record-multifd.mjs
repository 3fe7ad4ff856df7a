#!/usr/bin/env node
// Records QEMU's own multifd migration stream into testdata/qemu-multifd/, for the
// parsers on both sides (src/vm/drivers/sim-multifd.ts and crates/miglink) to decode.
//
//   npm run build && node scripts/record-multifd.mjs
//
// Boots the test guest in a bare QEMU (the driver's command line), migrates it with two
// multifd channels and no QEMU compression to a unix socket, and keeps each multifd
// channel's init packet and first packets (about 1 MiB a channel). Guest page contents are
// replaced by zeros so the fixture stays small in git; the packet headers, offsets, flags
// and layout are QEMU's, untouched. expected.json lists what the TS parser decoded; the
// Rust test must decode the same.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { root } from './lib/env.mjs';

const { qemuArgs } = await import(join(root, 'dist/vm/drivers/qemu.js'));
const { CreateVmRequest } = await import(join(root, 'dist/vm/spec.js'));
const { QmpClient } = await import(join(root, 'dist/vm/qemu/qmp.js'));
const { MultifdParser, MULTIFD_MAGIC } = await import(join(root, 'dist/vm/drivers/sim-multifd.js'));
const { ByteQueue } = await import(join(root, 'dist/util/byte-queue.js'));

const CHANNELS = 2;
/** Bytes of a channel kept at most (then cut back to the last whole packet). */
const KEEP = 1200 * 1024;
const out = join(root, 'testdata', 'qemu-multifd');

const guest = execFileSync('bash', [join(root, 'scripts', 'build-test-guest.sh')], { encoding: 'utf8' }).trim().split('\n').at(-1);
const work = mkdtempSync(join(tmpdir(), 'novacron-record-'));
const { name: _, ...spec } = CreateVmRequest.parse({ name: 'record', vcpus: 1, memoryMiB: 256, boot: { type: 'kernel', kernel: join(guest, 'vmlinuz'), initrd: join(guest, 'initrd.img'), cmdline: 'console=ttyS0 quiet panic=-1' } });
const vm = { id: 'vm-record', name: 'record', spec };
const args = qemuArgs(vm, { accel: 'tcg', dir: work, diskFile: () => '', hugepagesPath: '/dev/hugepages' }).filter((a) => a !== '-S');
const qemu = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
try {
  for (let i = 0; i < 600 && !/^HB 3 /m.test(existsSync(join(work, 'serial.log')) ? readFileSync(join(work, 'serial.log'), 'latin1') : ''); i++) await sleep(100);
  const qmp = await QmpClient.connect(join(work, 'qmp.sock'), 10_000);
  const version = await qmp.execute('query-version');

  // The recorder: every connection QEMU opens, kept up to KEEP bytes, the rest drained.
  const conns = [];
  const sockPath = join(work, 'migrate.sock');
  const server = createServer((s) => {
    const c = { chunks: [], size: 0 };
    conns.push(c);
    s.on('data', (d) => {
      if (c.size < KEEP) c.chunks.push(Buffer.from(d.subarray(0, KEEP - c.size)));
      c.size += d.length;
    });
  }).listen(sockPath);

  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: true }] });
  await qmp.execute('migrate-set-parameters', { 'multifd-channels': CHANNELS, 'multifd-compression': 'none' });
  await qmp.execute('migrate', { uri: `unix:${sockPath}` });
  let status;
  for (let i = 0; i < 1200; i++) {
    status = (await qmp.execute('query-migrate')).status;
    if (status === 'completed' || status === 'failed') break;
    await sleep(50);
  }
  if (status !== 'completed') throw new Error(`QEMU's migration ended ${status}`);
  server.close();

  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const blocks = new Map();
  const expected = { qemu: `${version.qemu.major}.${version.qemu.minor}.${version.qemu.micro}`, pageSize: 4096, channels: [] };
  let n = 0;
  for (const c of conns) {
    const bytes = Buffer.concat(c.chunks);
    if (bytes.readUInt32BE(0) !== MULTIFD_MAGIC) continue; // the main channel
    const q = new ByteQueue();
    q.push(bytes);
    const parser = new MultifdParser(blocks);
    const kept = [];
    const items = [];
    for (let item; (item = parser.next(q)); ) {
      if (item.kind === 'opaque') {
        kept.push(item.bytes);
        items.push({ kind: 'opaque', bytes: item.bytes.length });
      } else {
        kept.push(item.header, Buffer.alloc(item.pages.length)); // pages zeroed
        items.push({ kind: 'ram', flags: item.header.readUInt32BE(8), normalPages: item.indices.length, zeroPages: item.header.readUInt32BE(32), firstIndices: [...item.indices.slice(0, 3)].map(String) });
      }
    }
    const file = `multifd-${n++}.bin`;
    writeFileSync(join(out, file), Buffer.concat(kept));
    expected.channels.push({ file, items });
  }
  writeFileSync(join(out, 'expected.json'), JSON.stringify(expected, null, 1) + '\n');
  console.log(`recorded ${expected.channels.length} multifd channels of QEMU ${expected.qemu} into ${out}`);
  qmp.close();
} finally {
  qemu.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
}
