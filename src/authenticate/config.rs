//! Placeholder until the Authentication work lands (replaced on merge).
use serde::Deserialize;

/// `auth:`
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthConfig {
    /// JWT settings.
    #[serde(default)]
    pub jwt: Option<serde::de::IgnoredAny>,
    /// Introspection settings.
    #[serde(default)]
    pub introspection: Option<serde::de::IgnoredAny>,
}

impl AuthConfig {
    /// Semantic problems.
    pub fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
