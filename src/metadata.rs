//! The CapabilityStatement served at `[base]/metadata`: the upstream's, rewritten to advertise
//! SMART (security service, `oauth-uris`, CORS) and the public base, optionally pruned of what
//! the proxy never allows, and cached briefly because it needs no token.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::authorize::Rules;
use crate::classify::OperationLevel;
use crate::fhir::ResourceType;

/// One cached document with a fixed lifetime (no coalescing: a few concurrent refetches
/// after expiry are cheaper than a lock held across an upstream call).
#[derive(Debug)]
pub struct TtlCache {
    ttl: Duration,
    slot: Mutex<Option<(Instant, Bytes)>>,
}

impl TtlCache {
    /// A cache whose entries live `ttl` (zero: nothing is kept).
    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            slot: Mutex::new(None),
        }
    }

    /// The cached document, if still fresh.
    pub fn get(&self) -> Option<Bytes> {
        let slot = self.slot.lock().ok()?;
        match &*slot {
            Some((at, b)) if at.elapsed() < self.ttl => Some(b.clone()),
            _ => None,
        }
    }

    /// Stores a fresh document.
    pub fn put(&self, b: Bytes) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some((Instant::now(), b));
        }
    }
}

/// What the rewrite adds to the upstream CapabilityStatement.
pub struct Advertised<'a> {
    /// The public FHIR base (`implementation.url`).
    pub public_base: &'a str,
    /// The SMART configuration being served, for the `oauth-uris` extension.
    pub smart: Option<&'a Map<String, Value>>,
    /// Whether browsers are allowed in (`rest.security.cors`).
    pub cors: bool,
    /// Prune with these rules (operations not allowed, unknown resource types).
    pub prune: Option<&'a Rules>,
}

const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

/// The rewritten CapabilityStatement, or `None` when the upstream's is not one (JSON).
pub fn capability_statement(upstream: &[u8], adv: &Advertised<'_>) -> Option<Vec<u8>> {
    let mut cs: Value = serde_json::from_slice(upstream).ok()?;
    if cs.get("resourceType")?.as_str()? != "CapabilityStatement" {
        return None;
    }
    if let Some(imp) = cs.get_mut("implementation").and_then(Value::as_object_mut) {
        imp.insert("url".into(), Value::String(adv.public_base.to_owned()));
    }
    for rest in cs
        .get_mut("rest")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(rest) = rest.as_object_mut() else {
            continue;
        };
        rest.insert("security".into(), security(adv));
        if let Some(rules) = adv.prune {
            prune(rest, rules);
        }
    }
    serde_json::to_vec(&cs).ok()
}

fn security(adv: &Advertised<'_>) -> Value {
    let mut security = json!({
        "cors": adv.cors,
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR"
        }]}],
        "description": "OAuth2 bearer tokens with SMART on FHIR scopes (SMART App Launch 2.x); see .well-known/smart-configuration"
    });
    if let (Some(doc), Some(obj)) = (adv.smart, security.as_object_mut()) {
        let uris: Vec<Value> = [
            ("authorize", "authorization_endpoint"),
            ("token", "token_endpoint"),
            ("introspect", "introspection_endpoint"),
            ("revoke", "revocation_endpoint"),
            ("register", "registration_endpoint"),
            ("manage", "management_endpoint"),
        ]
        .into_iter()
        .filter_map(|(url, key)| {
            let v = doc.get(key)?.as_str()?;
            Some(json!({"url": url, "valueUri": v}))
        })
        .collect();
        obj.insert(
            "extension".into(),
            json!([{"url": OAUTH_URIS, "extension": uris}]),
        );
    }
    security
}

