/**
 * Cold migration: a stopped VM moves with its files (the volumes of its disks in local
 * pools, its checkpoint — so checkpoint + cold migration is a suspend-to-disk move) over
 * the same transport, one channel per file. The destination records the VM once every
 * file has arrived whole; only then are the source's copies deleted. On failure or
 * cancel the VM stays here, stopped, untouched.
 */
import { createReadStream, statSync } from 'node:fs';
import { basename } from 'node:path';
import type { VmRecord } from '../vm/record.js';
import type { VmStorage } from '../vm/media.js';
import { volumesToCarry, offeredSpec, type OfferedVolume } from './volumes.js';
import type { VmSpec } from '../vm/spec.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { SourceMigration, type SourceDeps } from './source-migration.js';
import type { MigrationRecord } from './record.js';
import { LinkBucket } from '../native/miglink.js';
import { ChannelKind, encodeHeader, FrameType } from './wire.js';

export type ColdDeps = SourceDeps;

const CHUNK = 1 << 20;
const HIGH_WATER = 8 << 20;
const PROGRESS_EVERY_MS = 500;
const ARRIVAL_TIMEOUT_MS = 120_000;

export class ColdMigration extends SourceMigration {
  #deps: ColdDeps;

  constructor(deps: ColdDeps, rec: MigrationRecord, target: string) {
    super(deps, rec, target);
    this.#deps = deps;
  }

  /** The files that move, with their sizes: each carried volume's (`volume-N`), and the checkpoint. */
  static files(storage: VmStorage, vm: VmRecord, pools: Record<string, string> = {}): { files: Array<{ name: string; path: string; size: number; volume?: string }>; volumes: OfferedVolume[]; spec: VmSpec } {
    const carried = volumesToCarry(storage, vm, pools);
    const files: Array<{ name: string; path: string; size: number; volume?: string }> = carried.map((c, i) => {
      const path = storage.storage.dataPath(c.source);
      return { name: `volume-${i}`, path, size: statSync(path).size, volume: c.offer.ref };
    });
    if (vm.checkpoint) files.push({ name: basename(vm.checkpoint.path), path: vm.checkpoint.path, size: statSync(vm.checkpoint.path).size });
    return { files, volumes: carried.map((c) => c.offer), spec: offeredSpec(vm, carried) };
  }

  /** Runs to the end; never throws (the outcome is in the record). */
  async run(release: () => void): Promise<void> {
    const { vms } = this.#deps;
    const vmId = this.rec.vmId;
    const t0 = performance.now();
    try {
      const vm = vms.get(vmId);
      const { files, volumes, spec } = ColdMigration.files(vms.storage, vm, this.rec.policy.pools);
      await this.update({ phase: 'prepare', progress: { ...this.rec.progress, totalBytes: files.reduce((n, f) => n + f.size, 0), remainingBytes: files.reduce((n, f) => n + f.size, 0) } });
      const ck = vm.checkpoint && files.find((f) => f.path === vm.checkpoint!.path);
      const offer = await this.peer.offer({
        mode: 'cold', migrationId: this.rec.id, source: this.#deps.nodeId,
        vm: { id: vm.id, name: vm.name, spec, ...(ck ? { checkpoint: { file: ck.name, createdAt: vm.checkpoint!.createdAt, sizeBytes: vm.checkpoint!.sizeBytes } } : {}) },
        files: files.map(({ name, size, volume }) => ({ name, size, ...(volume ? { volume } : {}) })),
        volumes,
      });
      this.check();
      const sock = await this.peer.connect(offer);
      await this.update({ phase: 'copy', timings: { prepareMs: Math.round(performance.now() - t0) } });
      const bucket = this.rec.policy.bandwidthMBps ? new LinkBucket(this.rec.policy.bandwidthMBps * 1e6) : undefined;
      let sent = 0;
      let wire = 0;
      let lastSaved = 0;
      const tCopy = performance.now();
      for (const [i, f] of files.entries()) {
        const channel = i + 1;
        const name = Buffer.from(f.name);
        sock.write(encodeHeader(FrameType.Open, channel, 1 + name.length));
        sock.write(Buffer.concat([Buffer.of(ChannelKind.File), name]));
        for await (const chunk of createReadStream(f.path, { highWaterMark: CHUNK })) {
          this.check();
          const data = chunk as Buffer;
          sock.write(encodeHeader(FrameType.Data, channel, data.length));
          sock.write(data);
          sent += data.length;
          wire += data.length + 7;
          const wait = bucket?.spend(data.length + 7) ?? 0;
          if (wait > 0) await sleep(wait);
          while (sock.writableLength > HIGH_WATER) await this.peer.nap(5);
          if (Date.now() - lastSaved >= PROGRESS_EVERY_MS) {
            lastSaved = Date.now();
            await this.update({ progress: { ...this.rec.progress, bytesRaw: sent, bytesWire: wire, remainingBytes: this.rec.progress.totalBytes - sent } }, 'migration.progress');
          }
        }
        sock.write(encodeHeader(FrameType.Eof, channel, 0));
      }
      await this.update({ phase: 'switchover', progress: { ...this.rec.progress, bytesRaw: sent, bytesWire: wire, compressionRatio: 1, remainingBytes: 0 }, timings: { ...this.rec.timings, streamMs: Math.round(performance.now() - tCopy) } });
      await this.peer.awaitConfirmed(ARRIVAL_TIMEOUT_MS, 'the files arrived');
      await this.update({ phase: 'cleanup' });
      this.peer.close();
      // The destination owns the VM now; the record, the VM's files and carried volumes here go.
      await this.settleSuccess({});
    } catch (err) {
      const error = await this.errorOf(err);
      this.peer.close();
      this.#deps.log.warn({ err: error, migrationId: this.rec.id, vmId }, 'cold migration failed; the VM stays on the source');
      await this.settleFailure(error, (state) => `migration ${state}: ${error.message}`);
    } finally {
      release();
    }
  }
}
