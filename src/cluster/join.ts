/**
 * Joining a cluster, the joiner's side (kubeadm's discovery, on NovaCron's cluster port):
 *  1. fetch the CA certificate from the member named by `--join`, over TLS that is not
 *     yet verified, and refuse unless its public key hashes to the pin (`--ca-hash`);
 *  2. with that CA now trusted, send the join (secret and CSR) over TLS verified
 *     against it, to a server whose certificate names a member; nothing secret is sent
 *     before step 1 passed;
 *  3. check that the certificate returned is the CA's, for this member.
 * The private key never leaves this host.
 */
import { Agent, request } from 'undici';
import { NovaError } from '../errors.js';
import { caPin, createCsr, memberIdFromAltNames, verifyMemberCert } from '../tls/pki.js';
import type { MemberMaterial } from '../tls/member-tls.js';
import { CA_PATH, JOIN_PATH, type JoinReply } from './cluster-port.js';

/** How long a joining daemon keeps asking while the member it asks is unreachable or leaderless. */
const JOIN_RETRY_MS = 30_000;

export interface Joiner {
  memberId: number;
  secret: string;
  /** The joiner's cluster port address, as peers will dial it. */
  address: string;
  /** Names and addresses the joiner's certificate should carry. */
  hosts: string[];
}

/** The member asked answered with an error: its status and code. */
class Refused extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Joins through `via` (a member's cluster port); returns the cluster id and this member's TLS material. */
export async function requestJoin(via: string, joiner: Joiner, pin: string): Promise<{ clusterId: string; material: MemberMaterial }> {
  const deadline = Date.now() + JOIN_RETRY_MS;
  for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
    let problem: string;
    try {
      return await joinOnce(via, joiner, pin);
    } catch (err) {
      if (err instanceof NovaError) throw err; // the CA or the certificate did not check out: never retried
      // A 4xx is a definite refusal (wrong secret, bad request); 5xx and network errors may pass.
      if (err instanceof Refused && err.status < 500) throw new NovaError('CLUSTER_JOIN_FAILED', `${via} refused the join: ${err.code}: ${err.message}`, { code: err.code });
      problem = err instanceof Refused ? `${err.code}: ${err.message}` : `cannot reach it: ${(err as Error).message}`;
    }
    if (Date.now() + delay > deadline) throw new NovaError('CLUSTER_JOIN_FAILED', `joining through ${via} failed: ${problem}`);
    await new Promise((r) => setTimeout(r, delay));
  }
}

async function joinOnce(via: string, joiner: Joiner, pin: string): Promise<{ clusterId: string; material: MemberMaterial }> {
  // 1. Discovery: whoever answers, the CA it names must be the pinned one.
  const discovery = new Agent({ connect: { rejectUnauthorized: false, minVersion: 'TLSv1.3' } });
  let caPem: string;
  try {
    caPem = (await call<{ caPem: string }>(discovery, `https://${via}${CA_PATH}`)).caPem;
  } finally {
    void discovery.close();
  }
  if (typeof caPem !== 'string' || caPin(caPem) !== pin) {
    throw new NovaError('CLUSTER_CA_MISMATCH', `the CA ${via} presents hashes to ${typeof caPem === 'string' ? caPin(caPem) : '(none)'}, not the pinned ${pin}`);
  }
  // 2. The join itself, to a member certified by that CA.
  const { keyPem, csrPem } = await createCsr(joiner.memberId);
  const verified = new Agent({
    connect: {
      ca: caPem,
      minVersion: 'TLSv1.3',
      checkServerIdentity: (_host, cert) => (memberIdFromAltNames(cert.subjectaltname) === undefined ? new Error('the server is not a cluster member') : undefined),
    },
  });
  let reply: JoinReply;
  try {
    reply = await call<JoinReply>(verified, `https://${via}${JOIN_PATH}`, { id: joiner.memberId, address: joiner.address, secret: joiner.secret, csr: csrPem, hosts: joiner.hosts });
  } finally {
    void verified.close();
  }
  // 3. What came back is ours and the CA's.
  if (reply.caPem !== caPem) throw new NovaError('CLUSTER_CA_MISMATCH', 'the join reply names another CA than the one discovered');
  if (verifyMemberCert(reply.certPem, caPem) !== joiner.memberId) throw new NovaError('CLUSTER_CERT_INVALID', 'the certificate returned is for another member');
  return { clusterId: reply.clusterId, material: { caPem, certPem: reply.certPem, keyPem } };
}

async function call<T>(dispatcher: Agent, url: string, body?: unknown): Promise<T> {
  const res = await request(url, {
    method: body === undefined ? 'GET' : 'POST',
    dispatcher,
    headersTimeout: 15_000,
    bodyTimeout: 15_000,
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const parsed = (await res.body.json().catch(() => ({}))) as T & { error?: { code: string; message: string } };
  if (res.statusCode === 200) return parsed;
  throw new Refused(res.statusCode, parsed.error?.code ?? 'HTTP_ERROR', parsed.error?.message ?? `HTTP ${res.statusCode}`);
}
