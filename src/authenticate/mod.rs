//! Stage 1, **authenticate**: a bearer token ⇒ a [`Grant`].

mod config;
mod grant;

pub use config::AuthConfig;
pub use grant::{Grant, TokenKind};
