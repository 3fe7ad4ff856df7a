/**
 * The source side of one live migration: prepare the destination, stream QEMU's
 * pre-copy through the relay (or, a direct migration, let QEMU stream straight to the
 * destination's QEMU over TLS while this still steers it), switch over, and clean up —
 * or, on any failure or a cancel, leave the VM running here, intact.
 */
import { join } from 'node:path';
import { NovaError } from '../errors.js';
import { DEFAULT_SHARDS } from '../native/memdelta.js';
import { LinkBucket, SourceLink, type LinkFaults } from '../native/miglink.js';
import type { HypervisorDriver, LiveMigration, MigrationProgress, MirroredDisk, StreamTarget, StreamTls } from '../vm/driver.js';
import { mirroredDisks, offeredSpec, volumesToCarry } from './volumes.js';
import { NbdTunnel } from './nbd-tunnel.js';
import type { MigrationRecord } from './record.js';
import type { IncomingOffer } from './peer.js';
import { SourceMigration, type SourceDeps } from './source-migration.js';
import { RecentRate } from './rate.js';
import { SwitchoverTuner } from './switchover.js';
import { channelWindow } from './wire.js';

export interface OutgoingDeps extends SourceDeps {
  driver: HypervisorDriver;
  migration: LiveMigration;
  runDir: string;
  /** This member's certificate, key and the cluster CA, for QEMU's TLS: given when the migration streams directly. */
  streamTls?: () => StreamTls;
  /** Fault injection (tests). */
  faults?: LinkFaults;
}

const PROGRESS_EVERY_MS = 500;
const RESUME_TIMEOUT_MS = 60_000;
/** The guest is paused while the mirrors copy their last writes. */
const MIRROR_FINISH_TIMEOUT_MS = 30_000;
/**
 * A direct stream that moves no byte for this long is cut off: QEMU's TCP connection to a
 * destination that went silent (a blackholed link) would otherwise wait for the kernel's
 * retransmission timeout, many minutes. The relay's link watches its own silence.
 */
export const DIRECT_STALL_MS = 10_000;
/** Bytes a direct stream's sockets hold per channel (kernel buffers), drained after the guest stops. */
const DIRECT_IN_FLIGHT_PER_CHANNEL = 1 << 20;

export class OutgoingMigration extends SourceMigration {
  #deps: OutgoingDeps;
  #link?: SourceLink;
  #tunnel?: NbdTunnel;
  /** The link's bandwidth cap, shared by QEMU's stream and the disk-mirror tunnel. */
  #bucket?: LinkBucket;

  constructor(deps: OutgoingDeps, rec: MigrationRecord, target: string) {
    super(deps, rec, target);
    this.#deps = deps;
    if (rec.policy.bandwidthMBps) this.#bucket = new LinkBucket(rec.policy.bandwidthMBps * 1e6);
  }

