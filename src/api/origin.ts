/**
 * Host and Origin checks, in front of every route and WebSocket upgrade:
 * - DNS rebinding: a page on `evil.example` that resolves to 127.0.0.1 reaches a loopback
 *   daemon with `Host: evil.example`. Only IP literals, `localhost`, this host's names and
 *   the configured `allowedHosts` are served.
 * - Cross-site requests and WebSocket hijacking: a browser names the page's origin in
 *   `Origin`. Requests without one (CLI, scripts, members) pass; with one, only the
 *   daemon's own origin and the configured `allowedOrigins`.
 */
import { isIP } from 'node:net';
import { NovaError } from '../errors.js';

export interface OriginPolicyOptions {
  /** Extra names the daemon is reached by (DNS names of a load balancer, a NAT). */
  allowedHosts?: string[];
  /** Origins (`https://dash.example:8443`) whose pages may call the API. */
  allowedOrigins?: string[];
}

export class OriginPolicy {
  readonly #hosts: Set<string>;
  readonly #origins: Set<string>;

  constructor(names: string[], opts: OriginPolicyOptions = {}) {
    this.#hosts = new Set(['localhost', ...names, ...(opts.allowedHosts ?? [])].map((h) => h.toLowerCase()));
    this.#origins = new Set((opts.allowedOrigins ?? []).map((o) => o.toLowerCase()));
  }

  /** ORIGIN_REFUSED unless the request's Host and Origin headers are ones this daemon serves. */
  check(host: string, origin: string): void {
    const name = hostName(host.toLowerCase());
    if (host !== '' && isIP(name) === 0 && !this.#hosts.has(name)) throw new NovaError('ORIGIN_REFUSED', `this daemon does not serve the host name "${name}" (config allowedHosts)`);
    if (origin === '') return;
    const o = origin.toLowerCase();
    if (o === `http://${host.toLowerCase()}` || o === `https://${host.toLowerCase()}` || this.#origins.has(o)) return;
    throw new NovaError('ORIGIN_REFUSED', `requests from pages of ${origin} are not allowed (config allowedOrigins)`);
  }
}

/** `host:port`, `[v6]:port` or a bare name → the name or address. */
function hostName(host: string): string {
  if (host.startsWith('[')) return host.slice(1, host.indexOf(']'));
  const colon = host.lastIndexOf(':');
  return colon === -1 ? host : host.slice(0, colon);
}
