/**
 * The native migration data link (crates/miglink) through the binding, over real sockets
 * without QEMU: a synthetic QEMU 10 stream (main channel + a multifd channel with RAM,
 * SYNC and device-state packets) goes in at the source's unix socket, through the page
 * codec and TCP, and must come out at the destination byte for byte — or, when a batch is
 * corrupted, not at all past it. (Windows, the bandwidth cap and the hello are covered by
 * the crate's own tests: crates/miglink/tests/link.rs.) Also the TypeScript multifd
 * parser the sim driver uses as its QEMU, and the control connection's framing.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NovaError } from '../../src/errors.js';
import { DestLink, SourceLink } from '../../src/native/miglink.js';
import { FLAG_DEVICE_STATE, FLAG_SYNC, MULTIFD_MAGIC, MultifdParser, QEVM_MAGIC } from '../../src/vm/drivers/sim-multifd.js';
import { CHANNEL_WINDOW, FrameReader } from '../../src/migration/wire.js';
import { ByteQueue } from '../../src/util/byte-queue.js';
import { createCa, createCsr, signMember } from '../../src/tls/pki.js';

/** A destination member's certificate and key, and the pin a source checks it by. */
async function memberCert(): Promise<{ tls: { certPem: string; keyPem: string }; certSha256: string }> {
  const { csrPem, keyPem } = await createCsr(2);
  const certPem = await signMember(await createCa('c'), csrPem, 2, ['127.0.0.1']);
  return { tls: { certPem, keyPem }, certSha256: new X509Certificate(certPem).fingerprint256 };
}

const PAGE = 4096;
const ALLOC = 128;
let cleanup: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanup.splice(0).reverse()) c();
});

function initPacket(id: number): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32BE(MULTIFD_MAGIC, 0);
  b.writeUInt32BE(1, 4);
  randomBytes(16).copy(b, 8);
  b.writeUInt8(id, 24);
  return b;
}

/** A QEMU ≥ 9 RAM packet: header with `normal` + `zero` offsets, then the normal pages. */
function ramPacket(num: number, block: string, normal: Array<{ offset: number; page: Buffer }>, zero: number[], flags = 0): Buffer {
  const h = Buffer.alloc(320 + 8 * ALLOC);
  h.writeUInt32BE(MULTIFD_MAGIC, 0);
  h.writeUInt32BE(1, 4);
  h.writeUInt32BE(flags, 8);
  h.writeUInt32BE(flags & FLAG_SYNC ? 0 : ALLOC, 12); // as QEMU 10 does
  h.writeUInt32BE(normal.length, 16);
  h.writeUInt32BE(normal.length * PAGE, 20);
  h.writeBigUInt64BE(BigInt(num), 24);
  h.writeUInt32BE(zero.length, 32);
  h.write(block, 64, 'latin1');
  [...normal.map((n) => n.offset), ...zero].forEach((off, i) => h.writeBigUInt64BE(BigInt(off), 320 + 8 * i));
  return Buffer.concat([h, ...normal.map((n) => n.page)]);
}

function deviceStatePacket(payload: Buffer): Buffer {
  const h = Buffer.alloc(12 + 256 + 8);
  h.writeUInt32BE(MULTIFD_MAGIC, 0);
  h.writeUInt32BE(1, 4);
  h.writeUInt32BE(FLAG_DEVICE_STATE, 8);
  h.write('0000:00:01.0/vfio', 12);
  h.writeUInt32BE(payload.length, 12 + 256 + 4);
  return Buffer.concat([h, payload]);
}

function pageOf(kind: 'half' | 'random' | 'text', seed: number): Buffer {
  if (kind === 'random') return randomBytes(PAGE);
  const p = Buffer.alloc(PAGE);
  if (kind === 'half') randomBytes(PAGE / 2).copy(p);
  else p.write(`page ${seed} `.repeat(400).slice(0, PAGE));
  return p;
}

