//! JSON lists read from store indexes with a bound on what is items: a store that lists
//! a million entries in a few MiB (each becoming a record, a tag and a tree node)
//! cannot make imagefs hold more than [`crate::limits::Limits::max_images`] of them.
//! Elements past the bound are parsed (the JSON must still be valid) and dropped.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What was items, and how many elements the list had.
pub struct Limited<T> {
    pub items: Vec<T>,
    pub total: usize,
}

impl<T> Limited<T> {
    pub fn truncated(&self) -> bool {
        self.total > self.items.len()
    }
}

struct ListSeed<T> {
    max: usize,
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for ListSeed<T> {
    type Value = Limited<T>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Limited<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for ListSeed<T> {
    type Value = Limited<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Limited<T>, A::Error> {
        let mut items = Vec::new();
        let mut total = 0usize;
        loop {
            if items.len() < self.max {
                match seq.next_element::<T>()? {
                    Some(x) => items.push(x),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            total += 1;
        }
        Ok(Limited { items, total })
    }
}

/// A top-level JSON list, at most `max` elements items.
pub fn list<T: DeserializeOwned>(bytes: &[u8], max: usize) -> serde_json::Result<Limited<T>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let out = ListSeed {
        max,
        _t: PhantomData,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// [`list`], parsed as it is read: a list of 100,000 records is never held as its
/// bytes (110 MB for a containers-storage images.json) beside what it becomes.
pub fn list_from_reader<T: DeserializeOwned>(
    reader: impl std::io::Read,
    max: usize,
) -> serde_json::Result<Limited<T>> {
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, reader));
    let out = ListSeed {
        max,
        _t: PhantomData,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

struct FieldSeed<'f, T> {
    field: &'f str,
    max: usize,
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> Visitor<'de> for FieldSeed<'_, T> {
    type Value = Option<Limited<T>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.field && found.is_none() {
                found = Some(map.next_value_seed(ListSeed {
                    max: self.max,
                    _t: PhantomData,
                })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The list under `field` of a top-level JSON object (`None` when it has none), at
/// most `max` elements items; the other fields are skipped.
pub fn field_list<T: DeserializeOwned>(
    bytes: &[u8],
    field: &str,
    max: usize,
) -> serde_json::Result<Option<Limited<T>>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let out = serde::Deserializer::deserialize_map(
        &mut de,
        FieldSeed {
            field,
            max,
            _t: PhantomData,
        },
    )?;
    de.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_keep_at_most_max_and_count_all() {
        let l: Limited<u32> = list(b"[1,2,3,4,5]", 3).unwrap();
        assert_eq!((l.items, l.total), (vec![1, 2, 3], 5));
        let l: Limited<u32> = list(b"[1,2]", 3).unwrap();
        assert!(!l.truncated());
        assert!(list::<u32>(b"[1,2,", 3).is_err());
        assert!(list::<u32>(b"[1,2] x", 3).is_err());
        let r: Limited<u32> = list_from_reader(&b"[1,2,3,4,5]"[..], 3).unwrap();
        assert_eq!((r.items, r.total), (vec![1, 2, 3], 5));
        assert!(list_from_reader::<u32>(&b"[1,2,"[..], 3).is_err());
        assert!(list_from_reader::<u32>(&b"[1,2] x"[..], 3).is_err());
        let f: Limited<String> = field_list(
            br#"{"schemaVersion":2,"manifests":["a","b","c"],"x":{"y":[1]}}"#,
            "manifests",
            2,
        )
        .unwrap()
        .unwrap();
        assert_eq!((f.items.len(), f.total), (2, 3));
        assert!(
            field_list::<String>(br#"{"x":1}"#, "manifests", 2)
                .unwrap()
                .is_none()
        );
    }
}
