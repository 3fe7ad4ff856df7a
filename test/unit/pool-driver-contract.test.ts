/**
 * The pool driver contract (src/storage/pool-driver.ts), one suite run against every
 * driver: `dir` on a local directory and `dir` marked shared. A new driver (lvm-thin,
 * rbd: docs/storage.md) joins by adding a row to DRIVERS.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirPool } from '../../src/storage/dir-pool.js';
import { PoolDef, type VolumeMeta } from '../../src/storage/model.js';
import type { PoolDriver } from '../../src/storage/pool-driver.js';
import { QemuImg } from '../../src/storage/qemu-img.js';

interface DriverRow {
  make(root: string): PoolDriver;
  /** Puts a file the API could never make into the pool (as an operator or another local user could). */
  plant?(root: string, name: string, kind: 'symlink-out' | 'fifo' | 'directory'): void;
}

const plantDir: DriverRow['plant'] = (root, name, kind) => {
  const p = join(root, name);
  if (kind === 'symlink-out') symlinkSync('/etc/hostname', p);
  else if (kind === 'fifo') execFileSync('mkfifo', [p]);
  else mkdirSync(p);
};

const DRIVERS: Array<[string, DriverRow]> = [
  ['dir', { make: (root) => new DirPool(PoolDef.parse({ name: 'c', path: root }), root, new QemuImg()), plant: plantDir }],
  ['dir (shared)', { make: (root) => new DirPool(PoolDef.parse({ name: 'c', path: root, shared: true }), root, new QemuImg()), plant: plantDir }],
];

const MiB = 1 << 20;
const meta = (name: string, extra: Partial<VolumeMeta> = {}): VolumeMeta => ({ name, format: 'raw', content: 'disk', sizeBytes: MiB, tenant: 'default', createdAt: 'now', updatedAt: 'now', ...extra });
const imgInfo = (path: string, format: string) => JSON.parse(execFileSync('qemu-img', ['info', '-U', '-f', format, '--output=json', path], { encoding: 'utf8' }));

describe.each(DRIVERS)('pool driver contract: %s', (_name, row) => {
  let root: string;
  let pool: PoolDriver;
  beforeAll(async () => {
    root = join(mkdtempSync(join(tmpdir(), 'novacron-pool-')), 'pool');
    pool = row.make(root);
    expect(await pool.open()).toEqual([]);
  });
  afterAll(() => rmSync(join(root, '..'), { recursive: true, force: true }));

  it('creates raw and qcow2 volumes of the asked size; a taken name is VOLUME_EXISTS', async () => {
    await pool.create('r1', { format: 'raw', sizeBytes: 4 * MiB });
    await pool.create('q1', { format: 'qcow2', sizeBytes: 8 * MiB });
    expect(pool.exists('r1') && pool.exists('q1')).toBe(true);
    expect(imgInfo(pool.target('r1').path, 'raw')['virtual-size']).toBe(4 * MiB);
    expect(imgInfo(pool.target('q1').path, 'qcow2')['virtual-size']).toBe(8 * MiB);
    expect(pool.allocated('r1')).toBeLessThan(4 * MiB); // thin: nothing written yet
    await expect(pool.create('r1', { format: 'raw', sizeBytes: MiB })).rejects.toMatchObject({ code: 'VOLUME_EXISTS' });
    await expect(pool.create('q1', { format: 'qcow2', sizeBytes: MiB })).rejects.toMatchObject({ code: 'VOLUME_EXISTS' });
  });

  it('keeps metadata durably: written, read back one by one and by a scan, removed', async () => {
    await pool.writeMeta(meta('r1', { sha256: 'ab' }));
    await pool.writeMeta(meta('q1', { format: 'qcow2' }));
    expect(pool.readMeta('r1')).toMatchObject({ name: 'r1', sha256: 'ab' });
    expect((await pool.scan()).map((m) => m.name).sort()).toEqual(['q1', 'r1']);
    await pool.removeMeta('r1');
    expect(pool.readMeta('r1')).toBeUndefined();
    await pool.writeMeta(meta('r1'));
  });

  it('makes linked clones on a backing volume and full copies, and grows volumes', async () => {
    await pool.create('overlay', { format: 'qcow2', sizeBytes: 8 * MiB, backing: { target: pool.target('q1'), format: 'qcow2' } });
    expect(imgInfo(pool.target('overlay').path, 'qcow2')).toMatchObject({ 'backing-filename': pool.target('q1').path, 'backing-filename-format': 'qcow2' });
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', pool.target('r1').path]);
    await pool.copyFrom({ target: pool.target('r1'), format: 'raw' }, 'copy', 'qcow2');
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 0 1M', pool.target('copy').path]);
    await pool.resize('copy', 'qcow2', 16 * MiB);
    expect(imgInfo(pool.target('copy').path, 'qcow2')['virtual-size']).toBe(16 * MiB);
  });

  it('reads a volume back as a stream, and describes images without trusting them', async () => {
    const chunks: Buffer[] = [];
    for await (const c of pool.read('r1')) chunks.push(c as Buffer);
    const bytes = Buffer.concat(chunks);
    expect(bytes.length).toBe(4 * MiB);
    expect(bytes.subarray(0, MiB).every((b) => b === 0x5a)).toBe(true);
    expect(await pool.inspect(pool.target('overlay').path, 'qcow2')).toMatchObject({ format: 'qcow2', virtualBytes: 8 * MiB, backingFile: pool.target('q1').path });
    expect(await pool.inspect(pool.target('r1').path)).toMatchObject({ format: 'raw', virtualBytes: 4 * MiB });
  });

  it('staged writes become the volume on commit and leave nothing on abort', async () => {
    const s = await pool.stage('staged');
    writeFileSync(s.path, Buffer.alloc(MiB, 1));
    expect(pool.exists('staged')).toBe(false);
    await s.commit();
    expect(pool.exists('staged')).toBe(true);
    const a = await pool.stage('aborted');
    writeFileSync(a.path, Buffer.alloc(MiB, 2));
    await a.abort();
    expect(pool.exists('aborted')).toBe(false);
    expect(readdirSync(root).filter((f) => f.includes('aborted'))).toEqual([]);
  });

  it('target refuses anything but the pool\'s own regular file: a symlink out, a FIFO, a directory, a missing file, a bad name', async () => {
    row.plant?.(root, 'out', 'symlink-out');
    row.plant?.(root, 'fifo', 'fifo');
    row.plant?.(root, 'dir', 'directory');
    for (const name of ['out', 'fifo', 'dir']) expect(() => pool.target(name), name).toThrow(expect.objectContaining({ code: 'VOLUME_PATH_REFUSED' }));
    expect(() => pool.target('missing')).toThrow(expect.objectContaining({ code: 'VOLUME_NOT_FOUND' }));
    for (const name of ['../etc', '.hidden', 'a,b', 'a/b', '']) expect(() => pool.target(name), name).toThrow(expect.objectContaining({ code: 'VOLUME_PATH_REFUSED' }));
  });

  it('removes volumes', async () => {
    await pool.remove('copy');
    expect(pool.exists('copy')).toBe(false);
    expect(() => pool.target('copy')).toThrow(expect.objectContaining({ code: 'VOLUME_NOT_FOUND' }));
  });
});
