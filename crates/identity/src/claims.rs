//! The claims of a Flotilla access token (docs/API.md §3).

use serde::{Deserialize, Serialize};

/// The `iss` of every token the auth service issues; other issuers are rejected.
pub const ISSUER: &str = "flotilla-auth";

/// What an access token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Claims {
    /// The user's id (stable; the email may change one day).
    #[schema(format = Uuid)]
    pub sub: String,
    /// The user's email, named `username` as in the reference system.
    #[schema(format = Email)]
    pub username: String,
    pub admin: bool,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    #[schema(example = "flotilla-auth")]
    pub iss: String,
}
