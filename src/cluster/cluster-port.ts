/**
 * The cluster port: where members talk to each other, apart from the API (as etcd's
 * peer port is apart from its client port), always over TLS 1.3 with the cluster's
 * certificates. Three things are served:
 *  - `GET /v1/cluster/ca`: the CA certificate, to anyone (a joiner checks it against
 *    the pin it was given before it trusts anything else);
 *  - `POST /v1/cluster/join`: a daemon with the cluster secret and a CSR becomes a
 *    learner and gets its certificate;
 *  - `/v1/cluster/peer` (WebSocket): Raft traffic, only from a client whose certificate
 *    the cluster CA signed. The member id is the certificate's; a claimed id that
 *    differs is refused, and every Raft message must be from that member.
 */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { WebSocketServer, type WebSocket } from 'ws';
import { z } from 'zod';
import { NovaError, toErrorBody } from '../errors.js';
import { parseJsonBody } from '../util/json-body.js';
import { HostPort } from '../config.js';
import { peerMember, type MemberTls } from '../tls/member-tls.js';
import { CHUNK_BYTES, FrameAssembler, HEADERS, PEER_PATH, type PeerEndpoint } from './peer-frames.js';

export const CA_PATH = '/v1/cluster/ca';
export const JOIN_PATH = '/v1/cluster/join';
/** A join body is a member id, an address, the secret and a CSR of a few hundred bytes. */
const MAX_JOIN_BODY = 16 << 10;
/** Connections the port holds at once (peers are a handful; the rest is strangers). */
const MAX_CONNECTIONS = 512;

export const JoinBody = z.strictObject({
  id: z.int().min(1).max(Number.MAX_SAFE_INTEGER),
  /** The joiner's cluster port, as peers should dial it. */
  address: HostPort,
  secret: z.string().min(1).max(256),
  csr: z.string().min(1).max(8192),
  /** Host names and addresses the joiner's certificate should carry besides its cluster address's host. */
  hosts: z.array(z.string().regex(/^[A-Za-z0-9.:-]{1,253}$/)).max(16).default([]),
});
export type JoinRequest = z.infer<typeof JoinBody>;

export interface JoinReply {
  clusterId: string;
  memberId: number;
  certPem: string;
  caPem: string;
  voters: number[];
  learners: number[];
}

export interface ClusterPortHandlers {
  /** The Raft side; undefined until the node runs. */
  peer(): PeerEndpoint | undefined;
  /** Admits a joiner whose body parsed (checks the secret itself). */
  join(req: JoinRequest, source: string): Promise<JoinReply>;
}

interface PeerConn {
  member: number;
  assembler: FrameAssembler;
}

export class ClusterPort {
  #server: Server;
  #wss = new WebSocketServer({ noServer: true, maxPayload: CHUNK_BYTES + 64, perMessageDeflate: false });
  #port = 0;

