//! Who may read what: bearer tokens, stored only as SHA-256 hashes, and the
//! rules each token kind lives by (Pryv's model, widened for a daemon).
//!
//! - `admin` reads everything and manages tokens;
//! - `personal` reads every event of its subject;
//! - `app` and `shared` read the events of their subject that their access
//!   performed (Pryv's self-audit rule);
//! - `ingest` writes only, within its binding.
//!
//! The read rule becomes a clause of the search query itself (`ReadScope`),
//! never a filter over results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::future::BoxFuture;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::datadir::{write_atomically, DataDir};
use crate::proto::{AuditEvent, CreateTokenRequest, TokenInfo, TokenKind};
use crate::schema::micros_to_timestamp;

/// Every token starts with this, so a leaked one is easy to recognise
/// (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "adt.";

/// The file, in the data directory, holding the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Missing, malformed, unknown and revoked tokens all get this one
    /// answer, so it tells a caller nothing about which it was.
    #[error("a valid `authorization: Bearer <token>` is required")]
    Unauthenticated,
    #[error("this {kind} token may not {action}")]
    Forbidden {
        kind: &'static str,
        action: &'static str,
    },
    /// A bad token-management request.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// An ingest token writing outside its binding.
    #[error("{field}: {reason}")]
    OutsideBinding { field: String, reason: String },
    #[error("no token with id {0:?}")]
    NotFound(String),
    /// The store could not be read or written: a file, or a cluster's
    /// shared bucket.
    #[error("token store {place}: {reason}")]
    Store { place: String, reason: String },
}

/// A token as stored: everything but the secret, which only its hash
/// stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredToken {
    pub id: String,
    pub kind: StoredKind,
    pub name: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub access_id: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub type_prefix: String,
    pub created_micros: i64,
    #[serde(default)]
    pub revoked: bool,
    /// SHA-256 of the whole token string, hex.
    pub hash: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoredKind {
    Admin,
    Personal,
    App,
    Shared,
    Ingest,
}

impl StoredKind {
    pub fn name(self) -> &'static str {
        match self {
            StoredKind::Admin => "admin",
            StoredKind::Personal => "personal",
            StoredKind::App => "app",
            StoredKind::Shared => "shared",
            StoredKind::Ingest => "ingest",
        }
    }

    fn from_proto(kind: TokenKind) -> Option<StoredKind> {
        Some(match kind {
            TokenKind::Unspecified => return None,
            TokenKind::Admin => StoredKind::Admin,
            TokenKind::Personal => StoredKind::Personal,
            TokenKind::App => StoredKind::App,
            TokenKind::Shared => StoredKind::Shared,
            TokenKind::Ingest => StoredKind::Ingest,
        })
    }

    fn to_proto(self) -> TokenKind {
        match self {
            StoredKind::Admin => TokenKind::Admin,
            StoredKind::Personal => TokenKind::Personal,
            StoredKind::App => TokenKind::App,
            StoredKind::Shared => TokenKind::Shared,
            StoredKind::Ingest => TokenKind::Ingest,
        }
    }
}

/// The authenticated caller, put into each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub kind: StoredKind,
    pub subject: String,
    pub access_id: String,
    pub sources: Vec<String>,
    pub type_prefix: String,
}

/// What a caller may read, as the search adds it to every query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    All,
    Subject(String),
    SubjectAndAccess { subject: String, access_id: String },
}

impl Caller {
    pub fn read_scope(&self, action: &'static str) -> Result<ReadScope, AuthError> {
        match self.kind {
            StoredKind::Admin => Ok(ReadScope::All),
            StoredKind::Personal => Ok(ReadScope::Subject(self.subject.clone())),
            StoredKind::App | StoredKind::Shared => Ok(ReadScope::SubjectAndAccess {
                subject: self.subject.clone(),
                access_id: self.access_id.clone(),
            }),
            StoredKind::Ingest => Err(self.forbidden(action)),
        }
    }

