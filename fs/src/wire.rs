//! The part-exchange protocol (`/zennet/fs/1`), spoken on one libp2p stream
//! per (downloader, seeder, file).
//!
//! Every frame is `len: u32 BE | kind: u8 | body`, `len` counting the kind
//! byte and the body. The reader checks `len` against the cap of its kind
//! before reading the body, so no peer makes us buffer more than one part
//! (or one metainfo) per stream. Bodies are fixed binary layouts, not a
//! self-describing format: a part is its index and its raw bytes.
//!
//! ```text
//! downloader                          seeder
//!   Hello{file}            ──▶
//!                          ◀──  Offer{price, credit, protocols, have, signature} | NotHere
//!   GetMeta                ──▶                      (when the metainfo is not known yet)
//!                          ◀──  Meta{info dict bytes}
//!   Get{i} Get{j} …        ──▶                      (several in flight, answered in order)
//!                          ◀──  Part{i, bytes} Part{j, bytes} … | Refused{reason}
//!   Pay{voucher}           ──▶                      (as parts verify)
//!   Bye                    ──▶
//! ```

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zennet_chain::{Amount, SignedVoucher};

use crate::error::WireError;
use crate::metainfo::{FileId, MAX_INFO_BYTES, PIECE_LEN};

pub const PROTOCOL: &str = "/zennet/fs/1";

/// What a seeder can serve a file over. An entry may say where, as
/// `name=where` (see [`Offer::endpoint`]): `http=` a BEP 19 web seed URL,
/// `bittorrent=` the peer listener's address, `tracker=` an announce URL.
pub const PROTOCOL_ZENNET: &str = "zennet";
pub const PROTOCOL_HTTP: &str = "http";
pub const PROTOCOL_BITTORRENT: &str = "bittorrent";
pub const PROTOCOL_TRACKER: &str = "tracker";

/// A seeder's signed quote for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub file: FileId,
    /// Base units per MiB (2^20 bytes) served.
    pub price_per_mib: Amount,
    /// Parts served ahead of payment before the seeder stops.
    pub credit_parts: u32,
    pub protocols: Vec<String>,
    /// The parts it holds, BitTorrent layout (checked against the metainfo's
    /// part count by the downloader).
    pub have: Vec<u8>,
    /// By the seeder's chain key over [`Offer::signing_hash`].
    pub signature: zennet_chain::Signature,
}

impl Offer {
    /// Where the seeder serves `protocol`, if its entry says
    /// (`protocol=where`).
    pub fn endpoint(&self, protocol: &str) -> Option<&str> {
        self.protocols
            .iter()
            .find_map(|p| p.strip_prefix(protocol)?.strip_prefix('='))
    }

    pub fn signing_hash(&self, chain_id: u64, genesis: &zennet_chain::Hash) -> zennet_chain::Hash {
        let mut payload = Vec::with_capacity(64 + self.have.len());
        payload.extend_from_slice(&self.file.0);
        payload.extend_from_slice(&self.price_per_mib.to_be_bytes());
        payload.extend_from_slice(&self.credit_parts.to_be_bytes());
        for p in &self.protocols {
            payload.push(p.len() as u8);
            payload.extend_from_slice(p.as_bytes());
        }
        payload.extend_from_slice(&self.have);
        zennet_chain::crypto::signing_hash("fs-offer", chain_id, genesis, &payload)
    }

    pub fn sign(
        mut self,
        key: &zennet_chain::SecretKey,
        chain_id: u64,
        genesis: &zennet_chain::Hash,
    ) -> Offer {
        self.signature = key.sign(&self.signing_hash(chain_id, genesis));
        self
    }

