/**
 * The HTTP front end on uWebSockets.js: authentication, body limits, content types,
 * JSON parsing and error rendering, in front of the `Router`. Follows the uWS rules:
 * everything is read from `req` synchronously, `onAborted` is attached before any
 * await, body chunks are copied, and `res` is never touched after abort or end.
 */
import { STATUS_CODES } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import { NovaError, toErrorBody } from '../errors.js';
import type { ApiReply, ApiRequest, Router } from './router.js';
import { loadUws, type UWS } from './uws.js';
import type { Metrics } from '../telemetry/metrics.js';

export interface ServerOptions {
  host: string;
  port: number;
  /** Bearer token required on every non-public route, if set. */
  apiToken?: string;
  /** Largest accepted request body in bytes. */
  bodyLimitBytes: number;
  log: Logger;
  metrics: Metrics;
}

export interface WsRouteInstaller {
  (app: UWS.TemplatedApp, authorize: (header: string) => boolean): void;
}

const STATUS_LINES = new Map<number, string>();
function statusLine(status: number): string {
  let line = STATUS_LINES.get(status);
  if (!line) {
    line = `${status} ${STATUS_CODES[status] ?? 'Unknown'}`;
    STATUS_LINES.set(status, line);
  }
  return line;
}

export class ApiServer {
  #app: UWS.TemplatedApp;
  #listenSocket: UWS.us_listen_socket | undefined;
  #opts: ServerOptions;
  #router: Router;
  #token: Buffer | undefined;
  #inFlight = 0;
  #drained: Array<() => void> = [];
  #closing = false;
  #port = 0;

  private constructor(app: UWS.TemplatedApp, router: Router, opts: ServerOptions) {
    this.#app = app;
    this.#router = router;
    this.#opts = opts;
    if (opts.apiToken) this.#token = Buffer.from(opts.apiToken);
  }

