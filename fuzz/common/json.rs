//! An oracle for the strict JSON the library parses: whether a JSON text has a repeated key in
//! any object. Written apart from `mig_policy::json` (keys collected per object into a set), so the
//! targets check the library rather than restate it.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Whether `bytes` is JSON with a repeated key somewhere (`None` if it is not JSON at all).
pub fn has_repeated_key(bytes: &[u8]) -> Option<bool> {
    serde_json::from_slice::<Node>(bytes).ok().map(|node| node.0)
}

/// True when the value, or anything inside it, repeats a key.
struct Node(bool);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node(false))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node(false))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node(false))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node(false))
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node(false))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node(false))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Node, A::Error> {
        let mut repeated = false;
        while let Some(Node(inner)) = access.next_element()? {
            repeated |= inner;
        }
        Ok(Node(repeated))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Node, A::Error> {
        let mut keys = HashSet::new();
        let mut repeated = false;
        while let Some(key) = access.next_key::<String>()? {
            repeated |= !keys.insert(key);
            let Node(inner) = access.next_value()?;
            repeated |= inner;
        }
        Ok(Node(repeated))
    }
}
