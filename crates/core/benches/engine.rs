//! Engine throughput with rate limits off: posts journaled by a feed intake and mirrored into
//! rooms through in-memory chat adapters, with real sled durability (intent flushes, group
//! commit). Prints posts/s. Run: `cargo bench -p livefeed-core --features testing --bench engine
//! -- [POSTS] [ROOMS]` (default 4000 posts into 4 rooms).

use std::sync::Arc;
use std::time::{Duration, Instant};

use livefeed_core::adapters::ChatAdapter;
use livefeed_core::engine::{Engine, EngineConfig};
use livefeed_core::journal::{Batch, Journal};
use livefeed_core::metrics::Metrics;
use livefeed_core::model::{Audience, FeedEvent, FeedPost, Inbound, Room};
use livefeed_core::route::{Route, Router};
use livefeed_core::store::Store;
use livefeed_core::testing::{CHAT, FEED, MemoryChat, MemoryFeed, fixtures};
use tokio_util::sync::CancellationToken;

fn post(id: u64) -> FeedPost {
    fixtures::post_for(
        id,
        &[Audience::All],
        "A realistic paragraph of feed text, long enough to be representative of what people write.",
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    // `cargo bench` passes `--bench`; under `cargo test` this runs as a quick smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let posts = args
        .first()
        .copied()
        .unwrap_or(if benching { 4000 } else { 100 });
    let rooms = args.get(1).copied().unwrap_or(if benching { 4 } else { 2 });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let journal = Journal::new(store, metrics.clone(), FEED);
    let router = Router::new(vec![Route {
        name: "all".into(),
        audiences: vec![Audience::All],
        rooms: (0..rooms)
            .map(|r| Room::new(CHAT, format!("C{r:08}")))
            .collect(),
        replies: true,
        mirror_replies: true,
        posts_from_chat: false,
        since: 0,
    }]);
    let chat = MemoryChat::without_texts();
    let cancel = CancellationToken::new();
    let engine = Engine::new(
        journal.clone(),
        router,
        vec![chat.clone() as Arc<dyn ChatAdapter>],
        MemoryFeed::new(),
        metrics,
        EngineConfig::default(),
        cancel.clone(),
    );
    let handle = tokio::spawn(engine.run());
    let start = Instant::now();
    // The poll intake accepts a cycle's changes as one batch; 50 is one feed page.
    for chunk in (0..posts).collect::<Vec<_>>().chunks(50) {
        let events = chunk
            .iter()
            .map(|id| (Inbound::Feed(FeedEvent::PostCreated(post(*id + 1))), None))
            .collect();
        journal
            .accept(Batch {
                events,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let accepted = start.elapsed();
    assert!(journal.wait_drained(Duration::from_secs(600)).await);
    let total = start.elapsed();
    let sent = chat.state().sent as u64;
    assert_eq!(sent, posts * rooms);
    println!(
        "engine: {posts} posts × {rooms} rooms = {sent} root messages; accepted in {:.2} s, applied in {:.2} s → {:.0} posts/s ({:.0} messages/s)",
        accepted.as_secs_f64(),
        total.as_secs_f64(),
        posts as f64 / total.as_secs_f64(),
        sent as f64 / total.as_secs_f64()
    );
    cancel.cancel();
    handle.await.unwrap().unwrap();
}
