//! Token management: admin tokens only, every change audited.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::trail::{self, Trail};
use super::{AppError, Origin};
use crate::auth::{Caller, TokenStore};
use crate::proto::{CreateTokenRequest, TokenInfo, TokenKind};

pub struct TokenService {
    store: Arc<TokenStore>,
    trail: Trail,
}

impl TokenService {
    pub fn new(store: Arc<TokenStore>, trail: Trail) -> Self {
        TokenService { store, trail }
    }

    /// A new token and its secret, which is shown only here.
    pub async fn create(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: CreateTokenRequest,
    ) -> Result<(TokenInfo, String), AppError> {
        let result = match caller.require_admin("manage tokens") {
            Ok(()) => self.store.create(request).await,
            Err(denied) => Err(denied),
        }
        .map_err(AppError::from);
        let query = result
            .as_ref()
            .map(|(info, _)| token_query(info))
            .unwrap_or_default();
        self.trail
            .audited(caller, trail::TOKEN_CREATE, origin, query, result)
            .await
    }

    pub async fn list(&self, caller: &Caller, origin: &Origin) -> Result<Vec<TokenInfo>, AppError> {
        let result = caller
            .require_admin("manage tokens")
            .map(|()| self.store.list())
            .map_err(AppError::from);
        self.trail
            .audited(caller, trail::TOKEN_LIST, origin, BTreeMap::new(), result)
            .await
    }

    pub async fn revoke(
        &self,
        caller: &Caller,
        origin: &Origin,
        id: String,
    ) -> Result<TokenInfo, AppError> {
        let result = match caller.require_admin("manage tokens") {
            Ok(()) => self.store.revoke(&id).await,
            Err(denied) => Err(denied),
        }
        .map_err(AppError::from);
        let query = BTreeMap::from([("token".to_owned(), id)]);
        self.trail
            .audited(caller, trail::TOKEN_REVOKE, origin, query, result)
            .await
    }
}

/// A token's description, as the trail records it (never its secret).
fn token_query(info: &TokenInfo) -> BTreeMap<String, String> {
    let mut q = BTreeMap::from([("token".to_owned(), info.id.clone())]);
    for (key, value) in [
        (
            "kind",
            TokenKind::try_from(info.kind)
                .map(|k| k.as_str_name().to_owned())
                .unwrap_or_default(),
        ),
        ("subject", info.subject.clone()),
        ("access_id", info.access_id.clone()),
        ("name", info.name.clone()),
    ] {
        if !value.is_empty() {
            q.insert(key.to_owned(), value);
        }
    }
    q
}
