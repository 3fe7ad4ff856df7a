import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { X509Certificate } from 'node:crypto';
import { createServer, type Server } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdTunnel } from '../../src/migration/nbd-tunnel.js';
import { LinkBucket } from '../../src/native/miglink.js';
import { FrameReader, FrameType } from '../../src/migration/wire.js';
import { createCa, createCsr, signMember } from '../../src/tls/pki.js';

/** A key and certificate as a destination member has them, and the certificate's pin. */
async function memberCert(): Promise<{ key: string; cert: string; pin: string }> {
  const ca = await createCa('tunnel-test');
  const { keyPem, csrPem } = await createCsr(1);
  const cert = await signMember(ca, csrPem, 1, ['127.0.0.1']);
  return { key: keyPem, cert, pin: new X509Certificate(cert).fingerprint256 };
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A stand-in destination daemon: reads the hello, then answers NBD-style (server first) and counts bytes. */
async function destination(tls: { key: string; cert: string }): Promise<{ port: number; hellos: unknown[]; received: () => number; server: Server }> {
  const hellos: unknown[] = [];
  let received = 0;
  const server = createServer({ key: tls.key, cert: tls.cert }, (sock) => {
    const reader = new FrameReader();
    let greeted = false;
    sock.on('data', (chunk: Buffer) => {
      if (greeted) return void (received += chunk.length);
      const [hello] = reader.push(chunk);
      if (!hello) return; // (the hello's parts may come in separate TLS records)
      expect(hello.type).toBe(FrameType.Control);
      hellos.push(JSON.parse(hello!.payload.toString()));
      greeted = true;
      sock.write('GREETING');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => server.close());
  return { port: (server.address() as { port: number }).port, hellos, received: () => received, server };
}

describe('disk-mirror tunnel', () => {
  it('announces each connection as an nbd stream of the migration over TLS to the pinned certificate, passes bytes both ways, and keeps to the link cap', async () => {
    const tls = await memberCert();
    const dest = await destination(tls);
    const dir = mkdtempSync(join(tmpdir(), 'nc-tunnel-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const errors: Error[] = [];
    const tunnel = await NbdTunnel.open(join(dir, 't.sock'), { host: '127.0.0.1', port: dest.port, certSha256: tls.pin, migrationId: 'mig-1', token: 'ab'.repeat(24) }, (e) => errors.push(e), new LinkBucket(8e6));
    cleanups.push(() => tunnel.close());

    const client = connect(tunnel.socketPath);
    const greeting = await new Promise<string>((r) => client.once('data', (d) => r(d.toString())));
    expect(greeting).toBe('GREETING');
    expect(dest.hellos).toEqual([{ type: 'hello', version: 1, migrationId: 'mig-1', token: 'ab'.repeat(24), stream: 'nbd' }]);

    const total = 4 << 20;
    const t0 = performance.now();
    for (let off = 0; off < total; off += 64 << 10) client.write(Buffer.alloc(64 << 10, 1));
    while (dest.received() < total) await new Promise((r) => setTimeout(r, 10));
    const seconds = (performance.now() - t0) / 1000;
    // 4 MiB at 8 MB/s, minus the bucket's burst: well over a third of a second.
    expect(seconds).toBeGreaterThan(0.4);
    expect(errors).toEqual([]);
    client.destroy();
  });

  it('refuses a destination that presents another certificate than the pinned one: the token never reaches it', async () => {
    const [real, impostor] = [await memberCert(), await memberCert()];
    const dest = await destination(impostor);
    const dir = mkdtempSync(join(tmpdir(), 'nc-tunnel-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const errors: Error[] = [];
    const tunnel = await NbdTunnel.open(join(dir, 't.sock'), { host: '127.0.0.1', port: dest.port, certSha256: real.pin, migrationId: 'mig-1', token: 'ab'.repeat(24) }, (e) => errors.push(e));
    cleanups.push(() => tunnel.close());
    const client = connect(tunnel.socketPath);
    await new Promise((r) => client.on('close', r));
    expect(errors.map((e) => e.message).join()).toMatch(/not the one its offer named/);
    expect(dest.hellos).toEqual([]);
  });
});
