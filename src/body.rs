//! The one body type that flows through the proxy in both directions.
//!
//! Streaming bodies (the client's request, the upstream's response) pass through as they
//! arrive; bodies the proxy wrote or rewrote are `Full`. Boxing keeps one type for both
//! without buffering (see hyper's streaming examples).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// Errors while streaming a body (from either side).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body that may stream.
pub type ProxyBody = BoxBody<Bytes, BodyError>;

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Boxes a streaming body (e.g. `hyper::body::Incoming`) without buffering it.
pub fn stream<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BodyError>,
{
    body.map_err(Into::into).boxed()
}
