//! Signed checkpoints: the C2SP `tlog-checkpoint` body (origin, tree size,
//! base64 root hash, one per line) signed as a C2SP `signed-note` with
//! Ed25519.
//!
//! The key forms are the note ecosystem's (Go's `sumdb/note`):
//! - verifier key: `<name>+<key id, 8 hex>+<base64(0x01 || public key)>`;
//! - signer key: `PRIVATE+KEY+<name>+<key id>+<base64(0x01 || seed)>`;
//! - key id: the first 4 bytes of `SHA-256(name || "\n" || 0x01 || public key)`;
//! - signature line: `— <name> <base64(key id || signature)>`, after a blank
//!   line that ends the text; the signature is over the text bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The algorithm byte of an Ed25519 note key.
const ALG_ED25519: u8 = 0x01;
/// What begins every signature line (an em dash and a space).
const SIGNATURE_PREFIX: &str = "\u{2014} ";
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(&'static str),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by {0} on the note")]
    Unsigned(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
}

/// The 4-byte key id of an Ed25519 key named `name`.
fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ALG_ED25519]);
    hasher.update(public);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A key name: non-empty, printable, no `+` and no space.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && c != '+')
}

/// Decodes `<name>+<hex id>+<base64 key>` (after any prefix), checking the
/// algorithm byte; returns the name, the id and the 32 key bytes.
fn parse_key(text: &str) -> Result<(&str, [u8; 4], [u8; 32]), NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::Key("expected <name>+<id>+<key>"));
    };
    if !valid_name(name) {
        return Err(NoteError::Key("bad name"));
    }
    let id: [u8; 4] = hex::decode(id)
        .ok()
        .filter(|_| id.len() == 8)
        .and_then(|b| b.try_into().ok())
        .ok_or(NoteError::Key("the key id is not 8 hex digits"))?;
    let raw = STANDARD
        .decode(key)
        .map_err(|_| NoteError::Key("the key is not base64"))?;
    match raw.split_first() {
        Some((&ALG_ED25519, rest)) if rest.len() == 32 => {
            Ok((name, id, rest.try_into().expect("32 bytes")))
        }
        _ => Err(NoteError::Key("not an Ed25519 key")),
    }
}

/// An Ed25519 note signer: a name and a key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A new key named `name`, from 32 random bytes.
    pub fn generate(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key("bad name"));
        }
        Ok(NoteSigner {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads `PRIVATE+KEY+<name>+<id>+<base64(0x01 || seed)>`.
    pub fn from_text(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix(PRIVATE_KEY_PREFIX)
            .ok_or(NoteError::Key("a signer key starts with PRIVATE+KEY+"))?;
        let (name, id, seed) = parse_key(rest)?;
        let signer = NoteSigner::generate(name, seed)?;
        if signer.id() != id {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        Ok(signer)
    }

    fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    fn id(&self) -> [u8; 4] {
        key_id(&self.name, &self.public())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signer key as text, to store (0600).
    pub fn to_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.key.to_bytes());
        format!(
            "{PRIVATE_KEY_PREFIX}{}+{}+{}",
            self.name,
            hex::encode(self.id()),
            STANDARD.encode(raw)
        )
    }

    /// The verifier key anyone checks the notes with.
    pub fn verifier_key(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.public());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.id()),
            STANDARD.encode(raw)
        )
    }

    /// `text` (which must end in a newline) as a signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') {
            return Err(NoteError::Malformed("the text must end with a newline"));
        }
        if text.contains("\n\n") || text.starts_with('\n') {
            return Err(NoteError::Malformed("the text may not hold a blank line"));
        }
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id().to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }
}

/// Checks that `note` carries a valid signature by the key `verifier_key`
/// names, and returns its text. Signatures by other keys are ignored, as
/// C2SP's witnesses add theirs beside the log's.
pub fn verify<'a>(note: &'a str, verifier_key: &str) -> Result<&'a str, NoteError> {
    let (name, id, public) = parse_key(verifier_key.trim())?;
    if key_id(name, &public) != id {
        return Err(NoteError::Key("the key id does not match the key"));
    }
    let public =
        VerifyingKey::from_bytes(&public).map_err(|_| NoteError::Key("not an Ed25519 point"))?;
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
    if !note.ends_with('\n') {
        return Err(NoteError::Malformed("the note must end with a newline"));
    }
    for line in signatures.lines() {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::Malformed(
                "a signature line starts with an em dash",
            ))?;
        let (signer, blob) = rest
            .split_once(' ')
            .ok_or(NoteError::Malformed("a signature line is <name> <base64>"))?;
        let blob = STANDARD
            .decode(blob)
            .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        if signer != name || blob.len() != 4 + 64 || blob[..4] != id {
            continue;
        }
        let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
            .map_err(|_| NoteError::BadSignature(name.to_owned()))?;
        return public
            .verify(text.as_bytes(), &signature)
            .map(|()| text)
            .map_err(|_| NoteError::BadSignature(name.to_owned()));
    }
    Err(NoteError::Unsigned(name.to_owned()))
}

