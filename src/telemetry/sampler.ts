/**
 * Periodic per-VM resource samples (CPU time, RSS, disk I/O) for live streaming. Samples
 * are telemetry, not state: they are not persisted in the event log; subscribers get the
 * newest ones as they are taken.
 */
import type { Logger } from 'pino';
import type { VmStats } from '../vm/driver.js';
import type { VmService } from '../vm/service.js';

export interface VmSample {
  vmId: string;
  name: string;
  time: string;
  stats: VmStats;
  /** CPU utilisation since the previous sample, in cores (1.0 = one core busy). */
  cpuCores?: number;
}

export class TelemetrySampler {
  #timer: NodeJS.Timeout | undefined;
  #previous = new Map<string, { at: number; cpu: number }>();
  #listeners = new Set<(samples: VmSample[]) => void>();
  #running = false;

  constructor(
    private readonly vms: VmService,
    private readonly log: Logger,
    readonly intervalMs: number,
  ) {}

  /** Subscribes; sampling runs only while someone listens. */
  subscribe(fn: (samples: VmSample[]) => void): () => void {
    this.#listeners.add(fn);
    this.#timer ??= setInterval(() => void this.#tick(), this.intervalMs);
    return () => {
      this.#listeners.delete(fn);
      if (this.#listeners.size === 0 && this.#timer) {
        clearInterval(this.#timer);
        this.#timer = undefined;
      }
    };
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#listeners.clear();
  }

  async #tick(): Promise<void> {
    if (this.#running) return; // a slow sample is skipped, not queued
    this.#running = true;
    try {
      const now = Date.now();
      const samples: VmSample[] = [];
      for (const { vm, stats } of await this.vms.liveStats()) {
        const sample: VmSample = { vmId: vm.id, name: vm.name, time: new Date(now).toISOString(), stats };
        const prev = this.#previous.get(vm.id);
        if (prev && now > prev.at) sample.cpuCores = Math.max(0, (stats.cpuSeconds - prev.cpu) / ((now - prev.at) / 1000));
        this.#previous.set(vm.id, { at: now, cpu: stats.cpuSeconds });
        samples.push(sample);
      }
      for (const fn of this.#listeners) fn(samples);
    } catch (err) {
      this.log.warn({ err }, 'telemetry sample failed');
    } finally {
      this.#running = false;
    }
  }
}