    /// Admin and ingest tokens write; an ingest token only within its
    /// binding, checked event by event.
    pub fn check_write(&self, events: &[AuditEvent]) -> Result<(), AuthError> {
        match self.kind {
            StoredKind::Admin => return Ok(()),
            StoredKind::Ingest => {}
            _ => return Err(self.forbidden("ingest events")),
        }
        for (i, event) in events.iter().enumerate() {
            let source = event.source.as_ref().map_or("", |s| s.name.as_str());
            if !self.sources.is_empty() && !self.sources.iter().any(|s| s == source) {
                return Err(AuthError::OutsideBinding {
                    field: format!("events[{i}].source.name"),
                    reason: format!("{source:?} is not a source this ingest token may write"),
                });
            }
            if !event.r#type.starts_with(&self.type_prefix) {
                return Err(AuthError::OutsideBinding {
                    field: format!("events[{i}].type"),
                    reason: format!(
                        "this ingest token may write only types starting with {:?}",
                        self.type_prefix
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn require_admin(&self, action: &'static str) -> Result<(), AuthError> {
        match self.kind {
            StoredKind::Admin => Ok(()),
            _ => Err(self.forbidden(action)),
        }
    }

    /// The access the caller acts as, for the audit trail of its reads:
    /// its bound access for app and shared tokens (so those events fall in
    /// its own scope), its token id otherwise.
    pub fn audit_access_id(&self) -> &str {
        match self.kind {
            StoredKind::App | StoredKind::Shared => &self.access_id,
            _ => &self.token_id,
        }
    }

    fn forbidden(&self, action: &'static str) -> AuthError {
        AuthError::Forbidden {
            kind: self.kind.name(),
            action,
        }
    }
}

/// Where the tokens are kept: this node's file, or a store every node of
/// a cluster shares ([`SharedTokens`]).
enum Backing {
    /// `<data_dir>/tokens.json` (hashes only; owner-only permissions).
    File(PathBuf),
    Shared(Arc<dyn SharedTokens>),
}

/// A token store every node of a cluster reads and writes: the JetStream
/// KV bucket of `cluster::tokens`. A node keeps every token in memory and
/// hears of other nodes' changes through [`TokenStore::apply`].
pub trait SharedTokens: Send + Sync {
    /// The store's name, for errors.
    fn name(&self) -> String;
    /// Writes `token` through; resolves once the store holds it.
    fn put(&self, token: &StoredToken) -> BoxFuture<'_, Result<(), String>>;
    /// Writes `token` as the cluster's first admin token unless one was
    /// written before (by any node): `Ok(false)` then.
    fn create_first_admin(&self, token: &StoredToken) -> BoxFuture<'_, Result<bool, String>>;
    /// Why the tokens this node holds may be out of date, when they may:
    /// it has not heard from the store for too long, so a revocation could
    /// have been missed. Then no token is taken. Called on every request:
    /// cheap.
    fn stale(&self) -> Option<String>;
}

/// The tokens, cached in memory and kept in a [`Backing`]. Every change is
/// written through before it is answered, so a revocation holds across a
/// restart (and, shared, on every node).
pub struct TokenStore {
    backing: Backing,
    tokens: RwLock<BTreeMap<String, StoredToken>>,
    /// Compared against when a token is malformed or unknown, so those
    /// cost about the same time as a wrong secret.
    decoy: [u8; 32],
}

impl TokenStore {
    /// Opens the store in `<data_dir>/tokens.json`. When it holds no token
    /// yet, creates an admin token, writes it to `<data_dir>/admin.token`
    /// (mode 0600) and returns its secret so the caller can show it once.
    pub fn open(data_dir: &Path) -> Result<(TokenStore, Option<String>), AuthError> {
        let data_dir = DataDir::new(data_dir);
        let path = data_dir.tokens();
        let tokens: Vec<StoredToken> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| store_error(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(store_error(&path, e)),
        };
        let store = TokenStore::new(Backing::File(path.clone()), tokens);
        if !store.tokens.read().expect("token lock").is_empty() {
            return Ok((store, None));
        }
        let (token, secret) = new_token(first_admin_request())?;
        store.write_file(&path, token)?;
        write_admin_token(&data_dir, &secret)?;
        Ok((store, Some(secret)))
    }

    /// A store over `shared`, holding `tokens` as read from it at start.
    pub fn shared(shared: Arc<dyn SharedTokens>, tokens: Vec<StoredToken>) -> TokenStore {
        TokenStore::new(Backing::Shared(shared), tokens)
    }

    fn new(backing: Backing, tokens: Vec<StoredToken>) -> TokenStore {
        let mut map = BTreeMap::new();
        for token in tokens {
            merge(&mut map, token);
        }
        TokenStore {
            backing,
            tokens: RwLock::new(map),
            decoy: Sha256::digest(b"decoy").into(),
        }
    }

    /// For a shared store: makes the cluster's first admin token unless a
    /// node made one before, writing it to `<data_dir>/admin.token` and
    /// returning its secret (as [`TokenStore::open`] does on one node).
    pub async fn ensure_first_admin(&self, data_dir: &Path) -> Result<Option<String>, AuthError> {
        let Backing::Shared(shared) = &self.backing else {
            return Ok(None);
        };
        let (token, secret) = new_token(first_admin_request())?;
        if !shared
            .create_first_admin(&token)
            .await
            .map_err(|reason| shared_error(shared.as_ref(), reason))?
        {
            return Ok(None);
        }
        self.apply(token);
        write_admin_token(&DataDir::new(data_dir), &secret)?;
        Ok(Some(secret))
    }

    /// A token as the shared store now holds it (another node's change,
    /// or this node's heard back). A token never changes but to be
    /// revoked, and a revocation is never undone, so the order changes
    /// arrive in does not matter.
    pub fn apply(&self, token: StoredToken) {
        let mut tokens = self.tokens.write().expect("token lock");
        merge(&mut tokens, token);
    }

    /// The caller behind an `authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        if let Backing::Shared(shared) = &self.backing {
            if let Some(reason) = shared.stale() {
                return Err(shared_error(shared.as_ref(), reason));
            }
        }
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim);
        let id = token
            .and_then(|t| t.strip_prefix(TOKEN_PREFIX))
            .and_then(|rest| rest.split_once('.'))
            .map(|(id, _)| id);
        let digest: [u8; 32] = Sha256::digest(token.unwrap_or_default().as_bytes()).into();
        let tokens = self.tokens.read().expect("token lock");
        let stored = id.and_then(|id| tokens.get(id));
        let expected = stored
            .and_then(|t| decode_hex(&t.hash))
            .unwrap_or(self.decoy);
        let matches: bool = digest.ct_eq(&expected).into();
        match stored {
            Some(t) if matches && !t.revoked => Ok(Caller {
                token_id: t.id.clone(),
                kind: t.kind,
                subject: t.subject.clone(),
                access_id: t.access_id.clone(),
                sources: t.sources.clone(),
                type_prefix: t.type_prefix.clone(),
            }),
            _ => Err(AuthError::Unauthenticated),
        }
    }

    /// Creates a token; returns it and its secret (shown once).
    pub async fn create(
        &self,
        request: CreateTokenRequest,
    ) -> Result<(TokenInfo, String), AuthError> {
        let (stored, secret) = new_token(request)?;
        let info = info(&stored);
        self.write(stored).await?;
        Ok((info, secret))
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        self.tokens
            .read()
            .expect("token lock")
            .values()
            .map(info)
            .collect()
    }

    /// Revokes at once: the next call with this token is refused (on
    /// another node of a cluster, once the change reaches it).
    pub async fn revoke(&self, id: &str) -> Result<TokenInfo, AuthError> {
        let mut token = self
            .tokens
            .read()
            .expect("token lock")
            .get(id)
            .cloned()
            .ok_or_else(|| AuthError::NotFound(id.to_owned()))?;
        token.revoked = true;
        let revoked = info(&token);
        self.write(token).await?;
        Ok(revoked)
    }

    /// Writes `token` through; memory changes only once the backing does.
    async fn write(&self, token: StoredToken) -> Result<(), AuthError> {
        match &self.backing {
            Backing::File(path) => self.write_file(path, token),
            Backing::Shared(shared) => {
                shared
                    .put(&token)
                    .await
                    .map_err(|reason| shared_error(shared.as_ref(), reason))?;
                self.apply(token);
                Ok(())
            }
        }
    }

    fn write_file(&self, path: &Path, token: StoredToken) -> Result<(), AuthError> {
        let mut tokens = self.tokens.write().expect("token lock");
        let mut next = tokens.clone();
        merge(&mut next, token);
        let list: Vec<&StoredToken> = next.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).expect("tokens serialize");
        write_atomically(path, &bytes, true).map_err(|e| store_error(path, e))?;
        *tokens = next;
        Ok(())
    }
}

/// Puts `token` in `tokens`; one revoked stays revoked.
fn merge(tokens: &mut BTreeMap<String, StoredToken>, mut token: StoredToken) {
    if tokens.get(&token.id).is_some_and(|t| t.revoked) {
        token.revoked = true;
    }
    tokens.insert(token.id.clone(), token);
}

fn first_admin_request() -> CreateTokenRequest {
    CreateTokenRequest {
        kind: TokenKind::Admin as i32,
        name: "admin (created on first start)".into(),
        ..Default::default()
    }
}

fn write_admin_token(data_dir: &DataDir, secret: &str) -> Result<(), AuthError> {
    let file = data_dir.admin_token();
    write_atomically(&file, format!("{secret}\n").as_bytes(), true)
        .map_err(|e| store_error(&file, e))
}

/// A new token for a valid `request`, and its secret.
fn new_token(request: CreateTokenRequest) -> Result<(StoredToken, String), AuthError> {
    let invalid = |field: &str, reason: &str| AuthError::Invalid {
        field: field.into(),
        reason: reason.into(),
    };
    let kind = TokenKind::try_from(request.kind)
        .ok()
        .and_then(StoredKind::from_proto)
        .ok_or_else(|| invalid("kind", "one of admin, personal, app, shared, ingest"))?;
    let needs_subject = matches!(
        kind,
        StoredKind::Personal | StoredKind::App | StoredKind::Shared
    );
    if needs_subject && request.subject.is_empty() {
        return Err(invalid(
            "subject",
            "required for personal, app and shared tokens",
        ));
    }
    if !needs_subject && !request.subject.is_empty() {
        return Err(invalid(
            "subject",
            "only personal, app and shared tokens have a subject",
        ));
    }
    let needs_access = matches!(kind, StoredKind::App | StoredKind::Shared);
    if needs_access == request.access_id.is_empty() {
        return Err(invalid(
            "access_id",
            "required for app and shared tokens, and only for them",
        ));
    }
    if kind != StoredKind::Ingest
        && (!request.sources.is_empty() || !request.type_prefix.is_empty())
    {
        return Err(invalid(
            "sources",
            "only ingest tokens are bound to sources or a type prefix",
        ));
    }
    if request.name.len() > 256 {
        return Err(invalid("name", "at most 256 bytes"));
    }
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let mut secret_bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut secret_bytes);
    let secret = format!(
        "{TOKEN_PREFIX}{id}.{}",
        URL_SAFE_NO_PAD.encode(secret_bytes)
    );
    let stored = StoredToken {
        id: id.clone(),
        kind,
        name: request.name,
        subject: request.subject,
        access_id: request.access_id,
        sources: request.sources,
        type_prefix: request.type_prefix,
        created_micros: crate::ingest::now_micros(),
        revoked: false,
        hash: hex::encode(Sha256::digest(secret.as_bytes())),
    };
    Ok((stored, secret))
}

