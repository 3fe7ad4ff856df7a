/**
 * The HTTP front end on uWebSockets.js: authentication, body limits, content types,
 * JSON parsing and error rendering, in front of the `Router`. Follows the uWS rules:
 * everything is read from `req` synchronously, `onAborted` is attached before any
 * await, body chunks are copied, and `res` is never touched after abort or end.
 */
import { STATUS_CODES } from 'node:http';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { NovaError, toErrorBody } from '../errors.js';
import { ANSWERED_BY, FORWARDED_BY, NOT_HERE, type ForwardKind, type ForwardRequest, type Forwarder } from './forwarding.js';
import type { ApiReply, ApiRequest, Route, Router } from './router.js';
import { parseJsonBody } from '../util/json-body.js';
import { BodyStream, sendStream } from './streams.js';
import { relayTarget } from './ws-relay.js';
import { loadUws, type UWS } from './uws.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { RouteStats } from '../telemetry/request-stats.js';
import type { AuthOutcome, CallTarget, Principal } from '../auth/principal.js';
import { ROOT, type ObjectRef } from '../auth/acl.js';
import type { Target, TargetResolver } from './access.js';
import type { OriginPolicy } from './origin.js';
import type { AuditRecord } from '../auth/audit.js';

/** Authentication and the objects privileges are checked on. */
export interface ServerAuth {
  /** `call` is the request the credentials came with (another member's assertion is bound to it). */
  authenticate(authorization: string, call: CallTarget): AuthOutcome;
  resolver: TargetResolver;
  /** Host/Origin checks (DNS rebinding, cross-site requests); none when absent. */
  origins?: OriginPolicy;
}

export interface ServerOptions {
  host: string;
  port: number;
  auth: ServerAuth;
  audit?: (rec: AuditRecord) => void;
  /** Largest accepted request body in bytes. */
  bodyLimitBytes: number;
  log: Logger;
  metrics: Metrics;
  /** Serve HTTPS with this key and certificate (PEM files); plain HTTP without. */
  tls?: { keyFile: string; certFile: string };
  /**
   * Whether the member can serve every route yet. Until then only `whileStarting` routes
   * answer; everything else, unknown paths and WebSockets included, is 503 STARTING with
   * Retry-After (routes are still being installed, and a 404 then would be a wrong answer).
   */
  ready: () => boolean;
}

/** Authenticates a WebSocket upgrade (its Authorization, Host and Origin headers): the caller's principal, or a NovaError (audited). */
export type WsAuthenticate = (req: UWS.HttpRequest, res: UWS.HttpResponse) => Principal;

export interface WsRouteInstaller {
  (app: UWS.TemplatedApp, authenticate: WsAuthenticate, forwarder: () => Forwarder | undefined, resolver: TargetResolver): void;
}

/**
 * The shared WebSocket upgrade: checks the bearer token, lets `build` read the request
 * (synchronously, as uWS requires) into the connection's user data, and answers a
 * NovaError from either step with its HTTP status and error body instead of upgrading.
 * With `relay`, a route about a VM that `build` does not find here is upgraded as a
 * relay to the VM's member (see ws-relay.ts; the route's handlers must be `relaying`);
 * the VM is the route's first parameter unless `relay.ref` reads it from elsewhere.
 */
