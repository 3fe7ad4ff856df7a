/**
 * The cluster's certificate authority and its member certificates (ECDSA P-256,
 * @peculiar/x509 over Node's WebCrypto). The first member creates the CA; every member's
 * certificate names it by `urn:novacron:member:<id>` in its subjectAltName, which is what
 * a peer connection's member id is read from (never from anything the peer says).
 *
 * A joining daemon makes its own key and sends only a CSR; the signer ignores what the
 * CSR asks for except the public key, and names the member the join authenticated.
 * The CA is pinned by the SHA-256 of its SubjectPublicKeyInfo (`sha256:<hex>`, as
 * kubeadm's `--discovery-token-ca-cert-hash`).
 */
import 'reflect-metadata'; // @peculiar/x509's dependency injection needs the Reflect metadata API.
import * as x509 from '@peculiar/x509';
import { createHash, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { NovaError } from '../errors.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
/** The CA outlives every certificate it signs many times over. */
export const CA_DAYS = 3650;
/** Member certificates are renewed once two thirds of this has passed (see `needsRenewal`). */
export const MEMBER_DAYS = 90;
/** Backdated, so a peer whose clock is a little behind accepts a certificate made just now. */
const CLOCK_SKEW_MS = 5 * 60_000;

export interface KeyAndCert {
  /** PEM, PKCS#8. */
  keyPem: string;
  certPem: string;
}

export interface KeyAndCsr {
  keyPem: string;
  csrPem: string;
}

const MEMBER_URI = /^urn:novacron:member:(\d{1,16})$/;
export const memberUri = (id: number) => `urn:novacron:member:${id}`;

/** A new CA for `clusterId`. */
export async function createCa(clusterId: string, now = new Date()): Promise<KeyAndCert> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=NovaCron cluster CA, O=${escapeRdn(clusterId)}`,
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(now.getTime() + CA_DAYS * DAY_MS),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { keyPem: await exportKey(keys.privateKey), certPem: cert.toString('pem') };
}

/** A member's own key and the request that carries its public half to the signer. */
export async function createCsr(memberId: number): Promise<KeyAndCsr> {
  const keys = await newKeys();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=member-${memberId}`, keys, signingAlgorithm: ALG });
  return { keyPem: await exportKey(keys.privateKey), csrPem: csr.toString('pem') };
}

/**
 * Signs a member certificate for `memberId` with the public key of `csrPem` (whose
 * self-signature must verify). `hosts` are the names and addresses the member serves
 * on (subjectAltName DNS/IP entries, for clients that check the host name).
 */
export async function signMember(ca: KeyAndCert, csrPem: string, memberId: number, hosts: string[], now = new Date()): Promise<string> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (err) {
    throw new NovaError('CLUSTER_CSR_INVALID', `the certificate request does not parse: ${(err as Error).message}`);
  }
  if (!(await csr.verify())) throw new NovaError('CLUSTER_CSR_INVALID', 'the certificate request is not signed by its own key');
  const caCert = new x509.X509Certificate(ca.certPem);
  const signingKey = await importKey(ca.keyPem);
  const publicKey = await csr.publicKey.export(ALG, ['verify']);
  const names: x509.JsonGeneralName[] = [{ type: 'url', value: memberUri(memberId) }];
  for (const h of new Set(hosts)) names.push(isIp(h) ? { type: 'ip', value: h } : { type: 'dns', value: h });
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=member-${memberId}`,
    issuer: caCert.subject,
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(now.getTime() + MEMBER_DAYS * DAY_MS),
    signingKey,
    publicKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      // Not critical: QEMU's x509 credentials (a direct migration stream) refuse a server
      // certificate whose *critical* key usage lacks keyEncipherment, which an EC key must
      // not have (RFC 5480); a non-critical one only draws a warning.
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, false),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(names),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return cert.toString('pem');
}

/** The CA's pin: `sha256:` and the hex SHA-256 of its SubjectPublicKeyInfo. */
export function caPin(caPem: string): string {
  const spki = new X509Certificate(caPem).publicKey.export({ type: 'spki', format: 'der' });
  return `sha256:${createHash('sha256').update(spki).digest('hex')}`;
}

/** The member id a certificate's subjectAltName names (Node's `subjectaltname` text), if exactly one. */
export function memberIdFromAltNames(altNames: string | undefined): number | undefined {
  if (!altNames) return undefined;
  const ids = altNames
    .split(', ')
    .filter((n) => n.startsWith('URI:'))
    .map((n) => MEMBER_URI.exec(n.slice(4))?.[1])
    .filter((x): x is string => x !== undefined);
  if (ids.length !== 1) return undefined;
  const id = Number(ids[0]);
  return Number.isSafeInteger(id) && id > 0 ? id : undefined;
}

/**
 * Checks that `certPem` is a member certificate issued by `caPem` and valid at `now`;
 * returns the member id it names. Used where no TLS handshake checked it (a join's reply).
 */
export function verifyMemberCert(certPem: string, caPem: string, now = new Date()): number {
  const cert = new X509Certificate(certPem);
  const ca = new X509Certificate(caPem);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) throw new NovaError('CLUSTER_CERT_INVALID', 'the certificate is not signed by the cluster CA');
  if (now < new Date(cert.validFrom) || now > new Date(cert.validTo)) throw new NovaError('CLUSTER_CERT_INVALID', `the certificate is valid only from ${cert.validFrom} to ${cert.validTo}`);
  const id = memberIdFromAltNames(cert.subjectAltName);
  if (id === undefined) throw new NovaError('CLUSTER_CERT_INVALID', 'the certificate names no member');
  return id;
}

/** True once two thirds of the certificate's lifetime have passed (or it is not valid at all). */
export function needsRenewal(certPem: string, now = new Date()): boolean {
  const cert = new X509Certificate(certPem);
  const from = new Date(cert.validFrom).getTime();
  const to = new Date(cert.validTo).getTime();
  return now.getTime() >= from + ((to - from) * 2) / 3 || now.getTime() < from || criticalKeyUsage(certPem);
}

/** Member certificates of earlier versions marked their key usage critical, which QEMU's TLS refuses: they are renewed at once. */
function criticalKeyUsage(certPem: string): boolean {
  return new x509.X509Certificate(certPem).getExtension(x509.KeyUsagesExtension)?.critical === true;
}

async function newKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function exportKey(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key as webcrypto.CryptoKey));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
}

async function importKey(pem: string): Promise<CryptoKey> {
  const der = Buffer.from(pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
  return (await webcrypto.subtle.importKey('pkcs8', der, ALG, false, ['sign'])) as CryptoKey;
}

/** 16 random bytes, positive (RFC 5280 wants serials positive and at most 20 bytes). */
function serial(): string {
  const b = randomBytes(16);
  b[0]! &= 0x7f;
  b[0]! |= 0x01;
  return b.toString('hex');
}

function isIp(h: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(h) || h.includes(':');
}

function escapeRdn(v: string): string {
  return v.replace(/[,+"\\<>;=]/g, (c) => `\\${c}`);
}
