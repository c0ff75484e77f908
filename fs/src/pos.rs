//! Proof of storage: the challenge an owner sends a replica, how its
//! leaves are drawn, and the frames of the protocol (`/zennet/fs-pos/1`).
//!
//! # The scheme, and why not the RFC's
//! Sia-style: the owner keeps only the 32-byte root of the SHA-256 Merkle
//! tree over the content ([`crate::merkle`], BEP 52's layout); at random
//! times it challenges each replica for [`LEAVES_PER_CHALLENGE`] leaves
//! drawn from a recent block hash ([`challenge_leaves`]), and the replica
//! answers with each 16 KiB leaf and its path to the root, which the owner
//! checks against the root it kept.
//!
//! The RFC's salted-bit scheme (the owner sends a salt, the host returns
//! one bit computed over the whole file with it) has two flaws this one
//! does not: each check costs the host a pass over the whole file (a
//! 1 GiB replica reads 1 GiB per check; here it reads 64 KiB and a few
//! hundred bytes of tree, see `scripts/bench.sh fs`), and a one-bit answer
//! is guessed right half the time, so catching a host that dropped the
//! data takes many checks (here a host missing a fraction `f` of the
//! leaves fails a challenge with probability `1 − (1 − f)^4`; a guessed
//! leaf passes only by a SHA-256 collision). It also needs the owner to
//! keep the file (or precomputed answers) to check the bit, where a Merkle
//! root lets the owner delete its copy and still check every proof.
//!
//! Leaves come from a block hash, the challenge's round and the replica's
//! address: the replica cannot know them before the block exists, so it
//! cannot keep only the leaves it will be asked for, and anyone with the
//! chain can recompute what was asked (the owner's records carry height
//! and hash).
//!
//! # Frames
//! `len: u32 BE | body`, the body a borsh-encoded [`Frame`] (canonical,
//! no trailing bytes), `len` checked against [`MAX_FRAME`] before the body
//! is read, and the parts of a decoded frame against their own caps.
//!
//! ```text
//! owner                                  replica
//!   Challenge{task, round, height, block}  ──▶
//!                              ◀──  Proof{round, leaves} | NotReady{round, have} | Refused
//!   Pay{task, round, voucher}              ──▶   (the challenge passed)
//!                              ◀──  Receipt{round, paid} | Refused
//! ```

use borsh::{BorshDeserialize, BorshSerialize};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use sha2::{Digest, Sha256};
use zennet_chain::{Address, Amount, Hash, SignedVoucher};

use crate::error::WireError;
use crate::merkle::{LEAF, MAX_DEPTH, Proof};

pub const PROTOCOL: &str = "/zennet/fs-pos/1";

/// Leaves asked per challenge.
pub const LEAVES_PER_CHALLENGE: usize = 4;
/// Leaves a proof frame may carry.
pub const MAX_LEAVES: usize = 16;
/// Bytes of a refusal's reason.
pub const MAX_REASON: usize = 1024;
/// The largest frame body: a proof of [`MAX_LEAVES`] full leaves with
/// paths [`MAX_DEPTH`] long, and a little for the framing.
pub const MAX_FRAME: usize = 64 + MAX_LEAVES * (8 + 4 + LEAF as usize + 4 + MAX_DEPTH * 32);

