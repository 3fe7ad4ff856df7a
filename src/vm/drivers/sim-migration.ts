/**
 * Live migration for simulated VMs: the guest's RAM is real memory in this process,
 * dirtied at a configurable rate with an exact dirty bitmap, and "QEMU" is played by
 * this module — it speaks QEMU 10's multifd wire format to NovaCron's relay, so a sim
 * migration exercises the same relay, codec and transport as a real one. The
 * destination rebuilds the memory from the stream and checks it against the source's
 * checksum (sent as "device state") before the VM runs there.
 *
 * Memory per VM is min(memoryMiB, `memoryCapMiB`) so thousands of sim VMs stay cheap;
 * it is allocated on first use (a migration or a sample).
 */
import { createHash, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ByteQueue } from '../../util/byte-queue.js';
import { isZeroPage } from '../../native/memdelta.js';
import { FLAG_SYNC, MULTIFD_MAGIC, MULTIFD_PACKET_PAYLOAD, MultifdParser, QEVM_MAGIC, RAM_PACKET_FIXED_LEN } from './sim-multifd.js';
import { DriverError, type DirectIncoming, type LiveMigration, type MigrationProgress, type OutgoingParams, type StreamListener } from '../driver.js';
import type { VmRecord } from '../record.js';

export const SIM_DIRTY_LABEL = 'sim.novacron.io/dirty-mibps';
const PAGE = 4096;
const SLOTS = MULTIFD_PACKET_PAYLOAD / PAGE;
const RAMBLOCK = 'pc.ram';

/** A simulated guest's RAM with an exact dirty bitmap and a steady dirtier. */
export class SimMemory {
  readonly bytes: Buffer;
  readonly pages: number;
  dirty: Uint8Array;
  #version: Uint32Array;
  /** Dirty-rate samples in progress: each marks the pages written while it runs. */
  #samples = new Set<Uint8Array>();
  #timer?: NodeJS.Timeout;
  #cursor = 0;

  /** Wraps `bytes` as guest RAM (as it arrived on a destination). */
  constructor(bytes: Buffer, readonly dirtyMiBps: number) {
    this.bytes = bytes;
    this.pages = bytes.length / PAGE;
    this.dirty = new Uint8Array(this.pages);
    this.#version = new Uint32Array(this.pages);
  }

  /** Fresh RAM with a populated working set: every other page holds data (half random, half zero). */
  static populated(mib: number, dirtyMiBps: number): SimMemory {
    const m = new SimMemory(Buffer.alloc(mib << 20), dirtyMiBps);
    for (let p = 0; p < m.pages; p += 2) m.#write(p);
    return m;
  }

  /** Starts dirtying `dirtyMiBps` MiB/s, 100 times a second. */
  run(): void {
    if (this.#timer || this.dirtyMiBps <= 0) return;
    const perTick = Math.max(1, Math.round((this.dirtyMiBps * 256) / 100));
    this.#timer = setInterval(() => {
      for (let i = 0; i < perTick; i++) this.#write((this.#cursor = (Math.imul(this.#cursor, 1103515245) + 12345) >>> 0) % this.pages);
    }, 10);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Dirty pages since the last call, clearing the bitmap (a QEMU dirty sync). */
  sync(): number[] {
    const out: number[] = [];
    for (let p = 0; p < this.pages; p++) {
      if (this.dirty[p]) {
        out.push(p);
        this.dirty[p] = 0;
      }
    }
    return out;
  }

  markAllDirty(): void {
    this.dirty.fill(1);
  }

  /**
   * Distinct pages dirtied over `ms`, as bytes per second: measured, as QEMU's
   * calc-dirty-rate does, not read back from the rate the dirtier was given.
   */
  async measureDirtyRate(ms: number): Promise<number> {
    const sample = new Uint8Array(this.pages);
    this.#samples.add(sample);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, ms));
    const secs = (performance.now() - t0) / 1000;
    this.#samples.delete(sample);
    let pages = 0;
    for (const b of sample) pages += b;
    return (pages * PAGE) / secs;
  }

