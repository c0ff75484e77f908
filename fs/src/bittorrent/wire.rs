//! The BitTorrent peer wire (BEP 3) as this node speaks it: the 68-byte
//! handshake and the nine messages of BEP 3 (`choke` … `cancel`), plus
//! BEP 5's `port`, which some clients send whatever the reserved bits say.
//!
//! Parsing and serialising are `librqbit-peer-protocol`'s (rqbit's codec);
//! this module adds what a server facing strangers needs around it:
//!
//! - a length cap checked on the 4-byte prefix, before a byte of the body
//!   is read or allocated: a block (16 KiB) plus its header, or the
//!   torrent's bitfield, whichever is larger ([`max_len`]);
//! - only the messages this node negotiates: it sets no reserved bit, so
//!   an extension message (BEP 10's id 20, the fast extension's 13–17) is
//!   a protocol violation, refused before the crate's bencode parser
//!   sees it;
//! - owned, typed values ([`Msg`]) for the sessions.
//!
//! Requests larger than [`BLOCK`] are refused as BEP 3 says current
//! implementations do ("close connections which request an amount
//! greater than 2^14").

use librqbit_peer_protocol::{Message, MessageDeserializeError, Piece, Request};

use crate::error::PeerWireError;

/// `\x13BitTorrent protocol`, reserved, info-hash, peer id.
pub const HANDSHAKE_LEN: usize = 68;
/// The block every request asks for (BEP 3: 2^14).
pub const BLOCK: u32 = 16 * 1024;
/// A piece message's header: length, id, index, begin.
const PIECE_HEAD: usize = 4 + 1 + 8;
/// BEP 5's `port` message, which the crate does not know.
const PORT: u8 = 9;

/// The first 68 bytes each side sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Ours: no extension bits (no DHT, no fast extension, no BEP 10).
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20]) -> Handshake {
        Handshake {
            reserved: [0; 8],
            info_hash,
            peer_id,
        }
    }

    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let h = librqbit_peer_protocol::Handshake {
            reserved: u64::from_be_bytes(self.reserved),
            info_hash: librqbit_core::hash_id::Id20::new(self.info_hash),
            peer_id: librqbit_core::hash_id::Id20::new(self.peer_id),
        };
        let mut out = [0u8; HANDSHAKE_LEN];
        let n = h.serialize_unchecked_len(&mut out);
        debug_assert_eq!(n, HANDSHAKE_LEN);
        out
    }

    pub fn decode(bytes: &[u8; HANDSHAKE_LEN]) -> Result<Handshake, PeerWireError> {
        let (h, _) = librqbit_peer_protocol::Handshake::deserialize(bytes).map_err(|e| {
            // Clients that try MSE/PE first (aria2c does) fall back to a
            // plain handshake on a new connection.
            PeerWireError::BadHandshake(format!(
                "{e} (an encrypted MSE/PE handshake? this node speaks plain BitTorrent)"
            ))
        })?;
        Ok(Handshake {
            reserved: h.reserved.to_be_bytes(),
            info_hash: h.info_hash.0,
            peer_id: h.peer_id.0,
        })
    }
}

/// One block of a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    pub index: u32,
    pub begin: u32,
    pub length: u32,
}

/// A message after the handshake; `Piece` and `Bitfield` borrow the
/// buffer they were read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(&'a [u8]),
    Request(Block),
    Piece {
        index: u32,
        begin: u32,
        data: &'a [u8],
    },
    Cancel(Block),
    /// BEP 5: the sender's DHT port (ignored: this node runs no DHT).
    Port(u16),
}

impl Msg<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Msg::KeepAlive => "keep-alive",
            Msg::Choke => "choke",
            Msg::Unchoke => "unchoke",
            Msg::Interested => "interested",
            Msg::NotInterested => "not-interested",
            Msg::Have(_) => "have",
            Msg::Bitfield(_) => "bitfield",
            Msg::Request(_) => "request",
            Msg::Piece { .. } => "piece",
            Msg::Cancel(_) => "cancel",
            Msg::Port(_) => "port",
        }
    }
}

