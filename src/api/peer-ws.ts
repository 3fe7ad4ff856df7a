/**
 * Inbound Raft traffic on `/v1/cluster/peer`. A peer proves membership with the shared
 * cluster secret and names its cluster; either wrong refuses the upgrade with a coded
 * error. A malformed frame or message closes the connection (code 4400 with the
 * reason) and is never stepped into Raft.
 */
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import { upgradeWebSocket, type WsRouteInstaller } from './server.js';
import { CHUNK_BYTES, FrameAssembler, HEADERS, PEER_PATH, secretMatches, type PeerEndpoint } from '../cluster/peer-frames.js';

interface Conn {
  member: number;
  assembler: FrameAssembler;
}

export function peerWsRoute(endpoint: () => PeerEndpoint | undefined, log: Logger): WsRouteInstaller {
  return (app) => {
    app.ws<Conn>(PEER_PATH, {
      compression: 0,
      maxPayloadLength: CHUNK_BYTES + 64,
      maxBackpressure: 64 << 20,
      idleTimeout: 60,
      sendPingsAutomatically: true,
      // Peers authenticate with the cluster secret, not the API token.
      upgrade: (res, req, context) =>
        upgradeWebSocket(res, req, context, undefined, (r): Conn => {
          const ep = endpoint();
          if (!ep) throw new NovaError('RAFT_STOPPED', 'this daemon\'s raft node is not running yet');
          if (!secretMatches(r.getHeader(HEADERS.secret), ep.secret)) {
            ep.refused('auth');
            throw new NovaError('CLUSTER_AUTH');
          }
          const cluster = r.getHeader(HEADERS.cluster);
          if (cluster !== ep.clusterId) {
            ep.refused('cluster');
            throw new NovaError('CLUSTER_MISMATCH', `this member belongs to cluster ${ep.clusterId}, not ${cluster || '(none)'}`);
          }
          const member = Number(r.getHeader(HEADERS.member));
          if (!Number.isSafeInteger(member) || member <= 0) throw new NovaError('RAFT_BAD_MESSAGE', 'missing or invalid member id header');
          const address = r.getHeader(HEADERS.address);
          if (address) ep.peerAddress(member, address);
          return { member, assembler: new FrameAssembler() };
        }),
      message: (ws, message) => {
        const conn = ws.getUserData();
        const ep = endpoint();
        if (!ep) return ws.end(1013, 'raft node stopped');
        try {
          const whole = conn.assembler.push(Buffer.from(message));
          if (whole?.batch) ep.stepBatch(whole.bytes);
          else if (whole) ep.step(whole.bytes);
        } catch (err) {
          const reason = err instanceof NovaError ? `${err.code}: ${err.message}` : String(err);
          ep.refused('message');
          log.warn({ peer: conn.member, reason }, 'refused a raft message; closing the peer connection');
          ws.end(4400, reason.slice(0, 120));
        }
      },
    });
  };
}