fn info(t: &StoredToken) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        kind: t.kind.to_proto() as i32,
        name: t.name.clone(),
        subject: t.subject.clone(),
        access_id: t.access_id.clone(),
        sources: t.sources.clone(),
        type_prefix: t.type_prefix.clone(),
        created: Some(micros_to_timestamp(t.created_micros)),
        revoked: t.revoked,
    }
}

fn store_error(path: &Path, e: impl std::fmt::Display) -> AuthError {
    AuthError::Store {
        place: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn shared_error(shared: &dyn SharedTokens, reason: String) -> AuthError {
    AuthError::Store {
        place: shared.name(),
        reason,
    }
}

fn decode_hex(digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(digest, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_writes_an_admin_token_only_its_owner_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let (store, secret) = TokenStore::open(dir.path()).unwrap();
        let secret = secret.expect("a first admin token");
        let file = dir.path().join(ADMIN_TOKEN_FILE);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), secret);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let caller = store
            .authenticate(Some(&format!("Bearer {secret}")))
            .unwrap();
        assert_eq!(caller.kind, StoredKind::Admin);
        // The store itself holds no secret.
        let on_disk = std::fs::read_to_string(DataDir::new(dir.path()).tokens()).unwrap();
        assert!(!on_disk.contains(secret.rsplit('.').next().unwrap()));
        // Reopened: no second admin token.
        let (store, again) = TokenStore::open(dir.path()).unwrap();
        assert!(again.is_none());
        assert_eq!(store.list().len(), 1);
    }

    #[tokio::test]
    async fn bad_tokens_all_get_the_same_answer_and_revocation_is_immediate() {
        let dir = tempfile::tempdir().unwrap();
        let (store, admin) = TokenStore::open(dir.path()).unwrap();
        let admin = admin.unwrap();
        let (info, app) = store
            .create(CreateTokenRequest {
                kind: TokenKind::App as i32,
                subject: "emma".into(),
                access_id: "diary".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let wrong_secret = format!("{}x", &app[..app.len() - 1]);
        for header in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Basic abc"),
            Some("Bearer adt.nope.nope"),
            Some("Bearer not-a-token"),
            Some(&*format!("Bearer {wrong_secret}")),
        ] {
            assert_eq!(
                store.authenticate(header),
                Err(AuthError::Unauthenticated),
                "{header:?}"
            );
        }
        assert!(store.authenticate(Some(&format!("Bearer {app}"))).is_ok());
        store.revoke(&info.id).await.unwrap();
        assert_eq!(
            store.authenticate(Some(&format!("Bearer {app}"))),
            Err(AuthError::Unauthenticated)
        );
        // Revocation survives a restart.
        let (store, _) = TokenStore::open(dir.path()).unwrap();
        assert_eq!(
            store.authenticate(Some(&format!("Bearer {app}"))),
            Err(AuthError::Unauthenticated)
        );
        assert!(store.authenticate(Some(&format!("Bearer {admin}"))).is_ok());
    }

    #[test]
    fn token_creation_rules() {
        let create = |kind: TokenKind, subject: &str, access: &str| {
            new_token(CreateTokenRequest {
                kind: kind as i32,
                subject: subject.into(),
                access_id: access.into(),
                ..Default::default()
            })
        };
        assert!(create(TokenKind::Personal, "", "").is_err());
        assert!(create(TokenKind::App, "emma", "").is_err());
        assert!(create(TokenKind::Admin, "emma", "").is_err());
        assert!(create(TokenKind::Unspecified, "", "").is_err());
        assert!(create(TokenKind::Shared, "emma", "x").is_ok());
        assert!(create(TokenKind::Ingest, "", "").is_ok());
    }

    #[test]
    fn a_revocation_is_never_undone_whatever_order_changes_arrive_in() {
        let (token, secret) = new_token(CreateTokenRequest {
            kind: TokenKind::Ingest as i32,
            ..Default::default()
        })
        .unwrap();
        let store = TokenStore::new(Backing::File(PathBuf::from("unused")), Vec::new());
        let header = format!("Bearer {secret}");
        store.apply(token.clone());
        assert!(store.authenticate(Some(&header)).is_ok());
        store.apply(StoredToken {
            revoked: true,
            ..token.clone()
        });
        // The creation heard again after the revocation.
        store.apply(token);
        assert_eq!(
            store.authenticate(Some(&header)),
            Err(AuthError::Unauthenticated)
        );
    }
}