  /** Creates the app, installs routes (and WebSocket routes), and listens. */
  static async listen(router: Router, opts: ServerOptions, installWs: WsRouteInstaller[] = []): Promise<ApiServer> {
    const { uws } = loadUws();
    const app = uws.App();
    const server = new ApiServer(app, router, opts);
    for (const install of installWs) install(app, (h) => server.authorized(h));
    app.any('/*', (res, req) => server.#handle(res, req));
    const socket = await new Promise<UWS.us_listen_socket>((resolve, reject) => {
      app.listen(opts.host, opts.port, (s) => (s ? resolve(s) : reject(new Error(`cannot listen on ${opts.host}:${opts.port} (address in use or not available)`))));
    });
    server.#listenSocket = socket;
    server.#port = uws.us_socket_local_port(socket);
    return server;
  }

  /** The bound port (useful with port 0). */
  get port(): number {
    return this.#port;
  }

  /** True when no token is configured or the header carries the right one. */
  authorized(header: string): boolean {
    if (!this.#token) return true;
    if (!header.startsWith('Bearer ')) return false;
    const given = Buffer.from(header.slice(7));
    return given.length === this.#token.length && timingSafeEqual(given, this.#token);
  }

  /** Stops accepting connections, then waits for in-flight requests to finish. */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#listenSocket) {
      loadUws().uws.us_listen_socket_close(this.#listenSocket);
      this.#listenSocket = undefined;
    }
    if (this.#inFlight > 0) await new Promise<void>((r) => this.#drained.push(r));
    (this.#app as { close?: () => void }).close?.();
  }

  #handle(res: UWS.HttpResponse, req: UWS.HttpRequest): void {
    const started = performance.now();
    const method = req.getMethod().toUpperCase();
    const path = req.getUrl();
    const rawQuery = req.getQuery() ?? '';
    const auth = req.getHeader('authorization');
    const contentType = req.getHeader('content-type');
    const contentLength = req.getHeader('content-length');
    const chunked = req.getHeader('transfer-encoding') !== '';
    let aborted = false;
    let routeLabel = 'unmatched';
    res.onAborted(() => {
      aborted = true;
    });

    const send = (reply: ApiReply) => {
      if (aborted) return;
      const body = reply.rawJson ?? (reply.text ? reply.text.body : reply.json === undefined ? '' : JSON.stringify(reply.json));
      const type = reply.text ? reply.text.contentType : 'application/json';
      res.cork(() => {
        res.writeStatus(statusLine(reply.status));
        if (body.length > 0 || reply.json !== undefined) res.writeHeader('content-type', type);
        if (reply.headers) for (const [k, v] of Object.entries(reply.headers)) res.writeHeader(k, v);
        res.end(body);
      });
      aborted = true; // Nothing may touch `res` after end.
      this.#opts.metrics.observeRequest(method, routeLabel, reply.status, (performance.now() - started) / 1000);
    };
    const fail = (err: unknown) => {
      const { status, body } = toErrorBody(err);
      if (status >= 500) this.#opts.log.error({ err, method, path }, 'request failed');
      const headers = err instanceof NovaError && err.code === 'METHOD_NOT_ALLOWED' ? { allow: String((err.details as { allow: string[] }).allow.join(', ')) } : undefined;
      send({ status, json: body, ...(headers ? { headers } : {}) });
    };

    if (this.#closing) return fail(new NovaError('SHUTTING_DOWN'));
    const match = this.#router.match(method, path);
    if (match.kind === 'not-found') return fail(new NovaError('ROUTE_NOT_FOUND', `no endpoint ${method} ${path}`));
    if (match.kind === 'method-not-allowed') {
      return fail(new NovaError('METHOD_NOT_ALLOWED', `${method} is not allowed on ${path}; use ${match.allow.join(', ')}`, { allow: match.allow }));
    }
    const { route, params } = match;
    routeLabel = route.pattern;
    if (!route.public && !this.authorized(auth)) return fail(new NovaError('UNAUTHORIZED'));

    const request: ApiRequest = { method, path, query: new URLSearchParams(rawQuery), params, body: undefined };
    const run = () => {
      this.#inFlight++;
      let result: ApiReply | Promise<ApiReply>;
      try {
        result = route.handler(request);
      } catch (err) {
        this.#done();
        return fail(err);
      }
      if (result instanceof Promise) {
        result.then(send, fail).finally(() => this.#done());
      } else {
        this.#done();
        send(result);
      }
    };

    if (!route.body) return run();

    // JSON body: check type and declared size up front, then stream with a hard cap.
    const declared = contentLength === '' ? undefined : Number(contentLength);
    if (declared !== undefined && declared > this.#opts.bodyLimitBytes) {
      return fail(new NovaError('BODY_TOO_LARGE', `body of ${declared} bytes exceeds the ${this.#opts.bodyLimitBytes}-byte limit`));
    }
    if (declared === 0 || (declared === undefined && !chunked)) return run(); // No body at all.
    if (declared !== undefined && !Number.isSafeInteger(declared)) return fail(new NovaError('VALIDATION_FAILED', 'invalid Content-Length'));
    const mediaType = contentType.split(';')[0]!.trim().toLowerCase();
    if (mediaType !== 'application/json') {
      return fail(new NovaError('UNSUPPORTED_MEDIA_TYPE', `Content-Type must be application/json, got "${contentType || '(none)'}"`));
    }
    const chunks: Buffer[] = [];
    let size = 0;
    res.onData((chunk, isLast) => {
      if (aborted) return;
      size += chunk.byteLength;
      if (size > this.#opts.bodyLimitBytes) {
        fail(new NovaError('BODY_TOO_LARGE', `body exceeds the ${this.#opts.bodyLimitBytes}-byte limit`));
        return;
      }
      chunks.push(Buffer.from(chunk.slice(0))); // uWS reuses the chunk's memory.
      if (!isLast) return;
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.trim().length === 0) {
        request.body = undefined;
      } else {
        try {
          request.body = JSON.parse(text);
        } catch (e) {
          return fail(new NovaError('BAD_JSON', `request body is not valid JSON: ${(e as Error).message}`));
        }
        // Own "__proto__" keys survive JSON.parse and are silently dropped by schema
        // libraries; refuse them outright rather than store something else than was sent.
        if (text.includes('__proto__') && hasProtoKey(request.body)) {
          return fail(new NovaError('VALIDATION_FAILED', 'the key "__proto__" is not allowed'));
        }
      }
      run();
    });
  }

  #done(): void {
    this.#inFlight--;
    if (this.#inFlight === 0) for (const r of this.#drained.splice(0)) r();
  }
}

function hasProtoKey(value: unknown): boolean {
  if (value === null || typeof value !== 'object') return false;
  if (Object.hasOwn(value, '__proto__')) return true;
  return Object.values(value).some(hasProtoKey);
}