export function upgradeWebSocket<T>(
  res: UWS.HttpResponse,
  req: UWS.HttpRequest,
  context: UWS.us_socket_context_t,
  /** Undefined for the peer link, which checks the cluster's own credentials in `build`. */
  authenticate: WsAuthenticate | undefined,
  build: (req: UWS.HttpRequest, principal: Principal | undefined) => T,
  relay?: { forwarder: () => Forwarder | undefined; ref?: (req: UWS.HttpRequest) => string | undefined },
): void {
  const key = req.getHeader('sec-websocket-key');
  const protocol = req.getHeader('sec-websocket-protocol');
  const extensions = req.getHeader('sec-websocket-extensions');
  const refuse = (err: unknown) => {
    const { status, body } = toErrorBody(err);
    const headers = errorHeaders(err) ?? {};
    res.cork(() => {
      res.writeStatus(statusLine(status)).writeHeader('content-type', 'application/json');
      for (const k in headers) res.writeHeader(k, headers[k]!);
      res.end(JSON.stringify(body));
    });
  };
  let principal: Principal | undefined;
  let data: T;
  try {
    principal = authenticate?.(req, res);
  } catch (err) {
    return refuse(err);
  }
  try {
    data = build(req, principal);
  } catch (err) {
    const forwarder = relay?.forwarder();
    if (!forwarder || !(err instanceof NovaError) || err.code !== 'VM_NOT_FOUND' || req.getHeader(FORWARDED_BY) !== '') return refuse(err);
    // A lone member knows at once that no member has it.
    if (forwarder.alone()) return refuse(err);
    // (A VM this member does not have: its member authenticates and authorizes the relayed
    // connection. Accepted now, looked up after: see ws-relay.ts for why it cannot wait.)
    const url = requestTarget(req.getUrl(), req.getQuery());
    let ref: string | undefined;
    try {
      ref = relay!.ref ? relay!.ref(req) : decodeURIComponent(req.getParameter(0) ?? '');
    } catch {
      return refuse(err);
    }
    if (!ref) return refuse(err);
    data = relayTarget(forwarder, ref, url, principal, err) as T;
  }
  res.cork(() => res.upgrade(data, key, protocol, extensions, context));
}

/** 503 STARTING: the member is not ready yet (a second is about what the rest of a start takes). */
function starting(): NovaError {
  return new NovaError('STARTING', undefined, { retryAfterSeconds: 1 });
}

/** The headers an error answer carries: `Allow` for a wrong method, `Retry-After` when the error says when. */
function errorHeaders(err: unknown): Record<string, string> | undefined {
  if (!(err instanceof NovaError) || err.details === undefined) return undefined;
  const d = err.details as { allow?: string[]; retryAfterSeconds?: number };
  if (err.code === 'METHOD_NOT_ALLOWED' && d.allow) return { allow: d.allow.join(', ') };
  if (typeof d.retryAfterSeconds === 'number') return { 'retry-after': String(d.retryAfterSeconds) };
  return undefined;
}

