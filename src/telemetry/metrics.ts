/** Prometheus metrics for the daemon (prom-client, text exposition format). */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { RequestStats } from './request-stats.js';

export interface MetricSources {
  vmsByState: () => Record<string, number>;
  lastEventSeq: () => number;
  /** Per-VM resource usage, sampled at scrape time. */
  vmStats?: () => Promise<Array<{ vm: string; name: string; stats: import('../vm/driver.js').VmStats }>>;
  pools?: () => Promise<Array<{ pool: string; mediaClass: string; status: import('../storage/model.js').PoolStatus }>>;
}

export class Metrics {
  readonly registry = new Registry();
  readonly requests: RequestStats;
  readonly operations: Counter<'kind' | 'result'>;
  readonly migrations: Counter<'role' | 'result'>;
  readonly migrationBytes: Counter<'kind'>;
  readonly migrationDowntime: Histogram<'role'>;

  constructor(sources?: MetricSources) {
    collectDefaultMetrics({ register: this.registry, prefix: 'novacron_' });
    this.requests = new RequestStats(this.registry);
    this.operations = new Counter({
      name: 'novacron_operations_total',
      help: 'Finished lifecycle operations by kind and result',
      labelNames: ['kind', 'result'],
      registers: [this.registry],
    });
    this.migrations = new Counter({
      name: 'novacron_migrations_total',
      help: 'Finished live migrations by role (source/destination) and result',
      labelNames: ['role', 'result'],
      registers: [this.registry],
    });
    this.migrationBytes = new Counter({
      name: 'novacron_migration_bytes_total',
      help: 'Bytes of completed outgoing migrations: raw (what QEMU sent) and wire (what NovaCron sent)',
      labelNames: ['kind'],
      registers: [this.registry],
    });
    this.migrationDowntime = new Histogram({
      name: 'novacron_migration_downtime_seconds',
      help: 'Guest downtime of completed migrations (source STOP to destination RESUME)',
      labelNames: ['role'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [this.registry],
    });
    if (sources) {
      new Gauge({
        name: 'novacron_vms',
        help: 'VMs known to this node, by state',
        labelNames: ['state'],
        registers: [this.registry],
        collect() {
          for (const [state, n] of Object.entries(sources.vmsByState())) this.set({ state }, n);
        },
      });
      if (sources.vmStats) {
        const sample = sources.vmStats;
        let last: ReturnType<typeof sample> | undefined;
        // One sample per scrape, shared by the gauges below.
        const current = () => (last ??= sample().finally(() => setImmediate(() => (last = undefined))));
        const perVm = (name: string, help: string, labelNames: string[], fill: (g: Gauge<string>, rows: Awaited<ReturnType<typeof sample>>) => void) =>
          new Gauge({ name, help, labelNames, registers: [this.registry], async collect() { this.reset(); fill(this, await current()); } });
        perVm('novacron_vm_cpu_seconds', 'Guest CPU time over all vCPU threads', ['vm', 'name'], (g, rows) => {
          for (const r of rows) g.set({ vm: r.vm, name: r.name }, r.stats.cpuSeconds);
        });
        perVm('novacron_vm_memory_rss_bytes', 'Resident memory of the VM process', ['vm', 'name'], (g, rows) => {
          for (const r of rows) g.set({ vm: r.vm, name: r.name }, r.stats.memoryRssBytes);
        });
        perVm('novacron_vm_disk_read_bytes', 'Bytes read by the guest, per disk', ['vm', 'name', 'disk'], (g, rows) => {
          for (const r of rows) for (const d of r.stats.disks) g.set({ vm: r.vm, name: r.name, disk: d.name }, d.readBytes);
        });
        perVm('novacron_vm_disk_write_bytes', 'Bytes written by the guest, per disk', ['vm', 'name', 'disk'], (g, rows) => {
          for (const r of rows) for (const d of r.stats.disks) g.set({ vm: r.vm, name: r.name, disk: d.name }, d.writeBytes);
        });
      }
      if (sources.pools) {
        const sample = sources.pools;
        let last: ReturnType<typeof sample> | undefined;
        const current = () => (last ??= sample().finally(() => setImmediate(() => (last = undefined))));
        const field = (name: string, help: string, key: keyof import('../storage/model.js').PoolStatus) =>
          new Gauge({
            name, help, labelNames: ['pool', 'media_class'], registers: [this.registry],
            async collect() {
              this.reset();
              for (const p of await current()) this.set({ pool: p.pool, media_class: p.mediaClass }, p.status[key]);
            },
          });
        field('novacron_pool_capacity_bytes', 'Pool capacity', 'capacityBytes');
        field('novacron_pool_allocated_bytes', 'Sum of the virtual sizes of the pool\'s volumes', 'allocatedBytes');
        field('novacron_pool_used_bytes', 'Bytes the pool\'s volumes take on disk', 'usedBytes');
        field('novacron_pool_free_bytes', 'Bytes the pool can still take', 'freeBytes');
        field('novacron_pool_volumes', 'Volumes in the pool', 'volumes');
      }
      new Gauge({
        name: 'novacron_events_last_seq',
        help: 'Sequence number of the newest persisted event',
        registers: [this.registry],
        collect() {
          this.set(sources.lastEventSeq());
        },
      });
    }
  }

  async render(): Promise<{ body: string; contentType: string }> {
    return { body: await this.registry.metrics(), contentType: this.registry.contentType };
  }
}
