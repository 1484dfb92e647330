//! The checkpoints of a cluster of several partitions (docs/cluster.md,
//! "Integrity over partitions"): one Merkle tree a partition, each with
//! its own C2SP checkpoints under the origin `<name>/partition/<p>`, and
//! the combined checkpoint, one signed note that lists every partition's
//! tree head at once:
//!
//! ```text
//! <name>/partitions
//! auditd-combined/v1
//! <N>
//! 0 <size> <base64 root>
//! …
//! <N-1> <size> <base64 root>
//! ```
//!
//! signed, like every checkpoint of the cluster, by the cluster's key
//! (whose name is `<name>`). A partition with no event yet lists size 0
//! and the empty tree's root. It is not a `tlog-checkpoint` (its second
//! line is not a size), so no tlog client mistakes it for one.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::merkle::Hash;
use super::note::NoteError;

/// The combined note's format line (its second).
pub const FORMAT: &str = "auditd-combined/v1";

/// The origin of partition `p`'s checkpoints, for the cluster key `name`.
pub fn partition_origin(name: &str, partition: u32) -> String {
    format!("{name}/partition/{partition}")
}

/// The origin of the combined checkpoint.
pub fn combined_origin(name: &str) -> String {
    format!("{name}/partitions")
}

/// The combined note's text, listing `heads` (size, root) by partition.
pub fn combined_body(name: &str, heads: &[(u64, Hash)]) -> String {
    let mut body = format!("{}\n{FORMAT}\n{}\n", combined_origin(name), heads.len());
    for (p, (size, root)) in heads.iter().enumerate() {
        body.push_str(&format!("{p} {size} {}\n", STANDARD.encode(root)));
    }
    body
}

/// A combined note's text, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combined<'a> {
    pub origin: &'a str,
    /// (size, root) by partition.
    pub heads: Vec<(u64, Hash)>,
}

/// Whether a note's text is a combined checkpoint (its format line).
pub fn is_combined(body: &str) -> bool {
    body.lines().nth(1) == Some(FORMAT)
}

/// Reads a combined note's text back, strictly: every partition once, in
/// order, and nothing else.
pub fn parse_combined(body: &str) -> Result<Combined<'_>, NoteError> {
    let malformed = NoteError::Malformed;
    let mut lines = body.lines();
    let origin = lines
        .next()
        .filter(|o| o.ends_with("/partitions"))
        .ok_or(malformed(
            "a combined checkpoint's origin ends in /partitions",
        ))?;
    if lines.next() != Some(FORMAT) {
        return Err(malformed("not a combined checkpoint (auditd-combined/v1)"));
    }
    let count: usize = lines
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or(malformed("the partition count is not a number"))?;
    let mut heads = Vec::with_capacity(count.min(1 << 16));
    for line in lines {
        let mut parts = line.split(' ');
        let (Some(p), Some(size), Some(root), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("a partition line is <p> <size> <root>"));
        };
        if p.parse::<usize>().ok() != Some(heads.len()) {
            return Err(malformed("the partitions are not listed in order"));
        }
        let size = size
            .parse()
            .map_err(|_| malformed("a size is not a number"))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(malformed("a root is not 32 bytes of base64"))?;
        heads.push((size, root));
    }
    if heads.len() != count {
        return Err(malformed("the partition lines do not match the count"));
    }
    Ok(Combined { origin, heads })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::merkle::empty_root;

    #[test]
    fn a_combined_body_reads_back_and_nothing_else_does() {
        let heads = vec![(3, [7u8; 32]), (0, empty_root()), (12, [9u8; 32])];
        let body = combined_body("log.example", &heads);
        assert!(body.starts_with("log.example/partitions\nauditd-combined/v1\n3\n0 3 "));
        assert!(is_combined(&body));
        let back = parse_combined(&body).unwrap();
        assert_eq!(back.origin, "log.example/partitions");
        assert_eq!(back.heads, heads);

        let checkpoint = crate::integrity::note::checkpoint_body("log.example", 3, &[7; 32]);
        assert!(!is_combined(&checkpoint));
        assert!(parse_combined(&checkpoint).is_err());
        let short = body.replace("\n3\n", "\n4\n");
        assert!(parse_combined(&short).is_err());
        let swapped = body.replace("\n0 3 ", "\n1 3 ");
        assert!(parse_combined(&swapped).is_err());
    }
}
