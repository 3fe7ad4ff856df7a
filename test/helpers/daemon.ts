/**
 * Spawns the real daemon (`bin/novacron.js daemon`) as a child process on a random
 * loopback port with its own data directory, for integration tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { Agent, buildConnector } from 'undici';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const BIN = join(ROOT, 'bin', 'novacron.js');

export interface DaemonHandle {
  url: string;
  port: number;
  /** Its cluster port (members' mutual TLS: Raft and joins). */
  peerPort: number;
  dataDir: string;
  /** The daemon's administrator token (its DIR/admin.token); `api()` sends it unless told otherwise. */
  token: string;
  proc: ChildProcess;
  /** Everything the daemon wrote to stdout (JSON logs) and stderr. */
  output: () => string;
  /** Resolves with the exit code (or signal) when the process ends. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill: (signal?: NodeJS.Signals) => Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function tempDataDir(): string {
  return mkdtempSync(join(tmpdir(), 'novacron-test-'));
}

export interface SpawnOptions {
  dataDir?: string;
  args?: string[];
  env?: Record<string, string>;
  /** The API's listen host (default 127.0.0.1; an address inside `netns`, say). */
  host?: string;
  /** Run the daemon inside this network namespace (`ip netns exec`). */
  netns?: string;
  /** Expect the daemon to fail to start; resolve with its output instead of a handle. */
  expectFailure?: boolean;
}

export async function spawnDaemon(opts: SpawnOptions = {}): Promise<DaemonHandle> {
  const dataDir = opts.dataDir ?? tempDataDir();
  const host = opts.host ?? '127.0.0.1';
  const hostPattern = host.replaceAll('.', '\\.');
  const args = [BIN, 'daemon', '--listen', `${host}:0`, '--data-dir', dataDir, '--driver', 'sim', '--log-level', 'warn', ...(opts.args ?? [])];
  // `ip netns exec` execs the daemon itself: the child's pid is the daemon's.
  const [cmd, argv] = opts.netns ? ['ip', ['netns', 'exec', opts.netns, process.execPath, ...args]] : [process.execPath, args];
  const proc = spawn(cmd, argv, { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => proc.on('exit', (code, signal) => r({ code, signal })));
  const port = await new Promise<number>((resolvePort, reject) => {
    const timer = setTimeout(() => reject(new Error(`daemon did not start in time:\n${out}`)), 20_000);
    const onData = () => {
      const m = new RegExp(`listening on https?://${hostPattern}:(\\d+)`).exec(out);
      if (m) {
        clearTimeout(timer);
        resolvePort(Number(m[1]));
      }
    };
    proc.stderr!.on('data', onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`daemon exited (${code ?? signal}) before listening:\n${out}`), { output: out, code }));
    });
  });
  const scheme = /listening on (https?):/.exec(out)![1]!;
  const url = `${scheme}://${host}:${port}`;
  if (scheme === 'https' && !CAS.has(url)) CAS.set(url, readFileSync(join(dataDir, 'tls', 'ca.pem'), 'utf8'));
  const peerPort = Number(new RegExp(`cluster port \\(mutual TLS\\) on ${hostPattern}:(\\d+)`).exec(out)?.[1] ?? 0);
  const token = readFileSync(join(dataDir, 'admin.token'), 'utf8').trim();
  TOKENS.set(url, token);
  const handle: DaemonHandle = {
    url,
    port,
    peerPort,
    dataDir,
    token,
    proc,
    output: () => out,
    exited,
    kill: (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
  return handle;
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export interface JsonResponse<T = any> {
  status: number;
  headers: Headers;
  body: T;
}

/** Each test daemon's admin token, by its base URL. */
const TOKENS = new Map<string, string>();
/** The cluster CA of each test daemon that serves HTTPS, by its base URL. */
const CAS = new Map<string, string>();

/**
 * Fetches to an HTTPS daemon check its certificate against that daemon's own cluster CA
 * (each test cluster has its own), besides the system's: `...tlsInit(url)` in the init.
 */
const tlsAgent = new Agent({
  connect: (opts, cb) => {
    const ca = CAS.get(`https://${opts.hostname}:${opts.port}`);
    buildConnector({ ca: [...rootCertificates, ...(ca ? [ca] : [])] })(opts, cb);
  },
});

/** The fetch option that makes an HTTPS test daemon at `url` trusted (nothing for plain HTTP). */
export function tlsInit(url: string): { dispatcher?: Agent } {
  return url.startsWith('https:') ? { dispatcher: tlsAgent } : {};
}

/** Checks the HTTPS daemon at `url` against `caPem` from now on (a daemon with an operator's certificate). */
export function trustCa(url: string, caPem: string): void {
  CAS.set(new URL(url).origin, caPem);
}

/** TLS options for a WebSocket client of the daemon at `url` (its CA when it serves HTTPS). */
export function wsTls(url: string): { ca?: string[] } {
  const ca = CAS.get(new URL(url.replace(/^ws/, 'http')).origin);
  return ca ? { ca: [...rootCertificates, ca] } : {};
}

/**
 * The Authorization header a test sends to `base`: `headers.authorization` when given
 * (an empty one sends none), else the admin token of the daemon at `base`.
 */
export function authHeaders(base: string, headers: Record<string, string> = {}): Record<string, string> {
  const out = { ...headers };
  if (out.authorization === '') delete out.authorization;
  else if (out.authorization === undefined) {
    const token = TOKENS.get(new URL(base).origin);
    if (token) out.authorization = `Bearer ${token}`;
  }
  return out;
}

/** No credentials at all (what a stranger or a guest sends). */
export const NO_AUTH = { authorization: '' };

export async function api<T = any>(base: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<JsonResponse<T>> {
  const init: RequestInit = { method, headers: authHeaders(base, headers) };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
  }
  const res = await fetch(base + path, { ...init, ...tlsInit(base) } as RequestInit);
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    /* non-JSON body (metrics) */
  }
  return { status: res.status, headers: res.headers, body: parsed as T };
}

/** Polls an operation until it is no longer running. */
export async function waitOp(base: string, opId: string, headers: Record<string, string> = {}, timeoutMs = 60_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await api(base, 'GET', `/v1/operations/${opId}`, undefined, headers);
    if (r.status !== 200) throw new Error(`operation poll failed: ${r.status} ${JSON.stringify(r.body)}`);
    if (r.body.state !== 'running') return r.body;
    await new Promise((res) => setTimeout(res, 25));
  }
  throw new Error(`operation ${opId} did not finish in ${timeoutMs} ms`);
}

export const sampleVm = (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  vcpus: 2,
  memoryMiB: 512,
  disks: [{ name: 'root', sizeMiB: 1024 }],
  ...extra,
});
