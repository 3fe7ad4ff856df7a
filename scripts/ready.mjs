#!/usr/bin/env node
// The project's structural checks, run by `npm test` before any test (and on their own:
// `node scripts/ready.mjs`). Each prints what is wrong and where; any failure exits 1.
//   - cargo fmt --check: one formatting style across the crates (rustfmt's defaults)
//   - cargo clippy -D warnings, with the workspace lints (missing_docs in every crate,
//     undocumented_unsafe_blocks); shares the release build of `npm test`
//   - boundaries: only src/native imports bindings/; no import cycles between src/ folders
//   - the generated bindings match crates/node (a git failure fails the check too)
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { cargoEnv, root } from './lib/env.mjs';

const failures = [];
const only = process.argv.slice(2);
const want = (name) => only.length === 0 || only.includes(name);

if (want('fmt')) {
  const fmt = spawnSync('cargo', ['fmt', '--all', '--check'], { cwd: root, encoding: 'utf8', env: cargoEnv() });
  if (fmt.status !== 0) failures.push(`cargo fmt --check: the crates are not formatted (run \`cargo fmt --all\`):\n${(fmt.stdout + fmt.stderr).split('\n').filter((l) => l.startsWith('Diff in')).slice(0, 20).join('\n')}`);
}

if (want('clippy')) {
  const clippy = spawnSync(process.execPath, [join(root, 'scripts', 'cargo.mjs'), 'clippy', '--release', '--workspace', '--all-targets', '--quiet', '--', '-D', 'warnings'], { cwd: root, encoding: 'utf8' });
  if (clippy.status !== 0) failures.push(`cargo clippy -D warnings failed:\n${clippy.stderr.split('\n').slice(0, 60).join('\n')}`);
}

if (want('boundaries')) failures.push(...boundaryProblems(join(root, 'src')));

if (want('bindings')) {
  const git = spawnSync('git', ['diff', '--exit-code', '--stat', '--', 'bindings/index.js', 'bindings/index.d.ts'], { cwd: root, encoding: 'utf8' });
  if (git.status === 1) failures.push(`bindings/ is out of date with crates/node; commit the regenerated loader and .d.ts:\n${git.stdout}`);
  else if (git.status !== 0) failures.push(`the bindings drift check could not run (git exited ${git.status ?? git.signal}): ${git.stderr || git.error?.message}`);
}

if (failures.length > 0) {
  for (const f of failures) console.error(`ready: ${f}\n`);
  process.exit(1);
}
console.log(`ready: ${only.length ? only.join(', ') : 'fmt, clippy, boundaries, bindings'} ok`);

/**
 * Imports between the top-level folders of `src` (a file directly in src/ is its own
 * unit) must form no cycle, and only src/native may import the generated bindings.
 */
export function boundaryProblems(srcDir) {
  const problems = [];
  const unitOf = (file) => relative(srcDir, file).split(sep)[0].replace(/\.ts$/, '');
  const edges = new Map(); // unit -> Map(unit -> example import)
  for (const file of tsFiles(srcDir)) {
    const from = unitOf(file);
    for (const m of readFileSync(file, 'utf8').matchAll(/^(?:import|export)[^;]*?from '(\.[^']+)'/gms)) {
      const target = resolve(dirname(file), m[1]);
      const rel = relative(srcDir, target);
      if (rel.startsWith('..')) {
        if (relative(root, target).split(sep)[0] === 'bindings' && from !== 'native') problems.push(`${relative(root, file)} imports bindings/ (only src/native may)`);
        continue;
      }
      const to = unitOf(target.replace(/\.js$/, '.ts'));
      if (to === from) continue;
      if (!edges.has(from)) edges.set(from, new Map());
      if (!edges.get(from).has(to)) edges.get(from).set(to, `${relative(root, file)} → ${m[1]}`);
    }
  }
  for (const cycle of cycles(edges)) {
    const steps = cycle.map((u, i) => `  ${u} → ${cycle[(i + 1) % cycle.length]}  (${edges.get(u).get(cycle[(i + 1) % cycle.length])})`);
    problems.push(`import cycle between src/ folders:\n${steps.join('\n')}`);
  }
  return problems;
}

function tsFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...tsFiles(p));
    else if (name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** One cycle per strongly connected component with more than one unit (Tarjan). */
function cycles(edges) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const found = [];
  const visit = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v)?.keys() ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) !== idx.get(v)) return;
    const scc = [];
    let w;
    do {
      w = stack.pop();
      onStack.delete(w);
      scc.push(w);
    } while (w !== v);
    if (scc.length > 1) found.push(pathWithin(edges, new Set(scc), v));
  };
  for (const v of edges.keys()) if (!idx.has(v)) visit(v);
  return found;
}

/** A concrete cycle through `start` inside one component (breadth-first back to it). */
function pathWithin(edges, members, start) {
  const prev = new Map();
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift();
    for (const w of edges.get(v)?.keys() ?? []) {
      if (!members.has(w)) continue;
      if (w === start) {
        const path = [v];
        while (path[0] !== start) path.unshift(prev.get(path[0]));
        return path;
      }
      if (!prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start];
}
