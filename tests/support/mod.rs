//! The end-to-end world: a fake Bitrix24 portal, a fake Slack workspace, and the real bridge
//! (in-process) configured against them. Every wait is on a condition, never a fixed sleep.

#![allow(dead_code)]

pub mod matrix;
pub mod workload;

use std::time::Duration;

use ::matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};

use livefeed_bridge::assembly::{self, Options, Running};
use livefeed_bridge::config::Config;
use livefeed_bridge::upstream::Backoff;
use livefeed_core::engine::EngineConfig;
use livefeed_sandbox::bitrix::{self as b24, FakePortal, PortalConfig};
use livefeed_sandbox::slack::{self as sl, FakeSlack, MessageView, WorkspaceConfig};

pub const WAIT: Duration = Duration::from_secs(15);

pub struct World {
    pub portal: FakePortal,
    pub slack: FakeSlack,
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    /// Bitrix24 users.
    pub ivan: u64,
    pub olga: u64,
    /// A workgroup the webhook user belongs to, and one it does not.
    pub group: u64,
    /// Slack.
    pub anna: String,
    pub news: String,
    pub dev: String,
    pub events_api: bool,
    /// The Matrix half, when the test has a homeserver.
    pub matrix: Option<MatrixPart>,
    pub slack_mapped: bool,
    /// `bitrix24.intake`.
    pub bitrix_intake: &'static str,
    /// The app's first refresh token (event modes).
    pub refresh_token: String,
    /// `http.listen` port chosen up front in push mode: the handler URL must name it.
    pub push_port: Option<u16>,
    /// More `mappings:` entries (YAML, indented as list items) for the next start.
    pub extra_mappings: String,
    /// More `matrix:` settings (YAML, indented two spaces) for the next start.
    pub matrix_extra: String,
    /// More top-level `bridge.yaml` sections (YAML, unindented) for the next start.
    pub extra_config: String,
    /// The developers mapping publishes its rooms' top-level messages to the feed.
    pub dev_posts_from_chat: bool,
}

pub struct MatrixPart {
    pub hs: matrix::Homeserver,
    pub bot: OwnedUserId,
    pub bot_password: String,
    pub alice: matrix::Person,
    pub news_room: OwnedRoomId,
    pub dev_room: OwnedRoomId,
}

#[derive(Clone, Copy)]
pub struct Setup {
    /// Deliver Slack events over signed HTTP instead of Socket Mode.
    pub events_api: bool,
    /// Keep the portal's leaky bucket and Slack's per-channel pacing on.
    pub real_limits: bool,
    /// Map the Slack channels.
    pub slack: bool,
    /// With Matrix: whether the mapped rooms are encrypted.
    pub encrypted: bool,
    /// How long the fake Slack keeps an event nobody acknowledges before it gives it up.
    pub slack_retention: Duration,
    /// `bitrix24.intake`: `poll`, or `offline`/`push` through the portal's OAuth app (the
    /// safety-net poll then runs once an hour, so events alone must do the work).
    pub bitrix_intake: &'static str,
    /// The webhook's user is not a portal administrator.
    pub non_admin_webhook: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            events_api: false,
            real_limits: false,
            slack: true,
            encrypted: false,
            slack_retention: Duration::from_secs(60),
            bitrix_intake: "poll",
            non_admin_webhook: false,
        }
    }
}

pub const IVAN_PHOTO: &str = "https://b24-sandbox.bitrix24.com/upload/ivan.png";

impl World {
    /// A world with Matrix rooms (created by Alice, who invites the bot) next to the fakes.
    pub async fn with_matrix(setup: Setup, hs: matrix::Homeserver) -> World {
        let mut w = World::new(setup).await;
        let (bot, bot_password) = hs.user("feedbot", "Feed Bot").await;
        let alice = matrix::Person::new(&hs, "Alice Liddell").await;
        let news_room = alice
            .create_room("company news", &[&bot], setup.encrypted)
            .await;
        let dev_room = alice
            .create_room("developers", &[&bot], setup.encrypted)
            .await;
        w.matrix = Some(MatrixPart {
            hs,
            bot,
            bot_password,
            alice,
            news_room,
            dev_room,
        });
        w
    }

    pub fn m(&self) -> &MatrixPart {
        self.matrix.as_ref().expect("a Matrix world")
    }