  checksum(): string {
    return createHash('sha256').update(this.bytes).digest('hex');
  }

  #write(p: number): void {
    const v = ++this.#version[p]!;
    const page = this.bytes.subarray(p * PAGE, (p + 1) * PAGE);
    randomBytes(PAGE / 2).copy(page);
    page.fill(0, PAGE / 2);
    page.writeUInt32LE(v, PAGE - 4);
    this.dirty[p] = 1;
    for (const s of this.#samples) s[p] = 1;
  }
}

interface Outgoing {
  status: MigrationProgress['status'];
  downtime?: number;
  transferred: number;
  remaining: number;
  rounds: number;
  /** Switch over once the rest fits in this many ms at the rate so far (or the one given). */
  downtimeLimitMs: number;
  bytesPerSec?: number;
  stoppedAt?: number;
  error?: string;
  sockets: Socket[];
  cancelled: boolean;
}

interface Incoming {
  server: Server;
  memory: Buffer;
  done: Promise<number>;
}

export interface SimMigrationHost {
  /** The running VM's RAM (allocated on first use), or undefined if it is not running. */
  memory(vmId: string): SimMemory | undefined;
  /** Creates the VM's running instance with this memory (destination). */
  adopt(vm: VmRecord, memory: SimMemory): void;
  /** Pauses/continues the guest (switchover / resume after failure). */
  setRunning(vmId: string, running: boolean): void;
  runDir: string;
  memoryCapMiB: number;
}

export class SimLiveMigration implements LiveMigration {
  #host: SimMigrationHost;
  #out = new Map<string, Outgoing>();
  #in = new Map<string, Incoming>();

  constructor(host: SimMigrationHost) {
    this.#host = host;
  }

  async unsupported(): Promise<string | undefined> {
    return undefined;
  }

