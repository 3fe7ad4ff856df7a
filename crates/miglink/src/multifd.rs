//! QEMU's multifd channel format, as much as the relay needs to find guest pages.
//!
//! A connection from QEMU starts with a 4-byte magic: the main channel ("QEVM", device
//! state and sync markers, forwarded as is) or a multifd channel, which sends a 64-byte
//! init packet, then packets:
//!
//! - RAM packet (QEMU ≥ 9.0, big-endian): `magic u32 | version u32 | flags u32 |
//!   pages_alloc u32 | normal_pages u32 | next_packet_size u32 | packet_num u64 |
//!   zero_pages u32 | reserved u32 | reserved u64[3] | ramblock char[256] |
//!   offset u64[512 KiB / page_size]`, then `normal_pages` × page_size bytes (the
//!   non-zero pages). The offset array always has its full size, even in SYNC packets
//!   (checked against QEMU 10.0.2's stream).
//! - Device-state packet (flag bit 6): `magic | version | flags | idstr[256] |
//!   instance_id u32 | next_packet_size u32`, then that many opaque bytes.
//!
//! Older QEMU (< 9.0) laid the RAM packet out differently; the daemon refuses it before
//! starting (query-version) rather than guess.

use crate::LinkError;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

/// The first 4 bytes of QEMU's main migration channel ("QEVM").
pub const QEVM_MAGIC: u32 = 0x5145_564d;
/// The first 4 bytes of a multifd channel, and of each of its packets.
pub const MULTIFD_MAGIC: u32 = 0x1122_3344;
const VERSION: u32 = 1;
const INIT_LEN: usize = 64;
const HDR_LEN: usize = 12;
/// Fixed part of a RAM packet, before the offsets.
pub const RAM_FIXED_LEN: usize = 320;
/// QEMU's MULTIFD_PACKET_SIZE: what one packet can carry, in bytes of pages.
const PACKET_PAYLOAD: usize = 512 * 1024;
const DEVICE_STATE_LEN: usize = HDR_LEN + 256 + 4 + 4;
const FLAG_COMPRESSION_MASK: u32 = 0x1f << 1;
const FLAG_DEVICE_STATE: u32 = 32 << 1;
/// A page index for the codec: ramblock number in the high bits, page number below.
const BLOCK_SHIFT: u32 = 40;
/// Guest page size the parser handles (x86 4 KiB pages).
pub const PAGE_SIZE: usize = novacron_memdelta::PAGE_SIZE;
/// Pages one RAM packet can carry (4 KiB pages).
pub const PACKET_SLOTS: usize = PACKET_PAYLOAD / PAGE_SIZE;
/// RAM packet header length with 4 KiB pages.
pub const RAM_HEADER_LEN: usize = RAM_FIXED_LEN + 8 * PACKET_SLOTS;

/// Ramblock names → small numbers, shared by a migration's channels.
#[derive(Default)]
pub struct BlockNumbers(Mutex<HashMap<Vec<u8>, u64>>);

impl BlockNumbers {
    fn of(&self, name: &[u8]) -> u64 {
        let mut m = self.0.lock().unwrap();
        let n = m.len() as u64;
        *m.entry(name.to_vec()).or_insert(n)
    }
}

/// One unit of a multifd channel, as the source's link sends it on.
pub enum Item {
    /// Bytes to forward unchanged (init and device-state packets).
    Opaque(Vec<u8>),
    /// A RAM packet: its header verbatim, the normal pages, and their codec indices.
    Ram {
        /// The packet's header and offset array, verbatim.
        header: Vec<u8>,
        /// The normal (non-zero) pages, `PAGE_SIZE` bytes each.
        pages: Vec<u8>,
        /// Each page's codec index (ramblock number and page number).
        indices: Vec<u64>,
    },
}

/// Normal-page count of a RAM packet header.
pub fn normal_pages(header: &[u8]) -> u32 {
    be32(header, 16)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn check_magic(b: &[u8]) -> Result<(), LinkError> {
    let (magic, version) = (be32(b, 0), be32(b, 4));
    if magic != MULTIFD_MAGIC {
        return Err(LinkError::Protocol(format!(
            "bad multifd magic 0x{magic:x}"
        )));
    }
    if version != VERSION {
        return Err(LinkError::Protocol(format!(
            "unsupported multifd version {version}"
        )));
    }
    Ok(())
}

/// Fills `buf`; `Ok(false)` if the stream ended before its first byte.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, LinkError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(LinkError::Protocol(format!(
                    "QEMU channel ended inside a packet ({got} of {} bytes)",
                    buf.len()
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LinkError::io("QEMU channel", e)),
        }
    }
    Ok(true)
}

