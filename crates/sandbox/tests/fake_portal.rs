//! End-to-end tests of the fake Bitrix24 portal over real HTTP.

use std::time::{Duration, Instant};

use livefeed_sandbox::bitrix::{
    FakePortal, Fault, FaultKind, LeakyBucket, NewPost, NewUser, PortalConfig,
};
use serde_json::{Value, json};

const SECRET: &str = "k3yS3cr3t0000001";

fn cfg() -> PortalConfig {
    PortalConfig {
        rate_limit: None,
        ..Default::default()
    }
}

async fn start() -> FakePortal {
    start_with(cfg()).await
}

async fn start_with(cfg: PortalConfig) -> FakePortal {
    FakePortal::start(cfg).await.expect("portal starts")
}

struct Resp {
    status: u16,
    body: Value,
    raw: String,
    content_type: String,
}

async fn send(req: reqwest::RequestBuilder) -> Resp {
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let raw = resp.text().await.expect("body");
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Resp {
        status,
        body,
        raw,
        content_type,
    }
}

/// JSON POST to the webhook.
async fn call(p: &FakePortal, method: &str, body: Value) -> Resp {
    let url = format!("{}{method}", p.webhook_url());
    send(reqwest::Client::new().post(url).json(&body)).await
}

/// GET with a raw query string.
async fn get(p: &FakePortal, method_and_query: &str) -> Resp {
    let url = format!("{}{method_and_query}", p.webhook_url());
    send(reqwest::Client::new().get(url)).await
}

/// Form POST with a raw body.
async fn form(p: &FakePortal, method: &str, body: &str) -> Resp {
    let url = format!("{}{method}", p.webhook_url());
    send(
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned()),
    )
    .await
}

/// A successful call's envelope.
async fn ok(p: &FakePortal, method: &str, body: Value) -> Value {
    let r = call(p, method, body).await;
    assert_eq!(r.status, 200, "{method}: {}", r.raw);
    r.body
}

async fn err(p: &FakePortal, method: &str, body: Value) -> (u16, Value) {
    let r = call(p, method, body).await;
    assert_ne!(r.status, 200, "{method} should fail: {}", r.raw);
    (r.status, r.body)
}

fn user(name: &str) -> NewUser {
    NewUser {
        name: name.to_owned(),
        last_name: "Tester".to_owned(),
        departments: vec![1],
        ..Default::default()
    }
}

fn ua_post(text: &str) -> NewPost {
    NewPost {
        text: text.to_owned(),
        dest: vec!["UA".to_owned()],
        ..Default::default()
    }
}

fn ids(result: &Value) -> Vec<u64> {
    let items: Vec<&Value> = match result {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        _ => Vec::new(),
    };
    items
        .iter()
        .map(|i| {
            i["ID"]
                .as_str()
                .expect("ID is a string")
                .parse()
                .expect("numeric")
        })
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend(width.to_be_bytes());
    v.extend(height.to_be_bytes());
    v.extend([8, 6, 0, 0, 0]);
    v
}

// ---- routing, auth, envelopes ---------------------------------------------------------------

#[tokio::test]
async fn success_envelope_and_time() {
    let p = start().await;
    let r = call(&p, "server.time", json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/json; charset=utf-8");
    let time = r.body["time"].as_object().expect("time object");
    let keys: Vec<&str> = time.keys().map(String::as_str).collect();
    for k in [
        "start",
        "finish",
        "duration",
        "processing",
        "date_start",
        "date_finish",
        "operating_reset_at",
        "operating",
    ] {
        assert!(keys.contains(&k), "missing time.{k}: {}", r.raw);
    }
    assert!(time["operating_reset_at"].is_i64());
    assert!(time["finish"].is_f64());
    assert!(time["date_start"].as_str().unwrap().ends_with("+03:00"));
    let now = r.body["result"].as_str().unwrap();
    assert_eq!(now.len(), 25, "{now}");
    assert!(now.ends_with("+03:00"));
    assert!(r.body.get("total").is_none());
    // start/processing alternate between ints and floats across responses.
    let r2 = call(&p, "server.time", json!({})).await;
    assert_ne!(
        r.body["time"]["start"].is_i64(),
        r2.body["time"]["start"].is_i64()
    );
}

#[tokio::test]
async fn error_envelopes_for_auth_routing_and_scope() {
    let p = start().await;
    let base = p.base_url();
    let client = reqwest::Client::new();

    let r = send(client.get(format!("{base}rest/1/WRONGSECRET/profile"))).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body,
        json!({"error":"INVALID_CREDENTIALS","error_description":"Invalid request credentials"})
    );
    let r = send(client.get(format!("{base}rest/2/{SECRET}/profile"))).await;
    assert_eq!(r.body["error"], "INVALID_CREDENTIALS");

    // Unknown methods are rejected before auth.
    let r = send(client.get(format!("{base}rest/1/WRONGSECRET/log.blogpost.gett"))).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        json!({"error":"ERROR_METHOD_NOT_FOUND","error_description":"Method not found!"})
    );

    let r = send(client.get(format!("{base}rest/profile"))).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body,
        json!({"error":"NO_AUTH_FOUND","error_description":"Wrong authorization data"})
    );
    let r = send(client.get(format!("{base}rest/profile.json?auth=abc"))).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("invalid_token"))
    );

    // Method names are case-insensitive and `.json` is optional.
    let r = get(&p, "Log.BlogPost.Get.json").await;
    assert_eq!(r.status, 200, "{}", r.raw);

    let (status, body) = err(&p, "event.bind", json!({"event":"ONLIVEFEEDPOSTADD"})).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"error":"WRONG_AUTH_TYPE","error_description":"Current authorization type is denied for this method"})
    );

    let (status, body) = err(&p, "app.info", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("ACCESS_DENIED"))
    );

    // The log never contains credentials.
    let log = format!("{:?}", p.requests());
    assert!(!log.contains(SECRET) && !log.contains("WRONGSECRET"));
    assert_eq!(p.request_count("log.blogpost.get"), 1);
    assert_eq!(p.request_count("log.blogpost.gett"), 1);
}

#[tokio::test]
async fn credential_status_switch_and_missing_scope() {
    let p = start_with(PortalConfig {
        invalid_credentials_status: 403,
        scopes: vec!["user".to_owned()],
        ..cfg()
    })
    .await;
    let r = send(reqwest::Client::new().get(format!("{}rest/1/nope/profile", p.base_url()))).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("INVALID_CREDENTIALS"))
    );

    let (status, body) = err(&p, "log.blogpost.get", json!({})).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"error":"insufficient_scope","error_description":"The request requires higher privileges than provided by the webhook token"})
    );
    // Methods without a scope still work.
    assert_eq!(ok(&p, "user.admin", json!({})).await["result"], json!(true));
}

/// `user.get` shows `EMAIL` with the `user` scope, and filters by it without case.
#[tokio::test]
async fn users_by_email() {
    let p = start().await;
    let anna = p.add_user(NewUser {
        name: "Anna".to_owned(),
        last_name: "Smirnova".to_owned(),
        email: Some("anna@example.com".to_owned()),
        ..Default::default()
    });
    let r = ok(
        &p,
        "user.get",
        json!({"FILTER": {"EMAIL": "Anna@Example.com"}}),
    )
    .await;
    let found = r["result"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["ID"], json!(anna.to_string()));
    assert_eq!(found[0]["EMAIL"], "anna@example.com");
    let r = ok(
        &p,
        "user.get",
        json!({"FILTER": {"EMAIL": "nobody@example.com"}}),
    )
    .await;
    assert_eq!(r["result"], json!([]));
    // Users without an address of their own have the portal's default one.
    let r = ok(&p, "user.get", json!({"ID": 1})).await;
    assert_eq!(r["result"][0]["EMAIL"], "user1@b24-sandbox.bitrix24.com");
}

