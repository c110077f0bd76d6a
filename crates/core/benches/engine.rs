//! Engine throughput with rate limits off: posts journaled by a feed intake and mirrored into
//! rooms through no-op chat adapters, with real sled durability (intent flushes, group
//! commit). Prints posts/s. Run: `cargo bench --bench engine -- [POSTS] [ROOMS]`
//! (default 4000 posts into 4 rooms).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use livefeed_core::adapters::{BoxFuture, ChatAdapter, ChatPost, FeedAdapter, LayoutOptions};
use livefeed_core::engine::{Engine, EngineConfig};
use livefeed_core::journal::{Batch, Journal};
use livefeed_core::metrics::Metrics;
use livefeed_core::model::{
    Audience, CommentId, Failure, FeedEvent, FeedPost, Inbound, Person, Platform, PostId, Room,
};
use livefeed_core::richtext::Doc;
use livefeed_core::route::{Route, Router};
use livefeed_core::store::Store;
use tokio_util::sync::CancellationToken;

struct NullChat(AtomicU64);

impl ChatAdapter for NullChat {
    fn platform(&self) -> Platform {
        Platform::Slack
    }
    fn layout(&self) -> LayoutOptions {
        LayoutOptions {
            author_in_body: false,
            max_body_chars: 3500,
        }
    }
    fn post<'a>(&'a self, _: &'a str, _: &'a ChatPost) -> BoxFuture<'a, Result<String, Failure>> {
        Box::pin(async move { Ok(self.0.fetch_add(1, Ordering::Relaxed).to_string()) })
    }
    fn find_post<'a>(
        &'a self,
        _: &'a str,
        _: PostId,
        _: i64,
    ) -> BoxFuture<'a, Result<Option<String>, Failure>> {
        Box::pin(async { Ok(None) })
    }
    fn edit<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a ChatPost,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async { Ok(()) })
    }
    fn delete<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async { Ok(()) })
    }
}

struct NullFeed;

impl FeedAdapter for NullFeed {
    fn add_comment<'a>(
        &'a self,
        _: PostId,
        _: &'a Doc,
    ) -> BoxFuture<'a, Result<CommentId, Failure>> {
        Box::pin(async { Ok(CommentId(1)) })
    }
    fn find_comment<'a>(
        &'a self,
        _: PostId,
        _: &'a Doc,
        _: i64,
    ) -> BoxFuture<'a, Result<Option<CommentId>, Failure>> {
        Box::pin(async { Ok(None) })
    }
    fn delete_comment<'a>(&'a self, _: CommentId) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async { Ok(()) })
    }
}

fn post(id: u64) -> FeedPost {
    FeedPost {
        id: PostId(id),
        author: Person {
            id: "5".into(),
            name: "Ivan Petrov".into(),
            avatar_url: None,
        },
        title: Some(format!("Post {id}")),
        body: Doc::plain(
            "A realistic paragraph of feed text, long enough to be representative of what people write.",
        ),
        important: false,
        audiences: [Audience::All].into_iter().collect(),
        url: format!("https://acme.bitrix24.com/company/personal/user/5/blog/{id}/"),
        published_at: 0,
        num_comments: 0,
    }
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
    let journal = Journal::new(store, metrics.clone());
    let router = Router::new(vec![Route {
        name: "all".into(),
        audiences: vec![Audience::All],
        rooms: (0..rooms)
            .map(|r| Room::new(Platform::Slack, format!("C{r:08}")))
            .collect(),
        replies: true,
    }]);
    let chat = Arc::new(NullChat(AtomicU64::new(0)));
    let cancel = CancellationToken::new();
    let engine = Engine::new(
        journal.clone(),
        router,
        vec![chat.clone() as Arc<dyn ChatAdapter>],
        Arc::new(NullFeed),
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
    let sent = chat.0.load(Ordering::Relaxed);
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