    /// The address that signed the quote.
    pub fn signer(
        &self,
        chain_id: u64,
        genesis: &zennet_chain::Hash,
    ) -> Option<zennet_chain::Address> {
        zennet_chain::crypto::recover_address(
            &self.signing_hash(chain_id, genesis),
            &self.signature,
        )
        .ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello { file: FileId },
    Offer(Offer),
    NotHere { reason: String },
    GetMeta,
    Meta(Vec<u8>),
    Get { index: u32 },
    Part { index: u32, bytes: Vec<u8> },
    Refused { reason: String },
    Pay(Box<SignedVoucher>),
    Bye,
}

const HELLO: u8 = 1;
const OFFER: u8 = 2;
const NOT_HERE: u8 = 3;
const GET_META: u8 = 4;
const META: u8 = 5;
const GET: u8 = 6;
const PART: u8 = 7;
const REFUSED: u8 = 8;
const PAY: u8 = 9;
const BYE: u8 = 10;

const SMALL: usize = 4 << 10;
/// An offer's bitfield covers at most what the metainfo cap allows.
const OFFER_CAP: usize = 1024 + MAX_INFO_BYTES / 20 / 8;

/// The largest body a frame of `kind` may have; `None`: unknown kind.
pub fn cap(kind: u8) -> Option<usize> {
    Some(match kind {
        HELLO | NOT_HERE | GET_META | GET | REFUSED | PAY | BYE => SMALL,
        OFFER => OFFER_CAP,
        META => MAX_INFO_BYTES,
        PART => 4 + PIECE_LEN as usize,
        _ => return None,
    })
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        HELLO => "hello",
        OFFER => "offer",
        NOT_HERE => "not-here",
        GET_META => "get-meta",
        META => "meta",
        GET => "get",
        PART => "part",
        REFUSED => "refused",
        PAY => "pay",
        BYE => "bye",
        _ => "unknown",
    }
}

/// Checks a frame header: a known kind whose body fits its cap.
pub fn check_header(len: u32, kind: u8) -> Result<usize, WireError> {
    let max = cap(kind).ok_or(WireError::UnknownType(kind))?;
    let body = (len as usize).checked_sub(1).ok_or(WireError::Malformed {
        kind: kind_name(kind),
        why: "length 0".into(),
    })?;
    if body > max {
        return Err(WireError::TooLarge {
            kind: kind_name(kind),
            len: body,
            max,
        });
    }
    Ok(body)
}

/// Decodes one frame from the front of `buf`; returns it and the bytes used.
/// `Ok(None)`: `buf` does not hold a whole frame yet.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
    let body_len = check_header(len, buf[4])?;
    let end = 5 + body_len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((decode_body(buf[4], buf[5..end].to_vec())?, end)))
}

/// Reads one frame, refusing oversize ones before reading their body.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        other => other?,
    }
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let body_len = check_header(len, head[4])?;
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body).await?;
    decode_body(head[4], body)
}

/// Writes one frame (not flushed; see [`flush`]).
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), WireError> {
    match frame {
        // The part's bytes go out as they are, without a copy.
        Frame::Part { index, bytes } => {
            let mut head = Vec::with_capacity(9);
            head.extend_from_slice(&(1 + 4 + bytes.len() as u32).to_be_bytes());
            head.push(PART);
            head.extend_from_slice(&index.to_be_bytes());
            w.write_all(&head).await?;
            w.write_all(bytes).await?;
        }
        other => w.write_all(&encode(other)).await?,
    }
    Ok(())
}

pub async fn flush<W: AsyncWrite + Unpin>(w: &mut W) -> Result<(), WireError> {
    w.flush().await.map_err(WireError::Io)
}

