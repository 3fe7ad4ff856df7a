/**
 * The README's "API v1" table lists exactly the endpoints the daemon serves: every
 * route of the router and every WebSocket route, nothing more (the peer link, which
 * only members speak, is documented under Cluster).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { daemonRouter, wsPaths } from '../helpers/routes.js';
import { BUILTIN_ROLES, PRIVILEGES } from '../../src/auth/privileges.js';

function served(): string[] {
  return [...daemonRouter().routes.map((r) => `${r.method} ${r.pattern}`), ...wsPaths().map((p) => `GET ${p}`)].sort();
}

/** Endpoints in the first column of the README's API table: `GET/PUT /a/{b,c}?q=` → GET /a/b, GET /a/c, PUT … */
function documented(): string[] {
  const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8');
  const table = readme.slice(readme.indexOf('## API v1'), readme.indexOf('VM spec:'));
  const out: string[] = [];
  for (const row of table.split('\n').filter((l) => l.startsWith('| `'))) {
    const first = row.split(' | ')[0]!;
    for (const [, cell] of first.matchAll(/`([^`]+)`/g)) {
      const m = /^([A-Z/]+) (\/\S*)/.exec(cell!);
      if (!m) throw new Error(`README API row not understood: ${cell}`);
      const path = m[2]!.replace(/\?.*$/, '');
      const braces = /\{([^}]+)\}/.exec(path);
      const paths = braces ? braces[1]!.split(',').map((alt) => path.replace(braces[0], alt)) : [path];
      for (const method of m[1]!.split('/')) for (const p of paths) out.push(`${method} ${p}`);
    }
  }
  return out.sort();
}

describe('README API table', () => {
  it('lists exactly the endpoints the daemon serves', () => {
    expect(documented()).toEqual(served());
  });
});

/** The rows of the README table whose header row starts with `| ${first} |`. */
function readmeTable(first: string): Array<[string, string]> {
  const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8');
  const at = readme.indexOf(`| ${first} |`);
  const rows: Array<[string, string]> = [];
  for (const line of readme.slice(at).split('\n').slice(2)) {
    const m = /^\| (.*?) \| (.*) \|$/.exec(line);
    if (!m) break;
    rows.push([m[1]!.replaceAll('`', ''), m[2]!]);
  }
  return rows;
}

describe('README security tables', () => {
  it('list the privilege every route declares, exactly as the router has it', () => {
    const want = new Map<string, string[]>();
    for (const r of daemonRouter().routes) want.set(String(r.priv), [...(want.get(String(r.priv)) ?? []), `${r.method} ${r.pattern}`]);
    const documented = new Map(readmeTable('privilege').map(([p, routes]) => [p, [...routes.matchAll(/`([^`]+)`/g)].map((m) => m[1]!).sort()]));
    expect(documented).toEqual(new Map([...want].map(([p, routes]) => [p, routes.sort()])));
  });

  it('list the built-in roles with their privileges', () => {
    const documented = readmeTable('role').map(([role, privs]) => [role, privs === 'every privilege' ? [...PRIVILEGES].sort() : [...privs.matchAll(/`([^`]+)`/g)].map((m) => m[1]!).sort()]);
    expect(documented).toEqual(Object.entries(BUILTIN_ROLES).map(([role, privs]) => [role, [...privs].sort()]));
  });
});
