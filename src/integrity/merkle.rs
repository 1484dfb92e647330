//! The Merkle tree of RFC 9162 §2.1, over leaf hashes: the tree head,
//! inclusion proofs (`PATH`), consistency proofs (`PROOF`), and their
//! verification (§2.1.3.2, §2.1.4.2).
//!
//! Proofs are built from the hashes of *complete, aligned* subtrees only
//! ([`Nodes`]): the node at level `l`, index `i` covers leaves
//! `[i·2^l, (i+1)·2^l)`. Those are exactly what the C2SP `tlog-tiles`
//! layout stores, so the same code serves a tree in memory
//! ([`MemoryTree`]) and one in tiles on disk. The RFC's recursion splits
//! a range at the largest power of two below its size; every left part
//! it makes is such a subtree, and every right part splits again.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: of a leaf, of a node, or the tree head.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || leaf)`: the hash of leaf bytes.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The head of the empty tree: `SHA-256()` of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Where the hashes of complete, aligned subtrees come from. Level 0 holds
/// the leaf hashes. Callers ask only for nodes inside the tree size they
/// work on.
pub trait Nodes {
    fn node(&self, level: u32, index: u64) -> Hash;
}

/// The largest power of two below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start:end])`, `start < end`.
fn subtree(nodes: &impl Nodes, start: u64, end: u64) -> Hash {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return nodes.node(n.trailing_zeros(), start / n);
    }
    let k = split(n);
    node_hash(
        &subtree(nodes, start, start + k),
        &subtree(nodes, start + k, end),
    )
}

/// The tree head of the first `size` leaves.
pub fn root(nodes: &impl Nodes, size: u64) -> Hash {
    if size == 0 {
        empty_root()
    } else {
        subtree(nodes, 0, size)
    }
}

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf {index} is not in a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("no consistency proof from {first} to {second} leaves")]
    BadSizes { first: u64, second: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the tree head")]
    Mismatch,
}

/// `PATH(index, D[start:end])`, appended to `out`.
fn path(nodes: &impl Nodes, index: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
    let n = end - start;
    if n == 1 {
        return;
    }
    let k = split(n);
    if index < k {
        path(nodes, index, start, start + k, out);
        out.push(subtree(nodes, start + k, end));
    } else {
        path(nodes, index - k, start + k, end, out);
        out.push(subtree(nodes, start, start + k));
    }
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 9162
/// §2.1.3.1), leaf side first.
pub fn inclusion_proof(nodes: &impl Nodes, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(nodes, index, 0, size, &mut out);
    Ok(out)
}

/// `SUBPROOF(m, D[start:end], whole)`, appended to `out`.
fn subproof(nodes: &impl Nodes, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(subtree(nodes, start, end));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(nodes, m, start, start + k, whole, out);
        out.push(subtree(nodes, start + k, end));
    } else {
        subproof(nodes, m - k, start + k, end, false, out);
        out.push(subtree(nodes, start, start + k));
    }
}