/// The C2SP `tlog-checkpoint` body: origin, size and root, one per line.
pub fn checkpoint_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", STANDARD.encode(root))
}

/// Reads a checkpoint body back: (origin, size, root); extension lines
/// after the third are allowed and ignored.
pub fn parse_checkpoint(body: &str) -> Result<(&str, u64, Hash), NoteError> {
    let mut lines = body.lines();
    let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(NoteError::Malformed("a checkpoint has three lines"));
    };
    let size = size
        .parse()
        .map_err(|_| NoteError::Malformed("the size is not a number"))?;
    let root: Hash = STANDARD
        .decode(root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or(NoteError::Malformed("the root is not 32 bytes of base64"))?;
    if origin.is_empty() {
        return Err(NoteError::Malformed("empty origin"));
    }
    Ok((origin, size, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of Go's golang.org/x/mod/sumdb/note, the format's
    // reference implementation.
    const SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n\
                        \n\
                        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn the_reference_example_signs_and_verifies_byte_for_byte() {
        let signer = NoteSigner::from_text(SKEY).unwrap();
        assert_eq!(signer.verifier_key(), VKEY);
        assert_eq!(signer.to_text(), SKEY);
        assert_eq!(signer.sign(TEXT).unwrap(), NOTE);
        assert_eq!(verify(NOTE, VKEY).unwrap(), TEXT);
    }

    #[test]
    fn tampered_notes_and_keys_are_refused() {
        let changed = NOTE.replace("problem,", "problem;");
        assert_eq!(
            verify(&changed, VKEY),
            Err(NoteError::BadSignature("PeterNeumann".into()))
        );
        let other = NoteSigner::generate("PeterNeumann", [7; 32]).unwrap();
        assert!(matches!(
            verify(NOTE, &other.verifier_key()),
            Err(NoteError::Unsigned(_))
        ));
        assert!(verify(
            NOTE,
            "PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )
        .is_err());
        assert!(NoteSigner::from_text(
            "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
        )
        .is_err());
        assert!(signer_refuses_bad_text());
    }

    fn signer_refuses_bad_text() -> bool {
        let signer = NoteSigner::generate("auditd", [1; 32]).unwrap();
        signer.sign("no newline").is_err() && signer.sign("a\n\nb\n").is_err()
    }

    /// Our checkpoints verify with an implementation not written here
    /// (Cloudflare's `signed_note`), and its notes with ours.
    #[test]
    fn checkpoints_verify_with_an_independent_implementation() {
        let signer = NoteSigner::generate("auditd.example/log", [42; 32]).unwrap();
        let body = checkpoint_body("auditd.example/log", 12_345, &[9; 32]);
        let note = signer.sign(&body).unwrap();
        let theirs = signed_note::StandardVerifier::new(&signer.verifier_key()).unwrap();
        let parsed = signed_note::Note::from_bytes(note.as_bytes()).unwrap();
        let list = signed_note::VerifierList::new(vec![Box::new(theirs)]);
        let (verified, _) = parsed.verify(&list).unwrap();
        assert_eq!(verified.len(), 1);
        assert_eq!(parsed.text(), body.as_bytes());
        let their_signer = signed_note::StandardSigner::new(&signer.to_text()).unwrap();
        let mut their_note = signed_note::Note::new(body.as_bytes(), &[]).unwrap();
        their_note.add_sigs(&[&their_signer]).unwrap();
        let their_note = String::from_utf8(their_note.to_bytes()).unwrap();
        assert_eq!(their_note, note, "Ed25519 is deterministic: the same bytes");
        let text = verify(&their_note, &signer.verifier_key()).unwrap();
        assert_eq!(
            parse_checkpoint(text).unwrap(),
            ("auditd.example/log", 12_345, [9; 32])
        );
    }
}
