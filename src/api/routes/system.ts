import type { Router } from '../router.js';
import type { Metrics } from '../../telemetry/metrics.js';

export interface SystemInfo {
  ready: () => boolean;
  info: () => Record<string, unknown>;
}

export function systemRoutes(router: Router, metrics: Metrics, sys: SystemInfo): void {
  router.add('GET', '/healthz', () => ({ status: 200, json: { status: 'ok', ...sys.info() } }), { public: true });
  router.add('GET', '/readyz', () => (sys.ready() ? { status: 200, json: { status: 'ready' } } : { status: 503, json: { status: 'not-ready' } }), { public: true });
  router.add('GET', '/metrics', async () => ({ status: 200, text: await metrics.render() }));
}