  /** Runs to the end; never throws (the outcome is in the record). */
  async run(release: () => void, cachePages: number, autoConverge: boolean): Promise<void> {
    const { migration, vms } = this.#deps;
    const vmId = this.rec.vmId;
    let streamed = false; // QEMU finished sending: the guest is stopped here
    const t0 = performance.now();
    const since = (t: number) => Math.round(performance.now() - t);
    try {
      await this.update({ phase: 'prepare', timings: { planMs: Date.now() - Date.parse(this.rec.createdAt) } });
      const vm = vms.get(vmId);
      const carried = volumesToCarry(vms.storage, vm, this.rec.policy.pools);
      const disks = mirroredDisks(carried);
      const offer = await this.peer.offer({
        migrationId: this.rec.id, source: this.#deps.nodeId, vm: { id: vm.id, name: vm.name, spec: offeredSpec(vm, carried) },
        mode: 'live', transport: this.#direct ? 'direct' : 'relay', channels: this.rec.policy.channels, cachePages, shards: DEFAULT_SHARDS, volumes: carried.map((c) => c.offer),
      });
      this.check();
      await this.peer.connect(offer);
      const channels = this.rec.policy.channels;
      let to: StreamTarget;
      let inFlightBytes: number;
      if (this.#direct) {
        if (!offer.direct) throw new NovaError('MIGRATION_TARGET_REJECTED', `${this.target} offered no port for a direct stream`);
        // The destination's member certificate names the host it serves on; QEMU checks it against the cluster CA.
        const host = offer.transport.host;
        to = { kind: 'direct', host, port: offer.direct.port, tls: this.#deps.streamTls!(), hostname: host };
        inFlightBytes = DIRECT_IN_FLIGHT_PER_CHANNEL * (channels + 1);
        this.peer.keepAlive();
      } else {
        if (!offer.data) throw new NovaError('MIGRATION_TARGET_REJECTED', `${this.target} offered no data link (a NovaCron without the native migration link)`);
        const socketPath = join(this.#deps.runDir, `${this.rec.id}.sock`);
        const window = channelWindow(this.rec.policy.bandwidthMBps);
        inFlightBytes = window * (channels + 1);
        to = { kind: 'relay', socketPath };
        this.#link = new SourceLink(
          {
            socketPath, host: offer.transport.host, port: offer.data.port, certSha256: offer.transport.certSha256, token: Buffer.from(offer.token, 'hex'),
            capacityPages: cachePages, shards: DEFAULT_SHARDS, window,
            ...(this.#bucket ? { bucket: this.#bucket } : {}),
            ...(this.#deps.faults ? { faults: this.#deps.faults } : {}),
          },
          (err) => this.#linkFailed(err),
        );
      }
      const switchover = new SwitchoverTuner(this.rec.policy.maxDowntimeMs, inFlightBytes);
      this.check();
      await this.update({ phase: 'precopy', timings: { ...this.rec.timings, prepareMs: since(t0) } });
      const tStream = performance.now();
      if (disks.length > 0) await this.#mirrorDisks(disks, offer);
      await migration.startOutgoing(vmId, {
        to, channels,
        ...(this.#direct && this.rec.policy.bandwidthMBps ? { maxBytesPerSec: this.rec.policy.bandwidthMBps * 1e6 } : {}), downtimeLimitMs: switchover.settings.downtimeLimitMs, autoConverge, maxThrottlePercent: this.rec.policy.maxThrottlePercent, pauseBeforeSwitchover: disks.length > 0,
      });
      let lastSaved = 0;
      const linkRate = new RecentRate(1000);
      this.rec = { ...this.rec, progress: { ...this.rec.progress, downtimeLimitMs: switchover.settings.downtimeLimitMs } };
      let continued = false;
      const stall = { bytes: -1, since: performance.now() };
      for (;;) {
        const p = await migration.progress(vmId);
        if (p.status === 'paused-for-disks') {
          // QEMU may still say pre-switchover for a moment after migrate-continue (its
          // migration thread moves on by itself): continue exactly once.
          if (continued) {
            await this.peer.nap(5);
            continue;
          }
          // Guest paused, device state not sent yet: the disks catch up, then QEMU goes on.
          // The mirrors' last writes count too: the progress shows what they copied in the end.
          const m = await migration.storage!.completeMirrors(vmId, MIRROR_FINISH_TIMEOUT_MS);
          this.rec = { ...this.rec, progress: { ...this.rec.progress, storageCopiedBytes: m.copiedBytes, storageTotalBytes: m.totalBytes } };
          await migration.continueSwitchover(vmId);
          continued = true;
          continue;
        }
        if (p.status === 'completed') {
          streamed = true;
          this.#absorb(p);
          break;
        }
        if (p.status === 'failed' || p.status === 'cancelled') {
          // The link shuts QEMU's sockets when it fails, so QEMU may report first: read the cause.
          const cause = this.#link?.failure();
          if (cause) this.#linkFailed(cause);
          throw (await this.peer.reason()) ?? new NovaError('MIGRATION_FAILED', `QEMU migration ${p.status}: ${p.error ?? 'no detail'}`);
        }
        this.check();
        if (this.#direct) this.#watchStall(p, stall);
        this.#absorb(p);
        const tuned = p.status === 'precopy' ? switchover.next(p.rounds, p.remainingBytes, linkRate.sample(this.rec.progress.bytesRaw)) : undefined;
        if (tuned) {
          await migration.tuneSwitchover(vmId, tuned);
          this.rec = { ...this.rec, progress: { ...this.rec.progress, downtimeLimitMs: tuned.downtimeLimitMs, ...(tuned.bytesPerSec ? { switchoverBytesPerSec: tuned.bytesPerSec } : {}) } };
        }
        const phase = p.status === 'switchover' ? 'switchover' : 'precopy';
        if (Date.now() - lastSaved >= PROGRESS_EVERY_MS || phase !== this.rec.phase) {
          lastSaved = Date.now();
          await this.update({ phase }, 'migration.progress');
        }
        // Wake at once when QEMU moves on (at pre-switchover the guest is already paused).
        await Promise.race([this.peer.nap(50), migration.statusChange(vmId, 50)]);
      }
      await this.update({ phase: 'switchover', timings: { ...this.rec.timings, streamMs: since(tStream) } }, 'migration.progress');
      const tConfirm = performance.now();
      const resumedAt = await this.peer.awaitConfirmed(RESUME_TIMEOUT_MS, 'the guest resumed');
      this.rec = { ...this.rec, timings: { ...this.rec.timings, confirmMs: since(tConfirm) } };
      const stoppedAt = await migration.stoppedAt(vmId);
      const qemuDowntime = (await migration.progress(vmId)).downtimeMs;
      this.rec = { ...this.rec, downtimeMs: { ...(qemuDowntime !== undefined ? { qemu: qemuDowntime } : {}), ...(stoppedAt !== undefined ? { measured: Math.max(0, Math.round((resumedAt - stoppedAt) * 10) / 10) } : {}) } };
      await this.update({ phase: 'cleanup' });
      this.#teardown();
      // The guest runs on the destination: this copy must never run again.
      await this.#deps.driver.stop(vmId).catch((err) => this.#deps.log.error({ err, vmId }, 'stopping the migrated-away source QEMU failed'));
      await this.settleSuccess({ downtimeMs: this.rec.downtimeMs });
    } catch (err) {
      const error = await this.errorOf(err);
      this.#absorbLink(); // what was sent before it failed
      this.#deps.log.warn({ err, migrationId: this.rec.id, vmId }, 'migration failed; the VM stays on the source');
      this.#teardown();
      if (!streamed) await migration.cancelOutgoing(vmId).catch((e) => this.#deps.log.warn({ err: e, vmId }, 'migrate_cancel failed'));
      // The source disks stay authoritative; whatever reached the destination is dropped with it.
      await migration.storage?.cancelMirrors(vmId).catch((e) => this.#deps.log.warn({ err: e, vmId }, 'cancelling disk mirrors failed'));
      const reason = (state: string) =>
        streamed
          ? `migration outcome unknown: QEMU sent everything to ${this.target} but the destination never confirmed the guest runs there (${error.message}); check the target before resuming this copy`
          : `migration ${state}: ${error.message}`;
      await this.settleFailure(error, reason, streamed);
    } finally {
      release();
    }
  }

  get #direct(): boolean {
    return this.rec.transport === 'direct';
  }

  /** Fails a direct stream that has moved nothing for DIRECT_STALL_MS (`stall`: the last count and since when). */
  #watchStall(p: MigrationProgress, stall: { bytes: number; since: number }): void {
    if (p.transferredBytes !== stall.bytes) {
      stall.bytes = p.transferredBytes;
      stall.since = performance.now();
      return;
    }
    const ms = Math.round(performance.now() - stall.since);
    if (ms >= DIRECT_STALL_MS) throw new NovaError('MIGRATION_TRANSPORT', `QEMU's direct stream to ${this.target} moved nothing for ${ms} ms (status ${p.status})`);
  }

  /** The link's counters into the record (`qemuBytes`: QEMU's own count, until the link has one; a direct stream's wire carries just that). */
  #absorbLink(qemuBytes?: number): void {
    const stats = this.#link?.stats();
    const bytesRaw = stats?.rawBytes ?? qemuBytes ?? this.rec.progress.bytesRaw;
    const bytesWire = stats?.wireBytes ?? (this.#direct ? bytesRaw : this.rec.progress.bytesWire);
    const compressionRatio = bytesWire > 0 ? Math.round((bytesRaw / bytesWire) * 100) / 100 : 1;
    this.rec = { ...this.rec, progress: { ...this.rec.progress, bytesRaw, bytesWire, compressionRatio } };
  }

  /** A broken link is often the destination refusing something: its abort says why. */
  #linkFailed(err: NovaError): void {
    if (err.code === 'MIGRATION_TRANSPORT') this.peer.lost(err);
    else this.peer.fail(err);
  }

  #absorb(p: MigrationProgress): void {
    this.#absorbLink(p.transferredBytes);
    this.rec = {
      ...this.rec,
      progress: {
        ...this.rec.progress,
        rounds: p.rounds,
        dirtyBytesPerSec: p.dirtyBytesPerSec,
        remainingBytes: p.remainingBytes,
        totalBytes: p.totalBytes,
        throttlePercent: p.throttlePercent,
        ...(p.expectedDowntimeMs !== undefined ? { predictedDowntimeMs: p.expectedDowntimeMs } : {}),
      },
    };
  }

  /**
   * Live storage migration, before RAM: mirror every local disk through the tunnel until
   * all mirrors are ready (they then copy guest writes as they happen), with progress.
   */
  async #mirrorDisks(disks: MirroredDisk[], offer: Pick<IncomingOffer, 'transport' | 'token'>): Promise<void> {
    const { migration, runDir } = this.#deps;
    const vmId = this.rec.vmId;
    const storage = migration.storage!;
    this.#tunnel = await NbdTunnel.open(
      join(runDir, `${this.rec.id}-nbd.sock`),
      { ...offer.transport, migrationId: this.rec.id, token: offer.token },
      (err) => this.peer.fail(new NovaError('MIGRATION_TRANSPORT', err.message)),
      this.#bucket,
    );
    await storage.startMirrors(vmId, disks, this.#tunnel.socketPath);
    let lastSaved = 0;
    for (;;) {
      this.check();
      const m = await storage.mirrorProgress(vmId);
      this.rec = { ...this.rec, progress: { ...this.rec.progress, storageCopiedBytes: m.copiedBytes, storageTotalBytes: m.totalBytes } };
      if (m.ready) return;
      if (Date.now() - lastSaved >= PROGRESS_EVERY_MS) {
        lastSaved = Date.now();
        await this.update({}, 'migration.progress');
      }
      await this.peer.nap(50);
    }
  }

  #teardown(): void {
    this.#tunnel?.close();
    this.#link?.close();
    this.peer.close();
  }
}
