/**
 * QEMU's migration channel formats, as the sim driver's stand-in for QEMU writes and reads
 * them (the real data path parses QEMU's streams in Rust: crates/miglink/src/multifd.rs;
 * both parsers decode the recorded stream under testdata/).
 *
 * A connection from QEMU starts with a 4-byte magic: the main channel ("QEVM", device
 * state and sync markers — forwarded as is) or a multifd channel, which sends a 64-byte
 * init packet, then packets:
 *
 *   RAM packet (QEMU ≥ 9.0, big-endian):
 *     magic u32 | version u32 | flags u32 | pages_alloc u32 | normal_pages u32 |
 *     next_packet_size u32 | packet_num u64 | zero_pages u32 | reserved u32 |
 *     reserved u64[3] | ramblock char[256] | offset u64[512 KiB / page_size]
 *     followed by normal_pages × page_size bytes (the non-zero pages, uncompressed).
 *     The offset array always has its full size (128 for 4 KiB pages), even in SYNC
 *     packets, whose pages_alloc is 0 (checked against QEMU 10.0.2's stream).
 *   Device-state packet (flag bit 6): magic | version | flags | idstr[256] |
 *     instance_id u32 | next_packet_size u32, then that many opaque bytes.
 *
 * Older QEMU (< 9.0) laid the RAM packet out differently; the QEMU driver refuses it
 * rather than guess (MIGRATION_UNSUPPORTED, see `supportsQemu` in vm/qemu/migration.ts).
 */
import { NovaError } from '../../errors.js';
import type { ByteQueue } from '../../util/byte-queue.js';

export const QEVM_MAGIC = 0x5145564d;
export const MULTIFD_MAGIC = 0x11223344;
export const MULTIFD_VERSION = 1;
export const MULTIFD_INIT_LEN = 64;
export const MULTIFD_HDR_LEN = 12;
/** Fixed part of a RAM packet, before the offsets. */
export const RAM_PACKET_FIXED_LEN = 320;
/** QEMU's MULTIFD_PACKET_SIZE: the pages one packet can carry, in bytes. */
export const MULTIFD_PACKET_PAYLOAD = 512 * 1024;
export const DEVICE_STATE_PACKET_LEN = 12 + 256 + 4 + 4;
export const FLAG_SYNC = 1;
export const FLAG_COMPRESSION_MASK = 0x1f << 1;
export const FLAG_DEVICE_STATE = 32 << 1;
/** A page index for the codec: ramblock number in the high bits, page number below. */
const BLOCK_SHIFT = 40n;

export type ChannelItem =
  | { kind: 'opaque'; bytes: Buffer }
  | { kind: 'ram'; header: Buffer; pages: Buffer; indices: BigUint64Array };

/**
 * Incremental parser of one multifd channel (after its magic). Feed it the channel's
 * queue; it returns complete items: the init packet and device-state packets as opaque
 * bytes, RAM packets split into header and pages.
 */
export class MultifdParser {
  #initDone = false;
  #pageSize: number;
  #blocks: Map<string, bigint>;

  /** `blocks` is shared by a migration's channels so a ramblock has one number. */
  constructor(blocks: Map<string, bigint>, pageSize = 4096) {
    this.#blocks = blocks;
    this.#pageSize = pageSize;
  }

  next(q: ByteQueue): ChannelItem | undefined {
    if (!this.#initDone) {
      if (q.length < MULTIFD_INIT_LEN) return undefined;
      const init = q.take(MULTIFD_INIT_LEN);
      checkMagic(init);
      this.#initDone = true;
      return { kind: 'opaque', bytes: init };
    }
    if (q.length < MULTIFD_HDR_LEN) return undefined;
    const flags = q.peekU32(8);
    checkMagic(q.peek(MULTIFD_HDR_LEN));
    if (flags & FLAG_DEVICE_STATE) {
      if (q.length < DEVICE_STATE_PACKET_LEN) return undefined;
      const size = q.peekU32(DEVICE_STATE_PACKET_LEN - 4);
      if (q.length < DEVICE_STATE_PACKET_LEN + size) return undefined;
      return { kind: 'opaque', bytes: q.take(DEVICE_STATE_PACKET_LEN + size) };
    }
    if (flags & FLAG_COMPRESSION_MASK) {
      throw new NovaError('MIGRATION_PROTOCOL', `multifd packet uses QEMU compression (flags 0x${flags.toString(16)}); NovaCron needs multifd-compression=none`);
    }
    if (q.length < RAM_PACKET_FIXED_LEN) return undefined;
    const fixed = q.peek(RAM_PACKET_FIXED_LEN);
    const slots = MULTIFD_PACKET_PAYLOAD / this.#pageSize;
    const normal = fixed.readUInt32BE(16);
    const zero = fixed.readUInt32BE(32);
    if (normal + zero > slots) {
      throw new NovaError('MIGRATION_PROTOCOL', `implausible multifd packet: ${normal} normal + ${zero} zero pages in ${slots} slots`);
    }
    const headerLen = RAM_PACKET_FIXED_LEN + 8 * slots;
    const total = headerLen + normal * this.#pageSize;
    if (q.length < total) return undefined;
    const header = q.take(headerLen);
    const pages = q.take(normal * this.#pageSize);
    const indices = new BigUint64Array(normal);
    if (normal > 0) {
      const block = this.#blockNumber(header);
      for (let i = 0; i < normal; i++) {
        const offset = header.readBigUInt64BE(RAM_PACKET_FIXED_LEN + 8 * i);
        indices[i] = (block << BLOCK_SHIFT) | (offset / BigInt(this.#pageSize));
      }
    }
    return { kind: 'ram', header, pages, indices };
  }

  #blockNumber(header: Buffer): bigint {
    const raw = header.subarray(64, 320);
    const end = raw.indexOf(0);
    const name = raw.toString('latin1', 0, end < 0 ? raw.length : end);
    let n = this.#blocks.get(name);
    if (n === undefined) {
      n = BigInt(this.#blocks.size);
      this.#blocks.set(name, n);
    }
    return n;
  }
}

function checkMagic(b: Buffer): void {
  const magic = b.readUInt32BE(0);
  const version = b.readUInt32BE(4);
  if (magic !== MULTIFD_MAGIC) throw new NovaError('MIGRATION_PROTOCOL', `bad multifd magic 0x${magic.toString(16)}`);
  if (version !== MULTIFD_VERSION) throw new NovaError('MIGRATION_PROTOCOL', `unsupported multifd version ${version}`);
}
