// Shared helpers for bench scripts: percentiles, a plain table, JSON results.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** The q-quantile (0..1) of a list of numbers (nearest rank). */
export function pct(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/** Writes bench/results/<name>-<time>[-quick].json and returns its path. */
export function writeResults(root, name, results) {
  const dir = join(root, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const out = join(dir, `${name}-${results.time.replace(/[:.]/g, '-')}${results.quick ? '-quick' : ''}.json`);
  writeFileSync(out, JSON.stringify(results, null, 2));
  return out;
}

export function printTable(title, head, rows) {
  const widths = head.map((h, i) => Math.max(String(h).length, ...rows.map((row) => String(row[i]).length)));
  const fmt = (row) => row.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
  console.log(`\n${title}`);
  console.log(fmt(head));
  for (const row of rows) console.log(fmt(row));
}
