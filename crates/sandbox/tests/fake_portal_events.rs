//! The fake portal's local OAuth app over real HTTP: the token endpoint, REST with access
//! tokens, `event.*`, the offline queue and online pushes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use livefeed_sandbox::bitrix::{FakePortal, NewPost, NewUser, OAuthApp, PortalConfig};
use serde_json::{Value, json};

const CLIENT_ID: &str = "local.6a1b2c3d4e5f60.12345678";
const WAIT: Duration = Duration::from_secs(5);

fn cfg() -> PortalConfig {
    PortalConfig {
        rate_limit: None,
        ..Default::default()
    }
}

async fn start_with(cfg: PortalConfig) -> FakePortal {
    FakePortal::start(cfg).await.expect("portal starts")
}

async fn start() -> FakePortal {
    start_with(cfg()).await
}

fn secret() -> String {
    OAuthApp::default().client_secret
}

struct Resp {
    status: u16,
    body: Value,
    raw: String,
}

async fn send(req: reqwest::RequestBuilder) -> Resp {
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let raw = resp.text().await.expect("body");
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Resp { status, body, raw }
}

/// `GET /oauth/token/` with these query pairs.
async fn token_endpoint(p: &FakePortal, pairs: &[(&str, &str)]) -> Resp {
    let url = format!("{}/oauth/token/", p.portal_url());
    send(reqwest::Client::new().get(url).query(pairs)).await
}

async fn refresh(p: &FakePortal, refresh_token: &str) -> Resp {
    token_endpoint(
        p,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", &secret()),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

/// A fresh grant exchanged for tokens: `(access_token, refresh_token)`.
async fn tokens(p: &FakePortal) -> (String, String) {
    let r = refresh(p, &p.issue_refresh_token()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    (
        r.body["access_token"].as_str().expect("access").to_owned(),
        r.body["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_owned(),
    )
}

/// JSON POST to `/rest/{method}` with the token in `auth`.
async fn oauth(p: &FakePortal, token: &str, method: &str, mut body: Value) -> Resp {
    body["auth"] = json!(token);
    let url = format!("{}/rest/{method}", p.portal_url());
    send(reqwest::Client::new().post(url).json(&body)).await
}

async fn ok(p: &FakePortal, token: &str, method: &str, body: Value) -> Value {
    let r = oauth(p, token, method, body).await;
    assert_eq!(r.status, 200, "{method}: {}", r.raw);
    r.body["result"].clone()
}

async fn webhook(p: &FakePortal, method: &str, body: Value) -> Resp {
    let url = format!("{}{method}", p.webhook_url());
    send(reqwest::Client::new().post(url).json(&body)).await
}

fn error_of(r: &Resp) -> (u16, Value) {
    (r.status, r.body.clone())
}

fn admin(name: &str) -> NewUser {
    NewUser {
        name: name.to_owned(),
        last_name: "Admin".to_owned(),
        admin: true,
        departments: vec![1],
        ..Default::default()
    }
}

fn ua_post(text: &str) -> NewPost {
    NewPost {
        text: text.to_owned(),
        ..Default::default()
    }
}

async fn bind_offline(p: &FakePortal, token: &str, events: &[&str]) {
    for event in events {
        let r = ok(
            p,
            token,
            "event.bind",
            json!({"event": event, "event_type": "offline"}),
        )
        .await;
        assert_eq!(r, json!(true));
    }
}

const ALL: [&str; 3] = [
    "ONLIVEFEEDPOSTADD",
    "ONLIVEFEEDPOSTUPDATE",
    "ONLIVEFEEDPOSTDELETE",
];

/// `(EVENT_NAME, POST_ID)` of returned offline events.
fn names(events: &Value) -> Vec<(String, u64)> {
    events
        .as_array()
        .expect("events list")
        .iter()
        .map(|e| {
            (
                e["EVENT_NAME"].as_str().expect("name").to_owned(),
                e["EVENT_DATA"]["FIELDS"]["POST_ID"]
                    .as_u64()
                    .expect("POST_ID is a number"),
            )
        })
        .collect()
}

fn owned(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(n, id)| ((*n).to_owned(), *id)).collect()
}

/// A tiny handler endpoint recording `(content type, body)` of each request.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    async fn start(status: StatusCode) -> Receiver {
        type Got = Arc<Mutex<Vec<(String, String)>>>;
        async fn hook(
            State((got, status)): State<(Got, StatusCode)>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = String::from_utf8_lossy(&body).into_owned();
            got.lock().expect("lock").push((ct, body));
            status
        }
        let got: Got = Arc::default();
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state((got.clone(), status));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            got,
        }
    }

    fn bodies(&self) -> Vec<(String, String)> {
        self.got.lock().expect("lock").clone()
    }
}

