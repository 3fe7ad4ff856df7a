/** A small typed HTTP client for the NovaCron API (used by the CLI and tests). */
import { rootCertificates } from 'node:tls';
import { Agent, fetch } from 'undici';
import type { ErrorBody } from '../errors.js';
import type { OperationRecord } from '../operations/operation.js';
import type { MigrationRecord } from '../migration/record.js';
import type { Prediction } from '../migration/predict.js';
import type { VmRecord } from '../vm/record.js';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** The daemon could not be reached at all. */
export class ConnectionError extends Error {
  override name = 'ConnectionError';
}

export interface ClientOptions {
  url: string;
  token?: string;
  /** A CA certificate (PEM) an HTTPS daemon is checked against, besides the system's. */
  ca?: string;
  /** How long to keep asking a daemon that answers 503 STARTING (it serves nothing else yet). Default 30 s. */
  startingWaitMs?: number;
}

/** A starting daemon's Retry-After is 1 s; ask again sooner than that, never much later. */
const STARTING_RETRY_MS = { min: 100, max: 1000 };

export class NovaClient {
  /** The CAs an HTTPS daemon is checked against, when it has its own. */
  #ca: string[] | undefined;
  #dispatcher: Agent | undefined;

  constructor(readonly opts: ClientOptions) {
    if (opts.ca) {
      this.#ca = [...rootCertificates, opts.ca];
      this.#dispatcher = new Agent({ connect: { ca: this.#ca } });
    }
  }

  /** The undici dispatcher for other requests to the daemon (streams), when it has its own CA. */
  get dispatcher(): Agent | undefined {
    return this.#dispatcher;
  }

  /** TLS options for WebSocket connections to the daemon. */
  get wsTls(): { ca?: string[] } {
    return this.#ca ? { ca: this.#ca } : {};
  }

  /**
   * One API call. A daemon that is still starting answers every route with 503 STARTING
   * before doing anything, so the call is made again (POSTs included) until it is ready
   * or `startingWaitMs` has passed.
   */
  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const deadline = Date.now() + (this.opts.startingWaitMs ?? 30_000);
    for (;;) {
      try {
        return await this.#requestOnce<T>(method, path, body);
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 503 || err.code !== 'STARTING' || Date.now() >= deadline) throw err;
        const after = Number((err.details as { retryAfterSeconds?: number } | undefined)?.retryAfterSeconds ?? 1) * 1000;
        await new Promise((r) => setTimeout(r, Math.min(Math.max(after / 4, STARTING_RETRY_MS.min), STARTING_RETRY_MS.max, deadline - Date.now())));
      }
    }
  }

  async #requestOnce<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {};
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Awaited<ReturnType<typeof fetch>>;
    try {
      res = await fetch(new URL(path, this.opts.url), {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        ...(this.#dispatcher ? { dispatcher: this.#dispatcher } : {}),
      });
    } catch (e) {
      throw new ConnectionError(`cannot reach the NovaCron daemon at ${this.opts.url}: ${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}`);
    }
    const text = await res.text();
    const parsed = text ? JSON.parse(text) : undefined;
    if (!res.ok) {
      const err = (parsed as ErrorBody | undefined)?.error;
      throw new ApiError(res.status, err?.code ?? 'UNKNOWN', err?.message ?? `HTTP ${res.status}`, err?.details);
    }
    return parsed as T;
  }

  listVms(query: URLSearchParams): Promise<{ items: VmRecord[]; nextCursor?: string; total?: number }> {
    const qs = query.toString();
    return this.request('GET', `/v1/vms${qs ? `?${qs}` : ''}`);
  }

  getVm(ref: string): Promise<VmRecord> {
    return this.request('GET', `/v1/vms/${encodeURIComponent(ref)}`);
  }

  createVm(spec: unknown): Promise<VmRecord> {
    return this.request('POST', '/v1/vms', spec);
  }

  action(ref: string, kind: string, body?: unknown): Promise<OperationRecord> {
    return this.request('POST', `/v1/vms/${encodeURIComponent(ref)}/${kind}`, body);
  }

  deleteVm(ref: string, opts: { force?: boolean; keepDisks?: boolean }): Promise<OperationRecord> {
    const q = new URLSearchParams();
    if (opts.force) q.set('force', 'true');
    if (opts.keepDisks) q.set('keepDisks', 'true');
    const qs = q.toString();
    return this.request('DELETE', `/v1/vms/${encodeURIComponent(ref)}${qs ? `?${qs}` : ''}`);
  }

  getOperation(id: string): Promise<OperationRecord> {
    return this.request('GET', `/v1/operations/${encodeURIComponent(id)}`);
  }

  /** 202 with the migration, or (dryRun) 200 with the prediction. */
  migrate(ref: string, body: Record<string, unknown>): Promise<MigrationRecord | { dryRun: true; prediction: Prediction }> {
    return this.request('POST', `/v1/vms/${encodeURIComponent(ref)}/migrate`, body);
  }

  getMigration(id: string): Promise<MigrationRecord> {
    return this.request('GET', `/v1/migrations/${encodeURIComponent(id)}`);
  }

  cancelMigration(id: string): Promise<MigrationRecord> {
    return this.request('DELETE', `/v1/migrations/${encodeURIComponent(id)}`);
  }

  /** Polls a migration until it finishes, reporting each change. */
  waitForMigration(id: string, onProgress?: (m: MigrationRecord) => void, intervalMs = 250): Promise<MigrationRecord> {
    return pollUntilDone(() => this.getMigration(id), onProgress, intervalMs);
  }

  /** Polls an operation until it finishes, reporting each change. */
  waitForOperation(id: string, onProgress?: (op: OperationRecord) => void, intervalMs = 100): Promise<OperationRecord> {
    return pollUntilDone(() => this.getOperation(id), onProgress, intervalMs);
  }
}

/** Fetches `get()` every `intervalMs` until its state is no longer `running`. */
async function pollUntilDone<T extends { state: string }>(get: () => Promise<T>, onProgress: ((t: T) => void) | undefined, intervalMs: number): Promise<T> {
  for (;;) {
    const t = await get();
    onProgress?.(t);
    if (t.state !== 'running') return t;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
