/**
 * `GET /v1/telemetry`: per-VM resource samples over WebSocket, one binary msgpack frame
 * per sampling interval: `{type:'samples', samples:[{vmId,name,time,stats,cpuCores}]}`.
 * Optional `?vmId=` narrows it to one VM. Frames that a slow client cannot take are
 * dropped (telemetry is lossy by design; the next frame supersedes it).
 */
import { Packr } from 'msgpackr';
import { z } from 'zod';
import type { TelemetrySampler } from '../telemetry/sampler.js';
import { upgradeWebSocket, type WsRouteInstaller } from './server.js';
import { parseWith } from './validate.js';

const packr = new Packr({ useRecords: false });

interface TelemetryConn {
  vmId?: string;
  unsubscribe?: () => void;
  closed: boolean;
}

export function telemetryWsRoute(sampler: TelemetrySampler): WsRouteInstaller {
  return (app, authorize) => {
    app.ws<TelemetryConn>('/v1/telemetry', {
      compression: 0,
      maxPayloadLength: 4 * 1024,
      maxBackpressure: 1 << 20,
      idleTimeout: 120,
      sendPingsAutomatically: true,
      upgrade: (res, req, context) =>
        upgradeWebSocket(res, req, context, authorize, (r): TelemetryConn => {
          const q = parseWith(z.strictObject({ vmId: z.string().max(64).optional() }), Object.fromEntries(new URLSearchParams(r.getQuery() ?? '')), 'BAD_QUERY');
          return { ...(q.vmId ? { vmId: q.vmId } : {}), closed: false };
        }),
      open: (ws) => {
        const conn = ws.getUserData();
        conn.unsubscribe = sampler.subscribe((samples) => {
          if (conn.closed) return;
          const mine = conn.vmId ? samples.filter((s) => s.vmId === conn.vmId) : samples;
          if (ws.getBufferedAmount() < 1 << 20) ws.send(packr.pack({ type: 'samples', intervalMs: sampler.intervalMs, samples: mine }), true);
        });
      },
      message: () => undefined,
      close: (ws) => {
        const conn = ws.getUserData();
        conn.closed = true;
        conn.unsubscribe?.();
      },
    });
  };
}
