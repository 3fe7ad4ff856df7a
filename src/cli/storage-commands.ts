/** `novacron pool …` and `novacron volume …`. */
import { createReadStream, createWriteStream, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import Table from 'cli-table3';
import cliProgress from 'cli-progress';
import { request } from 'undici';
import { ApiError, ConnectionError, type NovaClient } from './client.js';
import type { PoolView, VolumeView } from '../storage/model.js';

export function addStorageCommands(program: Command, client: () => NovaClient, json: () => boolean): void {
  const print = (v: unknown) => console.log(JSON.stringify(v, null, 2));
  const table = (head: string[]) => new Table({ head, style: { head: [], border: [] } });

  const pool = program.command('pool').description('storage pools (configured in the daemon\'s config file; `local` always exists)');
  pool.command('list')
    .description('every pool with its capacity, allocation, use and free space')
    .action(async () => {
      const { items } = await client().request<{ items: PoolView[] }>('GET', '/v1/pools');
      if (json()) return print(items);
      const t = table(['POOL', 'TYPE', 'MEDIA', 'SHARED', 'VOLUMES', 'CAPACITY', 'ALLOCATED', 'USED', 'FREE', 'CONTENT']);
      for (const p of items) t.push([p.name, p.type, p.mediaClass, p.shared ? 'yes' : 'no', p.status.volumes, fmtBytes(p.status.capacityBytes), fmtBytes(p.status.allocatedBytes), fmtBytes(p.status.usedBytes), fmtBytes(p.status.freeBytes), p.content.join(',')]);
      console.log(t.toString());
    });
  pool.command('get <pool>')
    .description('one pool: where it is and its status')
    .action(async (name: string) => {
      const p = await client().request<PoolView>('GET', `/v1/pools/${encodeURIComponent(name)}`);
      if (json()) return print(p);
      const t = new Table({ style: { head: [], border: [] } });
      t.push({ name: p.name }, { type: p.type }, { root: p.root }, { shared: String(p.shared) }, { mediaClass: p.mediaClass }, { content: p.content.join(', ') },
        { capacity: fmtBytes(p.status.capacityBytes) }, { allocated: fmtBytes(p.status.allocatedBytes) }, { used: fmtBytes(p.status.usedBytes) }, { free: fmtBytes(p.status.freeBytes) }, { volumes: String(p.status.volumes) });
      console.log(t.toString());
    });

  const volume = program.command('volume').description('volumes in pools: disks, ISOs, kernels (named pool/volume)');
  const path = (ref: string) => {
    const [p, ...rest] = ref.split('/');
    if (!p || rest.length !== 1) throw new ApiError(400, 'VALIDATION_FAILED', `"${ref}" is not pool/volume`);
    return `/v1/pools/${encodeURIComponent(p)}/volumes/${encodeURIComponent(rest[0]!)}`;
  };

  volume.command('list <pool>')
    .description('the volumes of a pool')
    .option('--tenant <tenant>')
    .option('--content <type>', 'disk, iso, kernel, template or backup')
    .option('--limit <n>', 'page size', '1000')
    .action(async (p: string, opts: { tenant?: string; content?: string; limit: string }) => {
      const q = new URLSearchParams({ limit: opts.limit });
      if (opts.tenant) q.set('tenant', opts.tenant);
      if (opts.content) q.set('content', opts.content);
      const page = await client().request<{ items: VolumeView[]; total: number }>('GET', `/v1/pools/${encodeURIComponent(p)}/volumes?${q}`);
      if (json()) return print(page);
      const t = table(['VOLUME', 'FORMAT', 'CONTENT', 'SIZE', 'ALLOCATED', 'TENANT', 'BACKING', 'ATTACHED TO']);
      for (const v of page.items) t.push([v.ref, v.format, v.content, fmtBytes(v.sizeBytes), fmtBytes(v.allocatedBytes), v.tenant, v.backing ?? '-', v.attachedTo.join(', ') || '-']);
      console.log(t.toString());
    });
  volume.command('get <pool/volume>')
    .action(async (ref: string) => {
      const v = await client().request<VolumeView>('GET', path(ref));
      if (json()) return print(v);
      const t = new Table({ style: { head: [], border: [] } });
      t.push({ volume: v.ref }, { format: v.format }, { content: v.content }, { size: fmtBytes(v.sizeBytes) }, { allocated: fmtBytes(v.allocatedBytes) }, { tenant: v.tenant },
        { backingChain: v.backingChain.join(' → ') || '-' }, { attachedTo: v.attachedTo.join(', ') || '-' }, { owner: v.owner ?? '-' }, { sha256: v.sha256 ?? '-' }, { created: v.createdAt });
      console.log(t.toString());
    });
  volume.command('create <pool/volume>')
    .description('an empty volume')
    .requiredOption('--size <MiB>', 'virtual size in MiB')
    .option('--format <format>', 'qcow2 or raw', 'qcow2')
    .option('--content <type>', 'disk, iso, kernel, template or backup', 'disk')
    .option('--tenant <tenant>')
    .action(async (ref: string, opts: { size: string; format: string; content: string; tenant?: string }) => {
      const [p, name] = ref.split('/');
      const v = await client().request<VolumeView>('POST', `/v1/pools/${encodeURIComponent(p ?? '')}/volumes`, { name, sizeMiB: Number(opts.size), format: opts.format, content: opts.content, ...(opts.tenant ? { tenant: opts.tenant } : {}) });
      if (json()) return print(v);
      console.log(`created ${v.ref} (${v.format}, ${fmtBytes(v.sizeBytes)})`);
    });
  volume.command('delete <pool/volume>')
    .description('delete a volume (refused while a VM uses it or a clone is based on it)')
    .action(async (ref: string) => {
      await client().request('DELETE', path(ref));
      if (!json()) console.log(`deleted ${ref}`);
    });
  volume.command('resize <pool/volume>')
    .description('grow a volume (online through QEMU when a running VM has it)')
    .requiredOption('--size <MiB>', 'new virtual size in MiB')
    .action(async (ref: string, opts: { size: string }) => {
      const v = await client().request<VolumeView>('POST', `${path(ref)}/resize`, { sizeMiB: Number(opts.size) });
      if (json()) return print(v);
      console.log(`${v.ref} is now ${fmtBytes(v.sizeBytes)}`);
    });
  volume.command('clone <pool/volume> <name>')
    .description('a full copy (progress bar from the daemon\'s volume.progress events), or with --linked a qcow2 overlay on the volume')
    .option('--pool <pool>', 'target pool (default: the source\'s)')
    .option('--linked', 'linked clone (shares the source\'s data)')
    .action(async (ref: string, name: string, opts: { pool?: string; linked?: boolean }) => {
      const c = client();
      const target = opts.pool ?? ref.split('/')[0]!;
      const watch = process.stderr.isTTY && !json() && !opts.linked ? await watchProgress(c, target, name, 'clone') : undefined;
      const v = await c.request<VolumeView>('POST', `${path(ref)}/clone`, { name, ...(opts.pool ? { pool: opts.pool } : {}), linked: opts.linked === true }).finally(() => watch?.stop());
      if (json()) return print(v);
      console.log(`cloned ${ref} to ${v.ref}${opts.linked ? ' (linked)' : ''}`);
    });

  volume.command('upload <file> <pool/volume>')
    .description('upload a file as a new volume (checked with qemu-img before it is accepted; SHA-256 verified)')
    .option('--format <format>', 'raw or qcow2 (what the file is)', 'raw')
    .option('--content <type>', 'disk, iso, kernel, template or backup', 'disk')
    .option('--tenant <tenant>')
    .action(async (file: string, ref: string, opts: { format: string; content: string; tenant?: string }) => {
      const size = statSync(file).size;
      const sha256 = await fileSha256(file);
      const q = new URLSearchParams({ format: opts.format, content: opts.content, sha256 });
      if (opts.tenant) q.set('tenant', opts.tenant);
      const tty = process.stderr.isTTY && !json();
      const bar = tty ? new cliProgress.SingleBar({ format: 'upload {bar} {percentage}% | {sent} of {size}', hideCursor: true }, cliProgress.Presets.shades_classic) : undefined;
      bar?.start(size, 0, { sent: fmtBytes(0), size: fmtBytes(size) });
      let sent = 0;
      const counter = new Transform({
        transform(chunk: Buffer, _enc, done) {
          sent += chunk.length;
          bar?.update(sent, { sent: fmtBytes(sent), size: fmtBytes(size) });
          done(null, chunk);
        },
      });
      const c = client();
      const body = createReadStream(file, { highWaterMark: 1 << 20 }).pipe(counter);
      const res = await send(c, 'PUT', `${path(ref)}/content?${q}`, { body, headers: { 'content-length': String(size), 'content-type': 'application/octet-stream' } });
      bar?.stop();
      const v = (await res.body.json()) as VolumeView & { error?: { code: string; message: string; details?: unknown } };
      if (res.statusCode >= 400) throw new ApiError(res.statusCode, v.error?.code ?? 'UNKNOWN', v.error?.message ?? `HTTP ${res.statusCode}`, v.error?.details);
      if (json()) return print(v);
      console.log(`uploaded ${file} as ${v.ref} (${v.format}, ${fmtBytes(v.sizeBytes)}, sha256 ${v.sha256})`);
    });
  volume.command('download <pool/volume> <file>')
    .description('download a volume\'s image')
    .action(async (ref: string, file: string) => {
      const res = await send(client(), 'GET', `${path(ref)}/content`, {});
      if (res.statusCode >= 400) {
        const e = (await res.body.json()) as { error?: { code: string; message: string } };
        throw new ApiError(res.statusCode, e.error?.code ?? 'UNKNOWN', e.error?.message ?? `HTTP ${res.statusCode}`);
      }
      await pipeline(res.body, createWriteStream(file, { flags: 'wx' }));
      if (!json()) console.log(`downloaded ${ref} to ${file} (${res.headers['x-volume-format']})`);
    });
}

/** A progress bar fed by `volume.progress` events of one volume (the events WebSocket, msgpack frames). */
async function watchProgress(c: NovaClient, pool: string, volume: string, action: string): Promise<{ stop(): void }> {
  const [{ default: WebSocket }, { unpack }] = await Promise.all([import('ws'), import('msgpackr')]);
  const url = new URL('/v1/events?types=volume.progress', c.opts.url);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url, { ...c.wsTls, headers: c.opts.token ? { authorization: `Bearer ${c.opts.token}` } : {} });
  const bar = new cliProgress.SingleBar({ format: `${action} {bar} {percentage}% | {done} of {size}`, hideCursor: true }, cliProgress.Presets.shades_classic);
  let started = false;
  ws.on('message', (raw: Buffer) => {
    const msg = unpack(raw) as { type: string; event?: { data: { pool?: string; volume?: string; action?: string; bytes?: number; totalBytes?: number } } };
    const d = msg.event?.data;
    if (msg.type !== 'event' || !d || d.pool !== pool || d.volume !== volume || d.action !== action || !d.totalBytes) return;
    if (!started) bar.start(d.totalBytes, 0, { done: fmtBytes(0), size: fmtBytes(d.totalBytes) });
    started = true;
    bar.update(d.bytes ?? 0, { done: fmtBytes(d.bytes ?? 0), size: fmtBytes(d.totalBytes) });
  });
  ws.on('error', () => undefined); // progress is a nicety: the command's own result decides
  await new Promise<void>((r) => {
    ws.once('open', () => r());
    ws.once('error', () => r());
  });
  return {
    stop: () => {
      if (started) bar.stop();
      ws.close();
    },
  };
}

async function send(c: NovaClient, method: 'GET' | 'PUT', path: string, o: { body?: NodeJS.ReadableStream; headers?: Record<string, string> }) {
  const headers: Record<string, string> = { ...(o.headers ?? {}) };
  if (c.opts.token) headers.authorization = `Bearer ${c.opts.token}`;
  try {
    return await request(new URL(path, c.opts.url), { method, headers, ...(o.body ? { body: o.body as never } : {}), ...(c.dispatcher ? { dispatcher: c.dispatcher } : {}) });
  } catch (e) {
    throw new ConnectionError(`cannot reach the NovaCron daemon at ${c.opts.url}: ${(e as Error).message}`);
  }
}

async function fileSha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