/// The proof that the tree of `first` leaves is a prefix of the tree of
/// `second` (RFC 9162 §2.1.4.1); empty when the two are the same size.
pub fn consistency_proof(
    nodes: &impl Nodes,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, ProofError> {
    if first == 0 || first > second {
        return Err(ProofError::BadSizes { first, second });
    }
    let mut out = Vec::new();
    subproof(nodes, first, 0, second, true, &mut out);
    Ok(out)
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `size` leaves
/// whose head is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// Checks that the tree of `first` leaves with head `first_root` is a
/// prefix of the tree of `second` leaves with head `second_root` (RFC 9162
/// §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if first == 0 || first > second {
        return Err(ProofError::BadSizes { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(first_root);
    }
    path.extend(proof);
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*path[0], *path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *first_root || sr != *second_root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// The right edge of a tree being built leaf by leaf (a compact range):
/// the roots of its perfect subtrees, largest first, so the head of any
/// size is at hand in memory logarithmic in it.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// One hash per set bit of `size`, from the highest bit down.
    roots: Vec<Hash>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        self.push_subtree(leaf, 0);
    }

    /// Appends the `2^height` leaves of a perfect subtree whose root is
    /// `root`; the size so far must be a multiple of `2^height`.
    pub fn push_subtree(&mut self, root: Hash, height: u32) {
        assert_eq!(
            self.size % (1 << height),
            0,
            "a subtree of height {height} after {} leaves",
            self.size
        );
        let mut carry = root;
        // Each trailing one bit of the old size (in subtrees) is a
        // subtree to merge.
        let mut merges = (self.size >> height).trailing_ones();
        while merges > 0 {
            let left = self.roots.pop().expect("a root per set bit");
            carry = node_hash(&left, &carry);
            merges -= 1;
        }
        self.roots.push(carry);
        self.size += 1 << height;
    }

    /// `MTH` of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut roots = self.roots.iter().rev();
        let Some(last) = roots.next() else {
            return empty_root();
        };
        roots.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// Every complete node of a tree, level by level, in memory: what a
/// tile store holds on disk. Appending a leaf adds the nodes it
/// completes.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        MemoryTree::default()
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends the leaf whose hash is `hash`.
    pub fn push(&mut self, hash: Hash) {
        let mut level = 0;
        let mut carry = hash;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let nodes = &mut self.levels[level];
            nodes.push(carry);
            if !nodes.len().is_multiple_of(2) {
                return;
            }
            carry = node_hash(&nodes[nodes.len() - 2], &nodes[nodes.len() - 1]);
            level += 1;
        }
    }

    /// The head of the whole tree.
    pub fn root(&self) -> Hash {
        root(self, self.size())
    }
}

impl Nodes for MemoryTree {
    fn node(&self, level: u32, index: u64) -> Hash {
        self.levels[level as usize][index as usize]
    }
}

#[cfg(test)]
mod frontier_tests {
    use super::*;