fn form(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(form: &'a [(String, String)], key: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {form:?}"))
}

// ---- OAuth server -----------------------------------------------------------------

#[tokio::test]
async fn refresh_grant_rotates_strictly() {
    let p = start().await;
    let grant = p.issue_refresh_token();
    let r = refresh(&p, &grant).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let b = &r.body;
    let keys: Vec<&str> = b
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "access_token",
            "client_endpoint",
            "domain",
            "expires",
            "expires_in",
            "member_id",
            "refresh_token",
            "scope",
            "server_endpoint",
            "status",
            "user_id"
        ]
    );
    let access = b["access_token"].as_str().expect("access");
    let rotated = b["refresh_token"].as_str().expect("refresh");
    assert_eq!(access.len(), 70);
    assert_ne!(rotated, grant);
    assert_eq!(b["expires_in"], json!(3600));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expires = b["expires"].as_u64().expect("expires is a number");
    assert!((now + 3595..=now + 3605).contains(&expires), "{expires}");
    let rest = format!("{}/rest/", p.portal_url());
    assert_eq!(b["client_endpoint"], json!(rest));
    assert_eq!(b["server_endpoint"], json!(rest));
    assert!(
        r.raw.contains("http:\\/\\/127.0.0.1"),
        "PHP escapes slashes"
    );
    assert_eq!(
        b["domain"],
        json!(p.portal_url().trim_start_matches("http://"))
    );
    assert_eq!(b["member_id"].as_str().map(str::len), Some(32));
    assert_eq!(b["scope"], json!("log,user,department,sonet_group,disk"));
    assert_eq!(b["status"], json!("L"));
    assert_eq!(b["user_id"], json!(1));

    // The used refresh token is dead at once; the new one works once too.
    let again = refresh(&p, &grant).await;
    assert_eq!(error_of(&again), (400, json!({"error": "invalid_grant"})));
    let next = refresh(&p, rotated).await;
    assert_eq!(next.status, 200);
    let reuse = refresh(&p, rotated).await;
    assert_eq!(reuse.status, 400);
    assert_eq!(p.oauth_refreshes(), 2);

    // The first access token stays valid until it expires.
    let profile = ok(&p, access, "profile", json!({})).await;
    assert_eq!(profile["ID"], json!("1"));
}

#[tokio::test]
async fn token_endpoint_errors() {
    let p = start().await;
    let grant = p.issue_refresh_token();
    let s = secret();
    let wrong_client = token_endpoint(
        &p,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "local.nope"),
            ("client_secret", &s),
            ("refresh_token", &grant),
        ],
    )
    .await;
    assert_eq!(
        error_of(&wrong_client),
        (200, json!({"error": "wrong_client"}))
    );
    let wrong_secret = token_endpoint(
        &p,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", "nope"),
            ("refresh_token", &grant),
        ],
    )
    .await;
    assert_eq!(
        error_of(&wrong_secret),
        (400, json!({"error": "invalid_client"}))
    );
    let missing = token_endpoint(
        &p,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", &s),
        ],
    )
    .await;
    assert_eq!(
        error_of(&missing),
        (
            400,
            json!({"error": "invalid_request", "error_description": "No \"refresh_token\" parameter found"})
        )
    );
    let no_grant_type =
        token_endpoint(&p, &[("client_id", CLIENT_ID), ("client_secret", &s)]).await;
    assert_eq!(no_grant_type.status, 400);
    assert_eq!(no_grant_type.body["error"], json!("invalid_request"));
    let unknown = refresh(&p, "0123456789abcdef").await;
    assert_eq!(error_of(&unknown), (400, json!({"error": "invalid_grant"})));
    // None of that used the grant up; a form POST works as well as GET.
    let url = format!("{}/oauth/token/", p.portal_url());
    let posted = send(reqwest::Client::new().post(&url).form(&[
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", s.as_str()),
        ("refresh_token", grant.as_str()),
    ]))
    .await;
    assert_eq!(posted.status, 200, "{}", posted.raw);
    // Refresh tokens live 180 days on the portal clock.
    let old = p.issue_refresh_token();
    p.set_clock_offset(180 * 86_400 + 1);
    assert_eq!(refresh(&p, &old).await.status, 400);
}

#[tokio::test]
async fn access_token_expiry_and_revocation() {
    let p = start().await;
    let (access, refresh_token) = tokens(&p).await;
    assert_eq!(oauth(&p, &access, "profile", json!({})).await.status, 200);
    p.expire_access_tokens();
    let expired = oauth(&p, &access, "profile", json!({})).await;
    assert_eq!(
        error_of(&expired),
        (
            401,
            json!({"error": "expired_token", "error_description": "The access token provided has expired"})
        )
    );
    let r = refresh(&p, &refresh_token).await;
    assert_eq!(r.status, 200);
    let fresh = r.body["access_token"].as_str().expect("access").to_owned();
    let rotated = r.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_eq!(oauth(&p, &fresh, "profile", json!({})).await.status, 200);
    // An hour later on the portal clock it has expired by itself.
    p.set_clock_offset(3600);
    let late = oauth(&p, &fresh, "profile", json!({})).await;
    assert_eq!(late.body["error"], json!("expired_token"));
    p.set_clock_offset(0);

    p.revoke_grants();
    let revoked = oauth(&p, &fresh, "profile", json!({})).await;
    assert_eq!(
        error_of(&revoked),
        (
            401,
            json!({"error": "invalid_token", "error_description": "Unable to get application by token"})
        )
    );
    assert_eq!(
        error_of(&refresh(&p, &rotated).await),
        (400, json!({"error": "invalid_grant"}))
    );
    let forged = oauth(&p, "not-a-token", "profile", json!({})).await;
    assert_eq!(forged.body["error"], json!("invalid_token"));
}