  async prepareIncoming(vm: VmRecord, channels: number, direct?: DirectIncoming): Promise<{ listen: StreamListener; runtime: Record<string, unknown> }> {
    if (direct) throw new DriverError('migrate-incoming', 'sim: streams go through the relay only');
    const mib = Math.min(vm.spec.memoryMiB, this.#host.memoryCapMiB);
    const socketPath = join(this.#host.runDir, `sim-${vm.id}-in.sock`);
    rmSync(socketPath, { force: true });
    const memory = Buffer.alloc(mib << 20);
    const server = createServer();
    const done = new Promise<number>((resolve, reject) => {
      let open = 0;
      let ended = 0;
      let deviceState: Buffer | undefined;
      const blocks = new Map<string, bigint>();
      // Like QEMU's receiver, channels meet at every sync packet: a channel at its Nth sync
      // applies nothing after it until every channel has reached its Nth sync, so a page
      // re-sent in a later round on one channel is never overwritten by its older copy
      // still travelling on another.
      const lanes: Array<{ items: Array<{ header: Buffer; pages: Buffer }>; passed: number; arrived: number }> = [];
      const pump = () => {
        for (let moved = true; moved; ) {
          moved = false;
          for (const l of lanes) {
            while (l.items.length > 0) {
              const it = l.items[0]!;
              if (it.header.readUInt32BE(8) & FLAG_SYNC) {
                l.arrived = l.passed + 1;
                if (lanes.length < channels || lanes.some((o) => o.arrived < l.arrived)) break; // wait for the others
                l.passed = l.arrived;
              } else {
                applyPacket(memory, it.header, it.pages);
              }
              l.items.shift();
              moved = true;
            }
          }
        }
      };
      server.on('connection', (s) => {
        open++;
        const q = new ByteQueue();
        let parser: MultifdParser | undefined;
        let lane: (typeof lanes)[number] | undefined;
        let main = false;
        const mainChunks: Buffer[] = [];
        s.on('data', (c: Buffer) => {
          try {
            if (!main && !parser) {
              q.push(c);
              if (q.length < 4) return;
              if (q.peekU32(0) === QEVM_MAGIC) main = true;
              else {
                parser = new MultifdParser(blocks);
                lanes.push((lane = { items: [], passed: 0, arrived: 0 }));
              }
              if (main) return void mainChunks.push(q.take(q.length));
            } else if (main) return void mainChunks.push(c);
            else q.push(c);
            for (let item = parser!.next(q); item; item = parser!.next(q)) {
              if (item.kind !== 'ram') continue;
              lane!.items.push({ header: item.header, pages: item.pages });
            }
            pump();
          } catch (err) {
            s.destroy();
            reject(err);
          }
        });
        s.on('end', () => {
          try {
            pump();
            if (main) deviceState = Buffer.concat(mainChunks);
            if (++ended < open || ended < channels + 1 || !deviceState) return;
            server.close();
            // Main channel: "QEVM", then our "device state": "DEV0" + JSON.
            if (deviceState.toString('latin1', 4, 8) !== 'DEV0') throw new DriverError('migrate-incoming', 'sim: main channel carries no device state');
            const state = JSON.parse(deviceState.subarray(8).toString()) as { checksum: string; dirtyMiBps: number };
            const got = createHash('sha256').update(memory).digest('hex');
            if (got !== state.checksum) throw new DriverError('migrate-incoming', `sim: memory checksum mismatch after migration (${got.slice(0, 12)} ≠ ${state.checksum.slice(0, 12)})`);
            this.#host.adopt(vm, new SimMemory(memory, state.dirtyMiBps));
            resolve(Date.now());
          } catch (err) {
            reject(err instanceof DriverError ? err : new DriverError('migrate-incoming', `sim: ${(err as Error).message}`));
          }
        });
        s.on('error', (err) => reject(new DriverError('migrate-incoming', `sim: ${err.message}`)));
      });
    });
    done.catch(() => undefined);
    await new Promise<void>((r) => server.listen(socketPath, r));
    this.#in.set(vm.id, { server, memory, done });
    return { listen: { kind: 'relay', socketPath }, runtime: { accelerator: 'sim' } };
  }

  async waitIncoming(vmId: string, timeoutMs: number): Promise<{ resumedAt: number }> {
    const inc = this.#in.get(vmId);
    if (!inc) throw new DriverError('migrate-incoming', `sim: no incoming migration for ${vmId}`);
    try {
      const at = await Promise.race([inc.done, sleep(timeoutMs).then(() => Promise.reject(new DriverError('migrate-incoming', 'sim: timed out')))]);
      return { resumedAt: at };
    } finally {
      inc.server.close();
      this.#in.delete(vmId);
    }
  }

  async continueSwitchover(): Promise<void> {
    // The sim never pauses before switchover (it has no disks to mirror).
  }

  async tuneSwitchover(vmId: string, s: { downtimeLimitMs: number; bytesPerSec?: number }): Promise<void> {
    const out = this.#out.get(vmId);
    if (!out) return;
    out.downtimeLimitMs = s.downtimeLimitMs;
    if (s.bytesPerSec) out.bytesPerSec = s.bytesPerSec;
  }

  async startOutgoing(vmId: string, p: OutgoingParams): Promise<void> {
    const mem = this.#host.memory(vmId);
    if (!mem) throw new DriverError('migrate', `sim: VM ${vmId} is not running`);
    const out: Outgoing = { status: 'setup', transferred: 0, remaining: mem.pages * PAGE, rounds: 0, downtimeLimitMs: p.downtimeLimitMs, sockets: [], cancelled: false };
    this.#out.set(vmId, out);
    const to = p.to;
    if (to.kind !== 'relay') throw new DriverError('migrate', 'sim: streams go through the relay only');
    const open = async () => {
      const s = connect(to.socketPath);
      await new Promise<void>((resolve, reject) => {
        s.once('connect', resolve);
        s.once('error', reject);
      });
      s.on('error', (err) => (out.error ??= err.message));
      out.sockets.push(s);
      return s;
    };
    const main = await open();
    const head = Buffer.alloc(4);
    head.writeUInt32BE(QEVM_MAGIC);
    main.write(head);
    const lanes: Socket[] = [];
    for (let i = 0; i < p.channels; i++) {
      const s = await open();
      const init = Buffer.alloc(64);
      init.writeUInt32BE(MULTIFD_MAGIC, 0);
      init.writeUInt32BE(1, 4);
      init.writeUInt8(i, 24);
      s.write(init);
      lanes.push(s);
    }
    void this.#stream(vmId, mem, out, main, lanes, p).catch((err: Error) => {
      out.status = out.cancelled ? 'cancelled' : 'failed';
      out.error ??= err.message;
      for (const s of out.sockets) s.destroy();
      mem.run();
      this.#host.setRunning(vmId, true);
    });
  }

