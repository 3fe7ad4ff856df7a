/** Every route the daemon serves, built on stub services (route tables only; nothing is called). */
import { consoleWsRoute } from '../../src/api/console-ws.js';
import { eventsWsRoute } from '../../src/api/events-ws.js';
import { Router } from '../../src/api/router.js';
import { authRoutes } from '../../src/api/routes/auth.js';
import { clusterRoutes } from '../../src/api/routes/cluster.js';
import { migrationRoutes } from '../../src/api/routes/migrations.js';
import { systemRoutes } from '../../src/api/routes/system.js';
import { vmRoutes } from '../../src/api/routes/vms.js';
import { storageRoutes } from '../../src/api/routes/storage.js';
import { quotaRoutes } from '../../src/api/routes/quotas.js';
import { telemetryWsRoute } from '../../src/api/telemetry-ws.js';
import { vncWsRoute } from '../../src/api/vnc-ws.js';
import type { WsRouteInstaller } from '../../src/api/server.js';

const none = {} as never;

export function daemonRouter(): Router {
  const router = new Router();
  systemRoutes(router, none, none);
  vmRoutes(router, none);
  migrationRoutes(router, none, none, none);
  authRoutes(router, none, none, none, none);
  clusterRoutes(router, none, none, none);
  storageRoutes(router, none);
  quotaRoutes(router, none);
  return router;
}

/** The WebSocket routes' paths (the peer link, which only members speak, aside). */
export function wsPaths(): string[] {
  const paths: string[] = [];
  const installers: WsRouteInstaller[] = [eventsWsRoute(none, none), consoleWsRoute(none, none, none), telemetryWsRoute(none, none), vncWsRoute(none, none)];
  const app = { ws: (path: string) => paths.push(path) };
  for (const install of installers) install(app as never, none, () => undefined, none);
  return paths;
}
