//! Which terms' bit sets a daemon kept, saved when it stops and made
//! again at the next start, so that the first searches after a restart
//! find the bit sets of the terms searches were using (the way
//! PostgreSQL's `autoprewarm` saves the buffers in use and reads them
//! back).
//!
//! The file, `<data_dir>/dense-terms.json`, version 1:
//!
//! ```json
//! {"version": 1,
//!  "sets": [[{"field": "text", "type": "s", "value": "6576656e7473"}], …]}
//! ```
//!
//! Each set is one bit set's terms (one term, or the statuses of a range),
//! the most recently used first; a term is its field's name, Tantivy's
//! one-letter type code and its value bytes in hex. It names terms, not
//! segments: the sets are made in whatever segments hold the terms then.
//! A set whose field is gone or of another type is skipped; an unreadable
//! file or another version is warned about and read as empty (it is a
//! hint, never data). Terms can be personal data (a subject, a word of
//! a name): erasing a subject rewrites the file without its name at once
//! (`DenseTerms::forget`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tantivy::schema::{Schema, Type};
use tantivy::Term;

/// The version of the file this build writes and reads.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SavedFile {
    version: u32,
    sets: Vec<Vec<SavedTerm>>,
}

#[derive(Serialize, Deserialize)]
struct SavedTerm {
    field: String,
    #[serde(rename = "type")]
    kind: char,
    value: String,
}

/// Where the sets are saved, and what the last run saved.
pub(super) struct Remembered {
    path: PathBuf,
    schema: Schema,
    previous: Mutex<Vec<Box<[Term]>>>,
}

impl Remembered {
    /// Reads what the last run saved at `path`, if anything.
    pub(super) fn load(path: &Path, schema: Schema) -> Remembered {
        let previous = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<SavedFile>(&bytes) {
                Ok(file) if file.version == VERSION => file
                    .sets
                    .iter()
                    .filter_map(|set| set.iter().map(|t| term_of(&schema, t)).collect())
                    .collect(),
                Ok(file) => {
                    tracing::warn!(path = %path.display(), version = file.version,
                        "the saved dense terms are of another version: none are made at start");
                    Vec::new()
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error,
                        "the saved dense terms are unreadable: none are made at start");
                    Vec::new()
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error,
                    "the saved dense terms cannot be read: none are made at start");
                Vec::new()
            }
        };
        Remembered {
            path: path.to_owned(),
            schema,
            previous: Mutex::new(previous),
        }
    }

    /// The sets the last run kept, the most recently used first.
    pub(super) fn previous(&self) -> Vec<Box<[Term]>> {
        self.previous.lock().expect("the saved dense terms").clone()
    }

    /// Drops the sets of the last run that `names` says name something
    /// forgotten.
    pub(super) fn forget(&self, names: impl Fn(&[Term]) -> bool) {
        let mut previous = self.previous.lock().expect("the saved dense terms");
        previous.retain(|set| !names(set));
    }

    /// Saves `sets` (the most recently used first) in place of the file.
    pub(super) fn save<'a>(&self, sets: impl Iterator<Item = &'a [Term]>) -> std::io::Result<()> {
        let file = SavedFile {
            version: VERSION,
            sets: sets
                .filter_map(|set| set.iter().map(|t| saved_of(&self.schema, t)).collect())
                .collect(),
        };
        let json = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        crate::datadir::write_atomically(&self.path, &json, false)
    }
}

fn saved_of(schema: &Schema, term: &Term) -> Option<SavedTerm> {
    Some(SavedTerm {
        field: schema.get_field_name(term.field()).to_owned(),
        kind: char::from(term.typ().to_code()),
        value: hex::encode(term.serialized_value_bytes()),
    })
}

/// The term, if the schema still has its field, indexed and of its type.
fn term_of(schema: &Schema, saved: &SavedTerm) -> Option<Term> {
    let field = schema.get_field(&saved.field).ok()?;
    let entry = schema.get_field_entry(field);
    let kind = Type::from_code(u8::try_from(saved.kind).ok()?)?;
    if !entry.is_indexed() || entry.field_type().value_type() != kind {
        return None;
    }
    let mut term = Term::from_field_bytes(field, &[]);
    term.clear_with_type(kind);
    term.append_bytes(&hex::decode(&saved.value).ok()?);
    Some(term)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::schema::{INDEXED, STRING};

    fn schema() -> Schema {
        let mut schema = Schema::builder();
        schema.add_text_field("a", STRING);
        schema.add_i64_field("s", INDEXED);
        schema.build()
    }

    /// Terms of text and numbers come back as they went, in order; a set
    /// with a term whose field is gone or of another type does not.
    #[test]
    fn saved_sets_come_back_as_they_went_but_for_fields_no_longer_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense-terms.json");
        let schema = schema();
        let a = schema.get_field("a").unwrap();
        let s = schema.get_field("s").unwrap();
        let sets: Vec<Box<[Term]>> = vec![
            Box::new([Term::from_field_text(a, "x")]),
            Box::new([Term::from_field_i64(s, 404), Term::from_field_i64(s, -3)]),
        ];
        let remembered = Remembered::load(&path, schema.clone());
        assert!(remembered.previous().is_empty(), "no file, nothing");
        remembered.save(sets.iter().map(|set| &set[..])).unwrap();
        assert_eq!(Remembered::load(&path, schema).previous(), sets);

        // Another schema: `a` now a number, `s` gone.
        let mut other = Schema::builder();
        other.add_i64_field("a", INDEXED);
        other.add_text_field("b", STRING);
        assert!(Remembered::load(&path, other.build()).previous().is_empty());
    }

    /// A file of another version, or not JSON, is read as empty.
    #[test]
    fn another_version_or_a_damaged_file_is_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense-terms.json");
        let set = r#"[{"field": "a", "type": "s", "value": "78"}]"#;
        std::fs::write(&path, format!(r#"{{"version": 1, "sets": [{set}]}}"#)).unwrap();
        assert_eq!(Remembered::load(&path, schema()).previous().len(), 1);
        std::fs::write(&path, format!(r#"{{"version": 2, "sets": [{set}]}}"#)).unwrap();
        assert!(Remembered::load(&path, schema()).previous().is_empty());
        std::fs::write(&path, b"{\"version\": 1, \"sets\": [[").unwrap();
        assert!(Remembered::load(&path, schema()).previous().is_empty());
    }
}
