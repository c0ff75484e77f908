//! The SHA-256 Merkle tree that proofs of storage are checked against,
//! laid out as BEP 52 lays out a v2 torrent's tree: the content is cut
//! into 16 KiB leaves (the last one may be shorter), each leaf's hash is
//! SHA-256 of its bytes, the leaf count is padded to a power of two with
//! 32 zero bytes, and each node is SHA-256 of its two children. One root
//! covers the whole content stream (the bytes the 256 KiB parts cut, so
//! ciphertext for an encrypted file), which is what a replica holds; the
//! file id stays the v1 info-hash (v2 keys in the info dict would change
//! it). Parts are 16 leaves each, so leaf `i` lies in part `i / 16`.
//!
//! The owner keeps only the root (32 bytes, and it is in the storage
//! announcement). A replica keeps the whole tree beside the parts (64
//! bytes per 16 KiB leaf, 0.4% of the file) and answers a challenge for a
//! leaf with the leaf's bytes and one sibling hash per level ([`Proof`]),
//! reading 16 KiB plus 32 bytes per level ([`TreeFile::proof`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Bytes per leaf (BEP 52's block size).
pub const LEAF: u64 = 16 * 1024;
/// Levels of a tree over at most 2^48 leaves (4 EiB): a proof longer than
/// this is refused before it is looked at.
pub const MAX_DEPTH: usize = 48;

pub type Node = [u8; 32];

/// Leaves of `size` bytes of content.
pub fn leaf_count(size: u64) -> u64 {
    size.div_ceil(LEAF)
}

/// Levels above the leaves: log2 of the padded leaf count.
pub fn depth(leaves: u64) -> usize {
    leaves.max(1).next_power_of_two().trailing_zeros() as usize
}

/// Length of leaf `index` of `size` bytes of content.
pub fn leaf_len(size: u64, index: u64) -> u64 {
    LEAF.min(size.saturating_sub(index * LEAF))
}

pub fn hash_leaf(bytes: &[u8]) -> Node {
    Sha256::digest(bytes).into()
}

fn hash_pair(left: &Node, right: &Node) -> Node {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of a subtree of padding `level` levels high.
fn pad(level: usize) -> Node {
    let mut n = [0u8; 32];
    for _ in 0..level {
        n = hash_pair(&n, &n);
    }
    n
}

/// Every level of a tree, leaf hashes first, without the padding (a
/// missing right child is the padding of its level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    levels: Vec<Vec<Node>>,
}

impl Tree {
    /// The tree over the given leaf hashes (in order).
    pub fn from_leaves(leaves: Vec<Node>) -> Tree {
        let depth = depth(leaves.len() as u64);
        let mut levels = vec![leaves];
        for level in 0..depth {
            let padding = pad(level);
            let above = levels[level]
                .chunks(2)
                .map(|c| hash_pair(&c[0], c.get(1).unwrap_or(&padding)))
                .collect();
            levels.push(above);
        }
        Tree { levels }
    }

    /// The tree over `content` held in memory (tests, small files).
    pub fn of_bytes(content: &[u8]) -> Tree {
        Tree::from_leaves(content.chunks(LEAF as usize).map(hash_leaf).collect())
    }

    /// The root: 32 zero bytes for empty content (nothing can be proved).
    pub fn root(&self) -> Node {
        match self.levels.last() {
            Some(top) if !self.levels[0].is_empty() => top[0],
            _ => [0; 32],
        }
    }

    pub fn leaves(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// The sibling hashes from leaf `index` up to the root.
    pub fn siblings(&self, index: u64) -> Option<Vec<Node>> {
        if index >= self.leaves() {
            return None;
        }
        let mut at = index as usize;
        let mut out = Vec::with_capacity(self.levels.len());
        for (level, nodes) in self.levels[..self.levels.len() - 1].iter().enumerate() {
            out.push(nodes.get(at ^ 1).copied().unwrap_or_else(|| pad(level)));
            at /= 2;
        }
        Some(out)
    }

    /// The tree as a file: a header (`ZTREE1`, leaf count) and every level
    /// in order.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
        f.write_all(MAGIC)?;
        f.write_all(&self.leaves().to_be_bytes())?;
        for level in &self.levels {
            for n in level {
                f.write_all(n)?;
            }
        }
        f.into_inner()?.sync_all()?;
        std::fs::rename(tmp, path)
    }
}

const MAGIC: &[u8; 6] = b"ZTREE1";
const HEADER: u64 = 6 + 8;

/// A tree written by [`Tree::write`], read a proof at a time.
pub struct TreeFile {
    file: File,
    leaves: u64,
    /// Where each level starts, in nodes from the first leaf.
    starts: Vec<u64>,
}

