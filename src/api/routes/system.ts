import { ROOT } from '../../auth/acl.js';
import type { Router } from '../router.js';
import type { Metrics } from '../../telemetry/metrics.js';

export interface SystemInfo {
  ready: () => boolean;
  info: () => Record<string, unknown>;
}

export function systemRoutes(router: Router, metrics: Metrics, sys: SystemInfo): void {
  // Liveness for anyone; what this daemon is (version, driver, counts) only for callers who may audit it.
  router.add('GET', '/healthz', (req) => ({ status: 200, json: req.principal?.can('Sys.Audit', ROOT) ? { status: 'ok', ...sys.info() } : { status: 'ok' } }), { priv: 'public', whileStarting: true });
  router.add('GET', '/readyz', () => (sys.ready() ? { status: 200, json: { status: 'ready' } } : { status: 503, json: { status: 'not-ready' } }), { priv: 'public', whileStarting: true });
  router.add('GET', '/metrics', async () => ({ status: 200, text: await metrics.render() }), { priv: 'Sys.Audit' });
}
