/**
 * The README's "API v1" table lists exactly the endpoints the daemon serves: every
 * route of the router and every WebSocket route, nothing more (the peer link, which
 * only members speak, is documented under Cluster).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { daemonRouter, wsPaths } from '../helpers/routes.js';

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
