//! The lowest WAL layer: one checksummed frame per record.
//!
//! ```text
//! +-----------+-----------+------------------+
//! | len: u32  | crc: u32  | payload: len B   |
//! +-----------+-----------+------------------+
//! ```
//!
//! Little-endian; `crc` is CRC-32 (crc32fast, hardware-accelerated) over
//! the length bytes and the payload, so a damaged length is caught too and
//! no valid frame has an all-zero header.

/// Bytes before the payload.
pub const HEADER_LEN: usize = 8;

/// Largest payload a frame may carry. Far above the largest batch the
/// validator admits, so a length beyond it can only be damage.
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024 * 1024;

/// Appends one frame holding `payload` to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    encode_parts(&[payload], out);
}

/// Appends one frame whose payload is `parts` one after the other (a
/// record's header and body, without copying them together first).
pub fn encode_parts(parts: &[&[u8]], out: &mut Vec<u8>) {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(total <= MAX_PAYLOAD_LEN);
    let len = (total as u32).to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    for part in parts {
        hasher.update(part);
    }
    out.extend_from_slice(&len);
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Appends a *skip* frame of exactly `total` bytes (header included, at
/// least `HEADER_LEN`): what `auditd recover` writes over damaged bytes so
/// the records after them keep their positions. Its payload is zeros; a
/// record payload never starts with a zero byte (prost: field number 0 is
/// invalid), so [`is_skip`] cannot mistake a real batch for one.
pub fn encode_skip(total: usize, out: &mut Vec<u8>) {
    debug_assert!(total >= HEADER_LEN);
    encode(&vec![0; total - HEADER_LEN], out);
}

/// Whether a decoded payload is a skip frame's.
pub fn is_skip(payload: &[u8]) -> bool {
    payload.first().is_none_or(|b| *b == 0)
}

fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(payload);
    hasher.finalize()
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact frame of `len` bytes (header included).
    Frame { payload: &'a [u8], len: usize },
    /// The buffer ends before the frame does: a torn write, if at the tail.
    Incomplete,
    /// The frame is all there but its checksum or length is wrong.
    Corrupt { reason: &'static str },
}

/// Decodes the frame at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete;
    }
    let len_bytes: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len == 0 && crc == 0 {
        // Zeroes are what a file extended but never written reads as.
        return Decoded::Corrupt {
            reason: "zero-filled frame header",
        };
    }
    if len > MAX_PAYLOAD_LEN {
        return Decoded::Corrupt {
            reason: "frame length beyond the maximum",
        };
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Decoded::Incomplete;
    };
    if checksum(len_bytes, payload) != crc {
        return Decoded::Corrupt {
            reason: "checksum mismatch",
        };
    }
    Decoded::Frame {
        payload,
        len: HEADER_LEN + len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode(b"hello", &mut buf);
        encode(b"", &mut buf);
        let Decoded::Frame { payload, len } = decode(&buf) else {
            panic!("first frame")
        };
        assert_eq!(payload, b"hello");
        assert_eq!(len, HEADER_LEN + 5);
        let Decoded::Frame { payload, .. } = decode(&buf[len..]) else {
            panic!("second frame")
        };
        assert!(payload.is_empty());
    }

    #[test]
    fn skip_frames_fill_their_span_and_are_told_apart_from_batches() {
        for total in [HEADER_LEN, HEADER_LEN + 1, 700] {
            let mut buf = Vec::new();
            encode_skip(total, &mut buf);
            assert_eq!(buf.len(), total);
            let Decoded::Frame { payload, len } = decode(&buf) else {
                panic!("a skip frame is a frame")
            };
            assert_eq!(len, total);
            assert!(is_skip(payload));
        }
        assert!(!is_skip(b"\x0a\x03abc"));
    }

    #[test]
    fn every_cut_is_incomplete_and_every_flip_is_caught() {
        let mut buf = Vec::new();
        encode(b"some audit batch", &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
        for at in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[at] ^= 0x40;
            assert!(
                !matches!(decode(&damaged), Decoded::Frame { .. }),
                "flip at {at} went unnoticed"
            );
        }
    }
}
