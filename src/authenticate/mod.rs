//! Stage 1, **authenticate**: a bearer token ⇒ a [`Grant`].

mod grant;

pub use grant::{Grant, TokenKind};
