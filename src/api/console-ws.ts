/**
 * `GET /v1/vms/:id/console`: the VM's serial console over WebSocket. Binary frames both
 * ways carry raw console bytes; text frames are rejected. An unknown VM is refused with
 * HTTP 404 (relayed from another member: closed with 4404), and the connection closes with
 * 4409 when the VM has no console (not running).
 */
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import type { ConsoleHub, ConsoleViewer } from '../vm/console.js';
import type { VmService } from '../vm/service.js';
import { upgradeWebSocket, type WsRouteInstaller } from './server.js';
import { relaying } from './ws-relay.js';
import { vmFromParam } from './vm-param.js';

interface ConsoleConn {
  vmId: string;
  viewer?: ConsoleViewer;
  closed: boolean;
}

export function consoleWsRoute(vms: VmService, hub: ConsoleHub, log: Logger): WsRouteInstaller {
  return (app, authenticate, forwarder) => {
    app.ws<ConsoleConn>('/v1/vms/:id/console', relaying<ConsoleConn>({
      compression: 0,
      maxPayloadLength: 64 * 1024,
      maxBackpressure: 4 << 20,
      idleTimeout: 0,
      upgrade: (res, req, context) =>
        upgradeWebSocket(res, req, context, authenticate, (r, who): ConsoleConn => {
          const vm = vmFromParam(vms, r.getParameter(0) ?? '');
          who!.assertCan('VM.Console', { kind: 'vm', id: vm.id, tenant: vm.spec.tenant });
          return { vmId: vm.id, closed: false };
        }, { forwarder }),
      open: (ws) => {
        const conn = ws.getUserData();
        try {
          conn.viewer = hub.attach(
            conn.vmId,
            (data) => {
              if (!conn.closed) ws.send(data, true);
            },
            () => {
              if (!conn.closed) ws.end(1000, 'console closed (VM stopped)');
            },
          );
        } catch (err) {
          const e = err instanceof NovaError ? err : new NovaError('INTERNAL');
          if (!(err instanceof NovaError)) log.error({ err }, 'console attach failed');
          ws.end(e.status === 409 ? 4409 : 4500, e.message);
        }
      },
      message: (ws, message, isBinary) => {
        const conn = ws.getUserData();
        if (!isBinary) return void ws.end(4400, 'console frames must be binary');
        conn.viewer?.write(Buffer.from(message.slice(0)));
      },
      close: (ws) => {
        const conn = ws.getUserData();
        conn.closed = true;
        conn.viewer?.close();
      },
    }));
  };
}