#[tokio::test]
async fn php_json_quirks() {
    let p = start().await;
    let u = p.add_user(NewUser {
        name: "Иван".to_owned(),
        last_name: "R&D <x>".to_owned(),
        photo: Some("ivan.png".to_owned()),
        departments: vec![1],
        ..Default::default()
    });
    let r = call(&p, "user.get", json!({"ID": u})).await;
    assert!(
        r.raw.contains(r#""NAME":"\u0418\u0432\u0430\u043d""#),
        "{}",
        r.raw
    );
    assert!(r.raw.contains(r#""LAST_NAME":"R\u0026D \u003Cx\u003E""#));
    assert!(
        r.raw
            .contains(r#""PERSONAL_PHOTO":"https:\/\/b24-sandbox.bitrix24.com\/upload\/main\/"#)
    );
    assert_eq!(r.body["result"][0]["NAME"], "Иван");

    // Empty PHP maps are `[]`.
    let r = call(&p, "log.blogcomment.user.get", json!({})).await;
    assert_eq!(
        r.raw.split(",\"time\"").next().unwrap(),
        r#"{"result":{"comments":[],"files":[]}"#
    );
    let r = call(&p, "batch", json!({"cmd": {}})).await;
    assert!(r.raw.starts_with(
        r#"{"result":{"result":[],"result_error":[],"result_total":[],"result_next":[],"result_time":[]},"time":"#
    ));

    let raw = start_with(PortalConfig {
        escape_unicode: false,
        ..cfg()
    })
    .await;
    let u = raw.add_user(user("Пётр"));
    let r = call(&raw, "user.get", json!({"ID": u})).await;
    assert!(r.raw.contains(r#""NAME":"Пётр""#));
}

// ---- parameters ---------------------------------------------------------------------------

#[tokio::test]
async fn json_form_and_query_parameters_are_equivalent() {
    let p = start().await;
    let u2 = p.add_user(user("Anna"));
    let a = ok(
        &p,
        "log.blogpost.add",
        json!({"POST_MESSAGE":"Hello & bye","DEST":["UA",format!("U{u2}")]}),
    )
    .await;
    let b = form(
        &p,
        "log.blogpost.add",
        &format!("POST_MESSAGE=Hello+%26+bye&DEST%5B0%5D=UA&DEST[1]=U{u2}"),
    )
    .await;
    let c = get(
        &p,
        &format!("log.blogpost.add?POST_MESSAGE=Hello%20%26%20bye&DEST[]=UA&DEST[]=U{u2}"),
    )
    .await;
    assert_eq!((b.status, c.status), (200, 200), "{} {}", b.raw, c.raw);
    let ids: Vec<u64> = [&a, &b.body, &c.body]
        .iter()
        .map(|e| e["result"].as_u64().expect("add returns a number"))
        .collect();
    let views: Vec<_> = ids.iter().map(|id| p.post(*id).unwrap()).collect();
    for v in &views {
        assert_eq!(v.text, "Hello & bye");
        assert_eq!(v.dest, vec!["UA".to_owned(), format!("U{u2}")]);
        assert!(v.micro);
    }

    // "217" and 217 are the same POST_ID; FILTER[ID][] and FILTER[ID][0] too.
    let by_str = ok(
        &p,
        "log.blogpost.get",
        json!({"POST_ID": ids[0].to_string()}),
    )
    .await;
    let by_num = ok(&p, "log.blogpost.get", json!({"POST_ID": ids[0]})).await;
    assert_eq!(by_str["result"], by_num["result"]);
    let f1 = get(&p, &format!("user.get?FILTER[ID][]={u2}")).await;
    let f2 = get(&p, &format!("user.get?FILTER%5BID%5D%5B0%5D={u2}")).await;
    assert_eq!(f1.body["result"], f2.body["result"]);
    assert_eq!(f1.body["total"], 1);

    // The body overrides same-named query keys.
    let url = format!(
        "{}log.blogpost.add?POST_MESSAGE=from+query",
        p.webhook_url()
    );
    let r = send(
        reqwest::Client::new()
            .post(url)
            .json(&json!({"POST_MESSAGE":"from body"})),
    )
    .await;
    let id = r.body["result"].as_u64().unwrap();
    assert_eq!(p.post(id).unwrap().text, "from body");

    // Invalid JSON is an empty parameter set; so is a body without a form content type.
    let url = format!("{}log.blogpost.add", p.webhook_url());
    let r = send(
        reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body("{\"POST_MESSAGE\": oops"),
    )
    .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (
            400,
            json!({"error":"SONET_CONTROLLER_LIVEFEED_BLOGPOST_ADD_ERROR","error_description":"Blog post hasn't been added"})
        )
    );
    let r = send(reqwest::Client::new().post(&url).body("POST_MESSAGE=x")).await;
    assert_eq!(r.status, 400);
}

// ---- log.blogpost.* -----------------------------------------------------------------------

#[tokio::test]
async fn blogpost_get_item_shape() {
    let p = start().await;
    let add = ok(
        &p,
        "log.blogpost.add",
        json!({"POST_TITLE":"Новый регламент","POST_MESSAGE":"С 1 ноября #process [B]важно[/B]","DEST":["UA"],"TAGS":"policy, hr"}),
    )
    .await;
    let id = add["result"].as_u64().expect("numeric id");
    let env = ok(&p, "log.blogpost.get", json!({"POST_ID": id})).await;
    assert_eq!(env["total"], 1);
    assert!(env.get("next").is_none());
    let item = env["result"][0].as_object().unwrap().clone();
    let view = p.post(id).unwrap();
    let date = item["DATE_PUBLISH"].as_str().unwrap().to_owned();
    assert_eq!(date.len(), 25);
    assert!(
        date.ends_with("+03:00") && date.as_bytes()[10] == b'T',
        "{date}"
    );
    let scalars: serde_json::Map<String, Value> = item
        .iter()
        .filter(|(k, _)| !k.starts_with("UF_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        Value::Object(scalars),
        json!({
            "ID": id.to_string(), "BLOG_ID": view.blog_id.to_string(), "PUBLISH_STATUS": "P",
            "TITLE": "Новый регламент", "AUTHOR_ID": "1", "ENABLE_COMMENTS": "Y",
            "NUM_COMMENTS": "0", "CODE": null, "MICRO": "N",
            "DETAIL_TEXT": "С 1 ноября #process [B]важно[/B]", "DATE_PUBLISH": date,
            "CATEGORY_ID": item["CATEGORY_ID"].clone(), "HAS_SOCNET_ALL": "Y", "HAS_TAGS": "Y",
            "HAS_IMAGES": "N", "HAS_PROPS": "Y", "HAS_COMMENT_IMAGES": null,
        })
    );
    let cats: Vec<u64> = item["CATEGORY_ID"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(cats.len(), 3);
    assert_eq!(view.tags, ["policy", "hr", "process"]);
    assert_ne!(view.blog_id, id);
    assert_ne!(view.log_id, id);
    assert_eq!(item["UF_BLOG_POST_IMPRTNT"]["VALUE"], Value::Null);
    assert_eq!(item["UF_BLOG_POST_IMPRTNT"]["ENTITY_VALUE_ID"], json!(id));
    assert_eq!(item["UF_BLOG_POST_FILE"]["VALUE"], json!(false));
    assert_eq!(item["UF_BLOG_POST_FILE"]["USER_TYPE_ID"], "disk_file");
    assert!(item.contains_key("UF_IMPRTANT_DATE_END"));
    assert!(!item.contains_key("FILES"));

    p.set_has_props(id, false);
    let env = ok(&p, "log.blogpost.get", json!({"POST_ID": id})).await;
    let item = env["result"][0].as_object().unwrap();
    assert_eq!(item["HAS_PROPS"], "N");
    assert!(!item.keys().any(|k| k.starts_with("UF_")));
}

#[tokio::test]
async fn micro_titles_important_files_and_legacy_dates() {
    let p = start_with(PortalConfig {
        legacy_date_format: true,
        ..cfg()
    })
    .await;
    let id = ok(
        &p,
        "log.blogpost.add",
        json!({"POST_MESSAGE":"[B]Hi[/B]\n\n   [URL=https://x.y]there[/URL]  [1]","IMPORTANT":"Y"}),
    )
    .await["result"]
        .as_u64()
        .unwrap();
    let item = ok(&p, "log.blogpost.get", json!({"POST_ID": id})).await["result"][0].clone();
    assert_eq!(
        (item["TITLE"].as_str(), item["MICRO"].as_str()),
        (Some("Hi there [1]"), Some("Y"))
    );
    assert_eq!(item["UF_BLOG_POST_IMPRTNT"]["VALUE"], "1");
    let date = item["DATE_PUBLISH"].as_str().unwrap();
    assert!(date.len() == 19 && date.as_bytes()[2] == b'.', "{date}");

    // IMPORTANT must be the string "Y".
    let id2 = ok(
        &p,
        "log.blogpost.add",
        json!({"POST_MESSAGE":"x","IMPORTANT":true}),
    )
    .await["result"]
        .as_u64()
        .unwrap();
    assert!(!p.post(id2).unwrap().important);

    // The author counts as a reader of their own important post.
    let u2 = p.add_user(user("Olga"));
    let readers = ok(
        &p,
        "log.blogpost.getusers.important",
        json!({"POST_ID": id}),
    )
    .await;
    assert_eq!(readers["result"], json!(["1"]));
    p.read_important(id, u2);
    let readers = ok(
        &p,
        "log.blogpost.getusers.important",
        json!({"POST_ID": id}),
    )
    .await;
    assert_eq!(readers["result"], json!(["1", u2.to_string()]));
    let (_, e) = err(&p, "log.blogpost.getusers.important", json!({})).await;
    assert_eq!(e, json!({"error":"","error_description":"Wrong post ID"}));

    let file = base64(&png(640, 480));
    let id3 = ok(
        &p,
        "log.blogpost.add",
        json!({"POST_MESSAGE":"pics","FILES":[["a.png", file], ["bad.png", "!!!"]]}),
    )
    .await["result"]
        .as_u64()
        .unwrap();
    let item = ok(&p, "log.blogpost.get", json!({"POST_ID": id3})).await["result"][0].clone();
    let files = item["FILES"].as_array().expect("FILES present");
    assert_eq!(files.len(), 1);
    assert!(files[0].is_u64());
    assert_eq!(item["UF_BLOG_POST_FILE"]["VALUE"], item["FILES"]);
    assert_eq!(
        item["UF_BLOG_POST_FILE"]["VALUE_RAW"],
        format!("a:1:{{i:0;i:{};}}", files[0])
    );
}

#[tokio::test]
async fn update_title_rules_and_errors() {
    let p = start().await;
    let id = ok(
        &p,
        "log.blogpost.add",
        json!({"POST_TITLE":"Title","POST_MESSAGE":"Body"}),
    )
    .await["result"]
        .as_u64()
        .unwrap();
    let r = ok(
        &p,
        "log.blogpost.update",
        json!({"POST_ID": id.to_string(), "POST_MESSAGE":"new [I]text[/I]"}),
    )
    .await;
    assert_eq!(r["result"], json!(id));
    let v = p.post(id).unwrap();
    assert_eq!(
        (v.title.as_str(), v.micro, v.text.as_str()),
        ("new text", true, "new [I]text[/I]")
    );

    let r = ok(
        &p,
        "log.blogpost.update",
        json!({"POST_ID": id, "POST_TITLE":"Again"}),
    )
    .await;
    assert_eq!(r["result"], json!(id));
    let v = p.post(id).unwrap();
    assert_eq!(
        (v.title.as_str(), v.micro, v.text.as_str()),
        ("Again", false, "new [I]text[/I]")
    );

    let (status, e) = err(&p, "log.blogpost.update", json!({"POST_ID": id})).await;
    assert_eq!(status, 400);
    assert_eq!(
        e,
        json!({"error":"EMPTY_TITLE","error_description":"Не указан заголовок сообщения"})
    );
    let (_, e) = err(
        &p,
        "log.blogpost.update",
        json!({"POST_ID": 0, "POST_TITLE":"x"}),
    )
    .await;
    assert_eq!(
        e,
        json!({"error":"SONET_CONTROLLER_LIVEFEED_BLOGPOST_UPDATE_ERROR","error_description":"Wrong post ID"})
    );
    let (_, e) = err(
        &p,
        "log.blogpost.update",
        json!({"POST_ID": 99_999, "POST_TITLE":"x"}),
    )
    .await;
    assert_eq!(e["error_description"], "No post found");

    // Editing bumps the post to the top of the feed.
    let other = ok(&p, "log.blogpost.add", json!({"POST_MESSAGE":"newer"})).await["result"]
        .as_u64()
        .unwrap();
    assert_eq!(
        ids(&ok(&p, "log.blogpost.get", json!({})).await["result"]),
        [other, id]
    );
    ok(
        &p,
        "log.blogpost.update",
        json!({"POST_ID": id, "POST_TITLE":"Bumped"}),
    )
    .await;
    assert_eq!(
        ids(&ok(&p, "log.blogpost.get", json!({})).await["result"]),
        [id, other]
    );
}

#[tokio::test]
async fn user_id_is_honoured_only_for_admins() {
    let p = start().await;
    let u2 = p.add_user(user("Anna"));
    let id = ok(
        &p,
        "log.blogpost.add",
        json!({"POST_MESSAGE":"as anna","USER_ID": u2}),
    )
    .await["result"]
        .as_u64()
        .unwrap();
    assert_eq!(p.post(id).unwrap().author, u2);

    let q = start_with(PortalConfig {
        webhook_user_admin: false,
        ..cfg()
    })
    .await;
    let u2 = q.add_user(user("Anna"));
    let id = ok(
        &q,
        "log.blogpost.add",
        json!({"POST_MESSAGE":"as bot","USER_ID": u2}),
    )
    .await["result"]
        .as_u64()
        .unwrap();
    assert_eq!(q.post(id).unwrap().author, 1);
    let theirs = q.create_post(u2, ua_post("anna's"));
    let (_, e) = err(
        &q,
        "log.blogpost.update",
        json!({"POST_ID": theirs, "POST_TITLE":"x", "USER_ID": u2}),
    )
    .await;
    assert_eq!(e["error_description"], "No write perms");
    let (_, e) = err(&q, "log.blogpost.delete", json!({"POST_ID": theirs})).await;
    assert_eq!(
        e,
        json!({"error":"403","error_description":"У вас нет прав на удаление этого сообщения"})
    );
}

#[tokio::test]
async fn delete_and_share() {
    let p = start().await;
    let u2 = p.add_user(user("Anna"));
    let u3 = p.add_user(user("Boris"));
    let id = p.create_post(u2, ua_post("to delete"));
    let (status, e) = err(&p, "log.blogpost.delete", json!({"POST_ID": "abc"})).await;
    assert_eq!(
        (status, e),
        (
            400,
            json!({"error":"100","error_description":"Wrong post ID"})
        )
    );
    assert_eq!(
        ok(&p, "log.blogpost.delete", json!({"POST_ID": id})).await["result"],
        json!(true)
    );
    assert!(p.post(id).unwrap().deleted);
    let env = ok(&p, "log.blogpost.get", json!({"POST_ID": id})).await;
    assert_eq!(
        (env["result"].clone(), env["total"].clone()),
        (json!([]), json!(0))
    );
    let (_, e) = err(&p, "log.blogpost.delete", json!({"POST_ID": id})).await;
    assert_eq!(
        e,
        json!({"error":"0","error_description":"Ошибка удаления сообщения"})
    );

    let private = p.create_post(
        u2,
        NewPost {
            text: "for boris".to_owned(),
            dest: vec![format!("U{u3}")],
            ..Default::default()
        },
    );
    let (_, e) = err(
        &p,
        "log.blogpost.share",
        json!({"POST_ID": private, "DEST": ["XX1"]}),
    )
    .await;
    assert_eq!(
        e,
        json!({"error":"","error_description":"Wrong destinations"})
    );
    let (_, e) = err(&p, "log.blogpost.share", json!({"DEST": ["UA"]})).await;
    assert_eq!(e["error_description"], "Wrong post ID");
    assert_eq!(
        ok(
            &p,
            "log.blogpost.share",
            json!({"POST_ID": private, "DEST": ["U1", "SG999"]})
        )
        .await["result"],
        json!(true)
    );
    assert_eq!(
        p.post(private).unwrap().dest,
        [format!("U{u3}"), "U1".to_owned()]
    );
    let g = p.add_group("Closed");
    let (_, e) = err(
        &p,
        "log.blogpost.share",
        json!({"POST_ID": private, "DEST": [format!("SG{g}")], "USER_ID": u3}),
    )
    .await;
    assert_eq!(
        e,
        json!({"error":"","error_description":"Нет доступа к одному или нескольким адресатам сообщения"})
    );

    let q = start_with(PortalConfig {
        webhook_user_admin: false,
        ..cfg()
    })
    .await;
    let u2 = q.add_user(user("Anna"));
    let hidden = q.create_post(
        u2,
        NewPost {
            text: "hidden".to_owned(),
            dest: vec![format!("U{u2}")],
            ..Default::default()
        },
    );
    let (_, e) = err(
        &q,
        "log.blogpost.share",
        json!({"POST_ID": hidden, "DEST": ["UA"]}),
    )
    .await;
    assert_eq!(e["error_description"], "No read perms");
    let (_, e) = err(
        &q,
        "log.blogcomment.add",
        json!({"POST_ID": hidden, "TEXT": "hi"}),
    )
    .await;
    assert_eq!(e, json!({"error":"","error_description":"No permissions"}));
}

#[tokio::test]
async fn add_errors() {
    let p = start().await;
    let (status, e) = err(
        &p,
        "log.blogpost.add",
        json!({"POST_MESSAGE":"x","DEST":["XX","SG404"]}),
    )
    .await;
    assert_eq!(
        (status, e),
        (
            400,
            json!({"error":"SONET_CONTROLLER_LIVEFEED_BLOGPOST_ADD_ERROR","error_description":"No destination specified"})
        )
    );
    let (_, e) = err(&p, "log.blogpost.add", json!({"POST_TITLE":"only title"})).await;
    assert_eq!(e["error_description"], "Blog post hasn't been added");
    // A non-array DEST is ignored: the post goes to everyone.
    let id = ok(
        &p,
        "log.blogpost.add",
        json!({"POST_MESSAGE":"x","DEST":"U1"}),
    )
    .await["result"]
        .as_u64()
        .unwrap();
    assert_eq!(p.post(id).unwrap().dest, ["UA"]);
}

// ---- visibility, LOG_RIGHTS, ordering, pagination -------------------------------------------

#[tokio::test]
async fn visibility_and_log_rights() {
    let p = start().await;
    let eng = p.add_department("Engineering", Some(1));
    let backend = p.add_department("Backend", Some(eng));
    let sales = p.add_department("Sales", Some(1));
    p.set_user_departments(1, vec![backend]);
    let u2 = p.add_user(user("Anna"));
    let u3 = p.add_user(user("Boris"));
    let mine = p.add_group("Mine");
    p.add_group_member(mine, 1);
    let theirs = p.add_group("Theirs");
    p.add_group_member(theirs, u2);

    let post = |dest: &str| {
        p.create_post(
            u2,
            NewPost {
                text: format!("to {dest}"),
                dest: vec![dest.to_owned()],
                ..Default::default()
            },
        )
    };
    let ua = post("UA");
    let to_me = post("U1");
    let sg_mine = post(&format!("SG{mine}"));
    let _sg_theirs = post(&format!("SG{theirs}"));
    let dr_eng = post(&format!("DR{eng}"));
    let dr_root = post("DR1");
    let _dr_sales = post(&format!("DR{sales}"));
    let _to_boris = post(&format!("U{u3}"));
    let own = p.create_post(
        1,
        NewPost {
            text: "mine to boris".to_owned(),
            dest: vec![format!("U{u3}")],
            ..Default::default()
        },
    );

    let all = ok(&p, "log.blogpost.get", json!({})).await;
    let mut seen = ids(&all["result"]);
    seen.sort_unstable();
    assert_eq!(seen, [ua, to_me, sg_mine, dr_eng, dr_root, own]);
    assert_eq!(all["total"], 6);

    let rights = |codes: Value| {
        let p = p.clone();
        async move { ids(&ok(&p, "log.blogpost.get", json!({"LOG_RIGHTS": codes})).await["result"]) }
    };
    assert_eq!(rights(json!([format!("SG{mine}")])).await, [sg_mine]);
    assert_eq!(rights(json!(["UA"])).await, [ua]);
    assert!(rights(json!([format!("SG{theirs}")])).await.is_empty());
    assert_eq!(rights(json!([format!("U{u3}")])).await, [own]);
    // The blog module adds the author's own code to every post's rights: U1 also finds what
    // user 1 wrote (to Boris). Posts for everyone are stored under G2 and AU too.
    assert_eq!(rights(json!(["U1", "DR1"])).await, [own, dr_root, to_me]);
    assert_eq!(rights(json!(["G2"])).await, [ua]);
    assert_eq!(rights(json!(["AU"])).await, [ua]);
    // A string LOG_RIGHTS is ignored; POST_ID wins over LOG_RIGHTS.
    let r = ok(&p, "log.blogpost.get", json!({"LOG_RIGHTS": "UA"})).await;
    assert_eq!(r["total"], 6);
    let r = ok(
        &p,
        "log.blogpost.get",
        json!({"POST_ID": sg_mine, "LOG_RIGHTS": ["UA"]}),
    )
    .await;
    assert_eq!(ids(&r["result"]), [sg_mine]);
    let r = ok(&p, "log.blogpost.get", json!({"POST_ID": _sg_theirs})).await;
    assert_eq!(
        (r["result"].clone(), r["total"].clone()),
        (json!([]), json!(0))
    );
    let r = get(
        &p,
        &format!("log.blogpost.get?LOG_RIGHTS[]=SG{mine}&LOG_RIGHTS[]=UA"),
    )
    .await;
    assert_eq!(ids(&r.body["result"]), [sg_mine, ua]);
}

#[tokio::test]
async fn pagination_ordering_and_cursor() {
    let p = start().await;
    let created: Vec<u64> = (0..120)
        .map(|i| p.create_post(1, ua_post(&format!("post {i}"))))
        .collect();
    let newest_first: Vec<u64> = created.iter().rev().copied().collect();

    let p1 = ok(&p, "log.blogpost.get", json!({})).await;
    assert!(p1["result"].is_array());
    assert_eq!(
        (p1["total"].clone(), p1["next"].clone()),
        (json!(120), json!(50))
    );
    assert_eq!(ids(&p1["result"]), newest_first[..50]);
    let p2 = ok(&p, "log.blogpost.get", json!({"start": 50})).await;
    assert_eq!(
        (p2["total"].clone(), p2["next"].clone()),
        (json!(120), json!(100))
    );
    assert_eq!(ids(&p2["result"]), newest_first[50..100]);
    let p3 = get(&p, "log.blogpost.get?start=100").await.body;
    assert_eq!(p3["total"], 120);
    assert!(p3.get("next").is_none());
    assert_eq!(ids(&p3["result"]), newest_first[100..]);
    // Offsets inside a page round down; past the end the last page repeats.
    assert_eq!(
        ids(&ok(&p, "log.blogpost.get", json!({"start": 70})).await["result"]),
        newest_first[50..100]
    );
    let past = ok(&p, "log.blogpost.get", json!({"start": 400})).await;
    assert_eq!(ids(&past["result"]), newest_first[100..]);
    assert!(past.get("next").is_none());

    // A comment moves the oldest post to the top.
    p.add_comment(created[0], 1, "bump");
    let top = ok(&p, "log.blogpost.get", json!({})).await;
    assert_eq!(ids(&top["result"])[..2], [created[0], created[119]]);
    assert_eq!(top["result"][0]["NUM_COMMENTS"], "1");

    // Cursor mode: over post ids, no total/next.
    let c = ok(
        &p,
        "log.blogpost.get",
        json!({"FIRST_ID": created[10], "LIMIT": 5}),
    )
    .await;
    assert!(c.get("total").is_none() && c.get("next").is_none());
    let mut got = ids(&c["result"]);
    got.sort_unstable();
    assert_eq!(got, created[11..16]);
    let c = ok(&p, "log.blogpost.get", json!({"LAST_ID": created[10]})).await;
    assert_eq!(ids(&c["result"]).len(), 10);
    let c = ok(&p, "log.blogpost.get", json!({"LIMIT": 500})).await;
    assert_eq!(ids(&c["result"]).len(), 120);
    let c = ok(
        &p,
        "log.blogpost.get",
        json!({"FIRST_ID": created[0], "LAST_ID": created[5], "LIMIT": 2}),
    )
    .await;
    let mut got = ids(&c["result"]);
    got.sort_unstable();
    assert_eq!(got, created[1..3]);

    // An unpublished entry keeps its slot: the page becomes an object with gaps.
    p.set_published(created[119], false);
    let page = ok(&p, "log.blogpost.get", json!({})).await;
    let obj = page["result"]
        .as_object()
        .expect("object-shaped short page");
    assert_eq!(obj.len(), 49);
    assert!(obj.contains_key("0") && !obj.contains_key("1"));
    assert_eq!(page["total"], 120);

    let strict = start_with(PortalConfig {
        clamp_out_of_range_page: false,
        ..cfg()
    })
    .await;
    strict.create_post(1, ua_post("one"));
    let past = ok(&strict, "log.blogpost.get", json!({"start": 50})).await;
    assert_eq!(
        (past["result"].clone(), past["total"].clone()),
        (json!([]), json!(1))
    );
}

#[tokio::test]
async fn future_posts_are_hidden_until_their_time() {
    let p = start().await;
    p.set_clock_offset(3600);
    let id = p.create_post(1, ua_post("from the future"));
    p.set_clock_offset(0);
    assert!(ids(&ok(&p, "log.blogpost.get", json!({})).await["result"]).is_empty());
    p.set_clock_offset(7200);
    assert_eq!(
        ids(&ok(&p, "log.blogpost.get", json!({})).await["result"]),
        [id]
    );
    let r = ok(
        &p,
        "log.blogpost.get",
        json!({"LOG_DATE_FROM": "2000-01-01T00:00:00+00:00", "LOG_DATE_TO": "2000-01-02"}),
    )
    .await;
    assert_eq!(r["result"], json!([]));
}

// ---- comments -----------------------------------------------------------------------------

#[tokio::test]
async fn comments_ids_duplicates_and_counts() {
    let p = start().await;
    let u2 = p.add_user(user("Anna"));
    let post = p.create_post(u2, ua_post("discuss"));
    let c1 = ok(
        &p,
        "log.blogcomment.add",
        json!({"POST_ID": post, "TEXT": "Looks great to me!"}),
    )
    .await;
    let c1 = c1["result"].as_u64().expect("comment id is a number");
    let (status, e) = err(
        &p,
        "log.blogcomment.add",
        json!({"POST_ID": post, "TEXT": "  Looks great to me!\n"}),
    )
    .await;
    assert_eq!(
        (status, e),
        (
            400,
            json!({"error":"","error_description":"Duplicate comment"})
        )
    );
    ok(
        &p,
        "log.blogcomment.add",
        json!({"POST_ID": post, "TEXT": "ok"}),
    )
    .await;
    ok(
        &p,
        "log.blogcomment.add",
        json!({"POST_ID": post, "TEXT": "ok"}),
    )
    .await;
    // Only the latest comment counts, and files skip the check.
    ok(
        &p,
        "log.blogcomment.add",
        json!({"POST_ID": post, "TEXT": "Looks great to me!"}),
    )
    .await;
    ok(
        &p,
        "log.blogcomment.add",
        json!({"POST_ID": post, "TEXT": "Looks great to me!", "FILES": [["a.txt", base64(b"hello")]]}),
    )
    .await;
    // Another author may repeat it.
    ok(
        &p,
        "log.blogcomment.add",
        json!({"POST_ID": post, "TEXT": "Looks great to me!", "USER_ID": u2}),
    )
    .await;
    assert_eq!(p.post(post).unwrap().num_comments, 6);
    let item = ok(&p, "log.blogpost.get", json!({"POST_ID": post})).await["result"][0].clone();
    assert_eq!(item["NUM_COMMENTS"], "6");

    let comments = p.comments(post);
    assert_eq!(comments.len(), 6);
    assert_eq!(comments[0].comment_id, c1);
    for c in &comments {
        assert_ne!(c.comment_id, c.log_comment_id);
    }
    let (_, e) = err(
        &p,
        "log.blogcomment.add",
        json!({"POST_ID": 424_242, "TEXT": "x"}),
    )
    .await;
    assert_eq!(e, json!({"error":"","error_description":"No post found"}));
    let (_, e) = err(
        &p,
        "log.blogcomment.add",
        json!({"POST_ID": post, "TEXT": ""}),
    )
    .await;
    assert_eq!(e["error_description"], "Blog comment hasn't been added");

    assert_eq!(
        ok(&p, "log.blogcomment.delete", json!({"COMMENT_ID": c1})).await["result"],
        json!(true)
    );
    assert_eq!(p.post(post).unwrap().num_comments, 5);
    let (_, e) = err(&p, "log.blogcomment.delete", json!({"COMMENT_ID": c1})).await;
    assert_eq!(e, json!({"error":"","error_description":"No delete perms"}));
    let (_, e) = err(&p, "log.blogcomment.delete", json!({})).await;
    assert_eq!(e["error_description"], "Wrong comment ID");
}

#[tokio::test]
async fn comment_user_get_listing() {
    let p = start().await;
    let u2 = p.add_user(user("Anna"));
    let post = p.create_post(u2, ua_post("discuss"));
    let texts = ["first comment", "second comment", "third comment"];
    let mut cids = Vec::new();
    for t in texts {
        cids.push(
            ok(
                &p,
                "log.blogcomment.add",
                json!({"POST_ID": post, "TEXT": t}),
            )
            .await["result"]
                .as_u64()
                .unwrap(),
        );
    }
    let human = p.add_comment(post, u2, "anna writes");
    let view = p.post(post).unwrap();
    let feed_ids: Vec<u64> = p.comments(post).iter().map(|c| c.log_comment_id).collect();

    let r = ok(&p, "log.blogcomment.user.get", json!({})).await;
    let list = r["result"]["comments"].as_array().unwrap();
    assert!(r.get("total").is_none() && r.get("next").is_none());
    assert_eq!(list.len(), 3);
    let first = &list[0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["attach", "comment_id", "date", "id", "log_id", "text"]
    );
    assert_eq!(first["comment_id"], json!(cids[2]));
    assert_eq!(first["id"], json!(feed_ids[2]));
    assert_eq!(first["log_id"], json!(view.log_id));
    assert_ne!(first["log_id"], json!(post));
    assert_eq!(first["text"], "third comment");
    assert_eq!(first["attach"], json!([]));
    assert!(first["date"].as_str().unwrap().ends_with("+03:00"));
    let order: Vec<u64> = list
        .iter()
        .map(|c| c["comment_id"].as_u64().unwrap())
        .collect();
    assert_eq!(order, [cids[2], cids[1], cids[0]]);

    // Cursors run over the feed id.
    let r = ok(
        &p,
        "log.blogcomment.user.get",
        json!({"FIRST_ID": feed_ids[0]}),
    )
    .await;
    let got: Vec<u64> = r["result"]["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [feed_ids[2], feed_ids[1]]);
    let r = ok(
        &p,
        "log.blogcomment.user.get",
        json!({"first_id": 0, "limit": 1}),
    )
    .await;
    let got: Vec<u64> = r["result"]["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [feed_ids[0]]);
    let r = ok(
        &p,
        "log.blogcomment.user.get",
        json!({"LAST_ID": feed_ids[2], "LIMIT": 1}),
    )
    .await;
    assert_eq!(r["result"]["comments"][0]["id"], json!(feed_ids[1]));

    // An admin reading someone else's comments gets no text.
    let r = ok(&p, "log.blogcomment.user.get", json!({"USER_ID": u2})).await;
    let theirs = &r["result"]["comments"];
    assert_eq!(theirs.as_array().unwrap().len(), 1);
    assert_eq!(
        (theirs[0]["comment_id"].clone(), theirs[0]["text"].clone()),
        (json!(human), json!(""))
    );

    let q = start_with(PortalConfig {
        comment_user_get_post_id: true,
        comment_user_get_upper_keys: true,
        ..cfg()
    })
    .await;
    let post = q.create_post(1, ua_post("x"));
    ok(
        &q,
        "log.blogcomment.add",
        json!({"POST_ID": post, "TEXT": "c", "FILES": [["d.png", base64(&png(3, 2))]]}),
    )
    .await;
    let r = ok(&q, "log.blogcomment.user.get", json!({})).await;
    let c = &r["result"]["COMMENTS"][0];
    assert_eq!(c["post_id"], json!(post));
    assert!(c["log_id"].is_u64());
    let disk_id = c["attach"][0].as_u64().unwrap();
    let f = &r["result"]["FILES"][disk_id.to_string()];
    assert_eq!(
        (f["type"].clone(), f["image"].clone()),
        (json!("image"), json!({"width":3,"height":2}))
    );
    assert_eq!(
        (f["name"].clone(), f["size"].clone(), f["authorId"].clone()),
        (json!("d.png"), json!(29), json!(1))
    );
}

// ---- batch --------------------------------------------------------------------------------

#[tokio::test]
async fn batch_references_and_sections() {
    let p = start().await;
    let post = p.create_post(1, ua_post("Weekly report"));
    // serde_json sorts object keys, so the ordered command map is written by hand.
    let body = format!(
        r#"{{"halt":0,"cmd":{{
            "post":"log.blogpost.get?POST_ID={post}",
            "author":"user.get?FILTER[ID]=$result[post][0][AUTHOR_ID]",
            "dept":"user.get?FILTER[UF_DEPARTMENT]=$result[author][0][UF_DEPARTMENT]",
            "say":"log.blogcomment.add?POST_ID={post}&TEXT=about $result[post][0][TITLE] ({{$total[post]}})"
        }}}}"#
    );
    let r = send(
        reqwest::Client::new()
            .post(format!("{}batch", p.webhook_url()))
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = r.body;
    let res = &r["result"];
    assert_eq!(res["result"]["post"][0]["ID"], post.to_string());
    assert_eq!(res["result"]["author"][0]["ID"], "1");
    assert_eq!(res["result"]["dept"][0]["ID"], "1");
    assert!(res["result"]["say"].is_u64());
    // A reference runs to the next whitespace, so `})` is swallowed as on the real server.
    assert_eq!(p.comments(post)[0].text, "about Weekly report ({1");
    assert_eq!(
        res["result_total"],
        json!({"post": 1, "author": 1, "dept": 1})
    );
    assert_eq!(res["result_next"], json!([]));
    assert_eq!(res["result_error"], json!([]));
    let t = res["result_time"]["post"].as_object().unwrap();
    let mut keys: Vec<&str> = t.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "date_finish",
            "date_start",
            "duration",
            "finish",
            "processing",
            "start"
        ]
    );
    let rec = p.requests().pop().unwrap();
    assert_eq!(rec.method, "batch");
    assert_eq!(rec.sub_calls.len(), 4);
    assert_eq!(p.call_count("user.get"), 2);
}

#[tokio::test]
async fn batch_halt_limits_lists_and_errors() {
    let p = start_with(PortalConfig {
        scopes: vec!["user".to_owned()],
        ..cfg()
    })
    .await;
    let cmd = json!({"a": "profile", "b": "no.such.method", "c": "log.blogpost.get", "d": "batch?cmd[x]=profile", "e": "server.time"});
    let r = ok(&p, "batch", json!({"halt": false, "cmd": cmd.clone()})).await["result"].clone();
    assert_eq!(
        r["result_error"],
        json!({
            "b": {"error":"ERROR_METHOD_NOT_FOUND","error_description":"Method not found!"},
            "c": {"error":"insufficient_scope","error_description":""},
            "d": {"error":"ERROR_BATCH_METHOD_NOT_ALLOWED","error_description":"Method is not allowed for batch usage"},
        })
    );
    let mut keys: Vec<&str> = r["result"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["a", "e"]);

    let r = ok(&p, "batch", json!({"halt": 1, "cmd": cmd})).await["result"].clone();
    assert_eq!(r["result"].as_object().unwrap().len(), 1);
    assert_eq!(r["result_error"].as_object().unwrap().len(), 1);

    // List-form cmd: sections are lists when keys are 0..n-1, objects otherwise.
    let r = ok(&p, "batch", json!({"cmd": ["profile", "user.admin"]})).await["result"].clone();
    assert_eq!(r["result"][1], json!(true));
    assert!(r["result"].is_array());
    let r = ok(&p, "batch", json!({"cmd": ["nope", "user.admin"]})).await["result"].clone();
    assert_eq!(r["result"], json!({"1": true}));
    // Key 0 alone is a PHP list.
    assert_eq!(r["result_error"][0]["error"], "ERROR_METHOD_NOT_FOUND");

    let many: Vec<String> = (0..52).map(|_| "user.admin".to_owned()).collect();
    let r = call(&p, "batch", json!({"cmd": many})).await;
    assert_eq!(r.status, 200);
    let res = &r.body["result"];
    assert_eq!(res["result"].as_array().unwrap().len(), 50);
    let rec = p.requests().pop().unwrap();
    assert_eq!(rec.sub_calls.len(), 52);
    assert_eq!(rec.sub_calls[51].method, "user.admin");
    assert_eq!(
        rec.sub_calls[51].error.as_deref(),
        Some("ERROR_BATCH_LENGTH_EXCEEDED")
    );
    assert_eq!(
        res["result_error"],
        json!({
            "50": {"error":"ERROR_BATCH_LENGTH_EXCEEDED","error_description":"Max batch length exceeded"},
            "51": {"error":"ERROR_BATCH_LENGTH_EXCEEDED","error_description":"Max batch length exceeded"},
        })
    );

    // Form-encoded batch with a doubly-encoded sub-query.
    let r = form(&p, "batch", "cmd[me]=user.get%3FFILTER%5BID%5D%3D1&halt=0").await;
    assert_eq!(r.body["result"]["result"]["me"][0]["ID"], "1", "{}", r.raw);
}

// ---- directory and self-check -------------------------------------------------------------

#[tokio::test]
async fn user_get_filters_types_and_pages() {
    let p = start().await;
    let mut made = Vec::new();
    for i in 0..60 {
        made.push(p.add_user(NewUser {
            name: format!("User{i:02}"),
            last_name: "Load".to_owned(),
            photo: (i == 3).then(|| "https://cdn.example/u3.png".to_owned()),
            active: i != 7,
            departments: vec![1],
            ..Default::default()
        }));
    }
    let page1 = ok(&p, "user.get", json!({})).await;
    assert_eq!(
        (page1["total"].clone(), page1["next"].clone()),
        (json!(61), json!(50))
    );
    let bot = page1["result"][0].as_object().unwrap();
    assert_eq!(bot["ID"], "1");
    assert_eq!(bot["ACTIVE"], json!(true));
    assert_eq!(bot["UF_DEPARTMENT"], json!([1]));
    assert_eq!(
        (bot["NAME"].clone(), bot["LAST_NAME"].clone()),
        (json!("Bridge"), json!("Bot"))
    );
    assert!(!bot.contains_key("PERSONAL_PHOTO"));
    let page2 = ok(&p, "user.get", json!({"start": 50})).await;
    assert_eq!(page2["result"].as_array().unwrap().len(), 11);
    assert!(page2.get("next").is_none());

    let two = ok(
        &p,
        "user.get",
        json!({"FILTER": {"ID": [made[0], made[3]]}}),
    )
    .await;
    assert_eq!(ids(&two["result"]), [made[0], made[3]]);
    assert_eq!(
        two["result"][1]["PERSONAL_PHOTO"],
        "https://cdn.example/u3.png"
    );
    let one = ok(&p, "user.get", json!({"filter": {"id": made[5]}})).await;
    assert_eq!(ids(&one["result"]), [made[5]]);
    let active = ok(&p, "user.get", json!({"FILTER": {"ACTIVE": true}})).await;
    assert_eq!(active["total"], 60);
    let inactive = get(&p, "user.get?FILTER[ACTIVE]=N").await.body;
    assert_eq!(ids(&inactive["result"]), [made[7]]);
    assert_eq!(inactive["result"][0]["ACTIVE"], json!(false));
    let gt = ok(&p, "user.get", json!({"FILTER": {">ID": made[57]}})).await;
    assert_eq!(ids(&gt["result"]), [made[58], made[59]]);

    let me = ok(&p, "user.current", json!({})).await;
    assert_eq!(me["result"]["ID"], "1");
    assert!(me.get("total").is_none());
}

#[tokio::test]
async fn self_check_methods() {
    let p = start().await;
    assert_eq!(
        ok(&p, "profile", json!({})).await["result"],
        json!({"ID":"1","ADMIN":true,"NAME":"Bridge","LAST_NAME":"Bot","PERSONAL_GENDER":"","TIME_ZONE":"","TIME_ZONE_OFFSET":10800})
    );
    assert_eq!(
        ok(&p, "scope", json!({})).await["result"],
        json!(["log", "user", "department", "sonet_group", "disk"])
    );
    let full = get(&p, "scope?full=true").await.body["result"].clone();
    assert!(full.as_array().unwrap().contains(&json!("im")));
    assert_eq!(
        ok(&p, "method.get", json!({"name": "log.blogpost.get"})).await["result"],
        json!({"isExisting": true, "isAvailable": true})
    );
    assert_eq!(
        ok(&p, "method.get", json!({"name": "im.notify.get"})).await["result"],
        json!({"isExisting": false, "isAvailable": false})
    );
    assert_eq!(ok(&p, "user.admin", json!({})).await["result"], json!(true));
    let (status, e) = err(&p, "feature.get", json!({})).await;
    assert_eq!(
        (status, e),
        (
            400,
            json!({"error":"CODE_EMPTY","error_description":"CODE can't be empty"})
        )
    );
    assert_eq!(
        ok(&p, "feature.get", json!({"code": "rest_offline_extended"})).await["result"],
        json!({"value": "Y"})
    );
    let methods = ok(&p, "methods", json!({})).await["result"].clone();
    assert!(
        methods
            .as_array()
            .unwrap()
            .contains(&json!("log.blogpost.add"))
    );
    assert!(
        !methods
            .as_array()
            .unwrap()
            .contains(&json!("log.blogcomment.user.get"))
    );

    let eng = p.add_department("Engineering", Some(1));
    let deps = ok(&p, "department.get", json!({})).await;
    assert_eq!(
        deps["result"],
        json!([
            {"ID":"1","NAME":"Bridge Sandbox","SORT":500,"UF_HEAD":"1"},
            {"ID": eng.to_string(),"NAME":"Engineering","SORT":500,"PARENT":"1","UF_HEAD":"0"},
        ])
    );
    assert_eq!(deps["total"], 2);
    let only = ok(&p, "department.get", json!({"PARENT": 1})).await;
    assert_eq!(only["total"], 1);

    let g = p.add_group("Project X");
    p.add_group_member(g, 1);
    let groups = ok(&p, "sonet_group.get", json!({})).await;
    let item = &groups["result"][0];
    assert_eq!(
        (
            item["ID"].clone(),
            item["NAME"].clone(),
            item["NUMBER_OF_MEMBERS"].clone(),
            item["OWNER_ID"].clone()
        ),
        (
            json!(g.to_string()),
            json!("Project X"),
            json!("1"),
            json!("1")
        )
    );
}

// ---- limits and faults --------------------------------------------------------------------

#[tokio::test]
async fn leaky_bucket() {
    let p = start_with(PortalConfig {
        rate_limit: Some(LeakyBucket {
            burst: 3.0,
            drain_per_sec: 4.0,
        }),
        ..cfg()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);
    }
    for _ in 0..3 {
        let r = call(&p, "user.admin", json!({})).await;
        assert_eq!(r.status, 503);
        assert_eq!(
            r.body,
            json!({"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"})
        );
    }
    assert_eq!(p.rate_limit_rejections(), 3);
    // Rejections did not fill the bucket: half a second drains two requests' worth.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);
    assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);

    // A batch costs one token however many commands it has.
    p.set_rate_limit(Some(LeakyBucket {
        burst: 2.0,
        drain_per_sec: 0.001,
    }));
    let cmds: Vec<&str> = vec!["user.admin"; 20];
    assert_eq!(call(&p, "batch", json!({"cmd": cmds})).await.status, 200);
    assert_eq!(call(&p, "batch", json!({"cmd": cmds})).await.status, 200);
    assert_eq!(call(&p, "batch", json!({"cmd": cmds})).await.status, 503);
    p.set_rate_limit(None);
    assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);
}

#[tokio::test]
async fn injected_faults() {
    let p = start().await;
    p.inject(Fault {
        method: Some("profile".to_owned()),
        kind: FaultKind::QueryLimitExceeded,
        times: 2,
    });
    assert_eq!(call(&p, "profile", json!({})).await.status, 503);
    assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);
    assert_eq!(call(&p, "profile", json!({})).await.status, 503);
    assert_eq!(call(&p, "profile", json!({})).await.status, 200);
    assert_eq!(p.rate_limit_rejections(), 0);

    p.inject(Fault {
        method: Some("log.blogpost.get".to_owned()),
        kind: FaultKind::OperationTimeLimit,
        times: 2,
    });
    let (status, e) = err(&p, "log.blogpost.get", json!({})).await;
    assert_eq!(
        (status, e),
        (
            429,
            json!({"error":"OPERATION_TIME_LIMIT","error_description":"Method is blocked due to operation time limit"})
        )
    );
    let r = ok(
        &p,
        "batch",
        json!({"cmd": {"a": "log.blogpost.get", "b": "profile"}}),
    )
    .await;
    assert_eq!(
        r["result"]["result_error"]["a"]["error"],
        "OPERATION_TIME_LIMIT"
    );
    assert!(r["result"]["result"]["b"].is_object());
    let r = ok(&p, "log.blogpost.get", json!({})).await;
    assert!(
        r["time"]["operating_reset_at"].as_i64().unwrap()
            > r["time"]["finish"].as_f64().unwrap() as i64
    );

    p.inject(Fault {
        method: None,
        kind: FaultKind::ServerError(502),
        times: 1,
    });
    let r = call(&p, "user.admin", json!({})).await;
    assert_eq!(r.status, 502);
    assert!(r.content_type.starts_with("text/html"));
    assert!(r.raw.contains("<title>502 Bad Gateway</title>"));

    p.inject(Fault {
        method: Some("user.admin".to_owned()),
        kind: FaultKind::ConnectionReset,
        times: 1,
    });
    let url = format!("{}user.admin", p.webhook_url());
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
    assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);
    assert!(
        p.requests()
            .iter()
            .any(|r| r.status == 0 && r.error.as_deref() == Some("CONNECTION_RESET"))
    );

    p.inject(Fault {
        method: None,
        kind: FaultKind::Delay(Duration::from_millis(300)),
        times: 1,
    });
    let t = Instant::now();
    assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    p.inject(Fault {
        method: None,
        kind: FaultKind::MethodError {
            status: 500,
            code: "ERROR_CORE".to_owned(),
            description: "SQL query error!".to_owned(),
        },
        times: 1,
    });
    let r = ok(&p, "batch", json!({"cmd": ["user.admin"]})).await;
    assert_eq!(
        r["result"]["result_error"][0],
        json!({"error":"ERROR_CORE","error_description":"SQL query error!"})
    );
    assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);
}

