/**
 * `GET /v1/telemetry`: per-VM resource samples over WebSocket, one binary msgpack frame
 * per sampling interval: `{type:'samples', samples:[{vmId,name,time,stats,cpuCores}]}`.
 * Optional `?vmId=` (an id or name) narrows it to one VM, relayed from the VM's member when
 * it runs elsewhere in the cluster (404 when no member has it). Frames that a slow client cannot take are
 * dropped (telemetry is lossy by design; the next frame supersedes it).
 */
import { Packr } from 'msgpackr';
import { z } from 'zod';
import type { TelemetrySampler } from '../telemetry/sampler.js';
import type { VmService } from '../vm/service.js';
import { upgradeWebSocket, type WsRouteInstaller } from './server.js';
import { relaying } from './ws-relay.js';
import { parseWith } from './validate.js';

const packr = new Packr({ useRecords: false });
const TelemetryQuery = z.strictObject({ vmId: z.string().max(64).optional() });

interface TelemetryConn {
  vmId?: string;
  visible: (vmId: string) => boolean;
  unsubscribe?: () => void;
  closed: boolean;
}

export function telemetryWsRoute(sampler: TelemetrySampler, vms: VmService): WsRouteInstaller {
  return (app, authenticate, forwarder) => {
    app.ws<TelemetryConn>('/v1/telemetry', relaying<TelemetryConn>({
      compression: 0,
      maxPayloadLength: 4 * 1024,
      maxBackpressure: 1 << 20,
      idleTimeout: 120,
      sendPingsAutomatically: true,
      upgrade: (res, req, context) =>
        upgradeWebSocket(res, req, context, authenticate, (r, who): TelemetryConn => {
          const q = parseWith(TelemetryQuery, Object.fromEntries(new URLSearchParams(r.getQuery() ?? '')), 'BAD_QUERY');
          // A VM named here is this member's (by id or name), or the request is relayed to its member.
          const vm = q.vmId ? vms.get(q.vmId) : undefined;
          if (vm) who!.assertCan('VM.Audit', { kind: 'vm', id: vm.id, tenant: vm.spec.tenant });
          // Without a VM: the samples of every VM the caller may see.
          const visible = (id: string) => {
            const v = vms.tryGet(id);
            return v !== undefined && who!.can('VM.Audit', { kind: 'vm', id: v.id, tenant: v.spec.tenant });
          };
          return { ...(vm ? { vmId: vm.id } : {}), visible, closed: false };
        }, { forwarder, ref: (r) => new URLSearchParams(r.getQuery() ?? '').get('vmId') ?? undefined }),
      open: (ws) => {
        const conn = ws.getUserData();
        conn.unsubscribe = sampler.subscribe((samples) => {
          if (conn.closed) return;
          const mine = conn.vmId ? samples.filter((s) => s.vmId === conn.vmId) : samples.filter((s) => conn.visible(s.vmId));
          if (ws.getBufferedAmount() < 1 << 20) ws.send(packr.pack({ type: 'samples', intervalMs: sampler.intervalMs, samples: mine }), true);
        });
      },
      message: () => undefined,
      close: (ws) => {
        const conn = ws.getUserData();
        conn.closed = true;
        conn.unsubscribe?.();
      },
    }));
  };
}
