//! Strict JSON for what arrives from outside (ingest, access tokens, request bodies): an object
//! with a repeated key is refused at any depth.
//!
//! Parsers disagree on which copy of a repeated key counts (serde_json keeps the last, others
//! the first), so a document with one can be checked as one thing and read by its recipient as
//! another: a Condition with `"code"` twice is classified by one code and released with the
//! other. The check is part of building the value tree, in the same single pass as
//! `serde_json::from_str::<Value>`, with serde_json's nesting limit.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Parses JSON text, refusing a repeated key in any object.
pub fn from_str(text: &str) -> Result<Value, serde_json::Error> {
    // Not `from_slice`: text already known to be UTF-8 is not checked again.
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Strict { role: Role::Plain }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Parses JSON bytes, refusing a repeated key in any object.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Strict { role: Role::Plain }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Like [`from_slice`], for a FHIR Bundle: when the error is inside an element of the top-level
/// `entry` array, also says which one (counted from 1), so ingest can name the entry.
pub fn from_slice_locating_entry(
    bytes: &[u8],
) -> Result<Value, (serde_json::Error, Option<usize>)> {
    let entry = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Strict {
        role: Role::Bundle(&entry),
    }
    .deserialize(&mut deserializer)
    .map_err(|e| (e, entry.get()))?;
    deserializer.end().map_err(|e| (e, None))?;
    Ok(value)
}

/// The longest part of a repeated key quoted in an error.
const MAX_QUOTED_KEY_CHARS: usize = 64;

/// Where a value sits, for the Bundle entry count; everything else is `Plain`.
#[derive(Clone, Copy)]
enum Role<'a> {
    Plain,
    /// The top-level object of a Bundle.
    Bundle(&'a Cell<Option<usize>>),
    /// The value of its `entry` key: the element being read is recorded.
    Entries(&'a Cell<Option<usize>>),
}

struct Strict<'a> {
    role: Role<'a>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // As serde_json's own Value: a non-finite number becomes null.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            if let Role::Entries(entry) = self.role {
                entry.set(Some(items.len() + 1));
            }
            match access.next_element_seed(Strict { role: Role::Plain })? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        if let Role::Entries(entry) = self.role {
            entry.set(None);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let role = match self.role {
                Role::Bundle(entry) if key == "entry" => Role::Entries(entry),
                _ => Role::Plain,
            };
            match map.entry(key) {
                Entry::Vacant(vacant) => {
                    vacant.insert(access.next_value_seed(Strict { role })?);
                }
                Entry::Occupied(occupied) => {
                    let key: String = occupied.key().chars().take(MAX_QUOTED_KEY_CHARS).collect();
                    return Err(de::Error::custom(format_args!("repeated key {key:?}")));
                }
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn builds_the_same_value_as_serde_json() {
        let text = r#"{"a": [1, -2, 3.5, 1e400, true, null, "x\u00e9\n", {"b": {}}, []], "c": 18446744073709551615}"#;
        // 1e400 is out of range for both.
        assert!(from_str(text).is_err() && serde_json::from_str::<Value>(text).is_err());
        let text = r#"{"a": [1, -2, 3.5, true, null, "x\u00e9\n", {"b": {}}, []], "c": 18446744073709551615, "d": -9223372036854775808}"#;
        assert_eq!(
            from_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn refuses_a_repeated_key_at_any_depth() {
        for text in [
            r#"{"code": 1, "code": 2}"#,
            r#"{"a": {"b": [{"code": 1, "x": 0, "code": 1}]}}"#,
            // The same key once escaped: it is still the same key.
            r#"{"code": 1, "co\u0064e": 2}"#,
            r#"[[[{"k": {}, "k": []}]]]"#,
        ] {
            let error = from_str(text).unwrap_err().to_string();
            assert!(error.starts_with("repeated key"), "{text}: {error}");
            assert!(serde_json::from_str::<Value>(text).is_ok());
        }
        let error = from_str(r#"{"a": 1,"a": 2}"#).unwrap_err().to_string();
        assert_eq!(error, r#"repeated key "a" at line 1 column 11"#);
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for text in ["", "{", "{} {}", r#"{"a": 1,}"#, "[1 2]", r#""\ud800""#] {
            assert!(from_str(text).is_err(), "{text}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(from_str(&deep).is_err(), "the nesting limit still holds");
    }

    #[test]
    fn a_bundle_error_names_its_entry() {
        let bundle =
            br#"{"resourceType": "Bundle", "entry": [{"a": 1}, {"b": {"c": 1, "c": 2}}, {}]}"#;
        let (error, entry) = from_slice_locating_entry(bundle).unwrap_err();
        assert_eq!(entry, Some(2), "{error}");
        let top = br#"{"entry": [{}], "type": 1, "type": 2}"#;
        assert_eq!(from_slice_locating_entry(top).unwrap_err().1, None);
        let nested = br#"{"x": {"entry": [{"a": 1, "a": 1}]}}"#;
        assert_eq!(
            from_slice_locating_entry(nested).unwrap_err().1,
            None,
            "only the top-level entry array counts"
        );
        let value = from_slice_locating_entry(br#"{"entry": [{"a": 1}]}"#).unwrap();
        assert_eq!(value["entry"][0]["a"], 1);
    }
}
