//! The LRU of config bytes, bounded in bytes by `-o cache_size=`. Keyed by (store,
//! location): the same config in two stores is two entries, as each store is read on
//! its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;
use serde::Serialize;

use crate::source::BlobLocation;

pub type CacheKey = (usize, BlobLocation);

pub struct ConfigCache {
    capacity: u64,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    too_big: AtomicU64,
}

/// What the cache did since the mount: `getfattr -n user.imagefs.stats` on the
/// mount's root shows it, so that a user can size `-o cache_size=`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CacheStats {
    pub capacity: u64,
    pub used: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Reads of configs too big to keep: served by range from the store.
    pub too_big: u64,
}

struct Inner {
    lru: LruCache<CacheKey, Arc<[u8]>>,
    bytes: u64,
}

pub const DEFAULT_CACHE_SIZE: u64 = 32 << 20;

impl ConfigCache {
    pub fn new(capacity: u64) -> ConfigCache {
        ConfigCache {
            capacity,
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            too_big: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<[u8]>> {
        let found = self.inner.lock().lru.get(key).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// A config too big to keep was read by range.
    pub fn note_too_big(&self) {
        self.too_big.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        let (used, entries) = {
            let inner = self.inner.lock();
            (inner.bytes, inner.lru.len() as u64)
        };
        CacheStats {
            capacity: self.capacity,
            used,
            entries,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            too_big: self.too_big.load(Ordering::Relaxed),
        }
    }

    /// Keeps `bytes` unless they alone exceed the capacity; evicts the least recently
    /// used entries to make room.
    pub fn insert(&self, key: CacheKey, bytes: Arc<[u8]>) {
        let len = bytes.len() as u64;
        if len > self.capacity {
            self.note_too_big();
            return;
        }
        let mut inner = self.inner.lock();
        if let Some(old) = inner.lru.put(key, bytes) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len;
        while inner.bytes > self.capacity {
            match inner.lru.pop_lru() {
                Some((_, v)) => {
                    inner.bytes -= v.len() as u64;
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            }
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Drops a store's entries, when the store was reloaded.
    pub fn forget_store(&self, store: usize) {
        let mut inner = self.inner.lock();
        let keys: Vec<CacheKey> = inner
            .lru
            .iter()
            .filter(|((s, _), _)| *s == store)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(v) = inner.lru.pop(&k) {
                inner.bytes -= v.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> CacheKey {
        (
            0,
            BlobLocation::Member {
                archive: 0,
                offset: n,
                size: 10,
                pin: Default::default(),
            },
        )
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let c = ConfigCache::new(25);
        for n in 0..5 {
            c.insert(key(n), Arc::from(vec![0u8; 10]));
        }
        assert!(c.used() <= 25);
        assert!(c.get(&key(4)).is_some());
        assert!(c.get(&key(0)).is_none());
        // larger than the whole cache: not kept
        c.insert(key(9), Arc::from(vec![0u8; 26]));
        assert!(c.get(&key(9)).is_none());
        let st = c.stats();
        assert_eq!((st.hits, st.misses, st.evictions, st.entries), (1, 2, 3, 2));
        c.forget_store(0);
        assert_eq!(c.used(), 0);
    }
}
