//! JSON request bodies read as documents of named fields only.
//!
//! serde's derived `Deserialize` for a struct also accepts a JSON array and
//! reads it by position, so `[1234, 64]` would set the first two settings
//! of a `PATCH` body and `{"quotas": [5]}` a tenant's first quota. No API
//! body is meant that way, and a client sending one has made a mistake the
//! server must not guess around. [`from_slice`] deserializes through
//! [`Strict`], which refuses an array wherever a struct is expected, at any
//! depth, and otherwise behaves exactly as `serde_json::Value` does.

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as JSON into `T`, refusing arrays in place of objects.
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let value: Value = serde_json::from_slice(bytes)?;
    T::deserialize(Strict(value))
}

/// A JSON value whose structs must be objects.
struct Strict(Value);

impl<'de> de::Deserializer<'de> for Strict {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(Items(items.into_iter())),
            Value::Object(fields) => visitor.visit_map(Fields {
                fields: fields.into_iter(),
                value: None,
            }),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &format!("a JSON object ({name})").as_str(),
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

fn unexpected(value: &Value) -> de::Unexpected<'_> {
    match value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("a number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

struct Items(std::vec::IntoIter<Value>);

impl<'de> de::SeqAccess<'de> for Items {
    type Error = serde_json::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Fields {
    fields: <Map<String, Value> as IntoIterator>::IntoIter,
    value: Option<Value>,
}

impl<'de> de::MapAccess<'de> for Fields {
    type Error = serde_json::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Self::Error> {
        let Some((key, value)) = self.fields.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value without its key"))?;
        seed.deserialize(Strict(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: Option<u32>,
        #[serde(default)]
        list: Vec<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        inner: Option<Inner>,
        n: Option<u64>,
    }

    #[test]
    fn objects_are_read_as_serde_json_reads_them() {
        let got: Outer =
            from_slice(br#"{"n": 3, "inner": {"a": 7, "list": ["x", "y"]}}"#).expect("valid");
        assert_eq!(
            got,
            Outer {
                inner: Some(Inner {
                    a: Some(7),
                    list: vec!["x".into(), "y".into()]
                }),
                n: Some(3)
            }
        );
        let got: Outer = from_slice(br#"{"inner": null}"#).expect("null");
        assert_eq!(
            got,
            Outer {
                inner: None,
                n: None
            }
        );
        assert!(
            from_slice::<Outer>(br#"{"m": 1}"#).is_err(),
            "unknown field"
        );
        assert!(
            from_slice::<Outer>(br#"{"n": -1}"#).is_err(),
            "out of range"
        );
        assert!(from_slice::<Inner>(br#"{"a": 4294967296}"#).is_err());
    }

    #[test]
    fn arrays_in_place_of_objects_are_refused_at_any_depth() {
        for body in [&br#"[null, 3]"#[..], br#"{"inner": [1]}"#, b"[]"] {
            let err = from_slice::<Outer>(body).expect_err("array for a struct");
            assert!(err.to_string().contains("a JSON object"), "{err}");
        }
        assert!(
            serde_json::from_slice::<Outer>(b"[null, 3]").is_ok(),
            "serde alone would"
        );
    }
}
