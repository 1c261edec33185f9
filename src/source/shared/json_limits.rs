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

/// Hands each of a list's first `max` elements to `each` as it is parsed; the value
/// is how many elements the list had.
struct ListSeed<'f, T, F> {
    max: usize,
    each: &'f mut F,
    _t: PhantomData<T>,
}

impl<'f, T, F> ListSeed<'f, T, F> {
    fn new(max: usize, each: &'f mut F) -> ListSeed<'f, T, F> {
        ListSeed {
            max,
            each,
            _t: PhantomData,
        }
    }
}

impl<'de, T: DeserializeOwned, F: FnMut(T)> DeserializeSeed<'de> for ListSeed<'_, T, F> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: DeserializeOwned, F: FnMut(T)> Visitor<'de> for ListSeed<'_, T, F> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut total = 0usize;
        loop {
            if total < self.max {
                match seq.next_element::<T>()? {
                    Some(x) => (self.each)(x),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            total += 1;
        }
        Ok(total)
    }
}

/// A list read from `de`, at most `max` elements items.
fn collect<'de, T: DeserializeOwned, D: serde::Deserializer<'de>>(
    de: D,
    max: usize,
) -> Result<Limited<T>, D::Error> {
    let mut items = Vec::new();
    let total = ListSeed::new(max, &mut |x| items.push(x)).deserialize(de)?;
    Ok(Limited { items, total })
}

/// A top-level JSON list, at most `max` elements items.
pub fn list<T: DeserializeOwned>(bytes: &[u8], max: usize) -> serde_json::Result<Limited<T>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let out = collect(&mut de, max)?;
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
    let out = collect(&mut de, max)?;
    de.end()?;
    Ok(out)
}

struct FieldSeed<'f, T, F> {
    field: &'f str,
    list: ListSeed<'f, T, F>,
}

impl<'de, T: DeserializeOwned, F: FnMut(T)> Visitor<'de> for FieldSeed<'_, T, F> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut list = Some(self.list);
        // the first list under the field is read; a repeated field is skipped
        while let Some(key) = map.next_key::<String>()? {
            match list.take_if(|_| key == self.field) {
                Some(seed) => found = Some(map.next_value_seed(seed)?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// The list under `field` of a top-level JSON object, its first `max` elements
/// handed to `each` as they are parsed (an index of 280,000 entries is never held
/// as descriptors); how many elements it had, `None` when it has no such field.
/// The other fields are skipped.
pub fn field_each<T: DeserializeOwned>(
    bytes: &[u8],
    field: &str,
    max: usize,
    mut each: impl FnMut(T),
) -> serde_json::Result<Option<usize>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let out = serde::Deserializer::deserialize_map(
        &mut de,
        FieldSeed {
            field,
            list: ListSeed::new(max, &mut each),
        },
    )?;
    de.end()?;
    Ok(out)
}

/// [`field_each`], the elements collected.
pub fn field_list<T: DeserializeOwned>(
    bytes: &[u8],
    field: &str,
    max: usize,
) -> serde_json::Result<Option<Limited<T>>> {
    let mut items = Vec::new();
    let total = field_each(bytes, field, max, |x| items.push(x))?;
    Ok(total.map(|total| Limited { items, total }))
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
        // each element handed over as parsed; the first list under a repeated field
        let mut seen = Vec::new();
        let total = field_each(
            br#"{"a":[9],"manifests":[1,2,3],"manifests":[4]}"#,
            "manifests",
            2,
            |x: u32| seen.push(x),
        )
        .unwrap();
        assert_eq!((seen, total), (vec![1, 2], Some(3)));
    }
}