/** Several rounds over the same pages, some re-dirtied by a few bytes (the delta path). */
function multifdStream(): Buffer {
  const parts = [initPacket(0)];
  const pages = Array.from({ length: 300 }, (_, i) => pageOf((['half', 'random', 'text'] as const)[i % 3]!, i));
  let num = 0;
  for (let round = 0; round < 3; round++) {
    for (let first = 0; first < pages.length; first += 100) {
      const normal = [];
      for (let i = first; i < Math.min(first + 100, pages.length); i++) {
        if (round > 0 && i % 4 !== 0) continue;
        const at = (i * 7 + round) % PAGE;
        if (round > 0) pages[i]![at] = pages[i]![at]! ^ 0x5a;
        normal.push({ offset: i * PAGE, page: Buffer.from(pages[i]!) });
      }
      parts.push(ramPacket(num++, round === 2 ? 'pc.ram' : 'pc.ram', normal, round === 0 ? [400 * PAGE, 401 * PAGE] : []));
    }
    parts.push(ramPacket(num++, '', [], [], FLAG_SYNC));
  }
  parts.push(deviceStatePacket(randomBytes(5000)));
  return Buffer.concat(parts);
}

async function listen(server: Server, path: string): Promise<void> {
  await new Promise<void>((r) => server.listen(path, r));
}

interface Harness {
  source: SourceLink;
  dest: DestLink;
  sourceSock: string;
  /** Bytes the fake destination QEMU received, per connection, in order of connection. */
  received: Buffer[][];
  ended: Promise<void>;
  /** The first failure either end reports. */
  failed: Promise<{ end: 'source' | 'dest'; err: NovaError }>;
}

async function harness(expectConnections: number, corruptPagesFrame?: number): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'nc-link-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  // Fake destination QEMU: records what each connection delivers.
  const received: Buffer[][] = [];
  let endedCount = 0;
  let markEnded!: () => void;
  const ended = new Promise<void>((r) => (markEnded = r));
  const qemu = createServer((s) => {
    const chunks: Buffer[] = [];
    received.push(chunks);
    s.on('data', (c) => chunks.push(c));
    s.on('end', () => ++endedCount === expectConnections && markEnded());
  });
  const qemuSock = join(dir, 'qemu-in.sock');
  await listen(qemu, qemuSock);
  cleanup.push(() => qemu.close());

  let fail!: (f: { end: 'source' | 'dest'; err: NovaError }) => void;
  const failed = new Promise<{ end: 'source' | 'dest'; err: NovaError }>((r) => (fail = r));
  const token = randomBytes(24);
  const { tls, certSha256 } = await memberCert();
  const dest = new DestLink({ bindHost: '127.0.0.1', qemuSocket: qemuSock, token, tls, capacityPages: 4096, shards: 2 }, (err) => fail({ end: 'dest', err }));
  cleanup.push(() => dest.close());
  const sourceSock = join(dir, 'relay.sock');
  const source = new SourceLink(
    { socketPath: sourceSock, host: '127.0.0.1', port: dest.port, certSha256, token, capacityPages: 4096, shards: 2, window: CHANNEL_WINDOW, ...(corruptPagesFrame ? { faults: { corruptPagesFrame } } : {}) },
    (err) => fail({ end: 'source', err }),
  );
  cleanup.push(() => source.close());
  return { source, dest, sourceSock, received, ended, failed };
}

async function sendAsQemu(path: string, bytes: Buffer, chunk = 65536 + 123): Promise<void> {
  const s = connect(path);
  s.on('error', () => undefined); // the link may close on us (failure tests)
  await new Promise<void>((r) => s.once('connect', r));
  for (let i = 0; i < bytes.length; i += chunk) {
    if (!s.write(bytes.subarray(i, i + chunk))) await new Promise((r) => s.once('drain', r));
  }
  s.end();
}

