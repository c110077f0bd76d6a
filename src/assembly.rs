//! Assembly: turns a validated [`Config`] into running parts (store, platform sides, engine,
//! HTTP server) and stops them again.
//!
//! Each platform connects itself (`bitrix::connect`, `slack::connect`, `matrix::connect`) and
//! hands back a side: its adapter for the engine, its long-running intake tasks, and any HTTP
//! routes it serves. This module only composes them, in the one order that works: chat sides
//! first (Matrix resolves room aliases), then the router, then the feed side (it watches the
//! router's audiences), then the engine, the HTTP server and the configuration reloader.
//! Every side reads the router in force through [`Shared::routing`], so a reload reaches all
//! of them at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use livefeed_core::adapters::{BoxFuture, ChatAdapter, FeedAdapter};
use livefeed_core::engine::{Engine, EngineConfig};
use livefeed_core::health::Health;
use livefeed_core::journal::Journal;
use livefeed_core::metrics::Metrics;
use livefeed_core::model::Platform;
use livefeed_core::route::Routing;
use livefeed_core::store::{Store, StoreError, StoreOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::http::{self, HttpState};
use crate::mappings::{self, Resolved};
use crate::reload::{Parts, Reloader, Resolve, Retune};
use crate::upstream::Backoff;
use crate::{bitrix, matrix, slack};

/// Knobs that are not in `bridge.yaml` (tests shorten the engine's and the clients' retries).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The engine's lanes and retry delays.
    pub engine: EngineConfig,
    /// Override of the Bitrix24 client's retries.
    pub bitrix_backoff: Option<Backoff>,
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store cannot be opened (locked by another process, unreadable, newer schema).
    #[error("cannot open the store at {path}: {source}")]
    Store {
        /// The store directory.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// A platform could not be connected.
    #[error("{platform}: {source}")]
    Connect {
        /// Which one.
        platform: Platform,
        /// Why (the platform's own error type, secrets scrubbed).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `http.listen` cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl StartError {
    fn connect(
        platform: Platform,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Self {
        move |source| StartError::Connect { platform, source }
    }
}

/// What the assembly hands every side when it connects it.
#[derive(Clone)]
pub struct Shared {
    /// The store (sides keep cursors, sessions and caches in it).
    pub store: Store,
    /// The store's directory (Matrix keeps its device keys under it).
    pub store_dir: PathBuf,
    /// Where intakes accept events.
    pub journal: Journal,
    /// The bridge's metrics.
    pub metrics: Arc<Metrics>,
    /// What `/readyz` shows.
    pub health: Arc<Health>,
    /// Fires when the bridge stops; intake tasks return then.
    pub cancel: CancellationToken,
    /// The mappings in force (empty until the chat sides are connected).
    pub routing: Routing,
}

/// Long-running work of a side, returning when [`Shared::cancel`] fires.
pub type Task = BoxFuture<'static, ()>;

/// A connected chat platform.
pub struct ChatSide {
    /// Root messages for the engine.
    pub adapter: Arc<dyn ChatAdapter>,
    /// Each configured room as the platform names it (Matrix resolves aliases to room ids).
    pub rooms: BTreeMap<String, String>,
    /// Its intake.
    pub tasks: Vec<Task>,
    /// Routes it serves on `http.listen` (Slack's Events API).
    pub routes: Option<axum::Router>,
    /// How to name a room mapped by a reload (Matrix aliases); `None`: as written.
    pub resolve: Option<Resolve>,
    /// Applies a reloaded configuration's rates and intervals.
    pub retune: Option<Retune>,
}

/// The connected feed.
pub struct FeedSide {
    /// Comments for the engine.
    pub adapter: Arc<dyn FeedAdapter>,
    /// Its intake.
    pub tasks: Vec<Task>,
    /// Routes it serves on `http.listen`.
    pub routes: Option<axum::Router>,
    /// Applies a reloaded configuration's rates and intervals.
    pub retune: Option<Retune>,
}

/// A running bridge. Dropping it without [`Running::shutdown`] aborts every task.
pub struct Running {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    /// Where the HTTP server listens (the OS picked the port if the config said 0).
    pub http_addr: SocketAddr,
    /// The bridge's metrics.
    pub metrics: Arc<Metrics>,
    /// What `/readyz` shows.
    pub health: Arc<Health>,
    /// The store.
    pub store: Store,
    /// The journal.
    pub journal: Journal,
}

/// Start everything `config` names.
pub async fn start(config: &Config, options: Options) -> Result<Running, StartError> {
    let opening = std::time::Instant::now();
    let store = open_store(
        &config.store.path,
        StoreOptions {
            cache_bytes: config.store.cache_bytes,
        },
    )
    .await?;
    info!(
        path = %config.store.path.display(),
        took_ms = opening.elapsed().as_millis() as u64,
        pending = store.journal_depth(),
        "store opened"
    );
    let metrics = Arc::new(Metrics::new());
    let shared = Shared {
        journal: Journal::new(store.clone(), metrics.clone(), bitrix::PLATFORM),
        store,
        store_dir: config.store.path.clone(),
        metrics,
        health: Arc::new(Health::default()),
        cancel: CancellationToken::new(),
        routing: Routing::default(),
    };

    let chats = connect_chats(config, &shared).await?;
    let resolved: Resolved = chats
        .iter()
        .map(|c| (c.adapter.platform(), c.rooms.clone()))
        .collect();
    let router = mappings::router_from(config, &resolved, &shared.store).map_err(|source| {
        StartError::Store {
            path: config.store.path.display().to_string(),
            source,
        }
    })?;
    shared.routing.replace(router);
    let feed = bitrix::connect(
        &config.bitrix24,
        &config.important,
        options.bitrix_backoff,
        &shared,
    )
    .map_err(|e| StartError::connect(bitrix::PLATFORM)(e.into()))?;

    let mut tasks = JoinSet::new();
    let mut routes = Vec::new();
    let mut adapters = Vec::new();
    let mut resolvers = BTreeMap::new();
    let mut retunes = Vec::new();
    for side in chats {
        if let Some(resolve) = side.resolve {
            resolvers.insert(side.adapter.platform(), resolve);
        }
        retunes.extend(side.retune);
        adapters.push(side.adapter);
        for task in side.tasks {
            tasks.spawn(task);
        }
        routes.extend(side.routes);
    }
    for task in feed.tasks {
        tasks.spawn(task);
    }
    routes.extend(feed.routes);
    retunes.extend(feed.retune);
    let reloader = Reloader::new(
        config,
        Parts {
            routing: shared.routing.clone(),
            resolved,
            resolvers,
            retunes,
            store: shared.store.clone(),
            health: shared.health.clone(),
            metrics: shared.metrics.clone(),
        },
    );
    tasks.spawn(reloader.run(shared.cancel.clone()));
    tasks.spawn(housekeeping(shared.store.clone(), shared.cancel.clone()));

    let engine = Engine::new(
        shared.journal.clone(),
        shared.routing.clone(),
        adapters,
        feed.adapter,
        shared.metrics.clone(),
        EngineConfig {
            pin_important: config.important.pin,
            max_file_bytes: config.files.max_bytes,
            people: config.people.clone(),
            ..options.engine.clone()
        },
        shared.cancel.clone(),
    )
    .reporting_to(shared.health.clone());
    tasks.spawn(async move {
        if let Err(e) = engine.run().await {
            warn!(error = %e, "engine stopped on a store error");
        }
    });

    let http_addr = serve_http(config, &shared, routes, &mut tasks).await?;
    info!(listen = %http_addr, "livefeed-bridge running");
    Ok(Running {
        cancel: shared.cancel,
        tasks,
        http_addr,
        metrics: shared.metrics,
        health: shared.health,
        store: shared.store,
        journal: shared.journal,
    })
}

/// Connect every configured chat platform: one line each.
async fn connect_chats(config: &Config, shared: &Shared) -> Result<Vec<ChatSide>, StartError> {
    let mut chats = Vec::new();
    if let Some(m) = &config.matrix {
        let side = matrix::connect(m, &config.rooms_on(&matrix::PLATFORM), shared).await;
        chats.push(side.map_err(|e| StartError::connect(matrix::PLATFORM)(e.into()))?);
    }
    if let Some(s) = &config.slack {
        let side = slack::connect(s, &config.rooms_on(&slack::PLATFORM), shared).await;
        chats.push(side.map_err(|e| StartError::connect(slack::PLATFORM)(e.into()))?);
    }
    Ok(chats)
}

/// Bind `http.listen` and serve the bridge's own routes plus the sides'.
async fn serve_http(
    config: &Config,
    shared: &Shared,
    routes: Vec<axum::Router>,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, StartError> {
    let addr = config.http.listen;
    let listen_error = |source| StartError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    let state = HttpState {
        metrics: shared.metrics.clone(),
        health: shared.health.clone(),
        store: shared.store.clone(),
        journal: shared.journal.clone(),
    };
    let app = http::router(state, routes, config.http.max_body_bytes);
    let stop = shared.cancel.clone();
    tasks.spawn(async move {
        // Peer addresses let the admin API answer loopback callers only.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok(bound)
}

/// Forget deduplication keys and reply tombstones older than a day, hourly.
async fn housekeeping(store: Store, cancel: CancellationToken) {
    const DAY_MS: i64 = 86_400_000;
    loop {
        match store.prune(DAY_MS) {
            Ok(n) if n > 0 => info!(removed = n, "pruned old deduplication records"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Open the store, waiting a little if a bridge just stopped in this process still holds it.
pub async fn open_store(
    path: &std::path::Path,
    options: StoreOptions,
) -> Result<Store, StartError> {
    Store::open_waiting_with(path, options, Duration::from_secs(5))
        .await
        .map_err(|source| StartError::Store {
            path: path.display().to_string(),
            source,
        })
}

impl Running {
    /// Stop intake, let in-flight work end (everything unfinished stays journaled), flush the
    /// store. Tasks still running after `grace` are aborted.
    pub async fn shutdown(mut self, grace: Duration) {
        self.cancel.cancel();
        let joined = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            warn!("some tasks did not stop in time; aborting them");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        if let Err(e) = self.store.sync().await {
            warn!(error = %e, "final store flush failed");
        }
        if let Err(e) = self.store.close_cleanly() {
            warn!(error = %e, "cannot mark the store closed");
        }
        info!("livefeed-bridge stopped");
    }

    /// Stop abruptly, as a crash would: no final flush, tasks aborted mid-flight.
    pub async fn abort(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// The token that stops the bridge.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}