#[tokio::test]
async fn authorize_redirect_and_single_use_code() {
    let p = start().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = format!("{}/oauth/authorize/", p.portal_url());
    let resp = client
        .get(&url)
        .query(&[("client_id", CLIENT_ID), ("state", "s t8")])
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 302);
    let location = resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let (base, query) = location.split_once('?').expect("query");
    assert_eq!(base, "https://bridge.example.invalid/bitrix24/oauth");
    let q = form(query);
    let keys: Vec<&str> = q.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "code",
            "state",
            "domain",
            "member_id",
            "scope",
            "server_domain"
        ]
    );
    let domain = p.portal_url().trim_start_matches("http://").to_owned();
    assert_eq!(field(&q, "state"), "s t8");
    assert_eq!(field(&q, "domain"), domain);
    assert_eq!(field(&q, "server_domain"), domain);
    assert_eq!(field(&q, "scope"), "log,user,department,sonet_group,disk");
    let code = field(&q, "code").to_owned();
    let exchange = |code: String| {
        let p = p.clone();
        async move {
            token_endpoint(
                &p,
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", CLIENT_ID),
                    ("client_secret", &secret()),
                    ("code", &code),
                ],
            )
            .await
        }
    };
    let first = exchange(code.clone()).await;
    assert_eq!(first.status, 200, "{}", first.raw);
    assert_eq!(first.body["user_id"], json!(1));
    let second = exchange(code).await;
    assert_eq!(error_of(&second), (400, json!({"error": "invalid_grant"})));
    // Codes live 30 seconds; refreshes are not counted for code exchanges.
    let late = p.authorization_code();
    p.set_clock_offset(31);
    assert_eq!(exchange(late).await.status, 400);
    assert_eq!(p.oauth_refreshes(), 0);
    let bad = client
        .get(&url)
        .query(&[("client_id", "local.other")])
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status().as_u16(), 400);
}

// ---- REST with OAuth --------------------------------------------------------------

#[tokio::test]
async fn oauth_rest_runs_as_the_app_user() {
    let p = start_with(PortalConfig {
        oauth: OAuthApp {
            user: 2,
            scopes: vec!["log".into(), "user".into()],
            ..Default::default()
        },
        ..cfg()
    })
    .await;
    // User 2 does not exist yet: the token cannot act as anyone.
    let (access, _) = tokens(&p).await;
    let nobody = oauth(&p, &access, "profile", json!({})).await;
    assert_eq!(
        error_of(&nobody),
        (
            401,
            json!({"error": "authorization_error", "error_description": "Unable to authorize user"})
        )
    );
    let olga = p.add_user(admin("Olga"));
    assert_eq!(olga, 2);
    assert_eq!(
        ok(&p, &access, "profile", json!({})).await["ID"],
        json!("2")
    );
    // The token may also come as `access_token` or a Bearer header.
    let url = format!("{}/rest/user.current", p.portal_url());
    let bearer = send(reqwest::Client::new().get(&url).bearer_auth(&access)).await;
    assert_eq!(bearer.body["result"]["ID"], json!("2"));
    let query = send(
        reqwest::Client::new()
            .get(&url)
            .query(&[("access_token", access.as_str())]),
    )
    .await;
    assert_eq!(query.body["result"]["ID"], json!("2"));

    assert_eq!(
        ok(&p, &access, "scope", json!({})).await,
        json!(["log", "user"])
    );
    let denied = oauth(&p, &access, "department.get", json!({})).await;
    assert_eq!(
        error_of(&denied),
        (
            403,
            json!({"error": "insufficient_scope", "error_description": "The request requires higher privileges than provided by the access token"})
        )
    );
    let id = ok(
        &p,
        &access,
        "log.blogpost.add",
        json!({"POST_MESSAGE": "from the app"}),
    )
    .await;
    assert_eq!(p.post(id.as_u64().expect("id")).expect("post").author, 2);
    let batch = ok(
        &p,
        &access,
        "batch",
        json!({"cmd": {"u": "user.get?ID=2", "f": "feature.get?CODE=rest_offline_extended", "a": "user.admin"}}),
    )
    .await;
    assert_eq!(batch["result"]["u"][0]["NAME"], json!("Olga"));
    assert_eq!(batch["result"]["f"], json!({"value": "Y"}));
    assert_eq!(batch["result"]["a"], json!(true));
    assert_eq!(
        ok(&p, &access, "app.info", json!({})).await["CODE"],
        json!(CLIENT_ID)
    );
    // Tokens never reach the request log.
    let log = serde_json::to_string(&p.requests()).expect("json");
    assert!(!log.contains(&access));
    assert_eq!(p.request_count("profile"), 2);

    // A webhook still cannot touch events; no credentials at all is NO_AUTH_FOUND.
    let hook = webhook(&p, "event.get", json!({})).await;
    assert_eq!(
        error_of(&hook),
        (
            403,
            json!({"error": "WRONG_AUTH_TYPE", "error_description": "Current authorization type is denied for this method"})
        )
    );
    let bare = send(reqwest::Client::new().get(&url)).await;
    assert_eq!(bare.body["error"], json!("NO_AUTH_FOUND"));
}

