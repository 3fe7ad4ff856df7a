/**
 * Members vouch for their requests to each other with their certificates: an assertion
 * is accepted only from a certificate of this cluster's CA, for the member it names, for
 * this member, method and target, within its minute, and a mutating one only once; the
 * user it names is checked against this member's identity records. What a member sends
 * another never holds the caller's token.
 */
import { createServer } from 'node:https';
import type { IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createSigner } from 'fast-jwt';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, createCsr, signMember, type KeyAndCert } from '../../src/tls/pki.js';
import { MemberTls } from '../../src/tls/member-tls.js';
import { ASSERTION_MS, MemberAssertions } from '../../src/cluster/member-assertion.js';
import { Authenticator } from '../../src/auth/principal.js';
import { IdentityStore } from '../../src/auth/identity.js';
import { newToken } from '../../src/auth/secrets.js';
import { ClusterForwarder } from '../../src/api/forwarding.js';
import type { ReplicatedStore } from '../../src/cluster/replicated-store.js';
import type { Entry, WriteOp } from '../../src/store/store.js';
import { ROOT } from '../../src/auth/acl.js';

async function member(ca: KeyAndCert, id: number, hosts: string[] = []): Promise<MemberTls> {
  const { csrPem, keyPem } = await createCsr(id);
  return new MemberTls('/nonexistent', id, { caPem: ca.certPem, certPem: await signMember(ca, csrPem, id, hosts), keyPem });
}

let ca: KeyAndCert;
let one: MemberTls;
let two: MemberTls;
beforeAll(async () => {
  ca = await createCa('cluster-a');
  one = await member(ca, 1);
  two = await member(ca, 2, ['127.0.0.1']);
});

describe('member assertions', () => {
  it('verify at the member they are for, for the method and target they were made for, naming the sender and the user it acts for', () => {
    const header = new MemberAssertions(one).header(2, 'GET', '/v1/vms/web?x=1', { user: 'alice', tokenId: '0123456789abcdef' });
    expect(header).toMatch(/^NovaMember ey/);
    expect(new MemberAssertions(two).verify(header, 'GET', '/v1/vms/web?x=1')).toEqual({ member: 1, onBehalf: { user: 'alice', tokenId: '0123456789abcdef' } });
    // Only this one request, at this one member.
    expect(new MemberAssertions(two).verify(header, 'DELETE', '/v1/vms/web?x=1')).toBeUndefined();
    expect(new MemberAssertions(two).verify(header, 'GET', '/v1/vms/db?x=1')).toBeUndefined();
    expect(new MemberAssertions(one).verify(header, 'GET', '/v1/vms/web?x=1')).toBeUndefined(); // aud is 2
    // Acting for itself: no user.
    expect(new MemberAssertions(two).verify(new MemberAssertions(one).header(2, 'POST', '/v1/migrations/incoming'), 'POST', '/v1/migrations/incoming')).toEqual({ member: 1 });
  });

  it('are refused when older than a minute, from another CA\'s member, claiming another member than the certificate, tampered, or a mutating one seen before', async () => {
    let now = Date.now();
    const sender = new MemberAssertions(one, () => now);
    const receiver = new MemberAssertions(two, () => now);
    const old = sender.header(2, 'GET', '/v1/vms');
    now += ASSERTION_MS + 15_000;
    expect(receiver.verify(old, 'GET', '/v1/vms')).toBeUndefined();
    expect(receiver.verify(sender.header(2, 'GET', '/v1/vms'), 'GET', '/v1/vms')).toEqual({ member: 1 });

    const stranger = await member(await createCa('cluster-b'), 1);
    expect(new MemberAssertions(two).verify(new MemberAssertions(stranger).header(2, 'GET', '/v1/vms'), 'GET', '/v1/vms')).toBeUndefined();

    // Member 1's certificate and key, claiming to be member 3.
    const der = new X509Certificate(one.material.certPem).raw.toString('base64');
    const forge = createSigner({ key: one.material.keyPem, algorithm: 'ES256', header: { alg: 'ES256', x5c: [der] } });
    const claims = { aud: '2', htm: 'GET', htu: '/v1/vms', iat: Math.floor(Date.now() / 1000), jti: 'abcdefghijklmnopqrstuvwx' };
    expect(new MemberAssertions(two).verify(`NovaMember ${forge({ ...claims, iss: '1' })}`, 'GET', '/v1/vms')).toEqual({ member: 1 }); // (the forger works)
    expect(new MemberAssertions(two).verify(`NovaMember ${forge({ ...claims, iss: '3' })}`, 'GET', '/v1/vms')).toBeUndefined();
    // A payload changed after signing (another user).
    const [h, p, s] = new MemberAssertions(one).header(2, 'GET', '/v1/vms', { user: 'alice' }).slice('NovaMember '.length).split('.');
    const changed = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), sub: 'admin' })).toString('base64url');
    expect(new MemberAssertions(two).verify(`NovaMember ${h}.${changed}.${s}`, 'GET', '/v1/vms')).toBeUndefined();

    const fresh = new MemberAssertions(two);
    const post = new MemberAssertions(one).header(2, 'POST', '/v1/vms/web/start');
    expect(fresh.verify(post, 'POST', '/v1/vms/web/start')).toEqual({ member: 1 });
    expect(fresh.verify(post, 'POST', '/v1/vms/web/start')).toBeUndefined();
    expect(fresh.verify('Bearer nc1.0123456789abcdef.x', 'GET', '/v1/vms')).toBeUndefined();
  });
});