    pub async fn new(setup: Setup) -> World {
        let portal = FakePortal::start(PortalConfig {
            rate_limit: if setup.real_limits {
                PortalConfig::default().rate_limit
            } else {
                None
            },
            webhook_user_admin: !setup.non_admin_webhook,
            ..PortalConfig::default()
        })
        .await
        .expect("fake portal starts");
        let ivan = portal.add_user(b24::NewUser {
            name: "Ivan".into(),
            last_name: "Petrov".into(),
            photo: Some(IVAN_PHOTO.into()),
            ..Default::default()
        });
        let olga = portal.add_user(b24::NewUser {
            name: "Olga".into(),
            last_name: "Kuznetsova".into(),
            ..Default::default()
        });
        let group = portal.add_group("Developers");
        portal.add_group_member(group, 1);
        portal.add_group_member(group, ivan);

        let slack = FakeSlack::start(WorkspaceConfig {
            post_rate: if setup.real_limits {
                WorkspaceConfig::default().post_rate
            } else {
                None
            },
            ack_timeout: Duration::from_millis(600),
            undelivered_retention: setup.slack_retention,
            http_retry_delays: vec![Duration::from_millis(200), Duration::from_millis(500)],
            ..WorkspaceConfig::default()
        })
        .await
        .expect("fake Slack starts");
        let anna = slack.add_user(sl::NewUser {
            display_name: "Anna Smirnova".into(),
            ..sl::NewUser::new("anna", "Anna Smirnova")
        });
        let news = slack.add_channel("company-news", false, true);
        let dev = slack.add_channel("dev", false, true);
        let refresh_token = if matches!(setup.bitrix_intake, "poll" | "push-webhook") {
            String::new()
        } else {
            portal.issue_refresh_token()
        };
        World {
            portal,
            slack,
            dir: tempfile::tempdir().expect("temp dir"),
            running: None,
            ivan,
            olga,
            group,
            anna,
            news,
            dev,
            events_api: setup.events_api,
            matrix: None,
            slack_mapped: setup.slack,
            bitrix_intake: setup.bitrix_intake,
            refresh_token,
            push_port: setup.bitrix_intake.starts_with("push").then(|| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
                l.local_addr().expect("bound").port()
            }),
            extra_mappings: String::new(),
            matrix_extra: String::new(),
            extra_config: String::new(),
            dev_posts_from_chat: false,
        }
    }

    /// The `bitrix24:` section: the webhook and a fast poll, or an app's grant and events.
    fn bitrix_section(&self) -> String {
        if self.bitrix_intake == "poll" {
            return format!(
                "bitrix24:\n  webhook_url: {}\n  poll: {{ interval: 40ms, reconcile_window: 7d, reconcile_interval: 250ms }}\n  rate_limit: {{ per_second: 0 }}\n",
                self.portal.webhook_url()
            );
        }
        if self.bitrix_intake == "push-webhook" {
            // An outgoing webhook pushes (the test plays it); the incoming webhook reads.
            return format!(
                "bitrix24:\n  webhook_url: {}\n  intake: push\n  push:\n    path: /bitrix24/events\n    application_token: {}\n  poll: {{ interval: 1h, reconcile_window: 7d, reconcile_interval: 1h }}\n  rate_limit: {{ per_second: 0 }}\n",
                self.portal.webhook_url(),
                b24::OAuthApp::default().application_token
            );
        }
        let app = b24::OAuthApp::default();
        let portal = self.portal.portal_url();
        let mut text = format!(
            "bitrix24:\n  intake: {intake}\n  oauth:\n    portal: {portal}\n    server: {portal}/\n    client_id: {id}\n    client_secret: {secret}\n    refresh_token: {rt}\n  offline:\n    interval: 50ms\n    idle_interval: 200ms\n  poll: {{ interval: 1h, reconcile_window: 7d, reconcile_interval: 1h }}\n  rate_limit: {{ per_second: 0 }}\n",
            intake = self.bitrix_intake,
            id = app.client_id,
            secret = app.client_secret,
            rt = self.refresh_token,
        );
        if let Some(port) = self.push_port {
            text.push_str(&format!(
                "  push:\n    path: /bitrix24/events\n    application_token: {}\n    handler_url: http://127.0.0.1:{port}/bitrix24/events\n",
                app.application_token
            ));
        }
        text
    }

    /// The bridge.yaml these tests run with: fast polling, both mappings, limits per setup.
    pub fn config_text(&self, listen: &str) -> String {
        let cfg = self.slack.config();
        let intake = if self.events_api {
            format!("signing_secret: {}", cfg.signing_secret)
        } else {
            format!("app_token: {}", cfg.app_token)
        };
        let mut text = self.bitrix_section();
        text.push_str(&format!(
            r#"slack:
  bot_token: {bot}
  {intake}
  api_base: {api}
  post_rate: {{ per_second: 0 }}
  catch_up_rate: {{ per_second: 0 }}
store: {{ path: {store} }}
http: {{ listen: {listen} }}
"#,
            bot = cfg.bot_token,
            api = self.slack.api_base(),
            store = self.dir.path().join("data").display(),
        ));
        if let Some(m) = &self.matrix {
            text.push_str(&format!(
                "matrix:\n  homeserver: {}\n  user_id: \"{}\"\n  password: {}\n  encryption: true\n  sync_timeout: 2s\n{}",
                m.hs.url, m.bot, m.bot_password, self.matrix_extra
            ));
        }
        let target = |slack: &str, room: Option<&OwnedRoomId>| {
            let mut t = String::new();
            if self.slack_mapped {
                t.push_str(&format!("    slack: {{ channel: {slack} }}\n"));
            }
            if let Some(r) = room {
                t.push_str(&format!("    matrix: {{ room: \"{r}\" }}\n"));
            }
            t
        };
        text.push_str("mappings:\n  - name: company-news\n    audience: [all]\n");
        text.push_str(&target(
            &self.news,
            self.matrix.as_ref().map(|m| &m.news_room),
        ));
        text.push_str(&format!(
            "  - name: developers\n    audience: [group:{}]\n    replies: true\n",
            self.group
        ));
        if self.dev_posts_from_chat {
            text.push_str("    posts_from_chat: true\n");
        }
        text.push_str(&target(
            &self.dev,
            self.matrix.as_ref().map(|m| &m.dev_room),
        ));
        text.push_str(&self.extra_mappings);
        text.push_str(&self.extra_config);
        text
    }

    pub fn config(&self, listen: &str) -> Config {
        Config::parse(&self.config_text(listen), "test.yaml", &|_| None)
            .expect("test config is valid")
    }

    /// Where [`World::start`] writes the config it runs with (the reloader watches it).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("bridge.yaml")
    }

    /// Write `text` as the running bridge's config file (atomically, as editors and
    /// configuration management do).
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.path().join("bridge.yaml.tmp");
        std::fs::write(&tmp, text).expect("config written");
        std::fs::rename(&tmp, self.config_path()).expect("config replaced");
    }

    pub async fn start(&mut self) {
        self.launch().await;
        self.wait_for_intake().await;
    }

    /// Start the bridge and wait only for its chat side: the feed intake may still be busy
    /// with its first poll.
    pub async fn launch(&mut self) {
        assert!(self.running.is_none(), "already running");
        let listen = match self.push_port {
            Some(port) => format!("127.0.0.1:{port}"),
            None => "127.0.0.1:0".into(),
        };
        self.write_config(&self.config_text(&listen));
        let config = Config::load(&self.config_path()).expect("test config is valid");
        let running = assembly::start(
            &config,
            Options {
                engine: EngineConfig {
                    feed_lanes: 4,
                    retry_base: Duration::from_millis(20),
                    retry_max: Duration::from_millis(300),
                    ..EngineConfig::default()
                },
                bitrix_backoff: Some(Backoff {
                    first: Duration::from_millis(20),
                    max: Duration::from_millis(200),
                    retries: 6,
                }),
            },
        )
        .await
        .expect("bridge starts");
        if let Some(m) = &self.matrix {
            let bot = m.bot.clone();
            for room in [&m.news_room, &m.dev_room] {
                m.alice
                    .wait(&format!("the bot joins {room}"), |p| p.joined(room, &bot))
                    .await;
            }
        }
        if self.events_api {
            self.slack
                .set_events_url(Some(format!("http://{}/slack/events", running.http_addr)));
        } else {
            let slack = self.slack.clone();
            assert!(
                slack.wait_until(WAIT, |s| s.socket_connections() > 0).await,
                "Socket Mode never connected"
            );
        }
        self.running = Some(running);
    }

    /// Wait until the feed intake has its baseline (and, for an app, its event bindings).
    pub async fn wait_for_intake(&mut self) {
        if self.bitrix_intake == "poll" {
            // The first poll sets the baseline: posts from then on are mirrored.
            self.polls(1).await;
        } else {
            // The first (safety-net) poll sets the baseline; an app binds the events.
            let reads =
                |p: &FakePortal| p.request_count("log.blogpost.get") + p.request_count("batch");
            let app = self.bitrix_intake != "push-webhook";
            let bound = |p: &FakePortal| !app || p.event_bindings().len() >= 3;
            assert!(
                self.portal
                    .wait_until(WAIT, |p| reads(p) >= 1 && bound(p))
                    .await,
                "no first poll or no event bindings"
            );
            let running = self.running.as_ref().expect("running");
            let started = tokio::time::Instant::now();
            while running
                .store
                .cursor::<serde_json::Value>("bitrix24/poll")
                .expect("store readable")
                .is_none()
            {
                assert!(
                    started.elapsed() < WAIT,
                    "the first poll never set the baseline"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    pub async fn stop(&mut self) {
        let running = self.running.take().expect("running");
        running.shutdown(Duration::from_secs(10)).await;
        if self.events_api {
            self.slack.set_events_url(None);
        }
    }

    /// Stop as a crash would: no graceful shutdown, no final flush.
    pub async fn crash(&mut self) {
        let running = self.running.take().expect("running");
        running.abort().await;
    }

    /// Wait until the bridge has read the feed `n` more times.
    pub async fn polls(&self, n: usize) {
        let reads = |p: &FakePortal| p.request_count("log.blogpost.get") + p.request_count("batch");
        let target = reads(&self.portal) + n;
        assert!(
            self.portal.wait_until(WAIT, |p| reads(p) >= target).await,
            "the bridge stopped polling"
        );
    }

    /// Wait until the intake has looked for news `n` more times: feed reads (poll), reads
    /// of the offline queue (offline), or, with pushes, until every push was answered.
    pub async fn intake_rounds(&self, n: usize) {
        match self.bitrix_intake {
            "offline" => {
                let target = self.portal.request_count("event.offline.get") + n;
                assert!(
                    self.portal
                        .wait_until(WAIT, |p| p.request_count("event.offline.get") >= target)
                        .await,
                    "the bridge stopped reading the offline queue"
                );
            }
            "push" | "push-webhook" => {
                assert!(
                    self.portal
                        .wait_until(WAIT, |p| p
                            .pushes()
                            .iter()
                            .all(|x| x.status.is_some() || x.error.is_some()))
                        .await,
                    "pushes unanswered"
                );
            }
            _ => self.polls(n).await,
        }
    }

    /// Wait until the bridge is idle: a few more intake rounds and nothing left to apply.
    pub async fn settle(&self) {
        self.intake_rounds(3).await;
        let journal = &self.running.as_ref().expect("running").journal;
        assert!(journal.wait_drained(WAIT).await, "journal did not drain");
    }

    /// Root messages the bridge posted in a channel (oldest first).
    pub fn roots(&self, channel: &str) -> Vec<MessageView> {
        self.slack
            .history(channel)
            .into_iter()
            .filter(|m| m.bot_id.as_deref() == Some(self.slack.config().bot_id.as_str()))
            .collect()
    }

    pub fn root_for(&self, channel: &str, post: u64) -> Option<MessageView> {
        self.roots(channel).into_iter().find(|m| {
            m.metadata
                .as_ref()
                .and_then(|md| md["event_payload"]["b24_post_id"].as_str())
                == Some(post.to_string().as_str())
        })
    }

    pub async fn wait_root(&self, channel: &str, post: u64) -> MessageView {
        let ch = channel.to_string();
        let bot = self.slack.config().bot_id.clone();
        let found = self
            .slack
            .wait_until(WAIT, |s| {
                s.history(&ch).iter().any(|m| {
                    m.bot_id.as_deref() == Some(bot.as_str())
                        && m.metadata
                            .as_ref()
                            .and_then(|md| md["event_payload"]["b24_post_id"].as_str())
                            == Some(post.to_string().as_str())
                })
            })
            .await;
        assert!(
            found,
            "post {post} never reached {channel}: {:?}",
            self.slack.history(channel)
        );
        self.root_for(channel, post).expect("just seen")
    }

    pub fn post_all(&self, title: &str, text: &str) -> u64 {
        self.portal.create_post(
            self.ivan,
            b24::NewPost {
                title: Some(title.into()),
                text: text.into(),
                dest: vec!["UA".into()],
                important: false,
                files: Vec::new(),
            },
        )
    }

    /// `GET path` on the running bridge's HTTP server: status and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.running.as_ref().expect("running").http_addr;
        let resp = reqwest::get(format!("http://{addr}{path}"))
            .await
            .expect("the bridge answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("a body"))
    }

    /// `/readyz`: status and JSON.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let (status, body) = self.http_get("/readyz").await;
        (
            status,
            serde_json::from_str(&body).expect("/readyz is JSON"),
        )
    }

    /// Poll `/readyz` until `pred` holds (or fail after [`WAIT`]).
    pub async fn wait_readyz(
        &self,
        what: &str,
        pred: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self.readyz().await;
            if pred(status, &body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: /readyz stayed {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn comments(&self, post: u64) -> Vec<String> {
        self.portal
            .comments(post)
            .into_iter()
            .map(|c| c.text)
            .collect()
    }

    pub async fn wait_comments(&self, post: u64, n: usize) -> Vec<String> {
        let ok = self
            .portal
            .wait_until(WAIT, |p| p.comments(post).len() == n)
            .await;
        assert!(
            ok,
            "post {post} never had {n} comment(s): {:?}",
            self.comments(post)
        );
        self.comments(post)
    }
}