  async #stream(vmId: string, mem: SimMemory, out: Outgoing, main: Socket, lanes: Socket[], p: OutgoingParams): Promise<void> {
    out.status = 'precopy';
    mem.markAllDirty();
    let packetNum = 0n;
    let lane = 0;
    const send = async (pages: number[]) => {
      for (let i = 0; i < pages.length; i += SLOTS) {
        const batch = pages.slice(i, i + SLOTS);
        const normal = batch.filter((pg) => !isZeroPage(mem.bytes, pg));
        const zero = batch.filter((pg) => isZeroPage(mem.bytes, pg));
        const s = lanes[lane++ % lanes.length]!;
        const pkt = ramPacket(packetNum++, normal, zero, 0, mem.bytes);
        out.transferred += pkt.length;
        if (!s.write(pkt)) await new Promise((r) => s.once('drain', r));
        if (out.cancelled || out.error) throw new Error(out.error ?? 'cancelled');
      }
      for (const s of lanes) s.write(ramPacket(packetNum++, [], [], FLAG_SYNC, mem.bytes));
    };
    const t0 = performance.now();
    for (;;) {
      const dirty = mem.sync();
      out.rounds++;
      out.remaining = dirty.length * PAGE;
      await send(dirty);
      const rate = out.bytesPerSec ? out.bytesPerSec / 1000 : out.transferred / Math.max(1, performance.now() - t0); // bytes per ms
      const next = mem.dirty.reduce((n, d) => n + d, 0) * PAGE;
      out.remaining = next;
      // Like QEMU: switch over once the rest fits in the downtime limit.
      if (next / Math.max(rate, 1) <= out.downtimeLimitMs || out.rounds >= 30) break;
    }
    // Switchover: stop the guest, send the rest and the "device state".
    out.status = 'switchover';
    mem.stop();
    this.#host.setRunning(vmId, false);
    out.stoppedAt = Date.now();
    out.rounds++; // the final sync counts, as in QEMU's dirty-sync-count
    await send(mem.sync());
    const state = Buffer.from(JSON.stringify({ checksum: mem.checksum(), dirtyMiBps: mem.dirtyMiBps }));
    main.write(Buffer.concat([Buffer.from('DEV0'), state]));
    await Promise.all(out.sockets.map((s) => new Promise<void>((r) => s.end(r))));
    out.remaining = 0;
    out.status = 'completed';
    out.downtime = Date.now() - out.stoppedAt;
  }

  async progress(vmId: string): Promise<MigrationProgress> {
    const out = this.#out.get(vmId);
    if (!out) return { status: 'none', transferredBytes: 0, remainingBytes: 0, totalBytes: 0, dirtyBytesPerSec: 0, rounds: 0, throttlePercent: 0 };
    const mem = this.#host.memory(vmId);
    return {
      status: out.status,
      transferredBytes: out.transferred,
      remainingBytes: out.remaining,
      totalBytes: (mem?.pages ?? 0) * PAGE,
      dirtyBytesPerSec: (mem?.dirtyMiBps ?? 0) * 1048576,
      rounds: out.rounds,
      throttlePercent: 0,
      ...(out.downtime !== undefined ? { downtimeMs: out.downtime } : {}),
      ...(out.error ? { error: out.error } : {}),
    };
  }

  async statusChange(_vmId: string, maxMs: number): Promise<void> {
    await sleep(maxMs); // the sim's state moves on its own timers; the engine re-reads it
  }

  async cancelOutgoing(vmId: string): Promise<void> {
    const out = this.#out.get(vmId);
    if (!out) return;
    out.cancelled = true;
    for (const s of out.sockets) s.destroy();
    for (let i = 0; i < 100 && out.status !== 'cancelled' && out.status !== 'failed' && out.status !== 'completed'; i++) await sleep(5);
    await this.resumeHere(vmId);
  }

  async resumeHere(vmId: string): Promise<void> {
    this.#host.memory(vmId)?.run();
    this.#host.setRunning(vmId, true);
  }

  async stoppedAt(vmId: string): Promise<number | undefined> {
    return this.#out.get(vmId)?.stoppedAt;
  }

  async measureDirtyRate(vmId: string, ms: number): Promise<number> {
    return (await this.#host.memory(vmId)?.measureDirtyRate(ms)) ?? 0;
  }

  async sampleMemory(vmId: string, offset: number, bytes: number): Promise<Buffer> {
    const mem = this.#host.memory(vmId);
    if (!mem) throw new DriverError('sample', `sim: VM ${vmId} is not running`);
    const start = Math.min(offset, mem.bytes.length);
    return Buffer.from(mem.bytes.subarray(start, Math.min(mem.bytes.length, start + bytes)));
  }

  /** The VM's instance ended here: drop its migration state on either side. */
  forget(vmId: string): void {
    this.#out.delete(vmId);
    this.#in.get(vmId)?.server.close();
    this.#in.delete(vmId);
  }
}

