/**
 * Per-route HTTP request statistics on the hot path. prom-client's labelled
 * Counter/Histogram hash their label sets on every call, which cost more than the rest
 * of a GET; here each route owns a plain counter block, found once, and prom-client only
 * sees the totals when /metrics is scraped (as standard counter and histogram families).
 */
import type { Registry } from 'prom-client';

const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

export class RouteStats {
  readonly byStatus = new Map<number, number>();
  readonly buckets = new Float64Array(BUCKETS.length);
  sum = 0;
  count = 0;

  constructor(
    readonly method: string,
    readonly route: string,
  ) {}

  observe(status: number, seconds: number): void {
    this.byStatus.set(status, (this.byStatus.get(status) ?? 0) + 1);
    this.count++;
    this.sum += seconds;
    for (let i = 0; i < BUCKETS.length; i++) {
      if (seconds <= BUCKETS[i]!) {
        this.buckets[i]!++;
        break;
      }
    }
  }
}

interface MetricValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

export class RequestStats {
  #routes = new Map<string, RouteStats>();

  constructor(registry: Registry) {
    const routes = () => [...this.#routes.values()];
    registry.registerMetric({
      name: 'novacron_http_requests_total',
      help: 'HTTP requests handled, by method, route pattern and status',
      type: 'counter',
      aggregator: 'sum',
      get: async () => ({
        name: 'novacron_http_requests_total',
        help: 'HTTP requests handled, by method, route pattern and status',
        type: 'counter',
        aggregator: 'sum',
        values: routes().flatMap((r) => [...r.byStatus].map(([status, value]): MetricValue => ({ value, labels: { method: r.method, route: r.route, status } }))),
      }),
    } as never);
    registry.registerMetric({
      name: 'novacron_http_request_duration_seconds',
      help: 'Time from request received to response written',
      type: 'histogram',
      aggregator: 'sum',
      get: async () => ({
        name: 'novacron_http_request_duration_seconds',
        help: 'Time from request received to response written',
        type: 'histogram',
        aggregator: 'sum',
        values: routes().flatMap((r) => histogramValues(r)),
      }),
    } as never);
  }

  /** The stats block for a route; callers keep it and call `observe` per request. */
  for(method: string, route: string): RouteStats {
    const key = `${method} ${route}`;
    let stats = this.#routes.get(key);
    if (!stats) this.#routes.set(key, (stats = new RouteStats(method, route)));
    return stats;
  }
}

function histogramValues(r: RouteStats): MetricValue[] {
  const name = 'novacron_http_request_duration_seconds';
  const labels = { method: r.method, route: r.route };
  const out: MetricValue[] = [];
  let cumulative = 0;
  BUCKETS.forEach((le, i) => {
    cumulative += r.buckets[i]!;
    out.push({ value: cumulative, labels: { ...labels, le }, metricName: `${name}_bucket` });
  });
  out.push({ value: r.count, labels: { ...labels, le: '+Inf' }, metricName: `${name}_bucket` });
  out.push({ value: r.sum, labels, metricName: `${name}_sum` });
  out.push({ value: r.count, labels, metricName: `${name}_count` });
  return out;
}
