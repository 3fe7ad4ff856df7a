#!/usr/bin/env node
// bench/native/miglink-tls: what TLS costs the live-migration data link, in one run — the
// AEAD alone (AES-256-GCM over 16 KiB records, one core), and one loopback stream through
// the link's TLS (crates/miglink/src/secure.rs) against the same stream over plain TCP.
//
//   node bench/native/miglink-tls.mjs [--mib N] [--quick] [--check]
//
// Targets (security issue): the AEAD >= 1 GB/s per core; the TLS stream >= 1.25 GB/s
// (10 GbE) on loopback. A 1 GbE link (125 MB/s) then spends <= 10% of a core on TLS.
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { printTable, writeResults } from '../lib/report.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: args } = parseArgs({ options: { mib: { type: 'string' }, quick: { type: 'boolean', default: false }, check: { type: 'boolean', default: false } } });
const TARGETS = { aeadGBpsPerCore: 1, tlsStreamGBps: 1.25, tlsCoreShareAt1GbE: 0.1 };

const run = spawnSync('node', [join(root, 'scripts', 'cargo.mjs'), 'run', '--quiet', '--release', '--example', 'tls_throughput', '-p', 'novacron-miglink', '--', args.mib ?? (args.quick ? '256' : '2048')], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
if (run.status !== 0) throw new Error(`tls_throughput exited with ${run.status}`);
const m = JSON.parse(run.stdout.trim().split('\n').at(-1));
// CPU seconds per GB on TLS beyond plain TCP, times 0.125 GB/s: the core share TLS costs a saturated 1 GbE link.
const coreShareAt1GbE = Math.max(0, m.tlsCpuSecondsPerGB - m.plainCpuSecondsPerGB) * 0.125;
const results = {
  bench: 'miglink-tls', time: new Date().toISOString(), quick: args.quick, targets: TARGETS, ...m,
  tlsVsPlain: Math.round((m.tlsGBps / m.plainGBps) * 1000) / 1000,
  tlsCoreShareAt1GbE: Math.round(coreShareAt1GbE * 1000) / 1000,
};
results.verdict = {
  aead: m.aeadGBpsPerCore >= TARGETS.aeadGBpsPerCore,
  tlsStream: m.tlsGBps >= TARGETS.tlsStreamGBps,
  coreShareAt1GbE: coreShareAt1GbE <= TARGETS.tlsCoreShareAt1GbE,
};
results.pass = Object.values(results.verdict).every(Boolean);
printTable(`data link TLS (${m.cipher}), ${m.mib} MiB over loopback`, ['', 'GB/s', 'CPU s/GB'], [
  ['AEAD alone, one core', m.aeadGBpsPerCore, ''],
  ['plain TCP', m.plainGBps, m.plainCpuSecondsPerGB],
  ['TLS (the link)', m.tlsGBps, m.tlsCpuSecondsPerGB],
]);
const v = (ok) => (ok ? 'PASS' : 'MISS');
console.log(`\ntargets: AEAD >= ${TARGETS.aeadGBpsPerCore} GB/s/core ${v(results.verdict.aead)}; TLS stream >= ${TARGETS.tlsStreamGBps} GB/s ${v(results.verdict.tlsStream)} (${results.tlsVsPlain}x plain); TLS at 1 GbE <= ${TARGETS.tlsCoreShareAt1GbE * 100}% of a core ${v(results.verdict.coreShareAt1GbE)} (${(coreShareAt1GbE * 100).toFixed(1)}%)`);
console.log(`results: ${writeResults(root, 'miglink-tls', results)}`);
if (args.check && !results.pass) process.exitCode = 1;