/// Removes the operations the rules never allow and the resource types the proxy does not
/// know (classify refuses them).
fn prune(rest: &mut Map<String, Value>, rules: &Rules) {
    let allowed = |name: &str, level: OperationLevel, rtype: Option<ResourceType>| {
        rules.operations.get(name).is_some_and(|r| {
            r.levels.contains(&level)
                && (r.types.is_empty() || rtype.is_some_and(|t| r.types.contains(&t)))
        })
    };
    let keep_ops = |ops: &mut Value, rtype: Option<ResourceType>| {
        if let Some(list) = ops.as_array_mut() {
            list.retain(|op| {
                let name = op.get("name").and_then(Value::as_str).unwrap_or_default();
                let name = name.trim_start_matches('$');
                match rtype {
                    None => allowed(name, OperationLevel::System, None),
                    Some(_) => {
                        allowed(name, OperationLevel::Type, rtype)
                            || allowed(name, OperationLevel::Instance, rtype)
                    }
                }
            });
        }
    };
    if let Some(ops) = rest.get_mut("operation") {
        keep_ops(ops, None);
    }
    if let Some(resources) = rest.get_mut("resource").and_then(Value::as_array_mut) {
        resources.retain(|r| {
            r.get("type")
                .and_then(Value::as_str)
                .and_then(ResourceType::parse)
                .is_some()
        });
        for r in resources.iter_mut() {
            let rtype = r
                .get("type")
                .and_then(Value::as_str)
                .and_then(ResourceType::parse);
            if let Some(ops) = r.get_mut("operation") {
                keep_ops(ops, rtype);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Vec<u8> {
        json!({"resourceType": "CapabilityStatement", "implementation": {"url": "http://up"},
        "rest": [{"mode": "server",
            "security": {"cors": false},
            "operation": [{"name": "export"}, {"name": "graphql"}],
            "resource": [
                {"type": "Patient", "operation": [{"name": "everything"}, {"name": "match"}]},
                {"type": "Observation", "operation": [{"name": "everything"}]},
                {"type": "NotAType"}
            ]}]})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn advertises_smart_and_keeps_everything_by_default() {
        let smart =
            json!({"authorization_endpoint": "https://as/a", "token_endpoint": "https://as/t"});
        let out = capability_statement(
            &upstream(),
            &Advertised {
                public_base: "https://gw/fhir",
                smart: smart.as_object(),
                cors: true,
                prune: None,
            },
        )
        .unwrap();
        let cs: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(cs["implementation"]["url"], "https://gw/fhir");
        let sec = &cs["rest"][0]["security"];
        assert_eq!(sec["cors"], true);
        assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        assert_eq!(sec["extension"][0]["url"], OAUTH_URIS);
        assert_eq!(
            sec["extension"][0]["extension"],
            json!([{"url": "authorize", "valueUri": "https://as/a"}, {"url": "token", "valueUri": "https://as/t"}])
        );
        assert_eq!(cs["rest"][0]["operation"].as_array().unwrap().len(), 2);
        assert_eq!(cs["rest"][0]["resource"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn prunes_what_the_rules_never_allow() {
        let rules = Rules::default();
        let out = capability_statement(
            &upstream(),
            &Advertised {
                public_base: "https://gw/fhir",
                smart: None,
                cors: false,
                prune: Some(&rules),
            },
        )
        .unwrap();
        let cs: Value = serde_json::from_slice(&out).unwrap();
        let rest = &cs["rest"][0];
        assert_eq!(rest["operation"], json!([]));
        assert_eq!(rest["resource"].as_array().unwrap().len(), 2);
        assert_eq!(
            rest["resource"][0]["operation"],
            json!([{"name": "everything"}])
        );
        assert_eq!(rest["resource"][1]["operation"], json!([]));
        assert_eq!(rest["security"]["cors"], false);
    }

    #[test]
    fn not_a_capability_statement() {
        let adv = Advertised {
            public_base: "x",
            smart: None,
            cors: true,
            prune: None,
        };
        assert!(capability_statement(b"{\"resourceType\":\"Patient\"}", &adv).is_none());
        assert!(capability_statement(b"<xml/>", &adv).is_none());
    }

    #[test]
    fn cache_expires() {
        let c = TtlCache::new(Duration::from_millis(30));
        assert!(c.get().is_none());
        c.put(Bytes::from_static(b"x"));
        assert_eq!(c.get().unwrap(), "x");
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get().is_none());
        let off = TtlCache::new(Duration::ZERO);
        off.put(Bytes::from_static(b"x"));
        assert!(off.get().is_none());
    }
}
