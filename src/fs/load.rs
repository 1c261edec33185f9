//! Reading stores into the mount: at mount (a catalog kept by an earlier mount, or a
//! scan) and at every reload, through one path; and keeping scanned catalogs for the
//! next mount.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tracing::{debug, info, warn};

use super::*;
use crate::catalog::Catalog;
use crate::kept::{Kept, KeptKind};
use crate::source::{Source, StoreError, StoreMeta};

/// What a kept catalog stands for: the store as named and where it is.
fn catalog_what(source: &dyn Source) -> String {
    format!(
        "{}\n{}",
        source.describe(),
        source
            .path()
            .map(crate::kept::canonical)
            .unwrap_or_default()
    )
}

/// The key a kept catalog must carry to stand for `source` now, read under `limits`
/// (a catalog cut short by a lower limit is not one for a higher); `None` when its
/// catalog is not kept. Taken before a scan: a change during it makes the key stale,
/// which costs the next mount a scan and never shows a wrong catalog.
pub(super) fn catalog_key(source: &dyn Source, options: &FsOptions) -> Option<String> {
    if !options.kept.is_on() {
        return None;
    }
    let content = source.content_key()?;
    Some(format!(
        "{}\n{}\n{:?}\n{}\n{}",
        env!("CARGO_PKG_VERSION"),
        source.describe(),
        options.limits,
        options.platform,
        content
    ))
}

/// The catalog kept for `source` under `key`, its locations made valid for this
/// opening of the store.
fn load_catalog(kept: &Kept, source: &dyn Source, key: &str) -> Option<Catalog> {
    let mut catalog: Catalog = kept.load(KeptKind::Catalog, &catalog_what(source), key)?;
    // decoding grows the list by doubling (its length is not trusted for a
    // reservation): up to half of it would be slack for the life of the mount
    catalog.images.shrink_to_fit();
    for image in &mut catalog.images {
        source.rebind(&mut image.config);
    }
    Some(catalog)
}

/// A store's catalog not yet kept for the next mount: which one (the store's
/// catalog generation) and the key it stands for.
pub(super) struct UnkeptCatalog {
    pub(super) store: usize,
    /// `None`: the key the store has when the catalog is kept, if its change token
    /// is still the catalog's then (a catalog changed by a write).
    pub(super) key: Option<String>,
    pub(super) generation: u64,
    /// When the catalog became the store's.
    pub(super) at: std::time::Instant,
}

impl UnkeptCatalog {
    /// A catalog changed by a write is kept once writes have settled; one read from
    /// the store (at mount, by a reload) at the watcher's next tick, off the request
    /// path, so that a short mount does not pay for it at unmount.
    fn due(&self, settled: std::time::Duration) -> bool {
        self.key.is_some() || self.at.elapsed() >= settled
    }
}

/// How long a catalog changed by writes must stay as it is before the watcher keeps
/// it: a burst of writes (a script of `ln`s) keeps one catalog, not one per write, and
/// a kept catalog is as big as the store. The catalog current at unmount is kept
/// anyway.
const KEEP_SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// One store, read.
struct Loaded {
    state: StoreState,
    /// The key to keep its catalog under, when it was scanned and is to be kept.
    unkept: Option<String>,
}

/// Reads store `i`: from the catalog an earlier mount kept, when `reuse` and its key
/// still holds, else by a scan. Mount and reload both come here.
fn load_store(
    i: usize,
    source: &dyn Source,
    cache: &ConfigCache,
    options: &FsOptions,
    reuse: bool,
    previous: Option<&Catalog>,
) -> Result<Loaded, StoreError> {
    let token = source.change_token().ok();
    // Taken before the scan: a change during it makes the key stale, which costs the
    // next mount a scan and never shows a wrong catalog.
    let key = catalog_key(source, options);
    let started = std::time::Instant::now();
    let meta = source.meta().unwrap_or(StoreMeta::NOT_LOCAL);
    let kept = key
        .as_ref()
        .filter(|_| reuse)
        .and_then(|key| load_catalog(&options.kept, source, key));
    if let Some(catalog) = kept {
        catalog.log_problems(&source.describe());
        info!(
            store = %source.describe(),
            images = catalog.images.len(),
            dangling = catalog.dangling.len(),
            load_ms = started.elapsed().as_secs_f64() * 1e3,
            "store read from the catalog kept by an earlier mount"
        );
        return Ok(Loaded {
            state: StoreState::new(Arc::new(catalog), meta, token),
            unkept: None,
        });
    }
    let inv = source.scan()?;
    let token = if source.token_from_scan() {
        source.change_token().ok()
    } else {
        token
    };
    let scanned = started.elapsed();
    let catalog = Arc::new(Catalog::build_after(
        i,
        source,
        inv,
        cache,
        &options.limits,
        previous,
    ));
    catalog.log_problems(&source.describe());
    info!(
        store = %source.describe(),
        images = catalog.images.len(),
        dangling = catalog.dangling.len(),
        scan_ms = scanned.as_secs_f64() * 1e3,
        catalog_ms = (started.elapsed() - scanned).as_secs_f64() * 1e3,
        "store read"
    );
    Ok(Loaded {
        unkept: key,
        state: StoreState::new(catalog, meta, token),
    })
}

