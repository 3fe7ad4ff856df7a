/**
 * The WebSocket relay (console, VNC, telemetry of a VM on another member) against real uWS
 * apps on loopback, over plain HTTP and over TLS (as members serve): an "owner" app serving
 * the route and a "relay" app that has no such VM and a forwarder that finds it on the
 * owner, after a lookup that takes a few milliseconds like the inventory read does.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import tls from 'node:tls';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { createCa, createCsr, signMember } from '../../src/tls/pki.js';
import { loadUws, type UWS } from '../../src/api/uws.js';
import { upgradeWebSocket } from '../../src/api/server.js';
import { relaying } from '../../src/api/ws-relay.js';
import type { Forwarder } from '../../src/api/forwarding.js';
import type { HostRecord } from '../../src/cluster/inventory.js';
import { NovaError } from '../../src/errors.js';

const { uws } = loadUws();
const listen = (app: UWS.TemplatedApp) =>
  new Promise<{ socket: UWS.us_listen_socket; port: number }>((resolve, reject) =>
    app.listen('127.0.0.1', 0, (s) => (s ? resolve({ socket: s, port: uws.us_socket_local_port(s) }) : reject(new Error('cannot listen')))),
  );
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.each([{ secure: false }, { secure: true }])('the WebSocket relay (TLS: $secure)', ({ secure }) => {
  const dir = mkdtempSync(join(tmpdir(), 'ws-relay-'));
  let caPem: string | undefined;
  /** What the forwarder says of the Raft configuration. */
  let alone = false;
  let owner: { socket: UWS.us_listen_socket; port: number };
  let relay: { socket: UWS.us_listen_socket; port: number };
  /** Connections the owner opened, and the forwarded-by header each carried. */
  const ownerOpens: string[] = [];
  const lookups: string[] = [];

  beforeAll(async () => {
    const app = () => {
      if (!secure) return uws.App();
      return uws.SSLApp({ key_file_name: join(dir, 'key.pem'), cert_file_name: join(dir, 'cert.pem') });
    };
    if (secure) {
      const ca = await createCa('relay-test');
      const csr = await createCsr(2);
      writeFileSync(join(dir, 'key.pem'), csr.keyPem, { mode: 0o600 });
      writeFileSync(join(dir, 'cert.pem'), await signMember(ca, csr.csrPem, 2, ['127.0.0.1']));
      caPem = ca.certPem;
    }
    // The owner: sends "ready" on open, echoes frames, ends with 4409 on "bye" (or at once with ?then=close); refuses vm-forbidden with 403.
    const ownerApp = app().ws<{ id: string; then: string; by: string }>('/v1/vms/:id/console', {
      upgrade: (res, req, context) => {
        const id = req.getParameter(0) ?? '';
        if (id === 'vm-forbidden') return void res.writeStatus('403 Forbidden').end('{}');
        res.upgrade({ id, then: req.getQuery('then') ?? '', by: req.getHeader('x-novacron-forwarded-by') }, req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'), req.getHeader('sec-websocket-extensions'), context);
      },
      open: (ws) => {
        ownerOpens.push(ws.getUserData().by);
        ws.send('ready', true);
        if (ws.getUserData().then === 'close') ws.end(4409, 'no console');
      },
      message: (ws, msg, binary) => {
        if (Buffer.from(msg).toString() === 'bye') return void ws.end(4409, 'bye');
        ws.send(msg, binary);
      },
    });
    owner = await listen(ownerApp);
    // A port nothing listens on (the member that has vm-gone is down).
    const gonePort = await new Promise<number>((resolve) => {
      const srv = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = srv.address() as net.AddressInfo;
        srv.close(() => resolve(port));
      });
    });
    const host = { member: 2, address: `127.0.0.1:${owner.port}`, tls: secure } as HostRecord;
    const forwarder: Forwarder = {
      self: 1,
      ...(caPem ? { ca: [caPem] } : {}),
      locate: async (_kind, ref) => {
        lookups.push(ref);
        await sleep(ref === 'vm-slow' ? 300 : 3);
        if (ref === 'vm-gone') return { ...host, member: 3, address: `127.0.0.1:${gonePort}` };
        return ref === 'vm-nowhere' ? undefined : host;
      },
      authorization: () => 'NovaMember test',
      send: () => Promise.reject(new Error('not used')),
      others: async () => [host],
      mayHaveOthers: () => true,
      alone: () => alone,
    };
    const relayApp = app().ws<object>('/v1/vms/:id/console', relaying<object>({
      maxPayloadLength: 1 << 20,
      upgrade: (res, req, context) =>
        upgradeWebSocket(res, req, context, undefined, () => {
          throw new NovaError('VM_NOT_FOUND');
        }, { forwarder: () => forwarder }),
      open: () => {
        throw new Error('the relay app has no VM of its own');
      },
    }));
    relay = await listen(relayApp);
  });

  afterAll(() => {
    uws.us_listen_socket_close(owner.socket);
    uws.us_listen_socket_close(relay.socket);
    rmSync(dir, { recursive: true, force: true });
  });

  const url = (vm: string, query = '') => `${secure ? 'wss' : 'ws'}://127.0.0.1:${relay.port}/v1/vms/${vm}/console${query}`;
  const clientTls = () => (caPem ? { ca: [caPem] } : {});

  /** Opens `vm`'s relayed console, runs `talk` on the first frame, and resolves with the close code and reason the client saw. */
  function session(vm: string, talk: (ws: WebSocket, frames: string[]) => void = () => {}): Promise<{ code: number; reason: string; frames: string[] }> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url(vm), clientTls());
      const frames: string[] = [];
      ws.on('message', (data: Buffer) => {
        frames.push(data.toString());
        if (frames.length === 1) talk(ws, frames);
      });
      ws.on('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
      ws.on('error', () => {});
      ws.on('close', (code, reason) => resolve({ code, reason: reason.toString(), frames }));
    });
  }

  /**
   * A hand-made upgrade request (with `connection`) over a raw socket: the status line, and
   * the close frame's code, or undefined when the connection ended without one.
   */
  function rawUpgrade(vm: string, query: string, connection: string): Promise<{ status: string; closeCode: number | undefined; done: boolean }> {
    return new Promise((resolve, reject) => {
      const sock = secure ? tls.connect({ port: relay.port, host: '127.0.0.1', ca: [caPem!] }) : net.connect(relay.port, '127.0.0.1');
      let buf = Buffer.alloc(0);
      sock.on(secure ? 'secureConnect' : 'connect', () =>
        sock.write(
          `GET /v1/vms/${vm}/console${query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: ${connection}\r\n` +
            `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        ),
      );
      // The status line and, once it has come, the close frame's code (walking the unmasked server frames).
      const parse = () => {
        const head = buf.indexOf('\r\n\r\n');
        const status = buf.subarray(0, Math.max(0, buf.indexOf('\r\n'))).toString();
        let at = head + 4;
        while (head >= 0 && at + 2 <= buf.length) {
          const opcode = buf[at]! & 0x0f;
          let len = buf[at + 1]! & 0x7f;
          let hdr = 2;
          if (len === 126) (len = buf.readUInt16BE(at + 2)), (hdr = 4);
          if (opcode === 8 && len >= 2 && at + hdr + 2 <= buf.length) return { status, closeCode: buf.readUInt16BE(at + hdr) as number | undefined, done: true };
          at += hdr + len;
        }
        return { status, closeCode: undefined, done: false };
      };
      sock.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        const r = parse();
        if (r.done) {
          sock.destroy(); // (uWS would wait for the client's close frame.)
          resolve(r);
        }
      });
      sock.on('error', reject);
      sock.on('close', () => resolve(parse())); // Ended without a close frame.
      setTimeout(() => sock.destroy(), 5000).unref();
    });
  }


    it('carries frames both ways and ends with the owner\'s close code on each of 60 relayed connections in a row', async () => {
      const outcomes: string[] = [];
      for (let i = 0; i < 60; i++) {
        const r = await session('vm-there', (ws) => {
          ws.send(`ping ${i}`);
          setTimeout(() => ws.send('bye'), 2);
        });
        const got = `${r.code} ${r.reason} ${r.frames.join(',')}`;
        if (got !== `4409 bye ready,ping ${i}`) outcomes.push(`#${i}: ${got}`);
      }
      expect(outcomes).toEqual([]);
      expect(ownerOpens.slice(-60).every((by) => by === '1')).toBe(true); // Each relayed, saying from which member.
    });

    // The upgrade used to wait for the lookup, and uWS then shut the new connection down
    // without a close frame on nearly every request that said "Connection: close".
    it('a client whose upgrade says "Connection: close" still gets the owner\'s close frame (30 in a row)', async () => {
      const seen: string[] = [];
      for (let i = 0; i < 30; i++) {
        const r = await rawUpgrade('vm-there', '?then=close', 'Upgrade, close');
        seen.push(`${r.status} ${r.closeCode}`);
        const bare = await rawUpgrade('vm-there', '?then=close', 'close');
        seen.push(`${bare.status} ${bare.closeCode}`);
      }
      expect(seen.filter((s) => s !== 'HTTP/1.1 101 Switching Protocols 4409')).toEqual([]);
    });

    it('a VM no member has: the connection opens and closes with 4404 VM_NOT_FOUND', async () => {
      const r = await session('vm-nowhere');
      expect(r.code).toBe(4404);
      expect(r.reason).toMatch(/^VM_NOT_FOUND: /);
    });

    it('a lone member refuses a VM it does not have with HTTP 404, before any lookup', async () => {
      alone = true;
      try {
        const before = lookups.length;
        await expect(session('vm-there')).rejects.toThrow('upgrade refused: HTTP 404');
        expect(lookups.length).toBe(before);
      } finally {
        alone = false;
      }
    });

    it('the owner\'s refusal of the upgrade comes back as 4000 + its HTTP status', async () => {
      const r = await session('vm-forbidden');
      expect(r.code).toBe(4403);
      expect(r.reason).toContain('HTTP 403');
    });

    it('an owner that cannot be reached: the connection closes with 4502', async () => {
      const r = await session('vm-gone');
      expect(r.code).toBe(4502);
      expect(r.reason).toMatch(/could not be reached: .*ECONNREFUSED/);
    });

    it('frames sent before the owner answered reach it in order', async () => {
      const r = await new Promise<{ code: number; frames: string[] }>((resolve) => {
        const ws = new WebSocket(url('vm-slow'), clientTls());
        const frames: string[] = [];
        ws.on('open', () => {
          for (const f of ['one', 'two', 'three']) ws.send(f);
        });
        ws.on('message', (d: Buffer) => {
          frames.push(d.toString());
          if (frames.length === 4) ws.send('bye');
        });
        ws.on('close', (code) => resolve({ code, frames }));
      });
      expect(r).toEqual({ code: 4409, frames: ['ready', 'one', 'two', 'three'] });
    });

    it('a client that leaves before the lookup answers never reaches the owner', async () => {
      const before = ownerOpens.length;
      const lookupsBefore = lookups.length;
      await new Promise<void>((resolve) => {
        const ws = new WebSocket(url('vm-slow'), clientTls());
        ws.on('open', () => ws.close(1000));
        ws.on('close', () => resolve());
      });
      expect(lookups.length).toBe(lookupsBefore + 1);
      await sleep(500); // The lookup answers at 300 ms.
      expect(ownerOpens.length).toBe(before);
      expect((await session('vm-there', (ws) => ws.send('bye'))).code).toBe(4409); // And the relay still serves.
    });

    it('more than 4 MiB sent before the owner answered closes the connection with 4413, unbuffered', async () => {
      const r = await new Promise<{ code: number }>((resolve) => {
        const ws = new WebSocket(url('vm-slow'), clientTls());
        ws.on('open', () => {
          for (let i = 0; i < 10; i++) ws.send(Buffer.alloc(512 << 10));
        });
        ws.on('error', () => {});
        ws.on('close', (code) => resolve({ code }));
      });
      expect(r.code).toBe(4413);
    });
});
