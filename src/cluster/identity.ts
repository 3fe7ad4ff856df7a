/**
 * Who this daemon is in its cluster, kept in `<dataDir>/cluster.json` beside the Raft
 * database. Written before a join is requested, so a crash mid-join retries with the
 * same member id instead of leaving a ghost learner behind.
 */
import { randomBytes, randomInt, randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileDurably } from '../util/durable-file.js';
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

/** Atomic and durable (see util/durable-file.ts). */
export function writeIdentity(dataDir: string, identity: Identity): void {
  writeFileDurably(identityPath(dataDir), JSON.stringify(identity, null, 2) + '\n', { mode: 0o600 });
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
