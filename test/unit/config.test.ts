import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isLoopback, loadConfig, parseListen } from '../../src/config.js';
import { apiTlsFiles } from '../../src/daemon.js';

describe('config', () => {
  it('applies defaults', () => {
    const c = loadConfig({ flags: {}, env: {} });
    expect(c).toMatchObject({ host: '127.0.0.1', port: 7700, dataDir: './data', driver: 'auto', logLevel: 'info' });
  });

  it('layers flags over env over file', async () => {
    const { writeFileSync, mkdtempSync } = await import('node:fs');
    const file = `${mkdtempSync('/tmp/novacron-cfg-')}/c.json`;
    writeFileSync(file, JSON.stringify({ listen: '127.0.0.1:1', dataDir: '/from-file', logLevel: 'debug' }));
    const c = loadConfig({ flags: { listen: '127.0.0.1:3' }, env: { NOVACRON_LISTEN: '127.0.0.1:2', NOVACRON_DATA_DIR: '/from-env' }, configFile: file });
    expect(c).toMatchObject({ port: 3, dataDir: '/from-env', logLevel: 'debug' });
  });

  it('the API is HTTPS on every address but loopback (with --api-tls on there too); the cluster port defaults to API port + 1', () => {
    const files = (listen: string, more: Record<string, unknown> = {}) => apiTlsFiles(loadConfig({ flags: { listen, ...more }, env: {} }), '/d');
    expect(files('127.0.0.1:7700')).toBeUndefined();
    expect(files('[::1]:7700')).toBeUndefined();
    expect(files('0.0.0.0:7700')).toEqual({ keyFile: '/d/tls/member.key', certFile: '/d/tls/member.pem' });
    expect(files('10.0.0.1:7700')).toEqual({ keyFile: '/d/tls/member.key', certFile: '/d/tls/member.pem' });
    expect(files('127.0.0.1:7700', { apiTls: 'on' })).toEqual({ keyFile: '/d/tls/member.key', certFile: '/d/tls/member.pem' });
    expect(files('127.0.0.1:7700', { apiCertFile: '/etc/c.pem', apiKeyFile: '/etc/k.pem' })).toEqual({ keyFile: '/etc/k.pem', certFile: '/etc/c.pem' });
    expect(() => loadConfig({ flags: { apiCertFile: '/etc/c.pem' }, env: {} })).toThrow(/both apiCertFile and apiKeyFile/);
    expect(() => loadConfig({ flags: { apiTls: 'off' }, env: {} })).toThrow(/apiTls/);
    expect(loadConfig({ flags: {}, env: {} }).peer).toEqual({ host: '127.0.0.1', port: 7701 });
    expect(loadConfig({ flags: { listen: '127.0.0.1:0' }, env: {} }).peer).toEqual({ host: '127.0.0.1', port: 0 });
    expect(loadConfig({ flags: { peerListen: '10.1.1.1:2380' }, env: {} }).peer).toEqual({ host: '10.1.1.1', port: 2380 });
  });

  it('parses listen addresses', () => {
    expect(parseListen('[::1]:80')).toEqual({ host: '::1', port: 80 });
    expect(parseListen('localhost:0')).toEqual({ host: 'localhost', port: 0 });
    expect(() => parseListen('127.0.0.1')).toThrow(/HOST:PORT/);
    expect(() => parseListen('127.0.0.1:70000')).toThrow(/HOST:PORT/);
  });

  it('listens on any address (every request is authenticated) and tells loopback addresses apart', () => {
    expect(loadConfig({ flags: { listen: '10.0.0.1:7700' }, env: {} }).host).toBe('10.0.0.1');
    expect(isLoopback('127.4.5.6')).toBe(true);
    expect(isLoopback('::1')).toBe(true);
    expect(isLoopback('::')).toBe(false);
    expect(isLoopback('128.0.0.1')).toBe(false);
  });

  it('reads the extra admin token and the cluster secret from files, never both a value and a file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nc-config-'));
    writeFileSync(join(dir, 'token'), `${'t'.repeat(20)}\n`);
    writeFileSync(join(dir, 'secret'), 's'.repeat(24));
    const c = loadConfig({ flags: {}, env: { NOVACRON_API_TOKEN_FILE: join(dir, 'token'), NOVACRON_CLUSTER_SECRET_FILE: join(dir, 'secret') } });
    expect(c.apiToken).toBe('t'.repeat(20));
    expect(c.clusterSecret).toBe('s'.repeat(24));
    expect(() => loadConfig({ flags: { apiToken: 'u'.repeat(20) }, env: { NOVACRON_API_TOKEN_FILE: join(dir, 'token') } })).toThrow(/not both/);
    expect(() => loadConfig({ flags: {}, env: { NOVACRON_CLUSTER_SECRET_FILE: join(dir, 'missing') } })).toThrow(/cannot read clusterSecretFile/);
    rmSync(dir, { recursive: true, force: true });
  });

  it('names the bad field', () => {
    expect(() => loadConfig({ flags: { bodyLimitBytes: 5 }, env: {} })).toThrow(/bodyLimitBytes/);
    expect(() => loadConfig({ flags: {}, env: {}, configFile: '/nonexistent.json' })).toThrow(/cannot read config file/);
  });

  it('takes a peer address to advertise and names it when it is not HOST:PORT', () => {
    expect(loadConfig({ flags: {}, env: { NOVACRON_ADVERTISE: 'hv1.example:7700' } }).advertise).toBe('hv1.example:7700');
    expect(() => loadConfig({ flags: { advertise: 'hv1.example' }, env: {} })).toThrow(/advertise: expected HOST:PORT/);
  });

  it('takes a port range for migration data links and names it when it is malformed', () => {
    expect(loadConfig({ flags: {}, env: { NOVACRON_MIGRATION_DATA_PORTS: '49152-49215' } }).migrationDataPorts).toEqual({ from: 49152, to: 49215 });
    expect(loadConfig({ flags: {}, env: {} }).migrationDataPorts).toBeUndefined();
    expect(() => loadConfig({ flags: { migrationDataPorts: '49215-49152' }, env: {} })).toThrow(/migrationDataPorts: expected 1 <= FROM <= TO/);
    expect(() => loadConfig({ flags: { migrationDataPorts: '49152' }, env: {} })).toThrow(/migrationDataPorts: expected FROM-TO/);
  });
});