impl TreeFile {
    pub fn open(path: &Path) -> std::io::Result<TreeFile> {
        let mut file = File::open(path)?;
        let mut head = [0u8; HEADER as usize];
        file.read_exact(&mut head)?;
        if &head[..6] != MAGIC {
            return Err(std::io::Error::other("not a Merkle tree file"));
        }
        let leaves = u64::from_be_bytes(head[6..].try_into().expect("8 bytes"));
        let mut starts = Vec::new();
        let (mut start, mut width) = (0u64, leaves);
        for _ in 0..=depth(leaves) {
            starts.push(start);
            start += width;
            width = width.div_ceil(2);
        }
        if file.metadata()?.len() != HEADER + start * 32 {
            return Err(std::io::Error::other(
                "Merkle tree file has the wrong length",
            ));
        }
        Ok(TreeFile {
            file,
            leaves,
            starts,
        })
    }

    pub fn leaves(&self) -> u64 {
        self.leaves
    }

    pub fn root(&self) -> std::io::Result<Node> {
        if self.leaves == 0 {
            return Ok([0; 32]);
        }
        self.node(self.starts.len() - 1, 0)
    }

    /// The sibling hashes of leaf `index`, read from the file (32 bytes
    /// per level).
    pub fn siblings(&self, index: u64) -> std::io::Result<Vec<Node>> {
        if index >= self.leaves {
            return Err(std::io::Error::other(format!(
                "leaf {index} is past the last of {}",
                self.leaves
            )));
        }
        let (mut at, mut width) = (index, self.leaves);
        let mut out = Vec::with_capacity(self.starts.len());
        for level in 0..self.starts.len() - 1 {
            let sibling = at ^ 1;
            out.push(if sibling < width {
                self.node(level, sibling)?
            } else {
                pad(level)
            });
            at /= 2;
            width = width.div_ceil(2);
        }
        Ok(out)
    }

    fn node(&self, level: usize, i: u64) -> std::io::Result<Node> {
        let mut n = [0u8; 32];
        self.file
            .read_exact_at(&mut n, HEADER + (self.starts[level] + i) * 32)?;
        Ok(n)
    }
}

/// One leaf and the path that ties it to the root.
#[derive(Debug, Clone, PartialEq, Eq, borsh::BorshSerialize, borsh::BorshDeserialize)]
pub struct Proof {
    pub index: u64,
    pub leaf: Vec<u8>,
    pub siblings: Vec<Node>,
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf {index} is past the last of {leaves}")]
    OutOfRange { index: u64, leaves: u64 },
    #[error("leaf {index} is {got} bytes; it should be {want}")]
    LeafLength { index: u64, got: usize, want: u64 },
    #[error("proof of leaf {index} has {got} sibling hashes; the tree is {want} levels deep")]
    PathLength { index: u64, got: usize, want: usize },
    #[error("proof of leaf {index} does not lead to the root")]
    WrongRoot { index: u64 },
}