// ---- bindings -----------------------------------------------------------------------

#[tokio::test]
async fn bind_unbind_and_get() {
    let p = start().await;
    let (t, _) = tokens(&p).await;
    assert_eq!(
        ok(&p, &t, "events", json!({})).await,
        json!([
            "ONLIVEFEEDPOSTADD",
            "ONLIVEFEEDPOSTUPDATE",
            "ONLIVEFEEDPOSTDELETE"
        ])
    );
    assert_eq!(
        ok(
            &p,
            &t,
            "event.bind",
            json!({"event": "OnLiveFeedPostAdd", "event_type": "offline"})
        )
        .await,
        json!(true)
    );
    let dup = oauth(
        &p,
        &t,
        "event.bind",
        json!({"EVENT": "ONLIVEFEEDPOSTADD", "EVENT_TYPE": "OFFLINE"}),
    )
    .await;
    assert_eq!(
        error_of(&dup),
        (
            400,
            json!({"error": "ERROR_CORE", "error_description": "Unable to set event handler: Handler already binded"})
        )
    );
    let unknown = oauth(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONCRMLEADADD", "handler": "https://h.invalid/x"}),
    )
    .await;
    assert_eq!(
        error_of(&unknown),
        (
            400,
            json!({"error": "ERROR_EVENT_NOT_FOUND", "error_description": "Event not found"})
        )
    );
    let no_handler = oauth(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONLIVEFEEDPOSTUPDATE"}),
    )
    .await;
    assert_eq!(
        error_of(&no_handler),
        (
            400,
            json!({"error": "ERROR_ARGUMENT", "error_description": "Argument 'HANDLER' is null or empty", "argument": "HANDLER"})
        )
    );
    ok(
        &p,
        &t,
        "event.bind",
        json!({"event": "onlivefeedpostupdate", "handler": "https://h.invalid/x"}),
    )
    .await;
    assert_eq!(
        ok(&p, &t, "event.get", json!({})).await,
        json!([
            {"event": "ONLIVEFEEDPOSTADD", "connector_id": "", "offline": 1},
            {"event": "ONLIVEFEEDPOSTUPDATE", "handler": "https://h.invalid/x", "auth_type": "0", "offline": 0},
        ])
    );
    let bindings = p.event_bindings();
    assert_eq!(bindings.len(), 2);
    assert_eq!(bindings[1].id, bindings[0].id + 1);
    assert_eq!(bindings[1].handler.as_deref(), Some("https://h.invalid/x"));
    assert!(bindings[0].offline && bindings[0].handler.is_none());

    let none = ok(
        &p,
        &t,
        "event.unbind",
        json!({"event": "ONLIVEFEEDPOSTUPDATE", "handler": "https://other.invalid/"}),
    )
    .await;
    assert_eq!(none, json!({"count": 0}));
    let online = ok(
        &p,
        &t,
        "event.unbind",
        json!({"event": "ONLIVEFEEDPOSTUPDATE", "handler": "https://h.invalid/x"}),
    )
    .await;
    assert_eq!(online, json!({"count": 1}));
    let offline = ok(
        &p,
        &t,
        "event.unbind",
        json!({"event": "ONLIVEFEEDPOSTADD", "event_type": "offline"}),
    )
    .await;
    assert_eq!(offline, json!({"count": 1}));
    assert_eq!(ok(&p, &t, "event.get", json!({})).await, json!([]));

    // Without scope `log` the app has no Live Feed events.
    p.set_oauth_scopes(&["user"]);
    let r = oauth(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONLIVEFEEDPOSTADD", "event_type": "offline"}),
    )
    .await;
    assert_eq!(r.body["error"], json!("ERROR_EVENT_NOT_FOUND"));
    assert_eq!(ok(&p, &t, "events", json!({})).await, json!([]));
}

