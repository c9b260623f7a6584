//! Strict, borrowed JSON reading for the response filter.
//!
//! Two shapes: an object read as its ordered `(key, raw value)` fields (so kept parts are
//! copied byte for byte and nothing else is parsed), and a strict `Value` for the few
//! elements a decision reads. Both reject duplicate keys: a client that takes the last
//! `subject` while we judged the first would see what we never checked.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// Prefix of the error message for duplicate keys (see [`is_duplicate_key`]).
const DUPLICATE: &str = "duplicate key";

/// Whether a serde_json error was raised by our duplicate-key check.
pub(crate) fn is_duplicate_key(e: &serde_json::Error) -> bool {
    e.to_string().starts_with(DUPLICATE)
}

/// A key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// An object's fields in document order, values unparsed.
pub(crate) struct Fields<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// The raw value of `key` (keys are unique).
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de> de::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Fields<'de>, A::Error> {
                // No key is special: every value stays raw.
                visit_fields(map, "", |m: &mut A| m.next_value(), |v| v).map(Fields)
            }
        }
        d.deserialize_map(V)
    }
}

/// A top-level Bundle value: raw, or (for `entry`) the entries read in the same pass, so
/// every byte of a resource is scanned once.
pub(crate) enum BundleValue<'a> {
    /// Any other element, unparsed.
    Raw(&'a RawValue),
    /// `entry`.
    Entries(Vec<Entry<'a>>),
}

/// A Bundle's top-level fields in document order.
pub(crate) struct BundleFields<'a>(pub(crate) Vec<(Cow<'a, str>, BundleValue<'a>)>);

impl<'a> BundleFields<'a> {
    /// The raw value of `key` (not for `entry`).
    pub(crate) fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find_map(|(k, v)| match v {
            BundleValue::Raw(r) if k == key => Some(*r),
            _ => None,
        })
    }
}

/// A value of a Bundle entry: raw, or (for `resource`) the resource's fields.
pub(crate) enum EntryValue<'a> {
    /// Any other element (`fullUrl`, `search`, `request`, …), unparsed.
    Raw(&'a RawValue),
    /// `resource`.
    Resource(Fields<'a>),
}

/// One Bundle entry's fields in document order.
pub(crate) struct Entry<'a>(pub(crate) Vec<(Cow<'a, str>, EntryValue<'a>)>);

impl<'a> Entry<'a> {
    /// The raw value of `key` (not for `resource`).
    pub(crate) fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find_map(|(k, v)| match v {
            EntryValue::Raw(r) if k == key => Some(*r),
            _ => None,
        })
    }

    /// The entry's resource.
    pub(crate) fn resource(&self) -> Option<&Fields<'a>> {
        self.0.iter().find_map(|(_, v)| match v {
            EntryValue::Resource(f) => Some(f),
            EntryValue::Raw(_) => None,
        })
    }
}

/// Reads an object's fields in order with duplicate keys refused; `special` names the one
/// key whose value is read by `read_special` instead of kept raw.
fn visit_fields<'de, A, V>(
    mut map: A,
    special: &str,
    read_special: impl Fn(&mut A) -> Result<V, A::Error>,
    raw: impl Fn(&'de RawValue) -> V,
) -> Result<Vec<(Cow<'de, str>, V)>, A::Error>
where
    A: MapAccess<'de>,
{
    let mut out: Vec<(Cow<'de, str>, V)> = Vec::with_capacity(16);
    // Keys are looked up in `out` while the object is small, in a set beyond that.
    let mut large: Option<HashSet<Cow<'de, str>>> = None;
    while let Some(Key(k)) = map.next_key()? {
        let duplicate = match &mut large {
            Some(set) => !set.insert(k.clone()),
            None => out.iter().any(|(seen, _)| *seen == k),
        };
        if duplicate {
            return Err(de::Error::custom(format_args!("{DUPLICATE} `{k}`")));
        }
        if large.is_none() && out.len() == 16 {
            large = Some(
                out.iter()
                    .map(|(seen, _)| seen.clone())
                    .chain([k.clone()])
                    .collect(),
            );
        }
        let v = if k == special {
            read_special(&mut map)?
        } else {
            raw(map.next_value()?)
        };
        out.push((k, v));
    }
    Ok(out)
}

impl<'de> de::Deserialize<'de> for Entry<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Bundle entry object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry<'de>, A::Error> {
                let read = |m: &mut A| m.next_value().map(EntryValue::Resource);
                visit_fields(map, "resource", read, EntryValue::Raw).map(Entry)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> de::Deserialize<'de> for BundleFields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BundleFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BundleFields<'de>, A::Error> {
                let read = |m: &mut A| m.next_value().map(BundleValue::Entries);
                visit_fields(map, "entry", read, BundleValue::Raw).map(BundleFields)
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses an object into its fields.
pub(crate) fn fields(raw: &str) -> Result<Fields<'_>, serde_json::Error> {
    serde_json::from_str(raw)
}

/// Parses any JSON into a `Value`, rejecting duplicate keys at every depth.
pub(crate) fn strict_value(raw: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let v = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Seed/visitor building a `Value` with the duplicate-key check.
#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(Key(k)) = map.next_key()? {
            let v = map.next_value_seed(Strict)?;
            if out.insert(k.as_ref().to_owned(), v).is_some() {
                return Err(de::Error::custom(format_args!("{DUPLICATE} `{k}`")));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_order_and_bytes() {
        let f = fields(r#"{"b" : [1, 2], "a":{"x":1} }"#).unwrap();
        let got: Vec<(&str, &str)> = f.0.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
        assert_eq!(got, vec![("b", "[1, 2]"), ("a", r#"{"x":1}"#)]);
        assert_eq!(f.get("a").map(RawValue::get), Some(r#"{"x":1}"#));
    }

    #[test]
    fn escaped_keys_are_decoded_and_duplicates_rejected() {
        let f = fields(r#"{"sub\u006aect": 1}"#).unwrap();
        assert_eq!(f.0[0].0, "subject");
        let e = fields(r#"{"subject": 1, "sub\u006aect": 2}"#)
            .err()
            .unwrap();
        assert!(is_duplicate_key(&e));
        let many: String = (0..40).map(|i| format!("\"k{i}\":1,")).collect();
        let e = fields(&format!("{{{many}\"k3\":2}}")).err().unwrap();
        assert!(is_duplicate_key(&e));
        assert!(fields(&format!("{{{many}\"z\":2}}")).is_ok());
        assert!(fields("[1]").is_err());
        assert!(fields(r#"{"a":1"#).is_err());
    }

    #[test]
    fn strict_values() {
        let v = strict_value(r#"{"a":[1,-2,3.5,"s",null,true,{"b":{}}]}"#).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":[1,-2,3.5,"s",null,true,{"b":{}}]})
        );
        let e = strict_value(r#"{"a":{"r":"Patient/A","r":"Patient/B"}}"#)
            .err()
            .unwrap();
        assert!(is_duplicate_key(&e));
        assert!(strict_value(r#"{"a":1} x"#).is_err());
        assert!(strict_value(&"[".repeat(10_000)).is_err());
    }
}