/// The longest message a peer may send on a torrent of `pieces` parts:
/// a 16 KiB block with its header, or the bitfield, whichever is larger.
pub fn max_len(pieces: u32) -> usize {
    (PIECE_HEAD - 4 + BLOCK as usize).max(1 + (pieces as usize).div_ceil(8))
}

/// Checks a message's 4-byte length prefix against `max` before its body
/// is read; returns the body length (id included).
pub fn check_len(prefix: [u8; 4], max: usize) -> Result<usize, PeerWireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(PeerWireError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes one message from the front of `buf`, refusing (before
/// parsing) lengths over `max` and messages this node does not
/// negotiate. `Ok(None)`: `buf` does not hold a whole message yet.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Msg<'_>, usize)>, PeerWireError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = check_len(*prefix, max)?;
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let whole = &buf[..4 + len];
    Ok(Some((decode_body(whole)?, 4 + len)))
}

/// `whole`: one message with its length prefix.
fn decode_body(whole: &[u8]) -> Result<Msg<'_>, PeerWireError> {
    if whole.len() == 4 {
        return Ok(Msg::KeepAlive);
    }
    let id = whole[4];
    match id {
        0..=8 => {}
        PORT => {
            let port = <[u8; 2]>::try_from(&whole[5..]).map_err(|_| PeerWireError::Malformed {
                id,
                why: format!("port message of {} bytes (needs 3)", whole.len() - 4),
            })?;
            return Ok(Msg::Port(u16::from_be_bytes(port)));
        }
        other => return Err(PeerWireError::UnknownMessage(other)),
    }
    let malformed = |e: MessageDeserializeError| PeerWireError::Malformed {
        id,
        why: e.to_string(),
    };
    let (m, used) = Message::deserialize(whole, &[]).map_err(malformed)?;
    if used != whole.len() {
        return Err(PeerWireError::Malformed {
            id,
            why: format!("{used} bytes used of {}", whole.len()),
        });
    }
    let block = |r: Request| Block {
        index: r.index,
        begin: r.begin,
        length: r.length,
    };
    Ok(match m {
        Message::KeepAlive => Msg::KeepAlive,
        Message::Choke => Msg::Choke,
        Message::Unchoke => Msg::Unchoke,
        Message::Interested => Msg::Interested,
        Message::NotInterested => Msg::NotInterested,
        Message::Have(i) => Msg::Have(i),
        Message::Bitfield(b) => Msg::Bitfield(b.0),
        Message::Request(r) => Msg::Request(block(r)),
        Message::Cancel(r) => Msg::Cancel(block(r)),
        Message::Piece(p) => {
            let (a, b) = p.data();
            debug_assert!(b.is_empty(), "one contiguous buffer");
            Msg::Piece {
                index: p.index,
                begin: p.begin,
                data: a,
            }
        }
        Message::Extended(_) => return Err(PeerWireError::UnknownMessage(id)),
    })
}

