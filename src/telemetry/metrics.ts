/** Prometheus metrics for the daemon (prom-client, text exposition format). */
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { RequestStats } from './request-stats.js';

export interface MetricSources {
  vmsByState: () => Record<string, number>;
  lastEventSeq: () => number;
}

export class Metrics {
  readonly registry = new Registry();
  readonly requests: RequestStats;
  readonly operations: Counter<'kind' | 'result'>;

  constructor(sources?: MetricSources) {
    collectDefaultMetrics({ register: this.registry, prefix: 'novacron_' });
    this.requests = new RequestStats(this.registry);
    this.operations = new Counter({
      name: 'novacron_operations_total',
      help: 'Finished lifecycle operations by kind and result',
      labelNames: ['kind', 'result'],
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
