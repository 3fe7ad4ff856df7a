/**
 * cloud-init's NoCloud seed for a VM: `meta-data` (instance-id, local-hostname,
 * public-keys, extra keys), `user-data` and `network-config`, in an ISO 9660 image
 * labelled `cidata` made by genisoimage — the disc every cloud image looks for. Values
 * are written as JSON strings (valid YAML scalars), so no input can add YAML structure.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { NovaError } from '../errors.js';
import type { VmRecord } from './record.js';
import type { CloudInitSpec } from './spec.js';

const run = promisify(execFile);

/** The seed's files for `vm` (whose spec has `cloudInit`). */
export function seedFiles(vm: VmRecord, ci: CloudInitSpec): Record<string, string> {
  const meta: string[] = [];
  const put = (k: string, v: string) => meta.push(`${k}: ${JSON.stringify(v)}`);
  for (const [k, v] of Object.entries(ci.metaData ?? {})) if (k !== 'instance-id' && k !== 'local-hostname' && k !== 'public-keys') put(k, v);
  put('instance-id', vm.id);
  put('local-hostname', ci.hostname ?? vm.name);
  if (ci.sshKeys?.length) meta.push('public-keys:', ...ci.sshKeys.map((k) => `  - ${JSON.stringify(k)}`));
  return {
    'meta-data': `${meta.join('\n')}\n`,
    'user-data': ci.userData,
    ...(ci.networkConfig !== undefined ? { 'network-config': ci.networkConfig } : {}),
  };
}

/** Writes the seed ISO for `files` to `path`. */
export async function buildSeedIso(files: Record<string, string>, path: string): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'novacron-cidata-'));
  try {
    for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text, { mode: 0o600 });
    await run('genisoimage', ['-quiet', '-output', path, '-volid', 'cidata', '-joliet', '-rock', ...Object.keys(files).map((n) => join(dir, n))], { timeout: 60_000 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    throw new NovaError(e.code === 'ENOENT' ? 'DRIVER_UNAVAILABLE' : 'DRIVER_FAILED', `building the cloud-init seed failed: ${e.code === 'ENOENT' ? 'genisoimage is not installed (npm install installs it)' : (e.stderr || e.message).trim()}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
