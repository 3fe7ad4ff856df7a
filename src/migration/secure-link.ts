/**
 * TLS 1.3 on the migration port: the control connection, a cold migration's files and
 * the disk-mirror tunnel. The destination serves its member certificate; the source pins
 * it by the SHA-256 fingerprint its offer carried (the offer came over the target's API,
 * HTTPS checked against the cluster CA between members), so a daemon outside the cluster,
 * whose CA this one does not hold, is checked too. Who the source is, the migration's
 * single-use token says, as before.
 */
import type { Socket } from 'node:net';
import { connect, TLSSocket, type SecureContext } from 'node:tls';

/**
 * This member's certificate, as a server context, as a pin, and as PEM with the cluster
 * CA (for the native data link, and for QEMU's own TLS on a direct stream).
 */
export interface TransportTls {
  secureContext(): SecureContext;
  fingerprint(): string;
  readonly material: { caPem: string; certPem: string; keyPem: string };
}

/** Where a source dials, and the certificate it must find there. */
export interface PinnedTarget {
  host: string;
  port: number;
  /** The destination's certificate fingerprint (`AB:CD:…`, SHA-256). */
  certSha256: string;
}

/** The TLS server side of an accepted connection (the handshake runs on it; its errors close it). */
export function acceptTls(raw: Socket, tls: TransportTls): TLSSocket {
  const sock = new TLSSocket(raw, { isServer: true, secureContext: tls.secureContext() });
  sock.setNoDelay(true);
  return sock;
}

/**
 * Dials `target` over TLS; resolves once it has presented the pinned certificate (a
 * mismatch destroys the socket and rejects, naming both). Nothing may be written before
 * that: data written during the handshake would go out before the check.
 */
export function dialPinned(target: PinnedTarget): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // (Not checked against a CA: the pin below is the check.)
    const sock = connect({ host: target.host, port: target.port, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    sock.setNoDelay(true);
    sock.once('error', reject);
    sock.once('secureConnect', () => {
      const got = sock.getPeerX509Certificate()?.fingerprint256;
      if (got === target.certSha256) {
        sock.off('error', reject);
        return resolve(sock);
      }
      const err = new Error(`the destination's certificate (${got ?? 'none'}) is not the one its offer named (${target.certSha256})`);
      sock.destroy();
      reject(err);
    });
  });
}
