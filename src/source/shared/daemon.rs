//! Calls to a daemon's API (dockerd's Engine API, containerd's gRPC) from the
//! synchronous core: each write is one short call, run on a runtime of its own that
//! lives for that call (a daemon store is written rarely; a runtime kept per store
//! would hold threads for nothing).

use std::future::Future;

use crate::source::StoreError;

/// Runs `call` to completion on a single-threaded runtime, with I/O and timers.
pub fn block_on<F: Future>(call: F) -> Result<F::Output, StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::io("cannot start a runtime for the daemon's API", e))?;
    Ok(runtime.block_on(call))
}
