/**
 * Small files that must survive a crash or a power loss whole: a staging file is written
 * and fsynced, renamed over the target (or linked to it, when the target must not exist
 * yet), and the directory fsynced, so what comes back is the old file or the new one,
 * never a torn or empty one. (A write that is only closed lives in the page cache: a
 * kill -9 keeps it, a power loss does not — test/integration/power-loss.test.ts.)
 */
import { closeSync, fsyncSync, linkSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';

export interface DurableWriteOptions {
  /** The file's mode (default 0600). */
  mode?: number;
  /** Fail with EEXIST instead of replacing a file already at the path. */
  exclusive?: boolean;
  /** The staging file's path (default: the target's with `.tmp` appended). */
  staging?: string;
}

export function writeFileDurably(path: string, data: string | Buffer, opts: DurableWriteOptions = {}): void {
  const tmp = opts.staging ?? `${path}.tmp`;
  // O_EXCL: never through a link planted at the staging path (a crash's leftover goes first).
  rmSync(tmp, { force: true });
  const fd = openSync(tmp, 'wx', opts.mode ?? 0o600);
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  if (opts.exclusive) {
    try {
      linkSync(tmp, path);
    } finally {
      rmSync(tmp, { force: true });
    }
  } else {
    renameSync(tmp, path);
  }
  syncDirSync(dirname(path));
}

export async function writeFileDurablyAsync(path: string, data: string | Buffer, opts: Omit<DurableWriteOptions, 'exclusive'> = {}): Promise<void> {
  const tmp = opts.staging ?? `${path}.tmp`;
  await rm(tmp, { force: true });
  const fh = await open(tmp, 'wx', opts.mode ?? 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  await syncDir(dirname(path));
}

/** Makes a directory's entries (files created, renamed or removed in it) durable. */
export function syncDirSync(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