fn fill_all(r: &mut impl Read, buf: &mut [u8]) -> Result<(), LinkError> {
    if buf.is_empty() || fill(r, buf)? {
        Ok(())
    } else {
        Err(LinkError::Protocol(
            "QEMU channel ended inside a packet".into(),
        ))
    }
}

/// Reads one multifd channel (after its magic) packet by packet.
pub struct MultifdReader<'a> {
    blocks: &'a BlockNumbers,
}

impl<'a> MultifdReader<'a> {
    /// A reader numbering ramblocks with the migration's shared `blocks`.
    pub fn new(blocks: &'a BlockNumbers) -> Self {
        Self { blocks }
    }

    /// The init packet, whose first 4 bytes (`magic`) the caller already read.
    pub fn init(&self, r: &mut impl Read, magic: [u8; 4]) -> Result<Vec<u8>, LinkError> {
        let mut init = vec![0u8; INIT_LEN];
        init[..4].copy_from_slice(&magic);
        fill_all(r, &mut init[4..])?;
        check_magic(&init)?;
        Ok(init)
    }

    /// The next packet; `None` when QEMU closed the channel between packets. A RAM
    /// packet's pages go into `pages` (a recycled buffer; it is emptied first).
    pub fn next(&self, r: &mut impl Read, mut pages: Vec<u8>) -> Result<Option<Item>, LinkError> {
        let mut head = [0u8; HDR_LEN];
        if !fill(r, &mut head)? {
            return Ok(None);
        }
        check_magic(&head)?;
        let flags = be32(&head, 8);
        if flags & FLAG_DEVICE_STATE != 0 {
            let mut p = vec![0u8; DEVICE_STATE_LEN];
            p[..HDR_LEN].copy_from_slice(&head);
            fill_all(r, &mut p[HDR_LEN..])?;
            let size = be32(&p, DEVICE_STATE_LEN - 4) as usize;
            if size > crate::wire::MAX_PAYLOAD / 2 {
                return Err(LinkError::Protocol(format!(
                    "implausible multifd device-state packet of {size} bytes"
                )));
            }
            p.resize(DEVICE_STATE_LEN + size, 0);
            fill_all(r, &mut p[DEVICE_STATE_LEN..])?;
            return Ok(Some(Item::Opaque(p)));
        }
        if flags & FLAG_COMPRESSION_MASK != 0 {
            return Err(LinkError::Protocol(format!(
                "multifd packet uses QEMU compression (flags 0x{flags:x}); NovaCron needs multifd-compression=none"
            )));
        }
        let mut header = vec![0u8; RAM_HEADER_LEN];
        header[..HDR_LEN].copy_from_slice(&head);
        fill_all(r, &mut header[HDR_LEN..])?;
        let slots = PACKET_PAYLOAD / PAGE_SIZE;
        let normal = normal_pages(&header) as usize;
        let zero = be32(&header, 32) as usize;
        if normal + zero > slots {
            return Err(LinkError::Protocol(format!(
                "implausible multifd packet: {normal} normal + {zero} zero pages in {slots} slots"
            )));
        }
        pages.clear();
        crate::wire::read_n(r, &mut pages, normal * PAGE_SIZE).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                LinkError::Protocol("QEMU channel ended inside a packet".into())
            }
            _ => LinkError::io("QEMU channel", e),
        })?;
        let mut indices = Vec::with_capacity(normal);
        if normal > 0 {
            let name = &header[64..320];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            let block = self.blocks.of(name) << BLOCK_SHIFT;
            for i in 0..normal {
                let at = RAM_FIXED_LEN + 8 * i;
                let offset = u64::from_be_bytes(header[at..at + 8].try_into().unwrap());
                indices.push(block | (offset / PAGE_SIZE as u64));
            }
        }
        Ok(Some(Item::Ram {
            header,
            pages,
            indices,
        }))
    }
}