impl Proof {
    /// Checks the proof against `root` of `size` bytes of content.
    pub fn verify(&self, root: &Node, size: u64) -> Result<(), ProofError> {
        let leaves = leaf_count(size);
        let index = self.index;
        if index >= leaves {
            return Err(ProofError::OutOfRange { index, leaves });
        }
        let want = leaf_len(size, index);
        if self.leaf.len() as u64 != want {
            return Err(ProofError::LeafLength {
                index,
                got: self.leaf.len(),
                want,
            });
        }
        if self.siblings.len() != depth(leaves) {
            return Err(ProofError::PathLength {
                index,
                got: self.siblings.len(),
                want: depth(leaves),
            });
        }
        let mut node = hash_leaf(&self.leaf);
        let mut at = index;
        for s in &self.siblings {
            node = if at & 1 == 0 {
                hash_pair(&node, s)
            } else {
                hash_pair(s, &node)
            };
            at /= 2;
        }
        if node != *root {
            return Err(ProofError::WrongRoot { index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    fn prove(tree: &Tree, data: &[u8], index: u64) -> Proof {
        let size = data.len() as u64;
        let start = (index * LEAF) as usize;
        Proof {
            index,
            leaf: data[start..start + leaf_len(size, index) as usize].to_vec(),
            siblings: tree.siblings(index).unwrap(),
        }
    }

    #[test]
    fn every_leaf_proves_and_only_its_own_position() {
        for len in [
            1,
            LEAF as usize,
            LEAF as usize + 1,
            3 * LEAF as usize,
            5 * LEAF as usize - 9,
            16 * LEAF as usize,
            17 * LEAF as usize + 100,
        ] {
            let data = content(len);
            let tree = Tree::of_bytes(&data);
            let root = tree.root();
            let size = len as u64;
            assert_eq!(tree.leaves(), leaf_count(size));
            for i in 0..tree.leaves() {
                let p = prove(&tree, &data, i);
                assert_eq!(p.verify(&root, size), Ok(()), "len {len} leaf {i}");
                // The same proof claimed for another index fails.
                for j in (0..tree.leaves()).filter(|j| *j != i) {
                    let moved = Proof {
                        index: j,
                        ..p.clone()
                    };
                    assert!(moved.verify(&root, size).is_err(), "len {len}: {i} as {j}");
                }
            }
        }
    }

    #[test]
    fn a_tampered_leaf_or_path_fails() {
        let data = content(5 * LEAF as usize + 3);
        let tree = Tree::of_bytes(&data);
        let (root, size) = (tree.root(), data.len() as u64);
        let good = prove(&tree, &data, 2);
        let mut p = good.clone();
        p.leaf[100] ^= 1;
        assert_eq!(
            p.verify(&root, size),
            Err(ProofError::WrongRoot { index: 2 })
        );
        let mut p = good.clone();
        p.siblings[1][0] ^= 1;
        assert_eq!(
            p.verify(&root, size),
            Err(ProofError::WrongRoot { index: 2 })
        );
        let mut p = good.clone();
        p.siblings.pop();
        assert!(matches!(
            p.verify(&root, size),
            Err(ProofError::PathLength { .. })
        ));
        let mut p = good.clone();
        p.leaf.pop();
        assert!(matches!(
            p.verify(&root, size),
            Err(ProofError::LeafLength { .. })
        ));
        let p = Proof { index: 6, ..good };
        assert_eq!(
            p.verify(&root, size),
            Err(ProofError::OutOfRange {
                index: 6,
                leaves: 6
            })
        );
        // The last, short leaf must be exactly its length.
        let last = prove(&tree, &data, 5);
        assert_eq!(last.leaf.len(), 3);
        assert_eq!(last.verify(&root, size), Ok(()));
        let mut padded = last.clone();
        padded.leaf.resize(LEAF as usize, 0);
        assert!(padded.verify(&root, size).is_err());
    }

    #[test]
    fn empty_and_single_leaf_content() {
        let empty = Tree::of_bytes(&[]);
        assert_eq!(empty.root(), [0; 32]);
        assert_eq!(empty.leaves(), 0);
        assert_eq!(empty.siblings(0), None);
        let p = Proof {
            index: 0,
            leaf: vec![],
            siblings: vec![],
        };
        assert!(matches!(
            p.verify(&[0; 32], 0),
            Err(ProofError::OutOfRange { .. })
        ));

        let one = b"a single leaf".to_vec();
        let tree = Tree::of_bytes(&one);
        assert_eq!(
            tree.root(),
            hash_leaf(&one),
            "one leaf: the root is its hash"
        );
        let p = prove(&tree, &one, 0);
        assert!(p.siblings.is_empty());
        assert_eq!(p.verify(&tree.root(), one.len() as u64), Ok(()));
    }

    #[test]
    fn padding_follows_bep_52() {
        // Three leaves: the fourth is 32 zero bytes.
        let data = content(3 * LEAF as usize);
        let l: Vec<Node> = data.chunks(LEAF as usize).map(hash_leaf).collect();
        let want = hash_pair(&hash_pair(&l[0], &l[1]), &hash_pair(&l[2], &[0; 32]));
        assert_eq!(Tree::of_bytes(&data).root(), want);
    }

    #[test]
    fn the_tree_file_gives_the_same_paths() {
        let dir = tempfile::tempdir().unwrap();
        for len in [1usize, 2 * LEAF as usize, 37 * LEAF as usize + 5] {
            let data = content(len);
            let tree = Tree::of_bytes(&data);
            let path = dir.path().join(format!("{len}.tree"));
            tree.write(&path).unwrap();
            let f = TreeFile::open(&path).unwrap();
            assert_eq!(f.leaves(), tree.leaves());
            assert_eq!(f.root().unwrap(), tree.root());
            for i in 0..tree.leaves() {
                assert_eq!(f.siblings(i).unwrap(), tree.siblings(i).unwrap());
            }
            assert!(f.siblings(tree.leaves()).is_err());
        }
        std::fs::write(dir.path().join("bad.tree"), b"ZTREE1\0\0\0\0\0\0\0\x09").unwrap();
        assert!(TreeFile::open(&dir.path().join("bad.tree")).is_err());
    }
}