  private constructor(
    private readonly tls: MemberTls,
    private readonly handlers: ClusterPortHandlers,
    private readonly log: Logger,
  ) {
    this.#server = createServer({ ...tls.serverOptions(), requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 5_000 }, (req, res) => void this.#http(req, res));
    this.#server.maxConnections = MAX_CONNECTIONS;
    this.#server.on('upgrade', (req, socket, head) => this.#upgrade(req, socket, head));
    this.#server.on('tlsClientError', () => undefined); // a stranger's failed handshake is theirs
    // A renewed certificate serves every new connection; open ones keep theirs.
    tls.onReplace(() => this.#server.setSecureContext(this.tls.serverOptions()));
  }

  static async listen(host: string, port: number, tls: MemberTls, handlers: ClusterPortHandlers, log: Logger): Promise<ClusterPort> {
    const p = new ClusterPort(tls, handlers, log);
    await new Promise<void>((resolve, reject) => {
      p.#server.once('error', reject);
      p.#server.listen(port, host, () => {
        p.#server.off('error', reject);
        resolve();
      });
    });
    p.#port = (p.#server.address() as { port: number }).port;
    return p;
  }

  get port(): number {
    return this.#port;
  }

  close(): void {
    for (const ws of this.#wss.clients) ws.terminate();
    this.#server.close();
    this.#server.closeAllConnections();
  }

  async #http(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const send = (status: number, body: unknown) => {
      if (res.headersSent) return;
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    try {
      const path = (req.url ?? '').split('?')[0];
      if (path === CA_PATH && req.method === 'GET') return send(200, { caPem: this.tls.material.caPem });
      if (path === JOIN_PATH && req.method === 'POST') {
        if (!(req.headers['content-type'] ?? '').startsWith('application/json')) throw new NovaError('UNSUPPORTED_MEDIA_TYPE', 'a join body is application/json');
        const body = JoinBody.safeParse(parseJsonBody(await readBody(req, MAX_JOIN_BODY)));
        if (!body.success) throw new NovaError('VALIDATION_FAILED', body.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '));
        return send(200, await this.handlers.join(body.data, req.socket.remoteAddress ?? ''));
      }
      throw new NovaError('ROUTE_NOT_FOUND', `the cluster port serves ${CA_PATH}, ${JOIN_PATH} and ${PEER_PATH}`);
    } catch (err) {
      const { status, body } = toErrorBody(err);
      if (status >= 500) this.log.warn({ err: (err as Error).message }, 'a cluster port request failed');
      send(status, body);
    }
  }

  #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const refuse = (err: unknown) => {
      const { status, body } = toErrorBody(err);
      const text = JSON.stringify(body);
      socket.end(`HTTP/1.1 ${status} Refused\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
    };
    let member: number;
    const ep = this.handlers.peer();
    try {
      if ((req.url ?? '').split('?')[0] !== PEER_PATH) throw new NovaError('ROUTE_NOT_FOUND', `WebSockets on the cluster port are at ${PEER_PATH}`);
      const tlsSocket = req.socket as TLSSocket;
      try {
        member = peerMember(tlsSocket.getPeerCertificate(), tlsSocket.authorized, tlsSocket.authorizationError);
      } catch (err) {
        ep?.refused('auth');
        throw err;
      }
      if (!ep) throw new NovaError('RAFT_STOPPED', 'this daemon\'s raft node is not running yet');
      const cluster = header(req, HEADERS.cluster);
      if (cluster !== ep.clusterId) {
        ep.refused('cluster');
        throw new NovaError('CLUSTER_MISMATCH', `this member belongs to cluster ${ep.clusterId}, not ${cluster || '(none)'}`);
      }
      const claimed = header(req, HEADERS.member);
      if (claimed !== String(member)) {
        ep.refused('identity');
        throw new NovaError('CLUSTER_PEER_IDENTITY', `the certificate is member ${member}'s, the connection claims member ${claimed || '(none)'}`);
      }
      const address = header(req, HEADERS.address);
      if (address) {
        const parsed = HostPort.safeParse(address);
        if (parsed.success) ep.peerAddress(member, parsed.data);
      }
    } catch (err) {
      return refuse(err);
    }
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#serve(ws, { member, assembler: new FrameAssembler() }));
  }

  #serve(ws: WebSocket, conn: PeerConn): void {
    ws.on('error', () => undefined);
    ws.on('message', (data: Buffer, isBinary) => {
      const ep = this.handlers.peer();
      if (!ep) return ws.close(1013, 'raft node stopped');
      try {
        if (!isBinary) throw new NovaError('RAFT_BAD_MESSAGE', 'peer frames are binary');
        const whole = conn.assembler.push(data);
        if (whole?.batch) ep.stepBatch(whole.bytes, conn.member);
        else if (whole) ep.step(whole.bytes, conn.member);
      } catch (err) {
        const reason = err instanceof NovaError ? `${err.code}: ${err.message}` : String(err);
        ep.refused('message');
        this.log.warn({ peer: conn.member, reason }, 'refused a raft message; closing the peer connection');
        ws.close(4400, reason.slice(0, 120));
      }
    });
  }
}

function header(req: IncomingMessage, name: string): string {
  const v = req.headers[name];
  return typeof v === 'string' ? v : '';
}

/** The body as text, refusing more than `limit` bytes before buffering them. */
function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > limit) return reject(new NovaError('BODY_TOO_LARGE', `a join body is at most ${limit} bytes`));
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        reject(new NovaError('BODY_TOO_LARGE', `a join body is at most ${limit} bytes`));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