/// The whole frame, header included.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut body = Vec::new();
    let kind = match frame {
        Frame::Hello { file } => {
            body.extend_from_slice(&file.0);
            HELLO
        }
        Frame::Offer(o) => {
            body.extend_from_slice(&o.file.0);
            body.extend_from_slice(&o.price_per_mib.to_be_bytes());
            body.extend_from_slice(&o.credit_parts.to_be_bytes());
            body.push(o.protocols.len() as u8);
            for p in &o.protocols {
                body.push(p.len() as u8);
                body.extend_from_slice(p.as_bytes());
            }
            body.extend_from_slice(&(o.have.len() as u32).to_be_bytes());
            body.extend_from_slice(&o.have);
            body.extend_from_slice(&o.signature.0);
            OFFER
        }
        Frame::NotHere { reason } => {
            body.extend_from_slice(truncate(reason).as_bytes());
            NOT_HERE
        }
        Frame::GetMeta => GET_META,
        Frame::Meta(bytes) => {
            body.extend_from_slice(bytes);
            META
        }
        Frame::Get { index } => {
            body.extend_from_slice(&index.to_be_bytes());
            GET
        }
        Frame::Part { index, bytes } => {
            body.extend_from_slice(&index.to_be_bytes());
            body.extend_from_slice(bytes);
            PART
        }
        Frame::Refused { reason } => {
            body.extend_from_slice(truncate(reason).as_bytes());
            REFUSED
        }
        Frame::Pay(v) => {
            body = borsh::to_vec(v.as_ref()).expect("a voucher encodes");
            PAY
        }
        Frame::Bye => BYE,
    };
    let mut out = Vec::with_capacity(5 + body.len());
    out.extend_from_slice(&(1 + body.len() as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(SMALL);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn decode_body(kind: u8, body: Vec<u8>) -> Result<Frame, WireError> {
    let name = kind_name(kind);
    let bad = |why: &str| WireError::Malformed {
        kind: name,
        why: why.to_string(),
    };
    let exact = |n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(bad(&format!("{} bytes, expected {n}", body.len())))
        }
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| bad("not UTF-8"))
    };
    Ok(match kind {
        HELLO => {
            exact(20)?;
            Frame::Hello {
                file: FileId(body[..20].try_into().expect("20")),
            }
        }
        OFFER => {
            let mut c = Cursor { b: &body, at: 0 };
            let file = FileId(
                c.take(20)
                    .ok_or_else(|| bad("short"))?
                    .try_into()
                    .expect("20"),
            );
            let price = Amount::from_be_bytes(
                c.take(16)
                    .ok_or_else(|| bad("short"))?
                    .try_into()
                    .expect("16"),
            );
            let credit = u32::from_be_bytes(
                c.take(4)
                    .ok_or_else(|| bad("short"))?
                    .try_into()
                    .expect("4"),
            );
            let n = c.take(1).ok_or_else(|| bad("short"))?[0];
            let mut protocols = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let l = c.take(1).ok_or_else(|| bad("short"))?[0] as usize;
                protocols.push(text(c.take(l).ok_or_else(|| bad("short"))?)?);
            }
            let hl = u32::from_be_bytes(
                c.take(4)
                    .ok_or_else(|| bad("short"))?
                    .try_into()
                    .expect("4"),
            ) as usize;
            let have = c
                .take(hl)
                .ok_or_else(|| bad("bitfield past the end"))?
                .to_vec();
            let sig: [u8; 65] = c
                .take(65)
                .ok_or_else(|| bad("short signature"))?
                .try_into()
                .expect("65");
            if c.at != body.len() {
                return Err(bad("trailing bytes"));
            }
            Frame::Offer(Offer {
                file,
                price_per_mib: price,
                credit_parts: credit,
                protocols,
                have,
                signature: zennet_chain::Signature(sig),
            })
        }
        NOT_HERE => Frame::NotHere {
            reason: text(&body)?,
        },
        GET_META => {
            exact(0)?;
            Frame::GetMeta
        }
        META => Frame::Meta(body),
        GET => {
            exact(4)?;
            Frame::Get {
                index: u32::from_be_bytes(body[..4].try_into().expect("4")),
            }
        }
        PART => {
            if body.len() < 4 {
                return Err(bad("no index"));
            }
            let index = u32::from_be_bytes(body[..4].try_into().expect("4"));
            let mut bytes = body;
            bytes.drain(..4);
            Frame::Part { index, bytes }
        }
        REFUSED => Frame::Refused {
            reason: text(&body)?,
        },
        PAY => Frame::Pay(Box::new(
            borsh::from_slice(&body).map_err(|e| bad(&format!("voucher: {e}")))?,
        )),
        BYE => {
            exact(0)?;
            Frame::Bye
        }
        other => return Err(WireError::UnknownType(other)),
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zennet_chain::{Hash, SecretKey, Voucher};

    fn frames() -> Vec<Frame> {
        let key = SecretKey::generate();
        let offer = Offer {
            file: FileId([3; 20]),
            price_per_mib: 12345,
            credit_parts: 16,
            protocols: vec!["zennet".into(), "http".into()],
            have: vec![0xff, 0x80],
            signature: zennet_chain::Signature([0; 65]),
        }
        .sign(&key, 7, &Hash([9; 32]));
        let voucher = Voucher {
            chain_id: 7,
            channel: Hash([1; 32]),
            seq: 3,
            cumulative: 99,
        }
        .sign(&key, &Hash([9; 32]));
        vec![
            Frame::Hello {
                file: FileId([1; 20]),
            },
            Frame::Offer(offer),
            Frame::NotHere {
                reason: "no such file".into(),
            },
            Frame::GetMeta,
            Frame::Meta(b"d4:name1:ae".to_vec()),
            Frame::Get { index: 77 },
            Frame::Part {
                index: 5,
                bytes: vec![9; PIECE_LEN as usize],
            },
            Frame::Refused {
                reason: "unpaid".into(),
            },
            Frame::Pay(Box::new(voucher)),
            Frame::Bye,
        ]
    }

    #[test]
    fn every_frame_round_trips_through_both_readers() {
        let all = frames();
        let mut stream = Vec::new();
        for f in &all {
            let bytes = encode(f);
            assert_eq!(decode(&bytes).unwrap(), Some((f.clone(), bytes.len())));
            assert_eq!(decode(&bytes[..bytes.len() - 1]).unwrap(), None);
            stream.extend(bytes);
        }
        let mut r = futures::io::Cursor::new(stream);
        futures::executor::block_on(async {
            for f in &all {
                assert_eq!(&read(&mut r).await.unwrap(), f);
            }
            assert!(matches!(read(&mut r).await, Err(WireError::Closed)));
        });
    }

    #[test]
    fn the_streamed_part_matches_the_encoded_one() {
        let f = Frame::Part {
            index: 1,
            bytes: vec![4; 1000],
        };
        let mut out = futures::io::Cursor::new(Vec::new());
        futures::executor::block_on(write(&mut out, &f)).unwrap();
        assert_eq!(out.into_inner(), encode(&f));
    }

    #[test]
    fn an_oversize_frame_is_refused_before_its_body_is_read() {
        // A part frame announcing 1 GiB: refused from the 5-byte header.
        let mut head = (1u32 << 30).to_be_bytes().to_vec();
        head.push(PART);
        let err = decode(&head).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { kind: "part", .. }),
            "{err}"
        );
        let mut r = futures::io::Cursor::new(head);
        let err = futures::executor::block_on(read(&mut r)).unwrap_err();
        assert!(err.to_string().contains("over its"), "{err}");
        // A request one byte over its cap.
        let mut head = ((SMALL + 2) as u32).to_be_bytes().to_vec();
        head.push(GET);
        assert!(matches!(decode(&head), Err(WireError::TooLarge { .. })));
        let mut head = 5u32.to_be_bytes().to_vec();
        head.push(200);
        assert!(matches!(decode(&head), Err(WireError::UnknownType(200))));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let mut b = encode(&Frame::Get { index: 1 });
        b[3] += 1;
        b.push(0);
        assert!(decode(&b).is_err(), "a get with 5 bytes");
        let mut o = encode(&frames()[1]);
        o.pop();
        let len = (o.len() - 4) as u32;
        o[..4].copy_from_slice(&len.to_be_bytes());
        assert!(decode(&o).is_err(), "a short signature");
    }

    #[test]
    fn an_offer_signature_names_its_seeder() {
        let key = SecretKey::generate();
        let Frame::Offer(o) = &frames()[1] else {
            unreachable!()
        };
        let genesis = Hash([9; 32]);
        let o = o.clone().sign(&key, 7, &genesis);
        assert_eq!(o.signer(7, &genesis), Some(key.address()));
        assert_ne!(o.signer(8, &genesis), Some(key.address()), "another chain");
        assert_ne!(
            o.signer(7, &Hash([8; 32])),
            Some(key.address()),
            "another genesis"
        );
        let mut cheaper = o.clone();
        cheaper.price_per_mib = 1;
        assert_ne!(
            cheaper.signer(7, &genesis),
            Some(key.address()),
            "a changed price"
        );
    }
}
