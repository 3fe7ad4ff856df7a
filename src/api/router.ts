/**
 * A small method+path router with `:param` segments. It knows every route, so an
 * unknown path is a 404 ROUTE_NOT_FOUND and a known path with the wrong method is a
 * 405 METHOD_NOT_ALLOWED with an `Allow` list.
 */
export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'HEAD' | 'OPTIONS';

export interface ApiRequest {
  method: Method | string;
  path: string;
  query: URLSearchParams;
  params: Record<string, string>;
  /** Parsed JSON body (routes declared with `body: true` only). */
  body: unknown;
  /** The caller's own credentials and content headers (routes declared with `callerHeaders` only). */
  callerHeaders?: Record<string, string>;
  /** The caller's IP address (routes declared with `source: true` only). */
  source?: string;
  /** Who is calling (every route but the public ones). */
  principal?: import('../auth/principal.js').Principal;
  /** The raw body, streamed (routes declared with `stream: true` only), and its declared length. */
  stream?: AsyncIterable<Buffer>;
  contentLength?: number;
}

export interface ApiReply {
  status: number;
  /** A value to serialize as JSON, or a pre-serialized JSON string. */
  json?: unknown;
  rawJson?: string;
  /** Non-JSON body (e.g. Prometheus text) with its content type. */
  text?: { body: string; contentType: string };
  /** A streamed body of exactly `size` bytes (a volume download). */
  stream?: { body: import('node:stream').Readable; size: number; contentType: string };
  headers?: Record<string, string>;
}

export type Handler = (req: ApiRequest) => ApiReply | Promise<ApiReply>;

export interface RouteOptions {
  /** The privilege the route needs (checked on `on`), or `public`, or `authenticated` (any caller; the handler filters). */
  priv: import('./access.js').Access;
  /** What `priv` is checked on (default: `/`). Called after the body is parsed. */
  on?: (req: ApiRequest) => import('./access.js').Target;
  /** The route takes a JSON body (Content-Type checked, size-limited, parsed). */
  body?: boolean;
  /** The route takes a raw body of any size as a stream (`req.stream`); the handler bounds it. */
  stream?: boolean;
  /**
   * What the route's `:id` names. When this member answers that it has no such thing,
   * the request is forwarded to the member that does (see api/forwarding.ts).
   */
  forward?: import('./forwarding.js').ForwardKind;
  /** The handler reads the caller's own credentials (a session's renewal): `req.callerHeaders` carries them. */
  callerHeaders?: boolean;
  /** The handler needs the caller's address (`req.source`). */
  source?: boolean;
  /** Served while the member is still starting (liveness and readiness); every other route answers 503 STARTING until then. */
  whileStarting?: boolean;
}

export interface Route extends RouteOptions {
  method: string;
  /** Request statistics for this route, attached by the server on first use. */
  stats?: import('../telemetry/request-stats.js').RouteStats;
  pattern: string;
  segments: string[];
  handler: Handler;
}

export type Match =
  | { kind: 'found'; route: Route; params: Record<string, string> }
  | { kind: 'method-not-allowed'; allow: string[] }
  | { kind: 'not-found' };

interface TrieNode {
  static: Map<string, TrieNode>;
  param?: { name: string; node: TrieNode };
  /** method → route ending at this node. */
  routes: Map<string, Route>;
}

const newNode = (): TrieNode => ({ static: new Map(), routes: new Map() });

/** Routes in a segment trie: matching costs one map lookup per path segment. */
export class Router {
  readonly routes: Route[] = [];
  #root = newNode();

  add(method: Method, pattern: string, handler: Handler, opts: RouteOptions): this {
    const route: Route = { method, pattern, segments: split(pattern), handler, ...opts };
    let node = this.#root;
    for (const seg of route.segments) {
      if (seg.startsWith(':')) {
        const name = seg.slice(1);
        if (node.param && node.param.name !== name) throw new Error(`route ${pattern}: conflicting parameter :${name} vs :${node.param.name}`);
        node.param ??= { name, node: newNode() };
        node = node.param.node;
      } else {
        let next = node.static.get(seg);
        if (!next) node.static.set(seg, (next = newNode()));
        node = next;
      }
    }
    if (node.routes.has(method)) throw new Error(`duplicate route ${method} ${pattern}`);
    node.routes.set(method, route);
    this.routes.push(route);
    return this;
  }

  match(method: string, path: string): Match {
    let node: TrieNode | undefined = this.#root;
    let params: Record<string, string> | undefined;
    let start = path.charCodeAt(0) === 47 ? 1 : 0;
    while (node && start < path.length) {
      let end = path.indexOf('/', start);
      if (end === -1) end = path.length;
      if (end > start) {
        const seg = path.slice(start, end);
        const next: TrieNode | undefined = node.static.get(seg);
        if (next) {
          node = next;
        } else if (node.param) {
          let value: string;
          try {
            value = seg.includes('%') ? decodeURIComponent(seg) : seg;
          } catch {
            return { kind: 'not-found' };
          }
          (params ??= {})[node.param.name] = value;
          node = node.param.node;
        } else {
          node = undefined;
        }
      }
      start = end + 1;
    }
    if (!node || node.routes.size === 0) return { kind: 'not-found' };
    const route = node.routes.get(method);
    if (route) return { kind: 'found', route, params: params ?? {} };
    return { kind: 'method-not-allowed', allow: [...node.routes.keys()] };
  }
}

function split(path: string): string[] {
  return path.split('/').filter((s) => s.length > 0);
}
