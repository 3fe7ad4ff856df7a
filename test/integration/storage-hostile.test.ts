/**
 * Hostile storage input against a daemon on the real QEMU driver: specs and uploads that
 * name host files, escape a pool, smuggle QEMU options or reach another tenant's volume.
 * Each is refused with its code, no VM is made, and no QEMU process ever starts. The
 * pool's files that the API cannot make (a symlink out of the pool, a FIFO, a device)
 * are placed in the pool directly, as a confused operator or another local user could,
 * with metadata, before the daemon starts.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, authHeaders, removeDir, spawnDaemon, tempDataDir, waitOp, type DaemonHandle } from '../helpers/daemon.js';
import { ensureQemuAndGuest, guestVm, heartbeats, installGuest, killGuests, waitUntil } from '../helpers/qemu.js';

let d: DaemonHandle;
let dataDir: string;
/** A pool whose directory has commas in its name (an operator's choice): QEMU must get it escaped. */
let commaDir: string;
/** A pool with room for 16 MiB only. */
let tinyDir: string;

function plant(pool: string, name: string, make: (path: string) => void, meta: Record<string, unknown> = {}) {
  mkdirSync(join(pool, '.novacron', 'volumes'), { recursive: true });
  make(join(pool, name));
  const now = new Date().toISOString();
  writeFileSync(join(pool, '.novacron', 'volumes', `${name}.json`), JSON.stringify({ name, format: 'raw', content: 'disk', sizeBytes: 1 << 20, tenant: 'default', createdAt: now, updatedAt: now, ...meta }));
}

beforeAll(async () => {
  ensureQemuAndGuest();
  dataDir = tempDataDir();
  const local = join(dataDir, 'pools', 'local');
  plant(local, 'etc-shadow', (p) => symlinkSync('/etc/shadow', p));
  plant(local, 'etc-dir', (p) => symlinkSync('/etc', p));
  plant(local, 'up-and-out', (p) => symlinkSync('../../../../etc/passwd', p));
  plant(local, 'fifo', (p) => execFileSync('mkfifo', [p]));
  plant(local, 'null-device', (p) => execFileSync('mknod', [p, 'c', '1', '3']));
  commaDir = join(dataDir, 'p,file=etc,readonly=off');
  tinyDir = join(dataDir, 'tiny');
  // A host file the operator allows VMs to use, by listing it in the config file.
  writeFileSync(join(dataDir, 'outside.raw'), Buffer.alloc(1 << 20));
  writeFileSync(join(dataDir, 'config.json'), JSON.stringify({
    pools: [
      { name: 'comma', path: commaDir },
      { name: 'tiny', path: tinyDir, capacityGiB: 16 / 1024, overcommitRatio: 1 },
    ],
    hostPaths: [{ path: join(dataDir, 'outside.raw'), name: 'outside' }],
  }));
  d = await spawnDaemon({ dataDir, args: ['--driver', 'qemu', '--config', join(dataDir, 'config.json')] });
  await installGuest(d.url);
}, 300_000);
afterAll(async () => {
  await d?.kill();
  killGuests(dataDir);
  removeDir(dataDir);
});

const qemuProcesses = () => spawnSync('pgrep', ['-f', `${dataDir}/vms/`], { encoding: 'utf8' }).stdout.trim();
const vmCount = async () => (await api(d.url, 'GET', '/v1/vms?scope=local')).body.items.length;
const upload = (pool: string, name: string, body: Buffer, query = 'format=raw') => fetch(`${d.url}/v1/pools/${pool}/volumes/${name}/content?${query}`, { method: 'PUT', body: new Uint8Array(body), headers: authHeaders(d.url) });

