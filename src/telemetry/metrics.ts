/** Prometheus metrics for the daemon (prom-client, text exposition format). */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

export interface MetricSources {
  vmsByState: () => Record<string, number>;
  lastEventSeq: () => number;
}

export class Metrics {
  readonly registry = new Registry();
  #requests: Counter<'method' | 'route' | 'status'>;
  #latency: Histogram<'route'>;
  readonly operations: Counter<'kind' | 'result'>;

  constructor(sources?: MetricSources) {
    collectDefaultMetrics({ register: this.registry, prefix: 'novacron_' });
    this.#requests = new Counter({
      name: 'novacron_http_requests_total',
      help: 'HTTP requests handled, by method, route pattern and status',
      labelNames: ['method', 'route', 'status'],
      registers: [this.registry],
    });
    this.#latency = new Histogram({
      name: 'novacron_http_request_duration_seconds',
      help: 'Time from request received to response written',
      labelNames: ['route'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [this.registry],
    });
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

  observeRequest(method: string, route: string, status: number, seconds: number): void {
    this.#requests.inc({ method, route, status: String(status) });
    this.#latency.observe({ route }, seconds);
  }

  async render(): Promise<{ body: string; contentType: string }> {
    return { body: await this.registry.metrics(), contentType: this.registry.contentType };
  }
}