/** A QEMU ≥ 9 multifd RAM packet (see migration/multifd.ts) for `normal` and `zero` pages. */
function ramPacket(num: bigint, normal: number[], zero: number[], flags: number, mem: Buffer): Buffer {
  const h = Buffer.alloc(RAM_PACKET_FIXED_LEN + 8 * SLOTS);
  h.writeUInt32BE(MULTIFD_MAGIC, 0);
  h.writeUInt32BE(1, 4);
  h.writeUInt32BE(flags, 8);
  h.writeUInt32BE(flags & FLAG_SYNC ? 0 : SLOTS, 12);
  h.writeUInt32BE(normal.length, 16);
  h.writeUInt32BE(normal.length * PAGE, 20);
  h.writeBigUInt64BE(num, 24);
  h.writeUInt32BE(zero.length, 32);
  h.write(RAMBLOCK, 64, 'latin1');
  [...normal, ...zero].forEach((pg, i) => h.writeBigUInt64BE(BigInt(pg * PAGE), RAM_PACKET_FIXED_LEN + 8 * i));
  return Buffer.concat([h, ...normal.map((pg) => mem.subarray(pg * PAGE, (pg + 1) * PAGE))]);
}

/** Applies a RAM packet to memory: normal pages from the payload, zero pages zeroed. */
function applyPacket(memory: Buffer, header: Buffer, pages: Buffer): void {
  const normal = header.readUInt32BE(16);
  const zero = header.readUInt32BE(32);
  for (let i = 0; i < normal + zero; i++) {
    const off = Number(header.readBigUInt64BE(RAM_PACKET_FIXED_LEN + 8 * i));
    if (off + PAGE > memory.length) throw new DriverError('migrate-incoming', `sim: page offset ${off} outside guest RAM`);
    if (i < normal) pages.copy(memory, off, i * PAGE, (i + 1) * PAGE);
    else memory.fill(0, off, off + PAGE);
  }
}
