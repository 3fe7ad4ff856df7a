/**
 * This member's TLS material, kept in `<dataDir>/tls/` (0700): the cluster CA's
 * certificate (`ca.pem`), the member's key (`member.key`, 0600) and certificate
 * (`member.pem`); on the member that created the cluster also the CA's key (`ca.key`,
 * 0600) until it is in the replicated store. `MemberTls` hands out the options of
 * every TLS server and client between members, and swaps in a renewed certificate
 * without a restart (servers get a new secure context; new connections use it).
 */
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { createSecureContext, type PeerCertificate, type SecureContext, type SecureContextOptions } from 'node:tls';
import { NovaError } from '../errors.js';
import { writeFileDurably } from '../util/durable-file.js';
import { memberIdFromAltNames, type KeyAndCert } from './pki.js';

export interface CertificateInfo {
  serial: string;
  notBefore: string;
  notAfter: string;
}

export interface MemberMaterial {
  caPem: string;
  certPem: string;
  keyPem: string;
}

const FILES = { caPem: 'ca.pem', certPem: 'member.pem', keyPem: 'member.key' } as const;
const CA_KEY = 'ca.key';

export const tlsDir = (dataDir: string) => join(dataDir, 'tls');

/** The files of this member's key and certificate (what the API serves HTTPS with). */
export function memberCertFiles(dataDir: string): { keyFile: string; certFile: string } {
  return { keyFile: join(tlsDir(dataDir), FILES.keyPem), certFile: join(tlsDir(dataDir), FILES.certPem) };
}

export function readMaterial(dataDir: string): MemberMaterial | undefined {
  const dir = tlsDir(dataDir);
  if (!existsSync(join(dir, FILES.certPem))) return undefined;
  const read = (f: string) => readFileSync(join(dir, f), 'utf8');
  return { caPem: read(FILES.caPem), certPem: read(FILES.certPem), keyPem: read(FILES.keyPem) };
}

/** Durable and atomic per file; the key is written first, so a certificate never names a key that is not there. */
export function writeMaterial(dataDir: string, m: MemberMaterial): void {
  const dir = tlsDir(dataDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileDurably(join(dir, FILES.keyPem), m.keyPem, { mode: 0o600 });
  writeFileDurably(join(dir, FILES.caPem), m.caPem, { mode: 0o644 });
  writeFileDurably(join(dir, FILES.certPem), m.certPem, { mode: 0o644 });
}

/** The CA's key on the member that made it, while the replicated store may not have it yet. */
export function writeCaKey(dataDir: string, ca: KeyAndCert): void {
  mkdirSync(tlsDir(dataDir), { recursive: true, mode: 0o700 });
  writeFileDurably(join(tlsDir(dataDir), CA_KEY), ca.keyPem, { mode: 0o600 });
}

export function readCaKey(dataDir: string): string | undefined {
  const path = join(tlsDir(dataDir), CA_KEY);
  return existsSync(path) ? readFileSync(path, 'utf8') : undefined;
}

export function removeCaKey(dataDir: string): void {
  rmSync(join(tlsDir(dataDir), CA_KEY), { force: true });
}

/** The member a verified peer certificate names, or why it is not acceptable. */
export function peerMember(cert: PeerCertificate | undefined, authorized: boolean, authorizationError?: Error | string): number {
  if (!cert || Object.keys(cert).length === 0) throw new NovaError('CLUSTER_AUTH', 'no client certificate: members authenticate with their cluster certificate');
  if (!authorized) throw new NovaError('CLUSTER_AUTH', `the client certificate is not valid for this cluster: ${String(authorizationError ?? 'unverified')}`);
  const id = memberIdFromAltNames(cert.subjectaltname);
  if (id === undefined) throw new NovaError('CLUSTER_AUTH', 'the client certificate names no member');
  return id;
}

export class MemberTls {
  #material: MemberMaterial;
  #listeners: Array<(m: MemberMaterial) => void> = [];
  #context: { context: SecureContext; fingerprint: string; info: CertificateInfo } | undefined;

  constructor(
    readonly dataDir: string,
    readonly memberId: number,
    material: MemberMaterial,
  ) {
    this.#material = material;
  }

  get material(): MemberMaterial {
    return this.#material;
  }

  /** TLS 1.3 server that asks every client for a certificate; routes decide what a client without one may do. */
  serverOptions(): SecureContextOptions & { requestCert: true; rejectUnauthorized: false; minVersion: 'TLSv1.3' } {
    const m = this.#material;
    return { key: m.keyPem, cert: m.certPem, ca: m.caPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.3' };
  }

  /**
   * A client that presents this member's certificate and accepts only a server whose
   * certificate the cluster CA signed for member `expect` (any member when undefined).
   */
  clientOptions(expect?: number): { key: string; cert: string; ca: string; minVersion: 'TLSv1.3'; checkServerIdentity: (host: string, cert: PeerCertificate) => Error | undefined } {
    const m = this.#material;
    return {
      key: m.keyPem,
      cert: m.certPem,
      ca: m.caPem,
      minVersion: 'TLSv1.3',
      checkServerIdentity: (_host, cert) => {
        const id = memberIdFromAltNames(cert.subjectaltname);
        if (id === undefined) return new Error('the server\'s certificate names no cluster member');
        if (expect !== undefined && id !== expect) return new Error(`the server is member ${id}, not member ${expect}`);
        return undefined;
      },
    };
  }

  /** A server context with this member's key and certificate (made once per certificate: TLS servers wrapping raw sockets). */
  secureContext(): SecureContext {
    return this.#current().context;
  }

  /** The SHA-256 fingerprint of this member's certificate (`AB:CD:…`, as Node's `fingerprint256`), which a peer may pin. */
  fingerprint(): string {
    return this.#current().fingerprint;
  }

  /** This member's certificate: its serial and validity. */
  certificateInfo(): CertificateInfo {
    return this.#current().info;
  }

  /** What is derived from the material, once per certificate. */
  #current(): { context: SecureContext; fingerprint: string; info: CertificateInfo } {
    if (this.#context) return this.#context;
    const m = this.#material;
    const cert = new X509Certificate(m.certPem);
    return (this.#context = {
      context: createSecureContext({ key: m.keyPem, cert: m.certPem, minVersion: 'TLSv1.3' }),
      fingerprint: cert.fingerprint256,
      info: { serial: cert.serialNumber, notBefore: new Date(cert.validFrom).toISOString(), notAfter: new Date(cert.validTo).toISOString() },
    });
  }

  /** Installs a renewed certificate (and key): written to disk first, then used by every new connection. */
  replace(material: MemberMaterial): void {
    writeMaterial(this.dataDir, material);
    this.#material = material;
    this.#context = undefined;
    for (const fn of this.#listeners) fn(material);
  }

  onReplace(fn: (m: MemberMaterial) => void): void {
    this.#listeners.push(fn);
  }
}