    #[test]
    fn the_frontier_gives_the_head_of_every_size() {
        let mut tree = MemoryTree::new();
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        for i in 0..300u32 {
            let leaf = leaf_hash(&i.to_be_bytes());
            tree.push(leaf);
            frontier.push(leaf);
            assert_eq!(frontier.root(), tree.root(), "size {}", i + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ct_merkle::mem_backed_tree::MemoryBackedTree;
    use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
    use proptest::prelude::*;
    use sha2_ct_merkle::Sha256 as CtSha256;

    type Theirs = MemoryBackedTree<CtSha256, Vec<u8>>;

    fn leaf(i: u64) -> Vec<u8> {
        format!("leaf {i}").into_bytes()
    }

    fn hashes(bytes: &[u8]) -> Vec<Hash> {
        bytes
            .chunks(32)
            .map(|c| c.try_into().expect("32-byte hashes"))
            .collect()
    }

    fn flat(proof: &[Hash]) -> Vec<u8> {
        proof.concat()
    }

    fn their_root(tree: &Theirs) -> Hash {
        tree.root().as_bytes().as_slice().try_into().unwrap()
    }

    /// Both trees, grown together to `size` leaves, with their heads at
    /// every size on the way.
    fn grow(size: u64) -> (MemoryTree, Vec<Hash>) {
        let mut ours = MemoryTree::new();
        let mut heads = vec![empty_root()];
        for i in 0..size {
            ours.push(leaf_hash(&leaf(i)));
            heads.push(ours.root());
        }
        (ours, heads)
    }

    /// Every size of 1..=70 leaves: the same heads as ct-merkle, the same
    /// inclusion proof for every leaf, the same consistency proof from
    /// every smaller size; each side's proofs verify with the other's
    /// verifier, and a flipped byte fails ours.
    #[test]
    fn every_proof_of_small_trees_matches_an_independent_implementation() {
        let mut theirs = Theirs::new();
        let (ours, heads) = grow(70);
        let mut their_heads = vec![empty_root()];
        for n in 1..=70u64 {
            theirs.push(leaf(n - 1));
            their_heads.push(their_root(&theirs));
            assert_eq!(root(&ours, n), heads[n as usize]);
            assert_eq!(heads[n as usize], their_root(&theirs), "head of {n}");
            let their_head = theirs.root();
            for index in 0..n {
                let proof = inclusion_proof(&ours, index, n).unwrap();
                let theirs_proof = theirs.prove_inclusion(index as usize);
                assert_eq!(
                    flat(&proof),
                    theirs_proof.as_bytes(),
                    "inclusion {index} of {n}"
                );
                their_head
                    .verify_inclusion(
                        &leaf(index),
                        index,
                        &InclusionProof::from_bytes(flat(&proof)),
                    )
                    .unwrap();
                let lh = leaf_hash(&leaf(index));
                verify_inclusion(
                    &lh,
                    index,
                    n,
                    &hashes(theirs_proof.as_bytes()),
                    &heads[n as usize],
                )
                .unwrap();
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0][0] ^= 1;
                    assert_ne!(bad[0], *first);
                    assert!(verify_inclusion(&lh, index, n, &bad, &heads[n as usize]).is_err());
                }
            }
            for m in 1..n {
                let proof = consistency_proof(&ours, m, n).unwrap();
                let theirs_proof = theirs.prove_consistency((n - m) as usize);
                assert_eq!(
                    flat(&proof),
                    theirs_proof.as_bytes(),
                    "consistency {m} to {n}"
                );
                let old = RootHash::<CtSha256>::new(their_heads[m as usize].into(), m);
                their_head
                    .verify_consistency(
                        &old,
                        &ConsistencyProof::try_from_bytes(flat(&proof)).unwrap(),
                    )
                    .unwrap();
                verify_consistency(m, n, &heads[m as usize], &heads[n as usize], &proof).unwrap();
                let mut bad = proof.clone();
                bad[proof.len() - 1][31] ^= 1;
                assert!(
                    verify_consistency(m, n, &heads[m as usize], &heads[n as usize], &bad).is_err()
                );
                assert!(
                    verify_consistency(m, n, &heads[m as usize + 1], &heads[n as usize], &proof)
                        .is_err(),
                    "a different old head fails"
                );
            }
            assert_eq!(consistency_proof(&ours, n, n).unwrap(), Vec::<Hash>::new());
            verify_consistency(n, n, &heads[n as usize], &heads[n as usize], &[]).unwrap();
        }
        assert!(inclusion_proof(&ours, 70, 70).is_err());
        assert!(consistency_proof(&ours, 0, 5).is_err());
        assert!(consistency_proof(&ours, 6, 5).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Random leaves and sizes of larger trees against ct-merkle.
        #[test]
        fn proofs_of_large_trees_match(size in 2u64..3_000, pick in any::<u64>(), old in any::<u64>()) {
            let mut theirs = Theirs::new();
            let mut ours = MemoryTree::new();
            for i in 0..size {
                theirs.push(leaf(i));
                ours.push(leaf_hash(&leaf(i)));
            }
            prop_assert_eq!(ours.root(), their_root(&theirs));
            let index = pick % size;
            let proof = inclusion_proof(&ours, index, size).unwrap();
            let theirs_proof = theirs.prove_inclusion(index as usize);
            prop_assert_eq!(flat(&proof), theirs_proof.as_bytes().to_vec());
            verify_inclusion(&leaf_hash(&leaf(index)), index, size, &proof, &ours.root()).unwrap();
            let first = 1 + old % (size - 1);
            let proof = consistency_proof(&ours, first, size).unwrap();
            let theirs_proof = theirs.prove_consistency((size - first) as usize);
            prop_assert_eq!(flat(&proof), theirs_proof.as_bytes().to_vec());
            verify_consistency(first, size, &root(&ours, first), &ours.root(), &proof).unwrap();
        }
    }
}
