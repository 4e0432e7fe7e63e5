//! `<journal>/marks`: two positions the journal must remember across restarts, in one small file replaced
//! atomically (temp + fsync + rename + directory fsync), never on the commit path.
//!
//! ```text
//! 0   8  magic b"OPOSMARK"
//! 8   4  format version = 1                                     (u32 LE)
//! 12  4  zero
//! 16  8  durable head: every record up to here was acknowledged (u64 LE)
//!        durable; recovery never cuts at or below it
//! 24  8  mirror durable through: the Opossum tree holds every    (u64 LE)
//!        event up to here, fsynced
//! 32  4  crc32c of bytes 0 .. 32                                 (u32 LE)
//! 36  4  zero
//! ```
//! The durable head is written when a segment is sealed and at a clean close: it turns "a record the journal
//! acknowledged is gone" from a silent cut into a loud error for everything but the groups since then.

use super::format::{u32_at, u64_at};

pub const MARKS_FILE: &str = "marks";
const MAGIC: [u8; 8] = *b"OPOSMARK";
const VERSION: u32 = 1;
pub const MARKS_BYTES: usize = 40;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    pub durable_head: u64,
    pub mirror_durable: u64,
}

impl Marks {
    pub fn encode(&self) -> [u8; MARKS_BYTES] {
        let mut b = [0u8; MARKS_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.durable_head.to_le_bytes());
        b[24..32].copy_from_slice(&self.mirror_durable.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(Marks::decode(&b), Ok(*self));
        b
    }

    pub fn decode(b: &[u8]) -> Result<Marks, String> {
        if b.len() != MARKS_BYTES || b[0..8] != MAGIC {
            return Err("not a marks file".into());
        }
        if crc32c::crc32c(&b[0..32]) != u32_at(b, 32) {
            return Err("marks checksum mismatch".into());
        }
        if u32_at(b, 8) != VERSION {
            return Err(format!("marks version {}", u32_at(b, 8)));
        }
        Ok(Marks { durable_head: u64_at(b, 16), mirror_durable: u64_at(b, 24) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_reject_damage() {
        let m = Marks { durable_head: 77, mirror_durable: 70 };
        let mut b = m.encode();
        assert_eq!(Marks::decode(&b), Ok(m));
        b[20] ^= 4;
        assert!(Marks::decode(&b).is_err());
    }
}
