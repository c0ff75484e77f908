//! Which parts a node holds, in BitTorrent's layout: bit 7 of byte 0 is
//! part 0, `ceil(n / 8)` bytes, spare bits zero. The same bytes are
//! persisted in the store (for resume) and sent in a seeder's offer.

use crate::error::WireError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
}

impl Bitfield {
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bits: vec![0; (len as usize).div_ceil(8)],
            len,
        }
    }

    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Checks bytes from a peer (or the store) for `len` parts: exact byte
    /// length and zero spare bits.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Bitfield, WireError> {
        let want = (len as usize).div_ceil(8);
        if bytes.len() != want {
            return Err(WireError::Malformed {
                kind: "bitfield",
                why: format!("{} bytes for {len} parts (needs {want})", bytes.len()),
            });
        }
        let spare = (want * 8) as u32 - len;
        if spare > 0 && bytes[want - 1] & ((1u8 << spare) - 1) != 0 {
            return Err(WireError::Malformed {
                kind: "bitfield",
                why: "spare bits set past the last part".into(),
            });
        }
        Ok(Bitfield {
            bits: bytes.to_vec(),
            len,
        })
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    pub fn set(&mut self, i: u32) {
        assert!(i < self.len, "part {i} past {}", self.len);
        self.bits[(i / 8) as usize] |= 0x80 >> (i % 8);
    }

    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_complete(&self) -> bool {
        self.count() == self.len
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Indexes of the parts held.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|i| self.get(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_bittorrents() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count(), 2);
        assert_eq!(Bitfield::from_bytes(&[0x80, 0x40], 10).unwrap(), b);
        assert!(Bitfield::full(10).is_complete());
        assert_eq!(Bitfield::full(10).as_bytes(), &[0xff, 0xc0]);
    }

    #[test]
    fn wrong_length_or_spare_bits_are_refused() {
        assert!(Bitfield::from_bytes(&[0xff], 10).is_err());
        assert!(Bitfield::from_bytes(&[0xff, 0, 0], 10).is_err());
        let err = Bitfield::from_bytes(&[0xff, 0xe0], 10).unwrap_err();
        assert!(err.to_string().contains("spare bits"), "{err}");
        assert!(Bitfield::from_bytes(&[], 0).unwrap().is_complete());
    }
}