const STATUS_LINES = new Map<number, string>();
export function statusLine(status: number): string {
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
  #auth: ServerAuth;
  #inFlight = 0;
  #drained: Array<() => void> = [];
  #closing = false;
  #port = 0;
  #unmatched: RouteStats;
  #forwarder: Forwarder | undefined;

  private constructor(app: UWS.TemplatedApp, router: Router, opts: ServerOptions) {
    this.#app = app;
    this.#router = router;
    this.#opts = opts;
    this.#unmatched = opts.metrics.requests.for('*', 'unmatched');
    this.#auth = opts.auth;
  }

  /** Creates the app, installs routes (and WebSocket routes), and listens. */
  static async listen(router: Router, opts: ServerOptions, installWs: WsRouteInstaller[] = []): Promise<ApiServer> {
    const { uws } = loadUws();
    const app = opts.tls ? uws.SSLApp({ key_file_name: opts.tls.keyFile, cert_file_name: opts.tls.certFile }) : uws.App();
    const server = new ApiServer(app, router, opts);
    for (const install of installWs) install(app, (req, res) => server.#wsPrincipal(req, res), () => server.#forwarder, opts.auth.resolver);
    app.any('/*', (res, req) => server.#handle(res, req));
    const socket = await new Promise<UWS.us_listen_socket>((resolve, reject) => {
      app.listen(opts.host, opts.port, (s) => (s ? resolve(s) : reject(new Error(`cannot listen on ${opts.host}:${opts.port} (address in use or not available)`))));
    });
    server.#listenSocket = socket;
    server.#port = uws.us_socket_local_port(socket);
    return server;
  }

  /** Whether this server speaks HTTPS. */
  get tls(): boolean {
    return this.#opts.tls !== undefined;
  }

  /** From now on, requests about resources another member owns are forwarded there. */
  useForwarder(forwarder: Forwarder): void {
    this.#forwarder = forwarder;
  }

  /** The bound port (useful with port 0). */
  get port(): number {
    return this.#port;
  }

  #wsPrincipal(req: UWS.HttpRequest, res: UWS.HttpResponse): Principal {
    try {
      if (!this.#opts.ready()) throw starting();
      this.#auth.origins?.check(req.getHeader('host'), req.getHeader('origin'));
      const outcome = this.#auth.authenticate(req.getHeader('authorization'), { method: 'GET', url: requestTarget(req.getUrl(), req.getQuery()) });
      if (!outcome.ok) throw unauthorized(outcome.reason);
      return outcome.principal;
    } catch (err) {
      const { status, body } = toErrorBody(err);
      this.#auditor('GET', req.getUrl(), res, req.getHeader('x-request-id'), true)?.record(status, body.error.code);
      throw err;
    }
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
    const method = METHODS[req.getMethod()] ?? req.getMethod().toUpperCase();
    const path = req.getUrl();
    const x = new Exchange(res, this.#unmatched, this.#opts.log);
    if (this.#closing) return x.fail(new NovaError('SHUTTING_DOWN'));
    if (this.#auth.origins) {
      try {
        this.#auth.origins.check(req.getHeader('host'), req.getHeader('origin'));
      } catch (err) {
        return x.fail(err);
      }
    }
    const match = this.#router.match(method, path);
    if (!this.#opts.ready() && (match.kind !== 'found' || !match.route.whileStarting)) return x.fail(starting());
    if (match.kind === 'not-found') return x.fail(new NovaError('ROUTE_NOT_FOUND', `no endpoint ${method} ${path}`));
    if (match.kind === 'method-not-allowed') {
      return x.fail(new NovaError('METHOD_NOT_ALLOWED', `${method} is not allowed on ${path}; use ${match.allow.join(', ')}`, { allow: match.allow }));
    }
    const { route, params } = match;
    x.stats = (route.stats ??= this.#opts.metrics.requests.for(route.method, route.pattern));
    const mutating = method !== 'GET' && method !== 'HEAD';
    x.audit = this.#auditor(method, path, res, req.getHeader('x-request-id'), mutating);
    const authorization = req.getHeader('authorization');
    const query = req.getQuery() ?? '';
    const url = requestTarget(path, query);
    let principal: Principal | undefined;
    if (route.priv !== 'public' || authorization !== '') {
      const outcome = this.#auth.authenticate(authorization, { method, url });
      if (outcome.ok) principal = outcome.principal;
      else if (route.priv !== 'public') return x.fail(unauthorized(outcome.reason));
    }
    if (x.audit) x.audit.principal = principal?.label;
    const request = new Request(method, path, query, params);
    if (principal) request.principal = principal;
    if (route.source) request.source = Buffer.from(res.getRemoteAddressAsText()).toString();
    if (route.callerHeaders) request.callerHeaders = { ...contentHeaders(req), ...(authorization ? { authorization } : {}) };
    // What forwarding a request needs is read from uWS's req, which is valid only during
    // this callback: #run takes it while still synchronous, and only when it may be needed.
    // The caller's credentials stay here: the owner trusts this member's assertion of who called.
    const forwardable = route.forward !== undefined && this.#forwarder !== undefined;
    const capture = (): ForwardRequest | undefined =>
      forwardable && req.getHeader(FORWARDED_BY) === '' ? { method, url, headers: contentHeaders(req), ...(principal ? { as: principal } : {}) } : undefined;

    if (route.stream) return this.#runStreaming(x, route, request, req, res);
    if (!route.body) return this.#run(x, route, request, forwardable ? capture : undefined);

    // JSON body: check type and declared size up front, then stream with a hard cap.
    const contentLength = req.getHeader('content-length');
    const declared = contentLength === '' ? undefined : Number(contentLength);
    if (declared !== undefined && declared > this.#opts.bodyLimitBytes) {
      return x.fail(new NovaError('BODY_TOO_LARGE', `body of ${declared} bytes exceeds the ${this.#opts.bodyLimitBytes}-byte limit`));
    }
    if (declared === 0 || (declared === undefined && req.getHeader('transfer-encoding') === '')) return this.#run(x, route, request, forwardable ? capture : undefined);
    if (declared !== undefined && !Number.isSafeInteger(declared)) return x.fail(new NovaError('VALIDATION_FAILED', 'invalid Content-Length'));
    const contentType = req.getHeader('content-type');
    const mediaType = contentType.split(';')[0]!.trim().toLowerCase();
    if (mediaType !== 'application/json') {
      return x.fail(new NovaError('UNSUPPORTED_MEDIA_TYPE', `Content-Type must be application/json, got "${contentType || '(none)'}"`));
    }
    const fwd = capture(); // the body arrives after req is gone
    x.watchAbort();
    const chunks: Buffer[] = [];
    let size = 0;
    res.onData((chunk, isLast) => {
      if (x.finished) return;
      size += chunk.byteLength;
      if (size > this.#opts.bodyLimitBytes) {
        x.fail(new NovaError('BODY_TOO_LARGE', `body exceeds the ${this.#opts.bodyLimitBytes}-byte limit`));
        return;
      }
      chunks.push(Buffer.from(chunk.slice(0))); // uWS reuses the chunk's memory.
      if (!isLast) return;
      // Nothing thrown in a uWS callback may escape: it would end the process.
      try {
        const raw = Buffer.concat(chunks);
        const text = raw.toString('utf8');
        if (text.trim().length > 0) request.body = parseJsonBody(text);
        if (fwd) fwd.body = raw;
      } catch (err) {
        return x.fail(err);
      }
      this.#run(x, route, request, fwd && (() => fwd));
    });
  }

  /** A raw streamed body: the handler reads it as it arrives (uWS pauses the socket while it lags). */
  #runStreaming(x: Exchange, route: Route, request: Request, req: UWS.HttpRequest, res: UWS.HttpResponse): void {
    const contentLength = req.getHeader('content-length');
    const declared = contentLength === '' ? undefined : Number(contentLength);
    if (declared !== undefined && !Number.isSafeInteger(declared)) return x.fail(new NovaError('VALIDATION_FAILED', 'invalid Content-Length'));
    const body = new BodyStream(res);
    x.watchAbort(() => {
      body.fail(new NovaError('VALIDATION_FAILED', 'the client went away mid-upload'));
      body.close();
    });
    x.onFinish(() => body.close()); // answered before the body ended (a refused upload): never touch res again
    request.stream = body;
    if (declared !== undefined) request.contentLength = declared;
    res.onData((chunk, isLast) => {
      // Nothing thrown in a uWS callback may escape: it would end the process.
      try {
        body.push(chunk, isLast);
      } catch (err) {
        body.fail(err as Error);
      }
    });
    // A refusal (VOLUME_EXISTS, POOL_FULL...) before the body is read: the rest is read and
    // dropped first (up to DRAIN_LIMIT), or the client would see a reset, not the answer.
    const refusing: Route = {
      ...route,
      handler: async (r) => {
        try {
          return await route.handler(r);
        } catch (err) {
          await body.drain(DRAIN_LIMIT);
          throw err;
        }
      },
    };
    this.#run(x, refusing, request);
  }

  /**
   * Calls the handler. A synchronous reply is written at once (uWS has us corked, and
   * no abort can happen in between); an async one gets an abort watcher first. When the
   * handler says the route's resource is not here and `capture` gives what forwarding
   * needs, the request goes on to the member that has it.
   */
  #run(x: Exchange, route: Route, request: Request, capture?: () => ForwardRequest | undefined): void {
    let result: ApiReply | Promise<ApiReply>;
    try {
      const gate = this.#authorize(route, request);
      result = gate ? gate.then(() => route.handler(request)) : route.handler(request);
    } catch (err) {
      const fwd = notHere(route, err) ? capture?.() : undefined;
      return fwd ? this.#forward(x, route.forward!, request.params.id!, fwd, err as NovaError) : x.fail(err);
    }
    if (!(result instanceof Promise)) return x.send(result);
    const fwd = capture?.(); // still synchronous: the last moment req can be read
    x.watchAbort();
    this.#inFlight++;
    result.then(
      (reply) => x.send(reply),
      (err) => (fwd && notHere(route, err) ? this.#forward(x, route.forward!, request.params.id!, fwd, err) : x.fail(err)),
    ).finally(() => this.#done());
  }

  /**
   * Checks the route's privilege on its object. An object this member does not have is,
   * on a forwarded route, the owner's to check (the request goes there); elsewhere it is
   * not found.
   */
  #authorize(route: Route, request: Request): void | Promise<void> {
    const priv = route.priv;
    if (priv === 'public' || priv === 'authenticated') return;
    const target: Target = route.on ? route.on(request) : ROOT;
    const check = (obj: ObjectRef | undefined) => {
      if (!obj) {
        if (route.forward) throw new NovaError(NOT_HERE[route.forward]);
        throw new NovaError(MISSING[target.kind as keyof typeof MISSING] ?? 'ROUTE_NOT_FOUND');
      }
      request.principal!.assertCan(priv, obj);
    };
    const obj = this.#auth.resolver.resolve(target);
    return obj instanceof Promise ? obj.then(check) : check(obj);
  }

  /**
   * The audit hook of one request: it records mutating requests (`always`) and refused
   * ones; what only a record needs (the source address, a request id) is found only then,
   * while the response is still open.
   */
  #auditor(method: string, path: string, res: UWS.HttpResponse, requestId: string, always: boolean): AuditHook | undefined {
    const sink = this.#opts.audit;
    if (!sink) return undefined;
    const hook: AuditHook = {
      principal: undefined,
      record: (status, code) => {
        if (!always && status !== 401 && status !== 403) return;
        const source = Buffer.from(res.getRemoteAddressAsText()).toString();
        sink({ principal: hook.principal, method, path, status, ...(code ? { code } : {}), source, requestId: requestId !== '' && requestId.length <= 128 ? requestId : randomUUID() });
      },
    };
    return hook;
  }

  /** Sends the request to the member that owns `ref`; without one, the local `notHere` error stands. */
  #forward(x: Exchange, kind: ForwardKind, ref: string, fwd: ForwardRequest, notHere: NovaError): void {
    const forwarder = this.#forwarder!;
    x.watchAbort();
    this.#inFlight++;
    forwarder
      .locate(kind, ref, fwd.as)
      .then(async (owner) => {
        if (!owner) return x.fail(notHere);
        const reply = await forwarder.send(owner, fwd);
        const headers: Record<string, string> = { [ANSWERED_BY]: String(reply.member) };
        if (reply.location) headers.location = reply.location;
        x.send({ status: reply.status, text: { body: reply.body.toString('utf8'), contentType: reply.contentType ?? 'application/json' }, headers });
      })
      .catch((err) => x.fail(err))
      .finally(() => this.#done());
  }

  #done(): void {
    this.#inFlight--;
    if (this.#inFlight === 0) for (const r of this.#drained.splice(0)) r();
  }
}

/** The route's resource is not on this member (the error that makes a request go on to its owner). */
function notHere(route: Route, err: unknown): err is NovaError {
  return route.forward !== undefined && err instanceof NovaError && err.code === NOT_HERE[route.forward];
}

/** Path and query as the request named them (what forwarding sends on and a member's assertion is bound to). */
function requestTarget(path: string, query: string | undefined): string {
  return query ? `${path}?${query}` : path;
}

/** The caller's headers a forwarded request carries: what its body is and what it accepts (never its credentials). */
function contentHeaders(req: UWS.HttpRequest): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of ['content-type', 'accept']) {
    const v = req.getHeader(name);
    if (v !== '') out[name] = v;
  }
  return out;
}

interface AuditHook {
  principal: string | undefined;
  record(status: number, code?: string): void;
}

/** The not-found error of an object a route names that this member does not have. */
const MISSING = { 'vm-ref': 'VM_NOT_FOUND', 'volume-ref': 'VOLUME_NOT_FOUND', operation: 'OPERATION_NOT_FOUND', migration: 'MIGRATION_NOT_FOUND' } as const;

/** UNAUTHORIZED, saying what was wrong with the credentials (never echoing them). */
export function unauthorized(reason: Exclude<AuthOutcome, { ok: true }>['reason']): NovaError {
  const why = { missing: 'no Authorization header', malformed: 'the Authorization header is not "Bearer <token>"', unknown: 'the token is not valid', expired: 'the token has expired', disabled: 'the user is disabled' }[reason];
  return new NovaError('UNAUTHORIZED', `${why}; this daemon's administrator token is in <data dir>/admin.token`);
}

/** How much of a refused upload's body is read and dropped before the answer is sent. */
const DRAIN_LIMIT = 256 << 20;

const METHODS: Record<string, string> = { get: 'GET', post: 'POST', put: 'PUT', patch: 'PATCH', delete: 'DELETE', head: 'HEAD', options: 'OPTIONS' };

class Request implements ApiRequest {
  body: unknown = undefined;
  principal?: Principal;
  source?: string;
  callerHeaders?: Record<string, string>;
  stream?: AsyncIterable<Buffer>;
  contentLength?: number;
  #rawQuery: string;
  #query: URLSearchParams | undefined;

  constructor(
    readonly method: string,
    readonly path: string,
    rawQuery: string,
    readonly params: Record<string, string>,
  ) {
    this.#rawQuery = rawQuery;
  }

  /** Parsed on first use; most requests never look at it. */
  get query(): URLSearchParams {
    return (this.#query ??= new URLSearchParams(this.#rawQuery));
  }
}

/** One request/response pair: writes the reply once, never after an abort. */
class Exchange {
  finished = false;
  audit: AuditHook | undefined;
  #started = performance.now();
  #watching = false;

  constructor(
    private readonly res: UWS.HttpResponse,
    /** Where this request is counted; replaced once the route is known. */
    public stats: RouteStats,
    private readonly log: Logger,
  ) {}

  #onAbort: Array<() => void> = [];
  #onFinish: Array<() => void> = [];
  aborted = false;

  /** Called once the response has been written (not on abort). */
  onFinish(fn: () => void): void {
    this.#onFinish.push(fn);
  }

  /** Must be called before the handler returns whenever the reply is written later. */
  watchAbort(then?: () => void): void {
    if (then) this.#onAbort.push(then);
    if (this.#watching) return;
    this.#watching = true;
    this.res.onAborted(() => {
      this.finished = true;
      this.aborted = true;
      for (const fn of this.#onAbort.splice(0)) fn();
    });
  }

  send(reply: ApiReply): void {
    if (this.finished) return;
    if (reply.stream) return this.#sendStream(reply, reply.stream);
    this.finished = true;
    const body = reply.rawJson ?? (reply.text ? reply.text.body : reply.json === undefined ? '' : JSON.stringify(reply.json));
    const res = this.res;
    this.audit?.record(reply.status, (reply.json as { error?: { code?: string } } | undefined)?.error?.code); // while res is open
    const write = () => {
      res.writeStatus(statusLine(reply.status));
      if (reply.text) res.writeHeader('content-type', reply.text.contentType);
      else if (body.length > 0) res.writeHeader('content-type', 'application/json');
      if (reply.headers) for (const k in reply.headers) res.writeHeader(k, reply.headers[k]!);
      res.end(body);
    };
    if (this.#watching) res.cork(write);
    else write();
    for (const fn of this.#onFinish.splice(0)) fn();
    this.stats.observe(reply.status, (performance.now() - this.#started) / 1000);
  }

  /** Headers now, then the body as the socket takes it; a failure mid-body closes the connection. */
  #sendStream(reply: ApiReply, stream: NonNullable<ApiReply['stream']>): void {
    this.finished = true;
    this.watchAbort();
    const res = this.res;
    res.cork(() => {
      res.writeStatus(statusLine(reply.status));
      res.writeHeader('content-type', stream.contentType);
      if (reply.headers) for (const k in reply.headers) res.writeHeader(k, reply.headers[k]!);
    });
    this.stats.observe(reply.status, (performance.now() - this.#started) / 1000);
    sendStream(res, stream.size, stream.body, () => this.aborted, (fn) => this.#onAbort.push(fn)).catch((err) => {
      this.log.warn({ err, route: this.stats.route }, 'streamed response failed');
      if (!this.aborted) res.close();
    });
  }

  fail(err: unknown): void {
    const { status, body } = toErrorBody(err);
    if (status >= 500 && !(err instanceof NovaError && err.code === 'STARTING')) this.log.error({ err, method: this.stats.method, route: this.stats.route }, 'request failed');
    const headers = errorHeaders(err);
    this.send({ status, json: body, ...(headers ? { headers } : {}) });
  }
}