describe('migration data link (native, through the binding)', () => {
  it('re-emits the main and multifd channels byte-exact, compressing the pages', async () => {
    const h = await harness(2);
    const main = Buffer.concat([Buffer.from([0x51, 0x45, 0x56, 0x4d]), randomBytes(100_000)]);
    expect(main.readUInt32BE(0)).toBe(QEVM_MAGIC);
    const mf = multifdStream();
    await sendAsQemu(h.sourceSock, main);
    await new Promise((r) => setTimeout(r, 50)); // connection order = channel order at the fake QEMU
    await sendAsQemu(h.sourceSock, mf, 4000); // small chunks: packets span many reads
    await Promise.race([h.ended, h.failed.then((f) => Promise.reject(f.err))]);
    expect(Buffer.concat(h.received[0]!).equals(main)).toBe(true);
    expect(Buffer.concat(h.received[1]!).equals(mf)).toBe(true);
    const s = h.source.stats();
    expect(s.rawBytes).toBe(main.length + mf.length);
    expect(s.pages).toBe(300 + 2 * 75);
    expect(h.dest.stats().rawBytes).toBe(main.length + mf.length);
    // random main channel (~100 kB) is incompressible; the page stream is not
    expect(s.wireBytes).toBeLessThan(main.length + mf.length * 0.75);
  });

  it('a corrupted page batch is refused with its codec code and nothing from it reaches QEMU', async () => {
    const h = await harness(1, 2);
    const mf = multifdStream();
    void sendAsQemu(h.sourceSock, mf);
    const first = await h.failed;
    expect(first.end).toBe('dest');
    expect(first.err).toBeInstanceOf(NovaError);
    expect(first.err.code, first.err.message).toBe('CODEC_CHECKSUM');
    await new Promise((r) => setTimeout(r, 100));
    const got = Buffer.concat(h.received[0] ?? []);
    // init packet + the first RAM packet only: a strict prefix of the stream
    const firstPacketEnd = 64 + 320 + 8 * ALLOC + 100 * PAGE;
    expect(got.length).toBeLessThanOrEqual(firstPacketEnd);
    expect(mf.subarray(0, got.length).equals(got)).toBe(true);
  });

  it('a destination that cannot be reached is a MIGRATION_TRANSPORT error at start', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nc-link-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as { port: number }).port;
    closed.close();
    const { certSha256 } = await memberCert();
    expect(() => new SourceLink({ socketPath: join(dir, 's.sock'), host: '127.0.0.1', port, certSha256, token: randomBytes(24), capacityPages: 64, shards: 1, window: CHANNEL_WINDOW }, () => undefined))
      .toThrow(expect.objectContaining({ code: 'MIGRATION_TRANSPORT' }));
  });

  it('the multifd parser refuses streams it does not understand', () => {
    const q = new ByteQueue();
    const p = new MultifdParser(new Map());
    q.push(initPacket(0));
    expect(p.next(q)?.kind).toBe('opaque');
    const zlib = ramPacket(0, 'pc.ram', [], [], 1 << 1);
    q.push(zlib);
    expect(() => p.next(q)).toThrow(/multifd-compression=none/);
    const q2 = new ByteQueue();
    const bad = initPacket(0);
    bad.writeUInt32BE(0xdeadbeef, 0);
    q2.push(bad);
    expect(() => new MultifdParser(new Map()).next(q2)).toThrow(/bad multifd magic/);
    const q3 = new ByteQueue();
    const p3 = new MultifdParser(new Map());
    q3.push(initPacket(1));
    p3.next(q3);
    const lying = ramPacket(0, 'pc.ram', [], []);
    lying.writeUInt32BE(ALLOC + 1, 16); // more pages than allocated
    q3.push(lying);
    expect(() => p3.next(q3)).toThrow(/implausible/);
  });

  it('transport frames: a hostile length or type is a protocol error, split frames reassemble', () => {
    const r = new FrameReader();
    const frame = Buffer.from([3, 0, 1, 0, 0, 0, 3, 9, 8, 7]);
    expect(r.push(frame.subarray(0, 5))).toEqual([]);
    expect(r.push(frame.subarray(5))).toEqual([{ type: 3, channel: 1, payload: Buffer.from([9, 8, 7]) }]);
    expect(() => new FrameReader().push(Buffer.from([9, 0, 0, 0, 0, 0, 0]))).toThrow(/unknown transport frame type/);
    expect(() => new FrameReader().push(Buffer.from([3, 0, 0, 0xff, 0xff, 0xff, 0xff]))).toThrow(/exceeds/);
  });
});
