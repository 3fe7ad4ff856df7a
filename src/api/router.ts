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
}

export interface ApiReply {
  status: number;
  /** A value to serialize as JSON, or a pre-serialized JSON string. */
  json?: unknown;
  rawJson?: string;
  /** Non-JSON body (e.g. Prometheus text) with its content type. */
  text?: { body: string; contentType: string };
  headers?: Record<string, string>;
}

export type Handler = (req: ApiRequest) => ApiReply | Promise<ApiReply>;

export interface RouteOptions {
  /** The route takes a JSON body (Content-Type checked, size-limited, parsed). */
  body?: boolean;
  /** Reachable without the API token (health probes). */
  public?: boolean;
}

export interface Route extends RouteOptions {
  method: string;
  pattern: string;
  segments: string[];
  handler: Handler;
}

export type Match =
  | { kind: 'found'; route: Route; params: Record<string, string> }
  | { kind: 'method-not-allowed'; allow: string[] }
  | { kind: 'not-found' };

export class Router {
  readonly routes: Route[] = [];

  add(method: Method, pattern: string, handler: Handler, opts: RouteOptions = {}): this {
    this.routes.push({ method, pattern, segments: split(pattern), handler, ...opts });
    return this;
  }

  match(method: string, path: string): Match {
    const parts = split(path);
    const allow: string[] = [];
    for (const route of this.routes) {
      const params = matchSegments(route.segments, parts);
      if (!params) continue;
      if (route.method === method) return { kind: 'found', route, params };
      allow.push(route.method);
    }
    return allow.length > 0 ? { kind: 'method-not-allowed', allow } : { kind: 'not-found' };
  }
}

function split(path: string): string[] {
  return path.split('/').filter((s) => s.length > 0);
}

function matchSegments(pattern: string[], parts: string[]): Record<string, string> | undefined {
  if (pattern.length !== parts.length) return undefined;
  let params: Record<string, string> | undefined;
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i]!;
    if (p.startsWith(':')) {
      let value: string;
      try {
        value = decodeURIComponent(parts[i]!);
      } catch {
        return undefined;
      }
      (params ??= {})[p.slice(1)] = value;
    } else if (p !== parts[i]) {
      return undefined;
    }
  }
  return params ?? {};
}