#[tokio::test]
async fn offline_access_needs_an_admin_and_reservations_a_license() {
    let p = start_with(PortalConfig {
        webhook_user_admin: false,
        ..cfg()
    })
    .await;
    let (t, _) = tokens(&p).await;
    let bind = oauth(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONLIVEFEEDPOSTADD", "event_type": "offline"}),
    )
    .await;
    assert_eq!(
        error_of(&bind),
        (
            403,
            json!({"error": "ACCESS_DENIED", "error_description": "Access denied! Offline events binding requires administrator access rights"})
        )
    );
    for method in [
        "event.offline.get",
        "event.offline.list",
        "event.offline.clear",
    ] {
        let r = oauth(&p, &t, method, json!({"process_id": "x"})).await;
        assert_eq!(
            error_of(&r),
            (
                403,
                json!({"error": "ACCESS_DENIED", "error_description": "Access denied!"})
            ),
            "{method}"
        );
    }
    // A non-admin may bind online handlers for itself only.
    ok(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONLIVEFEEDPOSTADD", "handler": "https://h.invalid/"}),
    )
    .await;
    assert_eq!(p.event_bindings()[0].auth_type, 1);
    let other = oauth(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONLIVEFEEDPOSTADD", "handler": "https://h.invalid/2", "auth_type": 5}),
    )
    .await;
    assert_eq!(other.status, 403);

    let p = start_with(PortalConfig {
        features: vec![("rest_offline_extended".into(), false)],
        ..cfg()
    })
    .await;
    let (t, _) = tokens(&p).await;
    let flag = ok(
        &p,
        &t,
        "feature.get",
        json!({"CODE": "rest_offline_extended"}),
    )
    .await;
    assert_eq!(flag, json!({"value": "N"}));
    let reserve = oauth(&p, &t, "event.offline.get", json!({"clear": 0})).await;
    assert_eq!(
        error_of(&reserve),
        (
            403,
            json!({"error": "WRONG_LICENSE", "error_description": "This feature is not enabled for the current license: extended offline events handling"})
        )
    );
    assert_eq!(
        ok(&p, &t, "event.offline.get", json!({})).await,
        json!({"process_id": null, "events": []})
    );
    let zero = oauth(&p, &t, "event.offline.get", json!({"limit": 0})).await;
    assert_eq!(zero.body["error"], json!("ERROR_ARGUMENT"));
}

// ---- the offline queue --------------------------------------------------------------

#[tokio::test]
async fn identical_rows_merge_and_clear_deletes_what_it_returns() {
    let p = start().await;
    let (t, _) = tokens(&p).await;
    bind_offline(&p, &t, &ALL).await;
    let author = p.add_user(admin("Ann"));
    let post = p.create_post(author, ua_post("first"));
    assert_eq!(post, 201);
    for (i, text) in ["edit 1", "edit 2", "edit 3"].iter().enumerate() {
        p.set_clock_offset(10 * (i as i64 + 1));
        p.update_post(post, None, text);
    }
    let rows = p.offline_rows();
    assert_eq!(rows.len(), 2, "three edits leave one row: {rows:?}");
    assert_eq!(rows[0].name, "ONLIVEFEEDPOSTADD");
    assert_eq!(rows[0].message_id, "df0e1b79c8dd4b6dd863b49ed02a65f6");
    assert_eq!(rows[1].name, "ONLIVEFEEDPOSTUPDATE");
    assert_eq!(rows[1].message_id, "6dcce990caeaa30e282868f604805e82");
    let merged_later = rows[1]
        .timestamp
        .duration_since(rows[0].timestamp)
        .expect("later")
        .as_secs();
    assert!(
        (30..=31).contains(&merged_later),
        "a merge refreshes TIMESTAMP_X: {merged_later}"
    );
    assert!(rows.iter().all(|r| r.process_id.is_none() && !r.error));
    assert_eq!(rows[0].user_id, author);

    // A webhook change is queued as well.
    let hooked = webhook(&p, "log.blogpost.add", json!({"POST_MESSAGE": "hook"})).await;
    assert_eq!(hooked.body["result"], json!(202));

    let got = ok(&p, &t, "event.offline.get", json!({})).await;
    assert_eq!(got["process_id"], Value::Null);
    assert_eq!(
        names(&got["events"]),
        owned(&[
            ("ONLIVEFEEDPOSTADD", 201),
            ("ONLIVEFEEDPOSTUPDATE", 201),
            ("ONLIVEFEEDPOSTADD", 202),
        ])
    );
    let first = &got["events"][0];
    assert_eq!(first["ID"], json!("1"));
    assert_eq!(
        first["EVENT_ADDITIONAL"],
        json!({"user_id": author.to_string()})
    );
    assert_eq!(
        first["MESSAGE_ID"],
        json!("df0e1b79c8dd4b6dd863b49ed02a65f6")
    );
    assert!(
        first["TIMESTAMP_X"]
            .as_str()
            .is_some_and(|s| s.ends_with("+03:00"))
    );
    assert_eq!(
        got["events"][2]["EVENT_ADDITIONAL"],
        json!({"user_id": "1"})
    );
    assert!(p.offline_rows().is_empty(), "clear=1 deleted them");
    assert_eq!(
        ok(&p, &t, "event.offline.get", json!({})).await,
        json!({"process_id": null, "events": []})
    );
    p.delete_post(post);
    let del = ok(
        &p,
        &t,
        "event.offline.get",
        json!({"filter": {"EVENT_NAME": "ONLIVEFEEDPOSTDELETE"}}),
    )
    .await;
    assert_eq!(
        names(&del["events"]),
        owned(&[("ONLIVEFEEDPOSTDELETE", 201)])
    );
}