describe('hostile storage input (real QEMU driver)', { timeout: 180_000 }, () => {
  it('specs naming host paths, escaping a pool or smuggling options are refused with their codes, before anything is made', async () => {
    const before = await vmCount();
    const cases: Array<[string, Record<string, unknown>, number, string]> = [
      ['a host device as a disk image', { disks: [{ name: 'h', image: '/dev/sda', format: 'raw' }] }, 400, 'VALIDATION_FAILED'],
      ['a host device as a volume', { disks: [{ name: 'h', volume: '/dev/sda' }] }, 400, 'VALIDATION_FAILED'],
      ['/etc/shadow as the kernel', { boot: { type: 'kernel', kernel: '/etc/shadow' } }, 400, 'VALIDATION_FAILED'],
      ['/etc/shadow as the CD-ROM', { cdrom: '/etc/shadow' }, 400, 'VALIDATION_FAILED'],
      ['"../" in a volume name', { disks: [{ name: 'h', volume: 'local/../../etc/shadow' }] }, 400, 'VALIDATION_FAILED'],
      ['a comma in a volume name', { disks: [{ name: 'h', volume: 'local/x,file=/etc/shadow' }] }, 400, 'VALIDATION_FAILED'],
      ['a comma in a pool name', { disks: [{ name: 'h', pool: 'local,file=/etc/shadow', sizeMiB: 1 }] }, 400, 'VALIDATION_FAILED'],
      ['a symlink from the pool to /etc/shadow', { disks: [{ name: 'h', volume: 'local/etc-shadow' }] }, 422, 'VOLUME_PATH_REFUSED'],
      ['a symlink from the pool to /etc', { disks: [{ name: 'h', volume: 'local/etc-dir' }] }, 422, 'VOLUME_PATH_REFUSED'],
      ['a relative symlink climbing out of the pool', { disks: [{ name: 'h', volume: 'local/up-and-out' }] }, 422, 'VOLUME_PATH_REFUSED'],
      ['a FIFO in the pool', { disks: [{ name: 'h', volume: 'local/fifo' }] }, 422, 'VOLUME_PATH_REFUSED'],
      ['a device node in the pool', { disks: [{ name: 'h', volume: 'local/null-device' }] }, 422, 'VOLUME_PATH_REFUSED'],
      ['a volume that does not exist', { disks: [{ name: 'h', volume: 'local/nothing' }] }, 404, 'VOLUME_NOT_FOUND'],
      ['a pool that does not exist', { disks: [{ name: 'h', pool: 'nowhere', sizeMiB: 1 }] }, 404, 'POOL_NOT_FOUND'],
    ];
    const got: string[] = [];
    for (const [what, spec, status, code] of cases) {
      const r = await api(d.url, 'POST', '/v1/vms', { ...guestVm(`hostile-${got.length}`), ...spec });
      got.push(`${what}: ${r.status} ${r.body.error?.code}`);
      expect(`${what}: ${r.status} ${r.body.error?.code}`).toBe(`${what}: ${status} ${code}`);
    }
    expect(await vmCount()).toBe(before);
    expect(existsSync(join(dataDir, 'vms'))).toBe(false);
    expect(qemuProcesses()).toBe('');
  });

  it('a host path is usable only when the operator listed it in the config file; the API can neither add nor change one', async () => {
    const ok = await api(d.url, 'POST', '/v1/vms', { ...guestVm('host-path-1'), disks: [{ name: 'h', volume: 'host/outside' }] });
    expect(ok.status, JSON.stringify(ok.body)).toBe(201);
    expect((await api(d.url, 'GET', '/v1/pools/host/volumes/outside')).body).toMatchObject({ ref: 'host/outside', format: 'raw', sizeBytes: 1 << 20, attachedTo: [ok.body.id] });
    const unlisted = await api(d.url, 'POST', '/v1/vms', { ...guestVm('host-path-2'), disks: [{ name: 'h', volume: 'host/etc-shadow' }] });
    expect([unlisted.status, unlisted.body.error.code]).toEqual([404, 'VOLUME_NOT_FOUND']);
    expect((await api(d.url, 'POST', '/v1/pools/host/volumes', { name: 'etc-shadow', sizeMiB: 1 })).body.error.code).toBe('POOL_CONTENT_REFUSED');
    const up = await upload('host', 'etc-shadow', Buffer.alloc(4096));
    expect(((await up.json()) as any).error.code).toBe('POOL_CONTENT_REFUSED');
    expect((await api(d.url, 'POST', '/v1/pools/host/volumes/outside/clone', { name: 'x', pool: 'host' })).body.error.code).toBe('POOL_CONTENT_REFUSED');
    expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${ok.body.id}`)).body.id)).state).toBe('succeeded');
    expect((await api(d.url, 'DELETE', '/v1/pools/host/volumes/outside')).body.error.code).toBe('POOL_CONTENT_REFUSED');
    expect(existsSync(join(dataDir, 'outside.raw'))).toBe(true);
  });

  it("another tenant's volume, and a volume of the wrong content type, are refused", async () => {
    expect((await upload('local', 'theirs', Buffer.alloc(1 << 20), 'format=raw&tenant=other')).status).toBe(201);
    const r = await api(d.url, 'POST', '/v1/vms', { ...guestVm('tenant-1'), disks: [{ name: 'h', volume: 'local/theirs' }] });
    expect([r.status, r.body.error.code]).toEqual([403, 'VOLUME_TENANT_MISMATCH']);
    // A linked clone of it is the same as attaching it.
    const c = await api(d.url, 'POST', '/v1/vms', { ...guestVm('tenant-2'), disks: [{ name: 'h', from: 'local/theirs' }] });
    expect([c.status, c.body.error.code]).toEqual([403, 'VOLUME_TENANT_MISMATCH']);
    // A disk volume is not a kernel.
    expect((await upload('local', 'plain-disk', Buffer.alloc(1 << 20))).status).toBe(201);
    const k = await api(d.url, 'POST', '/v1/vms', { ...guestVm('content-1'), boot: { type: 'kernel', kernel: 'local/plain-disk' } });
    expect([k.status, k.body.error.code]).toEqual([422, 'VOLUME_CONTENT_MISMATCH']);
    expect(qemuProcesses()).toBe('');
  });

  it('uploads that name host files, lie about their format or their checksum are refused and leave nothing behind', async () => {
    const work = join(dataDir, 'work');
    mkdirSync(work, { recursive: true });
    const backed = join(work, 'backed.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', backed, '1M']);
    const dataFile = join(work, 'data-file.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(work, 'external.raw')}`, dataFile, '1M']);
    const plainQcow = join(work, 'plain.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', plainQcow, '1M']);
    const cases: Array<[string, string, Buffer, string, number, string]> = [
      ['a qcow2 backed by /etc/shadow', 'evil-backing', readFileSync(backed), 'format=qcow2', 422, 'VOLUME_FORMAT_INVALID'],
      ['a qcow2 with an external data file', 'evil-data-file', readFileSync(dataFile), 'format=qcow2', 422, 'VOLUME_FORMAT_INVALID'],
      ['a qcow2 declared raw', 'lying-raw', readFileSync(plainQcow), 'format=raw', 422, 'VOLUME_FORMAT_INVALID'],
      ['raw bytes declared qcow2', 'lying-qcow2', Buffer.alloc(1 << 20), 'format=qcow2', 422, 'VOLUME_FORMAT_INVALID'],
      ['a wrong SHA-256', 'bad-sum', Buffer.alloc(1 << 20, 1), `format=raw&sha256=${'0'.repeat(64)}`, 422, 'VOLUME_CHECKSUM_MISMATCH'],
    ];
    for (const [what, name, body, query, status, code] of cases) {
      const r = await upload('local', name, body, query);
      const b = (await r.json()) as { error?: { code: string } };
      expect(`${what}: ${r.status} ${b.error?.code}`).toBe(`${what}: ${status} ${code}`);
      expect((await api(d.url, 'GET', `/v1/pools/local/volumes/${name}`)).status).toBe(404);
    }
    const leftovers = readdirSync(join(dataDir, 'pools', 'local')).filter((f) => f.startsWith('.stage-') || cases.some((c) => c[1] === f));
    expect(leftovers).toEqual([]);
  });

  it('a pool that fills up refuses volumes, uploads and VMs with 507 POOL_FULL, and nothing half-made remains', async () => {
    const big = await api(d.url, 'POST', '/v1/pools/tiny/volumes', { name: 'too-big', sizeMiB: 64, format: 'raw' });
    expect([big.status, big.body.error.code]).toEqual([507, 'POOL_FULL']);
    expect((await api(d.url, 'POST', '/v1/pools/tiny/volumes', { name: 'fits', sizeMiB: 8, format: 'raw' })).status).toBe(201);
    const up = await upload('tiny', 'upload-too-big', Buffer.alloc(12 << 20, 7));
    expect([up.status, ((await up.json()) as { error: { code: string } }).error.code]).toEqual([507, 'POOL_FULL']);
    const before = await vmCount();
    const vm = await api(d.url, 'POST', '/v1/vms', { ...guestVm('full-1'), disks: [{ name: 'root', pool: 'tiny', sizeMiB: 12, format: 'raw' }] });
    expect([vm.status, vm.body.error.code]).toEqual([507, 'POOL_FULL']);
    expect(await vmCount()).toBe(before);
    const files = readdirSync(tinyDir).filter((f) => f !== '.novacron');
    expect(files).toEqual(['fits']);
    expect((await api(d.url, 'GET', '/v1/pools/tiny/volumes')).body.items.map((v: any) => v.name)).toEqual(['fits']);
  });

  it("a pool directory with commas reaches QEMU escaped: the guest boots from it and QEMU opened exactly that file", async () => {
    const created = await api(d.url, 'POST', '/v1/vms', { ...guestVm('comma-1'), disks: [{ name: 'data', pool: 'comma', sizeMiB: 8 }] });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    await waitUntil(() => heartbeats(dataDir, id).length >= 3, 60_000, 'the guest to boot');
    const pid = (await api(d.url, 'GET', `/v1/vms/${id}`)).body.runtime.pid;
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
    expect(argv.find((a) => a.includes('id=drive-data'))).toBe(`file=${join(dataDir, 'p,,file=etc,,readonly=off', `${id}-data`)},format=qcow2,if=none,id=drive-data`);
    const open = readdirSync(`/proc/${pid}/fd`).map((fd) => { try { return readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { return ''; } });
    expect(open).toContain(join(commaDir, `${id}-data`));
    expect(open).not.toContain('/etc/shadow');
    expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${id}?force=true`)).body.id)).state).toBe('succeeded');
  });
});
