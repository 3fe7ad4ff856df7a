/**
 * The migration relays end to end over real sockets, without QEMU: a synthetic QEMU 10
 * stream (main channel + a multifd channel with RAM, SYNC and device-state packets) goes
 * through the source relay, the page codec and the transport, and must come out of the
 * destination relay byte for byte — or, when a frame is corrupted, not at all past it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PageDecoder, PageEncoder } from '../../src/native/memdelta.js';
import { DestRelay } from '../../src/migration/dest-relay.js';
import { SourceRelay } from '../../src/migration/source-relay.js';
import { FLAG_DEVICE_STATE, FLAG_SYNC, MULTIFD_MAGIC, MultifdParser, QEVM_MAGIC } from '../../src/migration/multifd.js';
import { ByteQueue, CHANNEL_WINDOW, FrameReader, FrameType, windowFrame } from '../../src/migration/wire.js';

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
  const pages = Array.from({ length: 300 }, (_, i) => pageOf((['half', 'random', 'text'] as const)[i % 3], i));
  let num = 0;
  for (let round = 0; round < 3; round++) {
    for (let first = 0; first < pages.length; first += 100) {
      const normal = [];
      for (let i = first; i < Math.min(first + 100, pages.length); i++) {
        if (round > 0 && i % 4 !== 0) continue;
        if (round > 0) pages[i]![(i * 7 + round) % PAGE] ^= 0x5a;
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
  relay: SourceRelay;
  sourceSock: string;
  /** Bytes the fake destination QEMU received, per connection, in order of connection. */
  received: Buffer[][];
  ended: Promise<void>;
  destError: Promise<Error>;
  dest: DestRelay;
}