#[tokio::test]
async fn reservations_are_disjoint_and_refetchable() {
    let p = start().await;
    let (t, _) = tokens(&p).await;
    bind_offline(&p, &t, &ALL).await;
    for text in ["a", "b", "c"] {
        p.create_post(1, ua_post(text));
    }
    let first = ok(&p, &t, "event.offline.get", json!({"clear": 0, "limit": 2})).await;
    let pid = first["process_id"].as_str().expect("process id").to_owned();
    assert_eq!(pid.len(), 32);
    assert!(
        pid.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    assert_eq!(
        names(&first["events"]),
        owned(&[("ONLIVEFEEDPOSTADD", 201), ("ONLIVEFEEDPOSTADD", 202)])
    );
    // Another consumer gets only what is left, under its own process id.
    let second = ok(&p, &t, "event.offline.get", json!({"clear": 0})).await;
    let pid2 = second["process_id"].as_str().expect("pid").to_owned();
    assert_ne!(pid, pid2);
    assert_eq!(
        names(&second["events"]),
        owned(&[("ONLIVEFEEDPOSTADD", 203)])
    );
    let empty = ok(&p, &t, "event.offline.get", json!({"clear": 0})).await;
    assert_eq!(empty["events"], json!([]));
    assert_eq!(empty["process_id"].as_str().map(str::len), Some(32));
    // Re-fetching with the process id returns the same rows and marks nothing new.
    let again = ok(
        &p,
        &t,
        "event.offline.get",
        json!({"clear": 0, "process_id": pid}),
    )
    .await;
    assert_eq!(again["process_id"], json!(pid));
    assert_eq!(again["events"], first["events"]);
    let rows = p.offline_rows();
    assert_eq!(
        rows.iter()
            .map(|r| r.process_id.clone())
            .collect::<Vec<_>>(),
        [Some(pid.clone()), Some(pid.clone()), Some(pid2.clone())]
    );

    // An identical event is not merged into a reserved row: it makes a new one.
    p.update_post(201, None, "edited");
    let upd = ok(
        &p,
        &t,
        "event.offline.get",
        json!({"clear": 0, "filter": {"EVENT_NAME": "ONLIVEFEEDPOSTUPDATE"}}),
    )
    .await;
    let pid4 = upd["process_id"].as_str().expect("pid").to_owned();
    assert_eq!(
        names(&upd["events"]),
        owned(&[("ONLIVEFEEDPOSTUPDATE", 201)])
    );
    p.update_post(201, None, "edited twice");
    let rows = p.offline_rows();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[3].message_id, rows[4].message_id);
    assert_eq!(
        (rows[3].process_id.as_deref(), rows[4].process_id.as_deref()),
        (Some(pid4.as_str()), None)
    );

    // Clearing by message id, by id, and the whole process.
    let cleared = ok(
        &p,
        &t,
        "event.offline.clear",
        json!({"process_id": pid, "message_id": ["df0e1b79c8dd4b6dd863b49ed02a65f6"]}),
    )
    .await;
    assert_eq!(cleared, json!(true));
    let bad = oauth(
        &p,
        &t,
        "event.offline.clear",
        json!({"process_id": pid, "message_id": ["short"]}),
    )
    .await;
    assert_eq!(bad.body["error"], json!("ERROR_ARGUMENT"));
    assert_eq!(p.offline_rows().len(), 4);
    ok(
        &p,
        &t,
        "event.offline.clear",
        json!({"process_id": pid2, "id": [3]}),
    )
    .await;
    ok(&p, &t, "event.offline.clear", json!({"process_id": pid})).await;
    let left: Vec<(String, u64)> = p
        .offline_rows()
        .iter()
        .map(|r| (r.name.clone(), r.post_id))
        .collect();
    assert_eq!(
        left,
        owned(&[("ONLIVEFEEDPOSTUPDATE", 201), ("ONLIVEFEEDPOSTUPDATE", 201)])
    );
    let missing = oauth(&p, &t, "event.offline.clear", json!({})).await;
    assert_eq!(
        error_of(&missing),
        (
            400,
            json!({"error": "ERROR_ARGUMENT", "error_description": "Argument 'PROCESS_ID' is null or empty", "argument": "PROCESS_ID"})
        )
    );
    // `get` with a process id and the default clear=1 deletes the whole process.
    let done = ok(&p, &t, "event.offline.get", json!({"process_id": pid4})).await;
    assert_eq!(done["process_id"], json!(pid4));
    assert_eq!(
        names(&done["events"]),
        owned(&[("ONLIVEFEEDPOSTUPDATE", 201)])
    );
    let left = p.offline_rows();
    assert_eq!((left.len(), left[0].process_id.clone()), (1, None));
}