impl ImageFs {
    /// Reads every store. Fails with the first store that cannot be read at all; a
    /// store's partial problems are logged and the rest of it shown.
    pub fn new(
        stores: Vec<Store>,
        cache: ConfigCache,
        options: FsOptions,
    ) -> Result<ImageFs, StoreError> {
        let mut states = Vec::with_capacity(stores.len());
        let mut unkept = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            let source = store.source.as_ref();
            if !options.read_only
                && let Some(writer) = source.writer()
                && let Err(e) = writer.recover()
            {
                warn!(store = %source.describe(), "cannot recover from an interrupted write: {e}");
            }
            let loaded = load_store(i, source, &cache, &options, true, None)?;
            states.push(loaded.state);
            unkept.extend(loaded.unkept.map(|key| UnkeptCatalog {
                store: i,
                key: Some(key),
                generation: 0,
                at: std::time::Instant::now(),
            }));
        }
        let mut state = State {
            stores: states,
            tree: Tree::default(),
            inodes: InodeTable::new(stores.len() == 1),
        };
        let started = std::time::Instant::now();
        state.rebuild(&stores);
        debug!(
            nodes = state.tree.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "tree built"
        );
        give_back_freed_memory();
        Ok(ImageFs {
            stores,
            state: RwLock::new(state),
            cache,
            options,
            counters: KernelCounters::default(),
            unkept: Mutex::new(unkept),
            keeping: Mutex::new(()),
            queued: Mutex::new(Vec::new()),
            queued_wake: parking_lot::Condvar::new(),
            repinned: Mutex::new(Default::default()),
        })
    }

    /// Keeps the stores' catalogs not kept yet (read at mount, by a reload, or
    /// changed by a write) for the next mount (see `crate::kept`). Called off the
    /// request path, once after unmount.
    pub fn keep_catalogs(&self) {
        self.keep_catalogs_settled_for(std::time::Duration::ZERO);
    }

    /// [`Self::keep_catalogs`] for those that have not changed for a while: the
    /// watcher's, at every tick.
    pub fn keep_settled_catalogs(&self) {
        self.keep_catalogs_settled_for(KEEP_SETTLED);
    }

    fn keep_catalogs_settled_for(&self, settled: std::time::Duration) {
        let kept = &self.options.kept;
        if !kept.is_on() {
            return;
        }
        // Held throughout, so that the call after unmount waits for one under way;
        // the queue itself only briefly, since writes add to it.
        let _one_keeper = self.keeping.lock();
        let due = {
            let mut pending = self.unkept.lock();
            let newest: std::collections::HashMap<usize, u64> =
                pending.iter().map(|u| (u.store, u.generation)).collect();
            // Only the store's current catalog: an older one queued is dropped, a
            // newer one waits until it has settled.
            pending.retain(|u| newest.get(&u.store) == Some(&u.generation));
            let (due, waiting): (Vec<_>, Vec<_>) = pending.drain(..).partition(|u| u.due(settled));
            *pending = waiting;
            due
        };
        for UnkeptCatalog {
            store,
            key,
            generation,
            ..
        } in due
        {
            let source = self.stores[store].source.as_ref();
            // A key worked out now stands for the catalog only if the store has not
            // moved since it: taken first, then the token checked, so that a change
            // in between is seen and the catalog not kept (the next reload queues
            // its own).
            let late = key.is_none();
            let key = match key {
                Some(key) => key,
                None => match catalog_key(source, &self.options) {
                    Some(key) => key,
                    None => continue,
                },
            };
            let token = late.then(|| source.change_token().ok());
            // Only the store's current catalog: a newer one is queued too.
            let current = {
                let state = self.state.read();
                let st = &state.stores[store];
                let unmoved = token.is_none_or(|t| t.is_some() && t == st.token);
                (st.generation == generation && unmoved).then(|| st.catalog.clone())
            };
            if let Some(catalog) = current {
                kept.store(
                    KeptKind::Catalog,
                    &catalog_what(source),
                    &key,
                    catalog.as_ref(),
                );
            }
        }
    }

    /// Rescans store `store` and rebuilds the tree; inode numbers are kept. Returns
    /// the tree as it was, for telling the kernel what changed.
    pub fn reload(&self, store: usize) -> Result<Tree, StoreError> {
        let started = std::time::Instant::now();
        let source = self.stores[store].source.as_ref();
        // configs are located again: what the cache holds of this store is stale
        self.cache.forget_store(store);
        self.repinned.lock().retain(|(s, _), _| *s != store);
        let previous = self.catalog(store);
        let loaded = load_store(
            store,
            source,
            &self.cache,
            &self.options,
            false,
            previous.as_deref(),
        )?;
        drop(previous);
        let mut state = self.state.write();
        let held = std::mem::take(&mut state.stores[store].held_dirs);
        let generation = state.stores[store].generation + 1;
        state.stores[store] = StoreState {
            held_dirs: held,
            generation,
            ..loaded.state
        };
        // Queued, not kept here: a reload may run inside a write request.
        self.unkept
            .lock()
            .extend(loaded.unkept.map(|key| UnkeptCatalog {
                store,
                key: Some(key),
                generation,
                at: std::time::Instant::now(),
            }));
        let old = state.rebuild(&self.stores);
        debug!(
            store = %source.describe(),
            reload_ms = started.elapsed().as_secs_f64() * 1e3,
            "reloaded"
        );
        Ok(old)
    }
}

/// Hands the heap's free pages back to the system after a scan. A scan's
/// temporaries (a store's whole images.json as JSON values, manifests, configs) are
/// freed in among the catalog's long-lived allocations, and glibc's allocator keeps
/// such pages: a 100,000-image mount stayed at its scan's peak RSS for its whole life.
pub(super) fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointer of
    // ours is passed or invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
}