/// Appends `msg`, framed, to `out`.
pub fn encode(msg: &Msg<'_>, out: &mut Vec<u8>) {
    let m = match *msg {
        Msg::KeepAlive => Message::KeepAlive,
        Msg::Choke => Message::Choke,
        Msg::Unchoke => Message::Unchoke,
        Msg::Interested => Message::Interested,
        Msg::NotInterested => Message::NotInterested,
        Msg::Have(i) => Message::Have(i),
        Msg::Bitfield(b) => Message::Bitfield(librqbit_buffers::ByteBuf(b)),
        Msg::Request(b) => Message::Request(Request::new(b.index, b.begin, b.length)),
        Msg::Cancel(b) => Message::Cancel(Request::new(b.index, b.begin, b.length)),
        Msg::Piece { index, begin, data } => Message::Piece(Piece::from_data(index, begin, data)),
        Msg::Port(p) => {
            out.extend_from_slice(&3u32.to_be_bytes());
            out.push(PORT);
            out.extend_from_slice(&p.to_be_bytes());
            return;
        }
    };
    let at = out.len();
    let room = match msg {
        Msg::Bitfield(b) => 5 + b.len(),
        Msg::Piece { data, .. } => PIECE_HEAD + data.len(),
        _ => 17,
    };
    out.resize(at + room, 0);
    let n = m
        .serialize(&mut out[at..], &Default::default)
        .expect("sized for the message");
    out.truncate(at + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Msg<'_>) {
        let mut out = Vec::new();
        encode(&m, &mut out);
        let (back, used) = decode(&out, max_len(100)).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(used, out.len());
        // One byte short is not a message yet.
        assert_eq!(decode(&out[..out.len() - 1], max_len(100)).unwrap(), None);
    }

    #[test]
    fn every_message_round_trips() {
        let b = Block {
            index: 3,
            begin: BLOCK,
            length: BLOCK,
        };
        let data = vec![7u8; BLOCK as usize];
        for m in [
            Msg::KeepAlive,
            Msg::Choke,
            Msg::Unchoke,
            Msg::Interested,
            Msg::NotInterested,
            Msg::Have(9),
            Msg::Bitfield(&[0xff, 0x80]),
            Msg::Request(b),
            Msg::Cancel(b),
            Msg::Piece {
                index: 1,
                begin: 0,
                data: &data,
            },
            Msg::Port(6881),
        ] {
            round_trip(m);
        }
    }

    #[test]
    fn the_handshake_round_trips_and_checks_its_protocol_string() {
        let h = Handshake::new([1; 20], [2; 20]);
        let bytes = h.encode();
        assert_eq!(&bytes[..20], b"\x13BitTorrent protocol");
        assert_eq!(Handshake::decode(&bytes).unwrap(), h);
        let mut bad = bytes;
        bad[5] = b'X';
        assert!(matches!(
            Handshake::decode(&bad),
            Err(PeerWireError::BadHandshake(_))
        ));
    }

    #[test]
    fn a_length_over_the_cap_is_refused_from_its_prefix_alone() {
        // Only the 4-byte prefix: refused before any body exists.
        let huge = (1u32 << 30).to_be_bytes();
        assert!(matches!(
            decode(&huge, max_len(8)),
            Err(PeerWireError::TooLarge { len, .. }) if len == 1 << 30
        ));
        // A block of 32 KiB is over the cap of a small torrent.
        let mut out = Vec::new();
        let big = vec![0u8; 2 * BLOCK as usize];
        encode(
            &Msg::Piece {
                index: 0,
                begin: 0,
                data: &big,
            },
            &mut out,
        );
        assert!(decode(&out, max_len(8)).is_err());
        // A large torrent's bitfield fits its own cap.
        assert_eq!(max_len(1 << 20), 1 + (1 << 17));
    }

    #[test]
    fn extension_messages_are_not_negotiated() {
        // BEP 10's extended handshake, id 20.
        let mut m = vec![0, 0, 0, 3, 20, 0, b'd'];
        m[3] = 3;
        assert!(matches!(
            decode(&m, max_len(8)),
            Err(PeerWireError::UnknownMessage(20))
        ));
        // Fast extension's have-all (id 14).
        assert!(matches!(
            decode(&[0, 0, 0, 1, 14], max_len(8)),
            Err(PeerWireError::UnknownMessage(14))
        ));
        // Wrong sizes for fixed messages.
        assert!(decode(&[0, 0, 0, 2, 0, 0], max_len(8)).is_err());
        assert!(decode(&[0, 0, 0, 4, 4, 0, 0, 0], max_len(8)).is_err());
        assert!(decode(&[0, 0, 0, 2, 9, 0], max_len(8)).is_err());
    }
}