#[tokio::test]
async fn error_rows_and_listing() {
    let p = start().await;
    let (t, _) = tokens(&p).await;
    bind_offline(&p, &t, &ALL).await;
    p.create_post(1, ua_post("a"));
    p.create_post(1, ua_post("b"));
    let r = ok(&p, &t, "event.offline.get", json!({"clear": 0})).await;
    let pid = r["process_id"].as_str().expect("pid").to_owned();
    ok(
        &p,
        &t,
        "event.offline.error",
        json!({"process_id": pid, "message_id": ["df0e1b79c8dd4b6dd863b49ed02a65f6"]}),
    )
    .await;
    let rows = p.offline_rows();
    assert!(rows[0].error && rows[0].process_id.is_none());
    assert!(!rows[1].error && rows[1].process_id.as_deref() == Some(pid.as_str()));
    let list = oauth(&p, &t, "event.offline.list", json!({})).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["total"], json!(2));
    assert_eq!(list.body["result"][0]["ERROR"], json!("1"));
    assert_eq!(list.body["result"][0]["PROCESS_ID"], json!(""));
    assert_eq!(list.body["result"][1]["PROCESS_ID"], json!(pid));
    let filtered = ok(
        &p,
        &t,
        "event.offline.list",
        json!({"filter": {"ERROR": 0}, "order": {"ID": "DESC"}}),
    )
    .await;
    assert_eq!(names(&filtered), owned(&[("ONLIVEFEEDPOSTADD", 202)]));
    let bad = oauth(
        &p,
        &t,
        "event.offline.list",
        json!({"filter": {"BOGUS": 1}}),
    )
    .await;
    assert_eq!(
        bad.body["error_description"],
        json!("Filter field not allowed: BOGUS")
    );
    // Error rows come back only with error=1.
    ok(&p, &t, "event.offline.clear", json!({"process_id": pid})).await;
    let normal = ok(&p, &t, "event.offline.get", json!({})).await;
    assert_eq!(normal["events"], json!([]));
    let errors = ok(&p, &t, "event.offline.get", json!({"error": 1})).await;
    assert_eq!(
        names(&errors["events"]),
        owned(&[("ONLIVEFEEDPOSTADD", 201)])
    );
    assert!(p.offline_rows().is_empty());
}

#[tokio::test]
async fn the_apps_own_oauth_changes_are_not_queued() {
    let p = start().await;
    let (t, _) = tokens(&p).await;
    bind_offline(&p, &t, &ALL).await;
    let id = ok(&p, &t, "log.blogpost.add", json!({"POST_MESSAGE": "mine"})).await;
    ok(
        &p,
        &t,
        "log.blogpost.update",
        json!({"POST_ID": id, "POST_MESSAGE": "mine, edited"}),
    )
    .await;
    assert!(p.offline_rows().is_empty(), "{:?}", p.offline_rows());
    // The same app with another auth_connector is another source.
    ok(
        &p,
        &t,
        "log.blogpost.delete",
        json!({"POST_ID": id, "auth_connector": "elsewhere"}),
    )
    .await;
    let rows = p.offline_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].name.as_str(), rows[0].post_id),
        ("ONLIVEFEEDPOSTDELETE", 201)
    );
}

#[tokio::test]
async fn one_update_per_post_per_hit() {
    let p = start().await;
    let (t, _) = tokens(&p).await;
    bind_offline(&p, &t, &ALL).await;
    let r = webhook(
        &p,
        "batch",
        json!({"cmd": {
            "a": "log.blogpost.add?POST_MESSAGE=one",
            "u": "log.blogpost.update?POST_ID=$result[a]&POST_MESSAGE=two",
        }}),
    )
    .await;
    assert_eq!(r.body["result"]["result"]["u"], json!(201), "{}", r.raw);
    let names: Vec<String> = p.offline_rows().iter().map(|r| r.name.clone()).collect();
    assert_eq!(
        names,
        ["ONLIVEFEEDPOSTADD"],
        "the update after the add is dropped"
    );
}

// ---- online pushes ------------------------------------------------------------------

#[tokio::test]
async fn pushes_carry_the_documented_form() {
    let p = start().await;
    let hook = Receiver::start(StatusCode::OK).await;
    let (t, _) = tokens(&p).await;
    ok(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONLIVEFEEDPOSTADD", "handler": hook.url}),
    )
    .await;
    let author = p.add_user(admin("Ann"));
    p.create_post(author, ua_post("hello"));
    // The app's own change is pushed too.
    ok(&p, &t, "log.blogpost.add", json!({"POST_MESSAGE": "mine"})).await;
    assert!(p.wait_until(WAIT, |p| p.pushes().len() == 2).await);
    let pushes = p.pushes();
    let handler_id = p.event_bindings()[0].id;
    assert_eq!(
        (
            pushes[0].event.as_str(),
            pushes[0].post_id,
            pushes[0].status
        ),
        ("ONLIVEFEEDPOSTADD", 201, Some(200))
    );
    assert_eq!((pushes[1].post_id, pushes[1].handler_id), (202, handler_id));
    assert_eq!(pushes[0].url, hook.url);

    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 2);
    let (ct, raw) = &bodies[0];
    assert_eq!(ct, "application/x-www-form-urlencoded");
    assert!(raw.contains("data%5BFIELDS%5D%5BPOST_ID%5D=201"), "{raw}");
    let f = form(raw);
    let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "event",
            "event_handler_id",
            "data[FIELDS][POST_ID]",
            "ts",
            "auth[access_token]",
            "auth[expires_in]",
            "auth[scope]",
            "auth[domain]",
            "auth[server_endpoint]",
            "auth[status]",
            "auth[client_endpoint]",
            "auth[member_id]",
            "auth[application_token]"
        ]
    );
    assert_eq!(field(&f, "event"), "ONLIVEFEEDPOSTADD");
    assert_eq!(field(&f, "event_handler_id"), handler_id.to_string());
    assert!(field(&f, "ts").parse::<u64>().is_ok());
    assert_eq!(field(&f, "auth[expires_in]"), "3600");
    assert_eq!(
        field(&f, "auth[scope]"),
        "log,user,department,sonet_group,disk"
    );
    assert_eq!(field(&f, "auth[status]"), "L");
    assert_eq!(
        field(&f, "auth[domain]"),
        p.portal_url().trim_start_matches("http://")
    );
    assert_eq!(
        field(&f, "auth[client_endpoint]"),
        format!("{}/rest/", p.portal_url())
    );
    assert_eq!(
        field(&f, "auth[application_token]"),
        OAuthApp::default().application_token
    );
    assert_eq!(field(&f, "auth[member_id]").len(), 32);
    // The token belongs to the user whose action fired the event.
    let token = field(&f, "auth[access_token]");
    assert_eq!(
        ok(&p, token, "profile", json!({})).await["ID"],
        json!(author.to_string())
    );
}

