/**
 * `GET /v1/vms/:id/vnc`: a WebSocket ↔ VNC bridge (what noVNC speaks). Each WebSocket
 * gets its own connection to QEMU's VNC unix socket; RFB bytes travel in binary frames.
 */
import { createConnection, type Socket } from 'node:net';
import { NovaError } from '../errors.js';
import type { HypervisorDriver } from '../vm/driver.js';
import type { VmService } from '../vm/service.js';
import { upgradeWebSocket, type WsRouteInstaller } from './server.js';
import { relaying } from './ws-relay.js';
import { vmFromParam } from './vm-param.js';

interface VncConn {
  path: string;
  socket?: Socket;
  closed: boolean;
}

export function vncWsRoute(vms: VmService, driver: HypervisorDriver): WsRouteInstaller {
  return (app, authenticate, forwarder) => {
    app.ws<VncConn>('/v1/vms/:id/vnc', relaying<VncConn>({
      compression: 0,
      maxPayloadLength: 1 << 20,
      maxBackpressure: 8 << 20,
      idleTimeout: 0,
      upgrade: (res, req, context) =>
        upgradeWebSocket(res, req, context, authenticate, (r, who): VncConn => {
          const vm = vmFromParam(vms, r.getParameter(0) ?? '');
          who!.assertCan('VM.Console', { kind: 'vm', id: vm.id, tenant: vm.spec.tenant });
          const path = driver.vncSocket?.(vm.id);
          if (!path) throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" has no display right now (is it running under the qemu driver?)`, { state: vm.state });
          return { path, closed: false };
        }, { forwarder }),
      open: (ws) => {
        const conn = ws.getUserData();
        const socket = createConnection(conn.path);
        conn.socket = socket;
        socket.on('data', (d: Buffer) => {
          if (conn.closed) return;
          ws.send(d, true);
          // Let the WebSocket drain before reading more from QEMU.
          if (ws.getBufferedAmount() > 4 << 20) socket.pause();
        });
        const end = () => {
          if (!conn.closed) {
            conn.closed = true;
            ws.end(1000, 'display closed');
          }
        };
        socket.on('error', end);
        socket.on('close', end);
      },
      drain: (ws) => {
        const conn = ws.getUserData();
        if (ws.getBufferedAmount() < 1 << 20) conn.socket?.resume();
      },
      message: (ws, message, isBinary) => {
        const conn = ws.getUserData();
        if (!isBinary) return void ws.end(4400, 'VNC frames must be binary');
        conn.socket?.write(Buffer.from(message.slice(0)));
      },
      close: (ws) => {
        const conn = ws.getUserData();
        conn.closed = true;
        conn.socket?.destroy();
      },
    }));
  };
}
