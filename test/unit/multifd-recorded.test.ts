/**
 * The sim driver's TS multifd parser against QEMU's own stream: the same two channels,
 * recorded from QEMU 10 by scripts/record-multifd.mjs, that crates/miglink's parser
 * decodes in crates/miglink/tests/recorded.rs — both must find the items in expected.json.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MULTIFD_PACKET_PAYLOAD, MultifdParser, RAM_PACKET_FIXED_LEN } from '../../src/vm/drivers/sim-multifd.js';
import { ByteQueue } from '../../src/util/byte-queue.js';

const dir = join(import.meta.dirname, '..', '..', 'testdata', 'qemu-multifd');
const expected = JSON.parse(readFileSync(join(dir, 'expected.json'), 'utf8'));

describe("QEMU's recorded multifd channels", () => {
  it('decode to the items in expected.json, every byte accounted for', () => {
    expect(expected.qemu).toMatch(/^\d+\.\d+\.\d+$/);
    const blocks = new Map<string, bigint>();
    for (const channel of expected.channels) {
      const bytes = readFileSync(join(dir, channel.file));
      const q = new ByteQueue();
      q.push(bytes);
      const parser = new MultifdParser(blocks);
      const items: Array<{ kind: 'opaque'; bytes: number } | { kind: 'ram'; flags: number; normalPages: number; zeroPages: number; firstIndices: string[] }> = [];
      for (let item; (item = parser.next(q)); ) {
        if (item.kind === 'opaque') items.push({ kind: 'opaque', bytes: item.bytes.length });
        else {
          expect(item.header.length).toBe(RAM_PACKET_FIXED_LEN + 8 * (MULTIFD_PACKET_PAYLOAD / 4096));
          expect(item.pages.length).toBe(item.indices.length * 4096);
          items.push({ kind: 'ram', flags: item.header.readUInt32BE(8), normalPages: item.indices.length, zeroPages: item.header.readUInt32BE(32), firstIndices: [...item.indices.slice(0, 3)].map(String) });
        }
      }
      expect(q.length, `${channel.file}: bytes left undecoded`).toBe(0);
      expect(items).toEqual(channel.items);
      expect(items.some((i) => i.kind === 'ram' && i.normalPages > 0)).toBe(true);
    }
  });
});
