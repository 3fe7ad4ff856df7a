/**
 * The API over HTTPS (uWS SSLApp): with the member's certificate (checked against the
 * cluster CA, which the CLI finds in the data dir), or with an operator's own certificate.
 */
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { api, BIN, removeDir, spawnDaemon, tempDataDir, trustCa, type DaemonHandle } from '../helpers/daemon.js';
import { createCa, createCsr, signMember } from '../../src/tls/pki.js';

let d: DaemonHandle | undefined;
afterEach(async () => {
  await d?.kill();
  if (d) removeDir(d.dataDir);
  d = undefined;
});

/** The serial of the certificate a new TLS connection to `port` is served, checked against `ca` for the name 127.0.0.1. */
function servedSerial(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, ca }, () => {
      resolve(s.getPeerX509Certificate()!.serialNumber);
      s.end();
    });
    s.on('error', reject);
  });
}

const memberPem = (dir: string) => readFileSync(join(dir, 'tls', 'member.pem'), 'utf8');

describe('API over HTTPS', { timeout: 60_000 }, () => {
  it('with --api-tls on, the API is HTTPS with the member certificate: the cluster CA verifies it for 127.0.0.1, the CLI finds that CA in the data dir, another CA refuses it, and plain HTTP gets no answer', async () => {
    d = await spawnDaemon({ args: ['--api-tls', 'on'] });
    expect(d.url).toBe(`https://127.0.0.1:${d.port}`);
    expect((await api(d.url, 'GET', '/v1/vms')).status).toBe(200);
    const ca = readFileSync(join(d.dataDir, 'tls', 'ca.pem'), 'utf8');
    expect(await servedSerial(d.port, ca)).toBe(new X509Certificate(memberPem(d.dataDir)).serialNumber);
    const other = await createCa('someone-else');
    await expect(servedSerial(d.port, other.certPem)).rejects.toThrow(/certificate/i);
    // Plain HTTP to the HTTPS port: no HTTP answer comes back.
    const plain = await new Promise<string>((resolve) => {
      let got = '';
      const s = connect(d!.port, '127.0.0.1', () => s.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'));
      s.on('data', (b) => (got += b.toString('latin1')));
      s.on('close', () => resolve(got));
      s.on('error', () => resolve(got));
      setTimeout(() => s.destroy(), 2000).unref();
    });
    expect(plain).not.toMatch(/^HTTP\/1\.1 200/);
    // The CLI on this host: the token and the CA from the data dir.
    const cli = (...args: string[]) => spawnSync(process.execPath, [BIN, '--url', d!.url, '--json', ...args], { encoding: 'utf8', env: { ...process.env, NOVACRON_DATA_DIR: d!.dataDir }, timeout: 20_000 });
    const listed = cli('vm', 'list');
    expect(listed.status, listed.stderr).toBe(0);
    expect(JSON.parse(listed.stdout)).toEqual([]);
    const otherCaFile = join(d.dataDir, 'other-ca.pem');
    writeFileSync(otherCaFile, other.certPem);
    const refused = cli('--ca-file', otherCaFile, 'vm', 'list');
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(/cannot reach the NovaCron daemon/);
  });

  it('an operator\'s own certificate (--api-cert-file/--api-key-file) is served instead of the member\'s, and a renewal leaves it alone', async () => {
    const dir = tempDataDir();
    const ca = await createCa('operator');
    const { keyPem, csrPem } = await createCsr(1);
    const certFile = join(dir, 'api.pem');
    const keyFile = join(dir, 'api.key');
    writeFileSync(certFile, await signMember(ca, csrPem, 1, ['127.0.0.1']));
    writeFileSync(keyFile, keyPem, { mode: 0o600 });
    d = await spawnDaemon({ dataDir: join(dir, 'data'), args: ['--api-cert-file', certFile, '--api-key-file', keyFile] });
    try {
      expect(d.url).toMatch(/^https:/);
      trustCa(d.url, ca.certPem);
      const own = new X509Certificate(readFileSync(certFile)).serialNumber;
      expect(await servedSerial(d.port, ca.certPem)).toBe(own);
      expect((await api(d.url, 'POST', '/v1/cluster/certificate')).status).toBe(200);
      expect(await servedSerial(d.port, ca.certPem)).toBe(own);
    } finally {
      await d.kill();
      removeDir(dir);
      d = undefined;
    }
  });

  it('a --trust-ca-file that cannot be read or holds no certificate stops the daemon at start with CONFIG_INVALID', async () => {
    const dir = tempDataDir();
    try {
      const notPem = join(dir, 'not.pem');
      writeFileSync(notPem, 'hello');
      for (const [file, why] of [[join(dir, 'missing.pem'), /cannot read trustCaFile/], [notPem, /holds no PEM certificate/]] as const) {
        const out = await spawnDaemon({ dataDir: join(dir, 'data'), args: ['--trust-ca-file', file], expectFailure: true }).catch((e) => String(e.output ?? e.message));
        expect(out).toMatch(/CONFIG_INVALID/);
        expect(out).toMatch(why);
      }
    } finally {
      removeDir(dir);
    }
  });
});
