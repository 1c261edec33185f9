//! What tells a containerd store that its images changed. meta.db's txid moves at
//! every bbolt commit, and a busy node commits many times a second for leases,
//! containers, snapshots and content ingests, none of which changes an image: read
//! as the change token, each of those commits cost a rescan of the namespace.
//!
//! While containerd answers on its socket, the token is instead a count of the
//! namespace's image events (`/images/create`, `/images/update`, `/images/delete`),
//! to which a thread stays subscribed: an unrelated commit costs nothing, not even a
//! read. When the subscription cannot be made or breaks, the token falls back to the
//! txid (which moves only with commits, so a containerd that is down costs nothing
//! either), and the thread subscribes again. The switch itself changes the token,
//! so that what happened while no subscription was live is rescanned once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::debug;

use super::containerd_events_api::events_client::EventsClient;
use super::containerd_events_api::{PublishRequest, SubscribeRequest};

/// How long the thread waits before subscribing again after a failure.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How often a thread waiting on its stream checks that its store is still there.
const ALIVE_CHECK: Duration = Duration::from_secs(5);

/// The count of image events seen, and whether the subscription is live.
#[derive(Default)]
pub struct ImageEvents {
    live: AtomicBool,
    seen: AtomicU64,
    started: AtomicBool,
}

impl ImageEvents {
    /// The token while the subscription is live: `None` when it is not (use the
    /// txid then).
    pub fn token(&self) -> Option<String> {
        self.live
            .load(Ordering::Acquire)
            .then(|| format!("events:{}", self.seen.load(Ordering::Acquire)))
    }

    /// Starts the thread once, for `namespace` on `socket`; it ends with the store.
    pub fn start(self: &Arc<Self>, socket: PathBuf, namespace: String) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = crate::threads::spawn_background("containerd-events", move || {
            watch(weak, socket, namespace)
        });
        if let Err(e) = spawned {
            debug!("no thread for containerd's events ({e}): meta.db's txid is the token");
        }
    }
}

fn watch(events: Weak<ImageEvents>, socket: PathBuf, namespace: String) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        debug!("no runtime for containerd's events: meta.db's txid is the token");
        return;
    };
    while events.strong_count() > 0 {
        let why = runtime.block_on(subscribe(&events, &socket, &namespace));
        if let Some(e) = events.upgrade() {
            e.live.store(false, Ordering::Release);
        }
        debug!(socket = %socket.display(), "containerd's events: {why}: meta.db's txid is the token until it answers again");
        std::thread::sleep(RESUBSCRIBE);
    }
}

/// Our own event's topic: it coming back on the stream proves the subscription is
/// registered (gRPC sends a stream's headers only with its first message, so the
/// Subscribe call itself says nothing until an event flows).
const SYNC_TOPIC: &str = "/imagefs/subscribed";
/// How often the sync event is published until it comes back.
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// Subscribes and counts the namespace's image events until the stream ends or the
/// store is gone; why it ended.
async fn subscribe(
    events: &Weak<ImageEvents>,
    socket: &std::path::Path,
    namespace: &str,
) -> String {
    let channel = match super::containerd::connect(socket).await {
        Ok(c) => c,
        Err(e) => return format!("cannot connect: {e}"),
    };
    let mut client = EventsClient::new(channel);
    let mut publisher = client.clone();
    // containerd's filter language: quoted values, regular expressions with ~=
    let filter = format!(
        "namespace=={},topic~=\"^/(images|imagefs)/\"",
        serde_json::Value::String(namespace.to_string())
    );
    let subscribing = client.subscribe(SubscribeRequest {
        filters: vec![filter],
    });
    tokio::pin!(subscribing);
    // publish our event until the stream opens with it (or any event: either
    // proves the subscription is registered)
    let opened = loop {
        tokio::select! {
            r = &mut subscribing => break r,
            _ = tokio::time::sleep(SYNC_EVERY) => {
                let sync = PublishRequest {
                    topic: SYNC_TOPIC.into(),
                    event: Some(prost_types::Any {
                        type_url: "type.googleapis.com/google.protobuf.Empty".into(),
                        value: Vec::new(),
                    }),
                };
                if let Err(e) = publisher
                    .publish(super::containerd::request(sync, namespace))
                    .await
                {
                    return format!("cannot publish its sync event: {}", e.message());
                }
            }
        }
        if events.strong_count() == 0 {
            return "the store is gone".into();
        }
    };
    let mut stream = match opened {
        Ok(s) => s.into_inner(),
        Err(e) => return format!("subscribe refused: {}", e.message()),
    };
    let mut live = false;
    loop {
        let next = tokio::time::timeout(ALIVE_CHECK, stream.message()).await;
        let Some(e) = events.upgrade() else {
            return "the store is gone".into();
        };
        match next {
            Err(_) => {} // no event: check the store is still there
            Ok(Ok(Some(envelope))) => {
                if !live {
                    // registered: what changed before is read by one rescan
                    live = true;
                    e.seen.fetch_add(1, Ordering::AcqRel);
                    e.live.store(true, Ordering::Release);
                    debug!(socket = %socket.display(), "following containerd's image events");
                }
                if envelope.namespace == namespace && envelope.topic.starts_with("/images/") {
                    debug!(topic = %envelope.topic, "containerd image event");
                    e.seen.fetch_add(1, Ordering::AcqRel);
                }
            }
            Ok(Ok(None)) => return "the stream ended".into(),
            Ok(Err(status)) => return format!("the stream failed: {}", status.message()),
        }
    }
}