#[tokio::test]
async fn probabilistic_faults_are_seeded() {
    async fn outcomes(seed: u64) -> Vec<u16> {
        let p = start_with(PortalConfig { seed, ..cfg() }).await;
        p.set_fault_ratio(
            None,
            0.5,
            vec![FaultKind::ServerError(500), FaultKind::QueryLimitExceeded],
        );
        let mut out = Vec::new();
        for _ in 0..30 {
            out.push(call(&p, "user.admin", json!({})).await.status);
        }
        p.set_fault_ratio(None, 0.0, Vec::new());
        assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);
        out
    }
    let a = outcomes(7).await;
    assert_eq!(a, outcomes(7).await);
    let failures = a.iter().filter(|s| **s != 200).count();
    assert!((5..=25).contains(&failures), "{a:?}");
    assert!(a.contains(&500) && a.contains(&503));
}

// ---- harness ------------------------------------------------------------------------------

#[tokio::test]
async fn wait_until_wakes_on_changes() {
    let p = start().await;
    let post = p.create_post(1, ua_post("watch me"));
    let writer = p.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.add_comment(post, 1, "hello");
    });
    let t = Instant::now();
    assert!(
        p.wait_until(Duration::from_secs(10), |p| p.comments(post).len() == 1)
            .await
    );
    assert!(t.elapsed() < Duration::from_secs(2));

    let q = p.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call(&q, "profile", json!({})).await;
    });
    assert!(
        p.wait_until(Duration::from_secs(10), |p| p.request_count("profile") == 1)
            .await
    );

    let t = Instant::now();
    assert!(!p.wait_until(Duration::from_millis(100), |_| false).await);
    assert!(t.elapsed() >= Duration::from_millis(100) && t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn control_api() {
    let p = start().await;
    let base = p.base_url();
    let c = reqwest::Client::new();
    let u: Value = c
        .post(format!("{base}_sandbox/users"))
        .json(&json!({"name":"Demo","last_name":"User","departments":[1]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uid = u["id"].as_u64().unwrap();
    let post: Value = c
        .post(format!("{base}_sandbox/posts"))
        .json(&json!({"author": uid, "text": "Hello from the UI #demo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = post["id"].as_u64().unwrap();
    let r = c
        .post(format!("{base}_sandbox/posts/{pid}/comments"))
        .json(&json!({"author": uid, "text": "first!"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = c
        .patch(format!("{base}_sandbox/posts/{pid}"))
        .json(&json!({"title": "Edited", "text": "new body"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let comments: Value = c
        .get(format!("{base}_sandbox/posts/{pid}/comments"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(comments[0]["text"], "first!");
    let posts: Value = c
        .get(format!("{base}_sandbox/posts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(posts[0]["title"], "Edited");
    assert_eq!(posts[0]["num_comments"], 1);
    let r = c
        .get(format!("{base}_sandbox/posts/999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{base}_sandbox/posts"))
        .json(&json!({"author": 999, "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .delete(format!("{base}_sandbox/posts/{pid}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(p.post(pid).unwrap().deleted);
    // UI actions are not REST requests.
    assert!(p.requests().is_empty());
    let info = c
        .get(format!("{base}_sandbox"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!info.contains(SECRET));
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let p = start().await;
    assert_eq!(call(&p, "user.admin", json!({})).await.status, 200);
    p.shutdown();
    let url = format!("{}user.admin", p.webhook_url());
    let mut refused = false;
    for _ in 0..50 {
        if reqwest::Client::new().get(&url).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused);
}

#[tokio::test]
async fn malformed_requests_get_envelopes_not_panics() {
    let p = start().await;
    let nasty = [
        json!({"POST_ID": {"a": [1, {"b": null}]}, "DEST": [[["UA"]]], "FILES": "zz", "USER_ID": "99999999999999999999"}),
        json!({"POST_ID": 1e300, "TEXT": ["x"], "COMMENT_ID": -5, "LIMIT": "-1", "FIRST_ID": "abc"}),
        json!([1, 2, 3]),
        json!("just a string"),
        json!({"cmd": {"a": ["nested"], "b": "$result[a][0][1][2]", "c": "log.blogpost.get?POST_ID=$result"}, "halt": [1]}),
        json!({"FILTER": "not an array", "LOG_RIGHTS": {"x": {"y": 1}}, "start": "9999999999999999999999"}),
    ];
    let methods = [
        "log.blogpost.get",
        "log.blogpost.add",
        "log.blogpost.update",
        "log.blogpost.delete",
        "log.blogpost.share",
        "log.blogpost.getusers.important",
        "log.blogcomment.add",
        "log.blogcomment.delete",
        "log.blogcomment.user.get",
        "batch",
        "user.get",
        "department.get",
        "sonet_group.get",
        "feature.get",
        "method.get",
        "scope",
    ];
    for m in methods {
        for body in &nasty {
            let r = call(&p, m, body.clone()).await;
            assert!(r.body.is_object(), "{m} {body}: {} {}", r.status, r.raw);
            assert!(
                r.status == 200 || r.body.get("error").is_some(),
                "{m}: {}",
                r.raw
            );
        }
        let r = form(&p, m, "a[[[=1&%ZZ=%&DEST[0][=x&&=&FILTER[ID][]").await;
        assert!(r.body.is_object(), "{m}: {}", r.raw);
    }
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let r = send(
        reqwest::Client::new()
            .post(format!("{}log.blogpost.get", p.webhook_url()))
            .header("content-type", "application/json")
            .body(deep),
    )
    .await;
    assert_eq!(r.status, 200);
    let deep_key = format!("a{}=1", "[x]".repeat(100));
    assert_eq!(form(&p, "log.blogpost.get", &deep_key).await.status, 200);
}

/// `disk.attachedObject.get` (docs/platforms/bitrix24.md §8): string numbers, inside `batch`,
/// `ERROR_NOT_FOUND` for unknown ids; `DOWNLOAD_URL` serves the bytes only with its token
/// and a `User-Agent`, and nginx's 404 page without one.
#[tokio::test]
async fn attached_files_are_described_and_downloaded() {
    let p = start().await;
    let bytes = b"%PDF-1.4 a regulation".to_vec();
    let post = p.create_post(
        1,
        NewPost {
            files: vec![livefeed_sandbox::bitrix::NewFile {
                name: "rules.pdf".into(),
                bytes: bytes.clone(),
            }],
            ..ua_post("with a file")
        },
    );
    let listed = ok(&p, "log.blogpost.get", json!({ "POST_ID": post })).await["result"].clone();
    let attached = listed[0]["FILES"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("FILES holds numbers: {listed}"));
    assert_eq!(
        p.post_files(post),
        vec![(attached, "rules.pdf".to_string())]
    );

    let obj = ok(&p, "disk.attachedObject.get", json!({ "id": attached })).await["result"].clone();
    assert_eq!(obj["ID"], json!(attached.to_string()));
    assert_eq!(obj["NAME"], json!("rules.pdf"));
    assert_eq!(obj["SIZE"], json!(bytes.len().to_string()));
    assert!(obj["OBJECT_ID"].is_string() && obj["CREATED_BY"] == json!("1"));
    let url = obj["DOWNLOAD_URL"].as_str().expect("a URL").to_string();
    assert!(url.starts_with(&p.portal_url()) && url.contains("attachedId="));

    let in_batch = ok(
        &p,
        "batch",
        json!({ "halt": 0, "cmd": { "a": format!("disk.attachedObject.get?id={attached}"), "b": "disk.attachedObject.get?id=999999" } }),
    )
    .await["result"]
    .clone();
    assert_eq!(in_batch["result"]["a"]["NAME"], json!("rules.pdf"));
    assert_eq!(
        in_batch["result_error"]["b"]["error"],
        json!("ERROR_NOT_FOUND")
    );
    let (status, e) = err(&p, "disk.attachedObject.get", json!({ "id": 999999 })).await;
    assert_eq!(
        (status, e["error"].clone()),
        (400, json!("ERROR_NOT_FOUND"))
    );

    let http = reqwest::Client::new();
    let good = http
        .get(&url)
        .header("User-Agent", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(good.status().as_u16(), 200);
    assert_eq!(good.headers()["content-type"], "application/pdf");
    assert!(
        good.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("rules.pdf")
    );
    assert_eq!(good.bytes().await.unwrap().to_vec(), bytes);
    let no_agent = reqwest::Client::builder()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(no_agent.status().as_u16(), 404);
    assert!(no_agent.text().await.unwrap().contains("nginx"));
    let forged = url.replace("auth%5Bauth%5D=", "auth%5Bauth%5D=x");
    let refused = http
        .get(&forged)
        .header("User-Agent", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(p.downloads(), 1);
    assert!(
        p.requests()
            .iter()
            .all(|r| !format!("{r:?}").contains(SECRET)),
        "the request log never holds credentials"
    );

    // Files attached and taken off later, as a person edits the post.
    let second = p.add_post_file(post, "plan.png", &png(4, 4));
    assert_eq!(p.post_files(post).len(), 2);
    p.remove_post_file(post, second);
    assert_eq!(
        p.post_files(post),
        vec![(attached, "rules.pdf".to_string())]
    );

    // A comment's FILES are stored and readable back.
    let id = ok(
        &p,
        "log.blogcomment.add",
        json!({ "POST_ID": post, "TEXT": "see attached", "FILES": [["desk.png", base64(b"PNGDATA")]] }),
    )
    .await;
    let id = id["result"].as_u64().expect("comment id");
    assert_eq!(
        p.comment_files(id),
        vec![("desk.png".to_string(), b"PNGDATA".to_vec())]
    );
}
