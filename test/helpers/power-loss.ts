/**
 * A disk that loses power: a data directory on lossyfs (crates/lossyfs), a FUSE
 * filesystem that keeps file data in its own memory until the file is fsynced. Killing
 * it with SIGKILL drops exactly what no one synced — the page cache a kill -9 of the
 * daemon leaves intact — and mounting it again over the same backing directory is the
 * reboot. Needs root and /dev/fuse (the daemon's tests run as root); fails without them.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './daemon.js';

let binary: string | undefined;

/** The lossyfs binary, built (or found up to date) by cargo in the shared target dir. */
function lossyfs(): string {
  if (binary) return binary;
  const r = spawnSync(process.execPath, [join(ROOT, 'scripts', 'cargo.mjs'), 'build', '--release', '-p', 'novacron-lossyfs', '--message-format=json'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`building lossyfs failed:\n${r.stderr}`);
  for (const line of r.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    const msg = JSON.parse(line) as { reason?: string; target?: { name?: string }; executable?: string | null };
    if (msg.reason === 'compiler-artifact' && msg.target?.name === 'lossyfs' && msg.executable) binary = msg.executable;
  }
  if (!binary) throw new Error('cargo built no lossyfs executable');
  return binary;
}

export class LossyDisk {
  readonly #backing = mkdtempSync(join(tmpdir(), 'novacron-lossy-backing-'));
  /** Where the data lives: put data directories under it. */
  readonly root = mkdtempSync(join(tmpdir(), 'novacron-lossy-'));
  #fs: ChildProcess | undefined;

  private constructor() {}

  static async mount(): Promise<LossyDisk> {
    const d = new LossyDisk();
    await d.powerOn();
    return d;
  }

  async powerOn(): Promise<void> {
    const child = spawn(lossyfs(), [this.#backing, this.root], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d) => {
        out += d;
        if (out.includes('mounted\n')) resolve();
      });
      child.stderr!.on('data', (d) => (out += d));
      child.once('exit', (code) => reject(new Error(`lossyfs exited (${code}) before mounting (it needs root and /dev/fuse):\n${out}`)));
    });
    this.#fs = child;
  }

  /** Power fails: the filesystem dies with every unsynced byte, and its dead mount is detached. */
  async powerLoss(): Promise<void> {
    const child = this.#fs;
    if (!child) return;
    this.#fs = undefined;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    const r = spawnSync('umount', ['-l', this.root], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`umount -l ${this.root}: ${r.stderr}`);
  }

  async close(): Promise<void> {
    await this.powerLoss();
    rmSync(this.root, { recursive: true, force: true });
    rmSync(this.#backing, { recursive: true, force: true });
  }
}
