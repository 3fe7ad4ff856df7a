import { webcrypto, X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { caPin, createCa, createCsr, memberIdFromAltNames, needsRenewal, signMember, verifyMemberCert, MEMBER_DAYS } from '../../src/tls/pki.js';

const DAY = 86_400_000;

describe('cluster PKI', () => {
  it('a member certificate is the CA\'s, for the member the signer names (not what the CSR asks), valid for 90 days, for servers and clients', async () => {
    const ca = await createCa('cluster-1');
    const { csrPem } = await createCsr(999); // asks to be member 999
    const pem = await signMember(ca, csrPem, 42, ['10.0.0.5', 'host-a']);
    expect(verifyMemberCert(pem, ca.certPem)).toBe(42);
    const cert = new X509Certificate(pem);
    expect(cert.subjectAltName).toBe('URI:urn:novacron:member:42, IP Address:10.0.0.5, DNS:host-a');
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'])); // serverAuth, clientAuth
    const lifetime = new Date(cert.validTo).getTime() - new Date(cert.validFrom).getTime();
    expect(Math.round(lifetime / DAY)).toBe(MEMBER_DAYS); // (backdated 5 minutes for clock skew)
    expect(new X509Certificate(ca.certPem).ca).toBe(true);
  });

  it('refuses another CA\'s certificate, an expired one, and a CSR not signed by its own key', async () => {
    const [ca, other] = [await createCa('a'), await createCa('b')];
    const { csrPem } = await createCsr(1);
    await expect(async () => verifyMemberCert(await signMember(other, csrPem, 1, []), ca.certPem)).rejects.toThrow(/not signed by the cluster CA/);
    const old = await signMember(ca, csrPem, 1, [], new Date(Date.now() - (MEMBER_DAYS + 1) * DAY));
    expect(() => verifyMemberCert(old, ca.certPem)).toThrow(/valid only from/);
    // A CSR whose signature does not match its content (one byte of the signature flipped).
    const der = Buffer.from(csrPem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
    der[der.length - 5]! ^= 0x01;
    const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    await expect(signMember(ca, tampered, 1, [])).rejects.toMatchObject({ code: 'CLUSTER_CSR_INVALID' });
    await expect(signMember(ca, 'not a csr', 1, [])).rejects.toMatchObject({ code: 'CLUSTER_CSR_INVALID' });
  });

  it('the pin is sha256 of the CA\'s public key: the same for its certificate, different for another CA', async () => {
    const [ca, other] = [await createCa('a'), await createCa('a')];
    expect(caPin(ca.certPem)).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(caPin(ca.certPem)).toBe(caPin(ca.certPem));
    expect(caPin(other.certPem)).not.toBe(caPin(ca.certPem));
  });

  it('reads a member id only from exactly one novacron member URI', () => {
    expect(memberIdFromAltNames('URI:urn:novacron:member:7, IP Address:127.0.0.1')).toBe(7);
    expect(memberIdFromAltNames('URI:urn:novacron:member:7, URI:urn:novacron:member:8')).toBeUndefined();
    expect(memberIdFromAltNames('DNS:member-7')).toBeUndefined();
    expect(memberIdFromAltNames('URI:urn:novacron:member:0')).toBeUndefined();
    expect(memberIdFromAltNames('URI:urn:novacron:member:7x')).toBeUndefined();
    expect(memberIdFromAltNames(undefined)).toBeUndefined();
  });

  it('a certificate is due for renewal once two thirds of its life have passed', async () => {
    const ca = await createCa('a');
    const pem = await signMember(ca, (await createCsr(1)).csrPem, 1, []);
    expect(needsRenewal(pem)).toBe(false);
    expect(needsRenewal(pem, new Date(Date.now() + (MEMBER_DAYS * 2 / 3 - 1) * DAY))).toBe(false);
    expect(needsRenewal(pem, new Date(Date.now() + (MEMBER_DAYS * 2 / 3 + 1) * DAY))).toBe(true);
  });

  it("a member certificate's key usage is not critical (QEMU's TLS refuses a critical one without keyEncipherment), and one of an earlier version with a critical key usage is due for renewal at once", async () => {
    const ca = await createCa('a');
    const pem = await signMember(ca, (await createCsr(1)).csrPem, 1, []);
    expect(new x509.X509Certificate(pem).getExtension(x509.KeyUsagesExtension)?.critical).toBe(false);
    const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;
    const old = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '01', name: 'CN=member-1', notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + MEMBER_DAYS * DAY), keys,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true)],
    });
    expect(needsRenewal(old.toString('pem'))).toBe(true);
  });
});
