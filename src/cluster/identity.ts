/**
 * Who this daemon is in its cluster, kept in `<dataDir>/cluster.json` beside the Raft
 * database. Written before a join is requested, so a crash mid-join retries with the
 * same member id instead of leaving a ghost learner behind.
 */
import { randomBytes, randomInt, randomUUID } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { NovaError } from '../errors.js';

export const IdentitySchema = z.strictObject({
  memberId: z.int().min(1).max(Number.MAX_SAFE_INTEGER),
  secret: z.string().min(16),
  /** Set once the cluster accepted us (or we bootstrapped it). */
  clusterId: z.string().min(1).optional(),
});
export type Identity = z.infer<typeof IdentitySchema>;

export function identityPath(dataDir: string): string {
  return join(dataDir, 'cluster.json');
}

export function readIdentity(dataDir: string): Identity | undefined {
  const path = identityPath(dataDir);
  if (!existsSync(path)) return undefined;
  try {
    return IdentitySchema.parse(JSON.parse(readFileSync(path, 'utf8')));
  } catch (e) {
    throw new NovaError('CONFIG_INVALID', `${path} is damaged: ${(e as Error).message}`);
  }
}

/** Atomic and durable: write a temp file, fsync it, rename over, fsync the directory. */
export function writeIdentity(dataDir: string, identity: Identity): void {
  const path = identityPath(dataDir);
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, JSON.stringify(identity, null, 2) + '\n');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

/** Member ids are random (no coordination needed) and below 2^48 so they survive JSON and JS numbers. */
export function newMemberId(): number {
  return randomInt(1, 2 ** 47) * 2 + randomInt(0, 2);
}

export function newSecret(): string {
  return randomBytes(24).toString('base64url');
}

export function newClusterId(): string {
  return randomUUID();
}
