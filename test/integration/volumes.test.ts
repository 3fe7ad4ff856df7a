/**
 * Volume lifecycle through the API and the CLI (a real daemon; volumes are real files
 * made with qemu-img; the sim driver, since no guest runs here).
 */
import { spawnSync, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, authHeaders, BIN, removeDir, spawnDaemon, tempDataDir, waitOp, type DaemonHandle } from '../helpers/daemon.js';

let d: DaemonHandle;
beforeAll(async () => {
  const dataDir = tempDataDir();
  writeFileSync(join(dataDir, 'config.json'), JSON.stringify({ pools: [{ name: 'fast', path: 'pools/fast', mediaClass: 'fast' }] }));
  d = await spawnDaemon({ dataDir, args: ['--config', join(dataDir, 'config.json')] });
});
afterAll(async () => {
  await d.kill();
  removeDir(d.dataDir);
});

const pool = () => join(d.dataDir, 'pools', 'local');
const info = (file: string, format: string) => JSON.parse(execFileSync('qemu-img', ['info', '-U', '-f', format, '--output=json', file], { encoding: 'utf8' }));

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, '--url', d.url, ...args], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, NOVACRON_DATA_DIR: d.dataDir } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('volumes through the API', () => {
  it('the default local pool exists with every content type and reports its status', async () => {
    const r = await api(d.url, 'GET', '/v1/pools/local');
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ name: 'local', type: 'dir', shared: false, root: pool(), content: ['disk', 'iso', 'kernel', 'template', 'backup'] });
    expect(r.body.status.capacityBytes).toBeGreaterThan(0);
    expect(r.body.status.freeBytes).toBeGreaterThan(0);
    expect((await api(d.url, 'GET', '/v1/pools/nope')).body.error.code).toBe('POOL_NOT_FOUND');
  });

  it('create, get, list, grow, clone (linked and full) and delete, with the in-use rules', async () => {
    const made = await api(d.url, 'POST', '/v1/pools/local/volumes', { name: 'base', sizeMiB: 64 });
    expect(made.status, JSON.stringify(made.body)).toBe(201);
    expect(made.body).toMatchObject({ ref: 'local/base', format: 'qcow2', sizeBytes: 64 << 20, tenant: 'default', attachedTo: [], backingChain: [] });
    expect(info(join(pool(), 'base'), 'qcow2')['virtual-size']).toBe(64 << 20);
    expect((await api(d.url, 'POST', '/v1/pools/local/volumes', { name: 'base', sizeMiB: 1 })).body.error.code).toBe('VOLUME_EXISTS');

    const grown = await api(d.url, 'POST', '/v1/pools/local/volumes/base/resize', { sizeMiB: 128 });
    expect(grown.status, JSON.stringify(grown.body)).toBe(200);
    expect(info(join(pool(), 'base'), 'qcow2')['virtual-size']).toBe(128 << 20);
    expect((await api(d.url, 'POST', '/v1/pools/local/volumes/base/resize', { sizeMiB: 64 })).body.error.code).toBe('VOLUME_FORMAT_INVALID');

    const linked = await api(d.url, 'POST', '/v1/pools/local/volumes/base/clone', { name: 'overlay', linked: true });
    expect(linked.status, JSON.stringify(linked.body)).toBe(201);
    expect(linked.body).toMatchObject({ backing: 'local/base', backingChain: ['local/base'], format: 'qcow2' });
    expect(info(join(pool(), 'overlay'), 'qcow2')).toMatchObject({ 'backing-filename': join(pool(), 'base'), 'backing-filename-format': 'qcow2' });
    const full = await api(d.url, 'POST', '/v1/pools/local/volumes/overlay/clone', { name: 'copy' });
    expect(full.status, JSON.stringify(full.body)).toBe(201);
    expect(full.body.backing).toBeUndefined();
    expect(info(join(pool(), 'copy'), 'qcow2')['backing-filename']).toBeUndefined();

    // A base volume cannot go while a clone depends on it; an attached one not while a VM uses it.
    expect((await api(d.url, 'DELETE', '/v1/pools/local/volumes/base')).body.error).toMatchObject({ code: 'VOLUME_IN_USE', details: { dependents: ['local/overlay'] } });
    const vm = await api(d.url, 'POST', '/v1/vms', { name: 'user-1', vcpus: 1, memoryMiB: 64, disks: [{ name: 'root', volume: 'local/copy' }] });
    expect(vm.status, JSON.stringify(vm.body)).toBe(201);
    expect((await api(d.url, 'GET', '/v1/pools/local/volumes/copy')).body.attachedTo).toEqual([vm.body.id]);
    expect((await api(d.url, 'DELETE', '/v1/pools/local/volumes/copy')).body.error).toMatchObject({ code: 'VOLUME_IN_USE', details: { attachedTo: [vm.body.id] } });
    expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${vm.body.id}`)).body.id)).state).toBe('succeeded');
    // The VM did not own it: it stays, free now.
    expect((await api(d.url, 'GET', '/v1/pools/local/volumes/copy')).body.attachedTo).toEqual([]);
    for (const name of ['copy', 'overlay', 'base']) expect((await api(d.url, 'DELETE', `/v1/pools/local/volumes/${name}`)).status).toBe(204);
    for (const name of ['copy', 'overlay', 'base']) expect(existsSync(join(pool(), name))).toBe(false);

    const listed = (await api(d.url, 'GET', '/v1/pools/local/volumes')).body;
    expect(listed.items.map((v: any) => v.name)).not.toContain('base');
  });

  it('snapshots of one volume: take, list, revert, delete (qcow2 only)', async () => {
    expect((await api(d.url, 'POST', '/v1/pools/local/volumes', { name: 'snappy', sizeMiB: 8 })).status).toBe(201);
    const file = join(pool(), 'snappy');
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 64k', file]);
    expect((await api(d.url, 'POST', '/v1/pools/local/volumes/snappy/snapshots', { name: 's1' })).status).toBe(201);
    expect((await api(d.url, 'POST', '/v1/pools/local/volumes/snappy/snapshots', { name: 's1' })).body.error.code).toBe('SNAPSHOT_EXISTS');
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 0 64k', file]);
    expect((await api(d.url, 'POST', '/v1/pools/local/volumes/snappy/snapshots/s1/revert')).status).toBe(200);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x11 0 64k', file]);
    expect((await api(d.url, 'DELETE', '/v1/pools/local/volumes/snappy/snapshots/s1')).status).toBe(200);
    expect((await api(d.url, 'GET', '/v1/pools/local/volumes/snappy/snapshots')).body.items).toEqual([]);
    expect((await api(d.url, 'DELETE', '/v1/pools/local/volumes/snappy/snapshots/s1')).body.error.code).toBe('SNAPSHOT_NOT_FOUND');
    expect((await api(d.url, 'POST', '/v1/pools/local/volumes', { name: 'flat', sizeMiB: 1, format: 'raw' })).status).toBe(201);
    expect((await api(d.url, 'POST', '/v1/pools/local/volumes/flat/snapshots', { name: 's1' })).body.error.code).toBe('SNAPSHOT_UNSUPPORTED');
  });

  it('upload checks the SHA-256 and the format, download returns the same bytes', async () => {
    const data = randomBytes(3 << 20);
    const sha = createHash('sha256').update(data).digest('hex');
    const up = await fetch(`${d.url}/v1/pools/local/volumes/blob/content?format=raw&sha256=${sha}`, { method: 'PUT', body: data, headers: authHeaders(d.url) });
    expect(up.status).toBe(201);
    expect(await up.json()).toMatchObject({ ref: 'local/blob', sha256: sha, sizeBytes: 3 << 20, format: 'raw' });
    const down = await fetch(`${d.url}/v1/pools/local/volumes/blob/content`, { headers: authHeaders(d.url) });
    expect(down.status).toBe(200);
    expect(down.headers.get('x-volume-sha256')).toBe(sha);
    expect(Buffer.from(await down.arrayBuffer()).equals(data)).toBe(true);
    // Refused before its body is read: the answer is the 409, every time (the daemon reads and drops the rest first).
    const big = randomBytes(16 << 20);
    for (let i = 0; i < 5; i++) {
      const again = await fetch(`${d.url}/v1/pools/local/volumes/blob/content?format=raw`, { method: 'PUT', body: big, headers: authHeaders(d.url) });
      expect([again.status, ((await again.json()) as any).error.code]).toEqual([409, 'VOLUME_EXISTS']);
    }
  });

  it('pool status and Prometheus metrics follow the volumes', async () => {
    const before = (await api(d.url, 'GET', '/v1/pools/local')).body.status;
    expect((await api(d.url, 'POST', '/v1/pools/local/volumes', { name: 'counted', sizeMiB: 32, format: 'raw' })).status).toBe(201);
    const after = (await api(d.url, 'GET', '/v1/pools/local')).body.status;
    expect(after.volumes).toBe(before.volumes + 1);
    expect(after.allocatedBytes).toBe(before.allocatedBytes + (32 << 20));
    const metrics = (await api(d.url, 'GET', '/metrics')).body as string;
    expect(metrics).toContain(`novacron_pool_volumes{pool="local",media_class="standard"} ${after.volumes}`);
    expect(metrics).toContain(`novacron_pool_allocated_bytes{pool="local",media_class="standard"} ${after.allocatedBytes}`);
  });
});

describe('volumes through the CLI', () => {
  it('pool list, volume upload (SHA-256 checked), list, get, clone, download and delete', () => {
    const file = join(d.dataDir, 'cli-upload.bin');
    const data = randomBytes(2 << 20);
    writeFileSync(file, data);
    const pools = cli('pool', 'list');
    expect(pools.code, pools.stderr).toBe(0);
    expect(pools.stdout).toMatch(/local\s.*dir\s.*standard/);

    const up = cli('--json', 'volume', 'upload', file, 'local/cli-vol', '--content', 'iso');
    expect(up.code, up.stderr).toBe(0);
    expect(JSON.parse(up.stdout)).toMatchObject({ ref: 'local/cli-vol', content: 'iso', sha256: createHash('sha256').update(data).digest('hex') });
    const list = cli('volume', 'list', 'local', '--content', 'iso');
    expect(list.stdout).toMatch(/local\/cli-vol\s.*raw\s.*iso\s.*2\.0 MiB/);
    expect(JSON.parse(cli('--json', 'volume', 'get', 'local/cli-vol').stdout).sizeBytes).toBe(2 << 20);

    const cloned = cli('volume', 'clone', 'local/cli-vol', 'cli-copy');
    expect(cloned.code, cloned.stderr).toBe(0);
    const out = join(d.dataDir, 'cli-download.bin');
    const down = cli('volume', 'download', 'local/cli-copy', out);
    expect(down.code, down.stderr).toBe(0);
    expect(readFileSync(out).equals(data)).toBe(true);

    expect(cli('volume', 'delete', 'local/cli-copy').code).toBe(0);
    const gone = cli('volume', 'get', 'local/cli-copy');
    expect(gone.code).not.toBe(0);
    expect(gone.stderr).toContain('VOLUME_NOT_FOUND');
  });

  it('vm move-disk (a stopped VM: copied, with the operation followed to the end), vm template and vm clone', () => {
    const made = JSON.parse(cli('--json', 'vm', 'create', '--name', 'cli-mover', '--vcpus', '1', '--memory', '64', '--disk', 'data:8').stdout);
    const moved = cli('--json', 'vm', 'move-disk', 'cli-mover', 'data', '--pool', 'fast');
    expect(moved.code, moved.stderr).toBe(0);
    expect(JSON.parse(moved.stdout)).toMatchObject({ kind: 'move-disk', state: 'succeeded', result: { to: `fast/${made.id}-data` } });
    expect(existsSync(join(d.dataDir, 'pools', 'fast', `${made.id}-data`))).toBe(true);
    expect(cli('vm', 'template', 'cli-mover').stdout).toContain('is a template now');
    const clone = cli('--json', 'vm', 'clone', 'cli-mover', 'cli-clone');
    expect(clone.code, clone.stderr).toBe(0);
    const c = JSON.parse(clone.stdout);
    expect(c.spec.disks[0]).toMatchObject({ name: 'data', from: `fast/${made.id}-data`, pool: 'fast' });
    const refused = cli('vm', 'start', 'cli-mover');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('is a template');
  });
});
