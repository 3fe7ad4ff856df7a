/**
 * The cluster CA as the members share it: its certificate and key live in the
 * replicated store under `tls/ca` (never reachable through the KV API, which has its
 * own prefix), so any member can sign a joiner's certificate or renew its own, and the
 * CA outlives the member that created it. The creator keeps the key on disk only until
 * the store has it.
 */
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import { createCa, createCsr, needsRenewal, signMember, type KeyAndCert } from '../tls/pki.js';
import { readCaKey, writeCaKey, writeMaterial, type MemberMaterial, type MemberTls } from '../tls/member-tls.js';
import type { ReplicatedStore } from './replicated-store.js';

const CA_STORE_KEY = 'tls/ca';
/** How often a member checks whether its certificate is due for renewal. */
const RENEW_CHECK_MS = 3_600_000;

/** A new cluster's CA and its first member's certificate, written to `dataDir` before the member serves anything. */
export async function bootstrapMaterial(dataDir: string, clusterId: string, memberId: number, hosts: string[]): Promise<MemberMaterial> {
  const ca = await createCa(clusterId);
  writeCaKey(dataDir, ca);
  const { keyPem, csrPem } = await createCsr(memberId);
  const material = { caPem: ca.certPem, keyPem, certPem: await signMember(ca, csrPem, memberId, hosts) };
  writeMaterial(dataDir, material);
  return material;
}

export class ClusterCa {
  #timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: ReplicatedStore,
    private readonly tls: MemberTls,
    private readonly hosts: string[],
    private readonly log: Logger,
  ) {}

  /** Puts the CA into the replicated store if this member made it and the store lacks it (retried until it lands). */
  async publish(): Promise<void> {
    const keyPem = readCaKey(this.tls.dataDir);
    if (!keyPem || (await this.store.get(CA_STORE_KEY))) return;
    const ca: KeyAndCert = { keyPem, certPem: this.tls.material.caPem };
    await this.store.write([{ key: CA_STORE_KEY, value: Buffer.from(JSON.stringify(ca)) }]);
    this.log.info('published the cluster CA to the replicated store');
  }

  /** Signs a certificate for `memberId` (a join that authenticated, or a renewal). */
  async sign(csrPem: string, memberId: number, hosts: string[]): Promise<{ certPem: string; caPem: string }> {
    const ca = await this.#ca();
    return { certPem: await signMember(ca, csrPem, memberId, hosts), caPem: ca.certPem };
  }

  /** Renews this member's certificate once it is due (two thirds through its life), checking hourly. */
  startRenewal(): void {
    const check = () =>
      this.renewIfDue().catch((err) => this.log.warn({ err: (err as Error).message }, 'renewing this member\'s certificate failed; will retry'));
    this.#timer = setInterval(check, RENEW_CHECK_MS);
    this.#timer.unref();
    void check();
  }

  /** A new key and certificate for this member when the current one is due (or `force`). */
  async renewIfDue(force = false): Promise<boolean> {
    if (!force && !needsRenewal(this.tls.material.certPem)) return false;
    const { keyPem, csrPem } = await createCsr(this.tls.memberId);
    const { certPem, caPem } = await this.sign(csrPem, this.tls.memberId, this.hosts);
    this.tls.replace({ keyPem, certPem, caPem });
    this.log.info('renewed this member\'s certificate');
    return true;
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  async #ca(): Promise<KeyAndCert> {
    const raw = await this.store.get(CA_STORE_KEY);
    if (raw) return JSON.parse(raw.toString('utf8')) as KeyAndCert;
    // Published moments from now, or this cluster predates certificates: the creator's own copy.
    const keyPem = readCaKey(this.tls.dataDir);
    if (keyPem) return { keyPem, certPem: this.tls.material.caPem };
    throw new NovaError('RAFT_NO_LEADER', 'the cluster CA is not in the replicated store yet; retry');
  }
}