/// The leaves challenge `round` asks `node` for on storage task `task`,
/// from the hash of the block it names: `count` draws of
/// SHA-256(`zennet:pos` ‖ block ‖ task ‖ node ‖ round ‖ i) mod leaves.
pub fn challenge_leaves(
    block: &Hash,
    task: &Hash,
    node: &Address,
    round: u32,
    leaves: u64,
    count: usize,
) -> Vec<u64> {
    if leaves == 0 {
        return Vec::new();
    }
    (0..count as u32)
        .map(|i| {
            let mut h = Sha256::new();
            h.update(b"zennet:pos");
            h.update(block.0);
            h.update(task.0);
            h.update(node.0);
            h.update(round.to_be_bytes());
            h.update(i.to_be_bytes());
            let d: [u8; 32] = h.finalize().into();
            u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) % leaves
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Challenge {
    pub task: Hash,
    pub round: u32,
    /// The block whose hash the leaves are drawn from.
    pub height: u64,
    pub block: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum Frame {
    Challenge(Challenge),
    /// The leaves asked, in the order asked, each with its path.
    Proof {
        round: u32,
        proofs: Vec<Proof>,
    },
    /// The replica is still fetching the file.
    NotReady {
        round: u32,
        have_parts: u32,
        parts: u32,
    },
    Refused {
        reason: String,
    },
    /// Payment for a passed challenge.
    Pay {
        task: Hash,
        round: u32,
        voucher: Box<SignedVoucher>,
    },
    /// The replica took the voucher; `paid` is what this contract has paid
    /// it in all.
    Receipt {
        round: u32,
        paid: Amount,
    },
}

impl Frame {
    /// The parts' own caps (a frame under [`MAX_FRAME`] could still carry
    /// one oversize leaf or path).
    fn check(&self) -> Result<(), WireError> {
        let bad = |why: String| {
            Err(WireError::Malformed {
                kind: "proof-of-storage",
                why,
            })
        };
        match self {
            Frame::Proof { proofs, .. } => {
                if proofs.len() > MAX_LEAVES {
                    return bad(format!("{} leaves, at most {MAX_LEAVES}", proofs.len()));
                }
                for p in proofs {
                    if p.leaf.len() as u64 > LEAF || p.siblings.len() > MAX_DEPTH {
                        return bad(format!("leaf {} or its path is oversize", p.index));
                    }
                }
            }
            Frame::Refused { reason } if reason.len() > MAX_REASON => {
                return bad(format!("a reason of {} bytes", reason.len()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The whole frame, length included.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let body = borsh::to_vec(frame).expect("a frame encodes");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes one whole frame body.
pub fn decode_body(body: &[u8]) -> Result<Frame, WireError> {
    if body.len() > MAX_FRAME {
        return Err(too_large(body.len()));
    }
    let frame: Frame = borsh::from_slice(body).map_err(|e| WireError::Malformed {
        kind: "proof-of-storage",
        why: e.to_string(),
    })?;
    frame.check()?;
    Ok(frame)
}

fn too_large(len: usize) -> WireError {
    WireError::TooLarge {
        kind: "proof-of-storage",
        len,
        max: MAX_FRAME,
    }
}

/// Reads one frame, refusing an oversize one before reading its body.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head).await {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        other => other?,
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(too_large(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode_body(&body)
}

/// Writes and flushes one frame (a reason over [`MAX_REASON`] is cut).
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), WireError> {
    let bytes = match frame {
        Frame::Refused { reason } if reason.len() > MAX_REASON => {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            encode(&Frame::Refused {
                reason: reason[..end].to_string(),
            })
        }
        other => encode(other),
    };
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zennet_chain::{SecretKey, Voucher};

    fn frames() -> Vec<Frame> {
        let key = SecretKey::from_bytes(&[7; 32]).unwrap();
        let voucher = Voucher {
            chain_id: 7,
            channel: Hash([1; 32]),
            seq: 3,
            cumulative: 99,
        }
        .sign(&key, &Hash([9; 32]));
        vec![
            Frame::Challenge(Challenge {
                task: Hash([2; 32]),
                round: 5,
                height: 77,
                block: Hash([3; 32]),
            }),
            Frame::Proof {
                round: 5,
                proofs: vec![Proof {
                    index: 9,
                    leaf: vec![4; LEAF as usize],
                    siblings: vec![[5; 32]; 12],
                }],
            },
            Frame::NotReady {
                round: 5,
                have_parts: 3,
                parts: 10,
            },
            Frame::Refused {
                reason: "not held".into(),
            },
            Frame::Pay {
                task: Hash([2; 32]),
                round: 5,
                voucher: Box::new(voucher),
            },
            Frame::Receipt {
                round: 5,
                paid: 1234,
            },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        let mut stream = Vec::new();
        for f in frames() {
            let bytes = encode(&f);
            assert_eq!(decode_body(&bytes[4..]).unwrap(), f);
            stream.extend(bytes);
        }
        let mut r = futures::io::Cursor::new(stream);
        futures::executor::block_on(async {
            for f in frames() {
                assert_eq!(read(&mut r).await.unwrap(), f);
            }
            assert!(matches!(read(&mut r).await, Err(WireError::Closed)));
        });
    }

    #[test]
    fn oversize_and_malformed_frames_are_refused() {
        // A length over the cap: refused from the 4-byte header.
        let head = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        let mut r = futures::io::Cursor::new(head);
        let err = futures::executor::block_on(read(&mut r)).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
        // Trailing bytes, an unknown variant, a truncated body.
        let mut b = encode(&frames()[0])[4..].to_vec();
        b.push(0);
        assert!(decode_body(&b).is_err());
        assert!(decode_body(&[200]).is_err());
        let b = encode(&frames()[1]);
        assert!(decode_body(&b[4..b.len() - 1]).is_err());
        // Under the frame cap, but a leaf over 16 KiB or too many leaves.
        let big = Frame::Proof {
            round: 1,
            proofs: vec![Proof {
                index: 0,
                leaf: vec![0; LEAF as usize + 1],
                siblings: vec![],
            }],
        };
        assert!(decode_body(&encode(&big)[4..]).is_err());
        let many = Frame::Proof {
            round: 1,
            proofs: vec![
                Proof {
                    index: 0,
                    leaf: vec![],
                    siblings: vec![],
                };
                MAX_LEAVES + 1
            ],
        };
        assert!(decode_body(&encode(&many)[4..]).is_err());
    }

    #[test]
    fn leaves_depend_on_every_input_and_stay_in_range() {
        let (b, t, n) = (Hash([1; 32]), Hash([2; 32]), Address([3; 20]));
        let base = challenge_leaves(&b, &t, &n, 1, 1000, 4);
        assert_eq!(base.len(), 4);
        assert!(base.iter().all(|i| *i < 1000));
        assert_eq!(
            base,
            challenge_leaves(&b, &t, &n, 1, 1000, 4),
            "recomputable"
        );
        assert_ne!(base, challenge_leaves(&Hash([9; 32]), &t, &n, 1, 1000, 4));
        assert_ne!(base, challenge_leaves(&b, &Hash([9; 32]), &n, 1, 1000, 4));
        assert_ne!(
            base,
            challenge_leaves(&b, &t, &Address([9; 20]), 1, 1000, 4)
        );
        assert_ne!(base, challenge_leaves(&b, &t, &n, 2, 1000, 4));
        assert_eq!(challenge_leaves(&b, &t, &n, 1, 1, 4), vec![0; 4]);
        assert!(challenge_leaves(&b, &t, &n, 1, 0, 4).is_empty());
    }
}
