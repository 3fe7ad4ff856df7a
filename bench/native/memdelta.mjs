#!/usr/bin/env node
// bench/native/memdelta: the page codec's encode/decode throughput per page mix, against
// lz4-napi on the same pages and a plain memcpy (the limit), in one run (benchmark.js).
//
//   node bench/native/memdelta.mjs [--quick] [--check]
//
// Each operation handles a batch of 256 pages (1 MiB). "unchanged" re-sends pages the
// destination holds; "small" alternates two versions that differ in 1-64 bytes per page;
// "half"/"random" alternate two different contents so nothing is a duplicate.
// Targets (issue 4): zero/duplicate >= 8 GB/s, small-change encode >= 2 GB/s, decode >= 3 GB/s.
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import Benchmark from 'benchmark';
import { compressSync } from 'lz4-napi';
import { PageDecoder, PageEncoder, PAGE_SIZE } from '../../dist/native/memdelta.js';
import { printTable, writeResults } from '../lib/report.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: args } = parseArgs({ options: { quick: { type: 'boolean', default: false }, check: { type: 'boolean', default: false } } });
const PAGES = 256;
const BYTES = PAGES * PAGE_SIZE;
const TARGETS = { zeroDupEncodeGBps: 8, smallEncodeGBps: 2, decodeGBps: 3 };
const indices = BigUint64Array.from({ length: PAGES }, (_, i) => BigInt(i));

function variants(kind) {
  const a = Buffer.alloc(BYTES);
  const b = Buffer.alloc(BYTES);
  if (kind === 'zero' || kind === 'unchanged') {
    if (kind === 'unchanged') randomBytes(BYTES).copy(a);
    a.copy(b);
  } else if (kind === 'small') {
    randomBytes(BYTES).copy(a);
    a.copy(b);
    for (let p = 0; p < PAGES; p++) {
      const n = 1 + (p % 64); // 1..64 changed bytes
      const off = p * PAGE_SIZE + ((p * 97) % (PAGE_SIZE - 64));
      for (let i = 0; i < n; i++) b[off + i] ^= 0x5a;
    }
  } else if (kind === 'half') {
    for (let p = 0; p < PAGES; p++) {
      randomBytes(PAGE_SIZE / 2).copy(a, p * PAGE_SIZE);
      randomBytes(PAGE_SIZE / 2).copy(b, p * PAGE_SIZE);
    }
  } else {
    randomBytes(BYTES).copy(a);
    randomBytes(BYTES).copy(b);
  }
  return [a, b];
}

const rows = [];
const results = { bench: 'memdelta', time: new Date().toISOString(), quick: args.quick, batchBytes: BYTES, targets: TARGETS, mixes: {} };
for (const mix of ['zero', 'unchanged', 'small', 'half', 'random']) {
  const [a, b] = variants(mix);
  // Encoder state for the encode benchmark: A already sent, then alternate B, A, ...
  const enc = new PageEncoder(PAGES * 4);
  enc.encode(indices, a);
  let flip = false;
  // A self-consistent frame cycle for the decoder: after A, decode (A→B), (B→A), ...
  const encCycle = new PageEncoder(PAGES * 4);
  // encode() returns a view of a reused buffer: copy what we keep.
  const first = Buffer.from(encCycle.encode(indices, a));
  const toB = Buffer.from(encCycle.encode(indices, b));
  const toA = Buffer.from(encCycle.encode(indices, a));
  const dec = new PageDecoder(PAGES * 4);
  dec.decode(first);
  let dflip = false;
  const dst = Buffer.alloc(BYTES);
  const wireRatio = (toB.length + toA.length) / (2 * BYTES);

  const hz = {};
  await new Promise((done) => {
    const suite = new Benchmark.Suite(mix);
    const opts = args.quick ? { maxTime: 0.2, minSamples: 3 } : { maxTime: 2, minSamples: 10 };
    suite
      .add('encode', () => {
        flip = !flip;
        enc.encode(indices, flip ? b : a);
      }, opts)
      .add('decode', () => {
        dflip = !dflip;
        dec.decode(dflip ? toB : toA);
      }, opts)
      .add('lz4-napi compress', () => {
        flip = !flip;
        compressSync(flip ? b : a);
      }, opts)
      .add('memcpy', () => {
        flip = !flip;
        (flip ? b : a).copy(dst);
      }, opts)
      .on('cycle', (e) => (hz[e.target.name] = e.target.hz))
      .on('complete', done)
      .run();
  });
  const gbps = (name) => Math.round(((hz[name] * BYTES) / 1e9) * 100) / 100;
  results.mixes[mix] = { encodeGBps: gbps('encode'), decodeGBps: gbps('decode'), lz4NapiGBps: gbps('lz4-napi compress'), memcpyGBps: gbps('memcpy'), wireRatio: Math.round(wireRatio * 10000) / 10000 };
  rows.push([mix, results.mixes[mix].encodeGBps, results.mixes[mix].decodeGBps, results.mixes[mix].lz4NapiGBps, results.mixes[mix].memcpyGBps, results.mixes[mix].wireRatio]);
}

const m = results.mixes;
results.verdict = {
  zeroDupEncode: Math.min(m.zero.encodeGBps, m.unchanged.encodeGBps) >= TARGETS.zeroDupEncodeGBps,
  smallEncode: m.small.encodeGBps >= TARGETS.smallEncodeGBps,
  decode: Math.min(...Object.values(m).map((x) => x.decodeGBps)) >= TARGETS.decodeGBps,
};
results.pass = Object.values(results.verdict).every(Boolean);
const out = writeResults(root, 'memdelta', results);
printTable('bench/native/memdelta (GB/s over 1 MiB batches of 4 KiB pages; one core)', ['mix', 'encode', 'decode', 'lz4-napi', 'memcpy', 'wire/raw'], rows);
console.log(`\ntargets: zero/dup encode >= ${TARGETS.zeroDupEncodeGBps} ${results.verdict.zeroDupEncode ? 'PASS' : 'MISS'}, small-change encode >= ${TARGETS.smallEncodeGBps} ${results.verdict.smallEncode ? 'PASS' : 'MISS'}, decode >= ${TARGETS.decodeGBps} ${results.verdict.decode ? 'PASS' : 'MISS'}`);
console.log(`results: ${out}`);
if (args.check && !results.pass) process.exitCode = 1;