#[tokio::test]
async fn failed_pushes_are_not_retried() {
    let p = start().await;
    let failing = Receiver::start(StatusCode::INTERNAL_SERVER_ERROR).await;
    let (t, _) = tokens(&p).await;
    ok(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONLIVEFEEDPOSTDELETE", "handler": failing.url}),
    )
    .await;
    // Nothing listens on a port we just released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/gone", l.local_addr().expect("addr"))
    };
    ok(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONLIVEFEEDPOSTDELETE", "handler": closed}),
    )
    .await;
    let post = p.create_post(1, ua_post("short-lived"));
    p.delete_post(post);
    assert!(p.wait_until(WAIT, |p| p.pushes().len() == 2).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushes = p.pushes();
    assert_eq!(pushes.len(), 2);
    assert_eq!(
        (pushes[0].status, pushes[0].error.is_none()),
        (Some(500), true)
    );
    assert_eq!(pushes[1].status, None);
    assert!(pushes[1].error.is_some());
    assert_eq!(failing.bodies().len(), 1);
}

#[tokio::test]
async fn forged_push_and_update_binding_order() {
    let p = start().await;
    let hook = Receiver::start(StatusCode::OK).await;
    let status = p
        .push_with_token("onlivefeedpostadd", 777, &hook.url, "forged-token")
        .await;
    assert_eq!(status, Some(200));
    let f = form(&hook.bodies()[0].1);
    assert_eq!(field(&f, "event"), "ONLIVEFEEDPOSTADD");
    assert_eq!(field(&f, "data[FIELDS][POST_ID]"), "777");
    assert_eq!(field(&f, "auth[application_token]"), "forged-token");
    let token = field(&f, "auth[access_token]");
    let (t, _) = tokens(&p).await;
    assert_eq!(oauth(&p, token, "profile", json!({})).await.status, 401);
    assert!(p.pushes().is_empty(), "forged pushes are not recorded");

    // Two bindings of ONLIVEFEEDPOSTUPDATE: within one hit only the first gets a post's
    // update (`CSocNetLogBlogPostRestProxy` remembers processed ids per app).
    bind_offline(&p, &t, &["ONLIVEFEEDPOSTUPDATE"]).await;
    ok(
        &p,
        &t,
        "event.bind",
        json!({"event": "ONLIVEFEEDPOSTUPDATE", "handler": hook.url}),
    )
    .await;
    let post = p.create_post(1, ua_post("x"));
    p.update_post(post, None, "y");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.offline_rows().len(), 1);
    assert!(p.pushes().is_empty());
}

// ---- control API --------------------------------------------------------------------

#[tokio::test]
async fn control_routes() {
    let p = start().await;
    let base = p.portal_url();
    let c = reqwest::Client::new();
    let code = send(c.post(format!("{base}/_sandbox/oauth/code"))).await;
    let code = code.body["code"].as_str().expect("code").to_owned();
    let r = token_endpoint(
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("client_secret", &secret()),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let access = r.body["access_token"].as_str().expect("access").to_owned();
    let refresh_token = r.body["refresh_token"].as_str().expect("r").to_owned();
    bind_offline(&p, &access, &["ONLIVEFEEDPOSTADD"]).await;
    p.create_post(1, ua_post("x"));
    let events = send(c.get(format!("{base}/_sandbox/events"))).await.body;
    assert_eq!(events["bindings"][0]["event"], json!("ONLIVEFEEDPOSTADD"));
    assert_eq!(events["offline"][0]["post_id"], json!(201));
    assert_eq!(
        events["offline"][0]["message_id"],
        json!("df0e1b79c8dd4b6dd863b49ed02a65f6")
    );
    assert_eq!(events["pushes"], json!([]));
    send(c.post(format!("{base}/_sandbox/oauth/expire"))).await;
    let expired = oauth(&p, &access, "profile", json!({})).await;
    assert_eq!(expired.body["error"], json!("expired_token"));
    send(c.post(format!("{base}/_sandbox/oauth/revoke"))).await;
    assert_eq!(refresh(&p, &refresh_token).await.status, 400);
}
