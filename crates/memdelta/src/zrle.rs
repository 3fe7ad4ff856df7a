//! Zero-run encoding of an XOR delta (mostly zeros when few bytes changed):
//! a sequence of `(zeros: varint, literal_len: varint, literal bytes)` records.

use crate::PAGE_SIZE;

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(input: &[u8], at: &mut usize) -> Result<usize, &'static str> {
    let mut v = 0usize;
    for shift in (0..21).step_by(7) {
        let b = *input.get(*at).ok_or("truncated varint")?;
        *at += 1;
        v |= ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long")
}

pub(crate) fn encode(x: &[u8; PAGE_SIZE], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < PAGE_SIZE {
        let zero_start = i;
        // Skip zero words eight bytes at a time (deltas of small changes are mostly zero).
        while i + 8 <= PAGE_SIZE && u64::from_ne_bytes(x[i..i + 8].try_into().unwrap()) == 0 {
            i += 8;
        }
        while i < PAGE_SIZE && x[i] == 0 {
            i += 1;
        }
        if i == PAGE_SIZE {
            break; // trailing zeros are implied
        }
        let lit_start = i;
        // A literal ends at the next run of at least 3 zeros. Words without any zero byte
        // cannot hold one: skip them eight bytes at a time (dense data is mostly such words).
        loop {
            while i + 8 <= PAGE_SIZE
                && !has_zero_byte(u64::from_ne_bytes(x[i..i + 8].try_into().unwrap()))
            {
                i += 8;
            }
            if i >= PAGE_SIZE || (x[i] == 0 && i + 2 < PAGE_SIZE && x[i + 1] == 0 && x[i + 2] == 0)
            {
                break;
            }
            i += 1;
        }
        put_varint(out, lit_start - zero_start);
        put_varint(out, i - lit_start);
        out.extend_from_slice(&x[lit_start..i]);
    }
}

/// Whether any byte of `w` is zero (the classic bit trick).
fn has_zero_byte(w: u64) -> bool {
    (w.wrapping_sub(0x0101_0101_0101_0101) & !w & 0x8080_8080_8080_8080) != 0
}

pub(crate) fn decode(input: &[u8], x: &mut [u8; PAGE_SIZE]) -> Result<(), &'static str> {
    let mut at = 0;
    let mut pos: usize = 0;
    while at < input.len() {
        let zeros = get_varint(input, &mut at)?;
        let lit = get_varint(input, &mut at)?;
        pos = pos
            .checked_add(zeros)
            .filter(|&p| p <= PAGE_SIZE)
            .ok_or("zero run past the page")?;
        let end = pos
            .checked_add(lit)
            .filter(|&e| e <= PAGE_SIZE)
            .ok_or("literal past the page")?;
        let bytes = input.get(at..at + lit).ok_or("truncated literal")?;
        x[pos..end].copy_from_slice(bytes);
        at += lit;
        pos = end;
    }
    Ok(())
}