async function harness(expectConnections: number, corruptPagesFrame?: number, qemuPaused = false): Promise<Harness & { resumeQemu: () => void }> {
  const dir = mkdtempSync(join(tmpdir(), 'nc-relay-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  // Fake destination QEMU: records what each connection delivers.
  const received: Buffer[][] = [];
  let endedCount = 0;
  let markEnded!: () => void;
  const ended = new Promise<void>((r) => (markEnded = r));
  const accepted: Socket[] = [];
  const qemu = createServer((s) => {
    accepted.push(s);
    if (qemuPaused) s.pause();
    const chunks: Buffer[] = [];
    received.push(chunks);
    s.on('data', (c) => chunks.push(c));
    s.on('end', () => ++endedCount === expectConnections && markEnded());
  });
  const qemuSock = join(dir, 'qemu-in.sock');
  await listen(qemu, qemuSock);
  cleanup.push(() => qemu.close());

  // Transport: a real TCP connection on loopback.
  let destSide!: Socket;
  const tserver = createServer((s) => (destSide = s));
  await new Promise<void>((r) => tserver.listen(0, '127.0.0.1', r));
  cleanup.push(() => tserver.close());
  const srcSide = connect((tserver.address() as { port: number }).port, '127.0.0.1');
  await new Promise<void>((r) => srcSide.once('connect', r));
  while (!destSide) await new Promise((r) => setTimeout(r, 5));
  cleanup.push(() => (srcSide.destroy(), destSide.destroy()));

  let rejectDest!: (e: Error) => void;
  const destError = new Promise<Error>((r) => (rejectDest = r));
  const dest = new DestRelay({
    qemuSocket: qemuSock, decoder: new PageDecoder(4096, 2), pauseTransport: (p) => (p ? destSide.pause() : destSide.resume()), onError: rejectDest,
    grant: (channel, bytes) => destSide.write(windowFrame(channel, bytes)),
  });
  const reader = new FrameReader();
  destSide.on('data', (c: Buffer) => {
    try {
      for (const f of reader.push(c)) dest.apply(f);
    } catch (err) {
      dest.close();
      rejectDest(err as Error);
    }
  });

  const sourceSock = join(dir, 'relay.sock');
  const relay = new SourceRelay({ socketPath: sourceSock, transport: srcSide, encoder: new PageEncoder(4096, 2), onError: (e) => rejectDest(e), ...(corruptPagesFrame ? { corruptPagesFrame } : {}) });
  await relay.listen();
  const back = new FrameReader();
  srcSide.on('data', (c: Buffer) => {
    for (const f of back.push(c)) if (f.type === FrameType.Window) relay.grant(f.channel, f.payload.readUInt32BE(0));
  });
  cleanup.push(() => relay.close());
  return { relay, sourceSock, received, ended, destError, dest, resumeQemu: () => accepted.forEach((s) => s.resume()) };
}

async function sendAsQemu(path: string, bytes: Buffer, chunk = 65536 + 123): Promise<void> {
  const s = connect(path);
  s.on('error', () => undefined); // the relay may close on us (failure tests)
  await new Promise<void>((r) => s.once('connect', r));
  for (let i = 0; i < bytes.length; i += chunk) {
    if (!s.write(bytes.subarray(i, i + chunk))) await new Promise((r) => s.once('drain', r));
  }
  s.end();
}

describe('migration relays', () => {
  it('re-emits the main and multifd channels byte-exact, compressing the pages', async () => {
    const h = await harness(2);
    const main = Buffer.concat([Buffer.from([0x51, 0x45, 0x56, 0x4d]), randomBytes(100_000)]);
    expect(main.readUInt32BE(0)).toBe(QEVM_MAGIC);
    const mf = multifdStream();
    await sendAsQemu(h.sourceSock, main);
    await sendAsQemu(h.sourceSock, mf, 4000); // small chunks: packets span many reads
    await Promise.race([h.ended, h.destError.then((e) => Promise.reject(e))]);
    expect(Buffer.concat(h.received[0]!).equals(main)).toBe(true);
    expect(Buffer.concat(h.received[1]!).equals(mf)).toBe(true);
    expect(h.relay.stats.rawBytes).toBe(main.length + mf.length);
    expect(h.relay.stats.pages).toBe(300 + 2 * 75);
    // random main channel (~100 kB) is incompressible; the page stream is not
    expect(h.relay.stats.wireBytes).toBeLessThan(main.length + mf.length * 0.75);
  });

  it('per-channel windows bound what the relays hold when the destination QEMU stalls', async () => {
    const h = await harness(1, undefined, true);
    const big = Buffer.concat([Buffer.from([0x51, 0x45, 0x56, 0x4d]), randomBytes(4 * CHANNEL_WINDOW)]);
    void sendAsQemu(h.sourceSock, big);
    await new Promise((r) => setTimeout(r, 500));
    // Read from QEMU: at most the window plus what the destination's socket buffers hold.
    expect(h.relay.stats.rawBytes).toBeGreaterThan(CHANNEL_WINDOW / 2);
    expect(h.relay.stats.rawBytes).toBeLessThan(CHANNEL_WINDOW + (2 << 20));
    h.resumeQemu();
    await Promise.race([h.ended, h.destError.then((e) => Promise.reject(e))]);
    expect(Buffer.concat(h.received[0]!).equals(big)).toBe(true);
  });

  it('a corrupted page frame is refused and nothing from it reaches QEMU', async () => {
    const h = await harness(1, 2);
    const mf = multifdStream();
    void sendAsQemu(h.sourceSock, mf); // the relay stops reading once the destination refuses
    const err = await h.destError;
    expect((err as Error & { code: string }).code).toBe('CODEC_CHECKSUM');
    await new Promise((r) => setTimeout(r, 100));
    const got = Buffer.concat(h.received[0] ?? []);
    // init packet + the first RAM packet only: a strict prefix of the stream
    const firstPacketEnd = 64 + 320 + 8 * ALLOC + 100 * PAGE;
    expect(got.length).toBeLessThanOrEqual(firstPacketEnd);
    expect(mf.subarray(0, got.length).equals(got)).toBe(true);
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
