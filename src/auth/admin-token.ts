/**
 * This member's administrator token, `DIR/admin.token` (mode 0600): made on first start
 * and shown once, then read back at each start (like Jupyter's and etcd's generated
 * credentials). The CLI on the same host reads it from there, so a local operator needs
 * no setup. It is a token of the built-in `admin` user, valid on every member once the
 * cluster store has it.
 */
import { chmodSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { NovaError } from '../errors.js';
import { writeFileDurably } from '../util/durable-file.js';
import { ADMIN_USER, type TokenRecord } from './identity.js';
import { newToken, parseToken, sha256 } from './secrets.js';

export const ADMIN_TOKEN_FILE = 'admin.token';

export interface AdminToken {
  record: TokenRecord;
  path: string;
  /** The token's text when it was made by this call (to be shown once); undefined when read back. */
  created?: string;
}

export function loadOrCreateAdminToken(dataDir: string, member: string): AdminToken {
  const path = join(dataDir, ADMIN_TOKEN_FILE);
  if (existsSync(path)) {
    chmodSync(path, 0o600);
    const text = readFileSync(path, 'utf8').trim();
    const parsed = parseToken(text);
    if (!parsed) throw new NovaError('CONFIG_INVALID', `${path} does not hold a NovaCron token; delete it to have a new one made`);
    return { path, record: record(parsed.id, sha256(parsed.secret), member) };
  }
  const t = newToken();
  // Durable before it is shown: a token printed once and then lost to a power failure would lock the operator out.
  writeFileDurably(path, `${t.text}\n`, { mode: 0o600, exclusive: true });
  return { path, record: record(t.id, t.hash, member), created: t.text };
}

function record(id: string, hash: string, member: string): TokenRecord {
  return { id, user: ADMIN_USER, hash, description: `admin.token of ${member}`, createdAt: new Date().toISOString() };
}
