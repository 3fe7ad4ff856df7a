/** `host:port`, with an IPv6 host in brackets (what config's `parseListen` reads back). */
export function formatHostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}
