/**
 * The joiner's side of a join: against a server that presents another CA than the
 * pinned one, the join stops at discovery, and the secret is never sent.
 */
import { createServer } from 'node:https';
import { afterEach, describe, expect, it } from 'vitest';
import { requestJoin } from '../../src/cluster/join.js';
import { caPin, createCa, createCsr, signMember } from '../../src/tls/pki.js';

const closers: Array<() => void> = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

describe('joining a cluster', () => {
  it('refuses a member whose CA is not the pinned one before sending anything: the impostor sees no join and no secret', async () => {
    const [real, impostor] = [await createCa('real'), await createCa('impostor')];
    const { keyPem, csrPem } = await createCsr(1);
    const cert = await signMember(impostor, csrPem, 1, ['127.0.0.1']);
    const seen: string[] = [];
    const server = createServer({ key: keyPem, cert }, (req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        seen.push(`${req.method} ${req.url} ${body}`);
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ caPem: impostor.certPem }));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    closers.push(() => server.close());
    const port = (server.address() as { port: number }).port;
    const secret = 'the-real-cluster-secret-0123456789';
    const err = await requestJoin(`127.0.0.1:${port}`, { memberId: 7, secret, address: '127.0.0.1:1', hosts: [] }, caPin(real.certPem)).catch((e) => e);
    expect(err).toMatchObject({ code: 'CLUSTER_CA_MISMATCH' });
    expect(seen).toEqual(['GET /v1/cluster/ca ']);
    expect(seen.join()).not.toContain(secret);
  });
});