function memoryBackend() {
  const kv = new Map<string, Buffer>();
  return {
    write: async (ops: WriteOp[]) => {
      for (const o of ops) if (o.value) kv.set(o.key, Buffer.from(o.value));
      else kv.delete(o.key);
    },
    scan: async ({ start, end }: { start: string; end: string }): Promise<Entry[]> =>
      [...kv].filter(([k]) => k >= start && (end === '' || k < end)).sort(([a], [b]) => (a < b ? -1 : 1)).map(([key, value]) => ({ key, value })),
  };
}

describe('a member\'s request authenticates as the user it names', () => {
  it('with that user\'s token\'s privileges, refused once the token is revoked or the user disabled; a member acting for itself may only migrate and follow migrations', async () => {
    const identity = new IdentityStore();
    await identity.attach(memoryBackend(), 3_600_000);
    identity.stop();
    const now = new Date().toISOString();
    await identity.putUser({ name: 'alice', createdAt: now });
    await identity.putAcl({ path: '/', user: 'alice', role: 'Operator', propagate: true });
    const t = newToken();
    await identity.putToken({ id: t.id, user: 'alice', hash: t.hash, roles: ['Auditor'], createdAt: now });
    const auth = new Authenticator(identity);
    auth.useMembers(new MemberAssertions(two));
    const sender = new MemberAssertions(one);
    const call = { method: 'GET', url: '/v1/vms' };
    const as = (onBehalf?: { user: string; tokenId?: string }) => auth.authenticate(sender.header(2, call.method, call.url, onBehalf), call);

    const viaToken = as({ user: 'alice', tokenId: t.id });
    expect(viaToken.ok && viaToken.principal.label).toBe(`alice!${t.id}`);
    expect(viaToken.ok && viaToken.principal.can('VM.Audit', ROOT)).toBe(true);
    expect(viaToken.ok && viaToken.principal.can('VM.Allocate', ROOT)).toBe(false); // the token is an Auditor's
    expect(as({ user: 'bob', tokenId: t.id })).toEqual({ ok: false, reason: 'unknown' }); // not bob's token
    // Without another member's verifier, nothing a member says is accepted.
    expect(new Authenticator(identity).authenticate(sender.header(2, call.method, call.url), call)).toEqual({ ok: false, reason: 'unknown' });

    const self = as();
    expect(self.ok && self.principal.privilegesOn(ROOT)).toEqual(['VM.Audit', 'VM.Migrate']);

    await identity.deleteToken(t.id);
    expect(as({ user: 'alice', tokenId: t.id })).toEqual({ ok: false, reason: 'unknown' });
    const user = as({ user: 'alice' });
    expect(user.ok && user.principal.can('VM.Allocate', ROOT)).toBe(true);
    await identity.putUser({ name: 'alice', createdAt: now, disabled: true });
    expect(as({ user: 'alice' })).toEqual({ ok: false, reason: 'disabled' });
  });
});

describe('what one member sends another', () => {
  let server: ReturnType<typeof createServer>;
  const seen: IncomingHttpHeaders[] = [];
  beforeAll(async () => {
    server = createServer({ key: two.material.keyPem, cert: two.material.certPem }, (req, res) => {
      seen.push(req.headers);
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  });
  afterAll(() => server.close());

  it('a forwarded request carries this member\'s assertion for the caller, which the owner verifies, and never a bearer token', async () => {
    const identity = new IdentityStore();
    const caller = new Authenticator(identity, 'configured-token-0123456789').authenticate('Bearer configured-token-0123456789');
    expect(caller.ok).toBe(true);
    const forwarder = new ClusterForwarder({} as ReplicatedStore, new MemberAssertions(one), [ca.certPem]);
    const owner = { member: 2, node: 'b', address: `127.0.0.1:${(server.address() as AddressInfo).port}`, tls: true } as Parameters<typeof forwarder.send>[0];
    const reply = await forwarder.send(owner, { method: 'POST', url: '/v1/vms/web/start', headers: { 'content-type': 'application/json' }, body: Buffer.from('{}'), as: caller.ok ? caller.principal : undefined });
    forwarder.close();
    expect(reply.status).toBe(200);
    const headers = seen.at(-1)!;
    expect(JSON.stringify(headers)).not.toContain('configured-token-0123456789');
    expect(headers.authorization).toMatch(/^NovaMember /);
    expect(new MemberAssertions(two).verify(headers.authorization!, 'POST', '/v1/vms/web/start')).toEqual({ member: 1, onBehalf: { user: 'admin' } });
    expect(headers['x-novacron-forwarded-by']).toBe('1');
  });
});
