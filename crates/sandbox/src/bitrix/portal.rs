//! The public handle: start/stop, UI-side actions, assertions and fault injection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::config::{
    CommentView, EventBinding, Fault, FaultKind, LeakyBucket, NewPost, NewUser, OfflineRow,
    PortalConfig, PostView, PushRecord, RequestRecord,
};
use super::events;
use super::methods::DOWNLOAD_METHOD;
use super::server::{self, Shared};
use super::state::{Portal, SandboxError};

/// A running fake Bitrix24 portal. Clones share the portal; the server stops when
/// [`FakePortal::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct FakePortal {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Panics with the caller's location: misuse of the test API is a bug in the test.
#[track_caller]
fn expect<T>(what: &str, r: Result<T, SandboxError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("FakePortal::{what}: {e}"),
    }
}

impl FakePortal {
    /// Starts the portal on `127.0.0.1` with an OS-assigned port.
    pub async fn start(cfg: PortalConfig) -> std::io::Result<FakePortal> {
        Self::start_on(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts the portal on `addr`; URLs name loopback when `addr` is a wildcard.
    pub async fn start_on(cfg: PortalConfig, addr: SocketAddr) -> std::io::Result<FakePortal> {
        let shared = Arc::new(Shared::new(Portal::new(cfg)));
        let (addr, stop) = server::spawn(shared.clone(), addr).await?;
        let addr = crate::reachable(addr);
        shared.write(|p| p.base_url = format!("http://{addr}"));
        Ok(FakePortal {
            inner: Arc::new(Handle { shared, addr, stop }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT/`
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.inner.addr)
    }

    /// `http://127.0.0.1:PORT/rest/USER/SECRET/` (contains the secret: do not log it).
    pub fn webhook_url(&self) -> String {
        let (user, secret) = self.read(|p| (p.cfg.webhook_user, p.cfg.webhook_secret.clone()));
        format!("http://{}/rest/{user}/{secret}/", self.inner.addr)
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): the portal and its OAuth server, what
    /// the bridge's `oauth.server` and `oauth.portal` point at.
    pub fn portal_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Stops accepting connections; in-flight requests may finish.
    pub fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
    }

    fn read<R>(&self, f: impl FnOnce(&Portal) -> R) -> R {
        self.inner.shared.read(f)
    }

    fn write<R>(&self, f: impl FnOnce(&mut Portal) -> R) -> R {
        self.inner.shared.write(f)
    }

    // ---- directory ---------------------------------------------------------------

    /// # Panics
    /// If a department does not exist.
    #[track_caller]
    pub fn add_user(&self, u: NewUser) -> u64 {
        expect("add_user", self.write(|p| p.add_user(u)))
    }

    /// # Panics
    /// If `parent` does not exist. The root department (id 1) always exists.
    #[track_caller]
    pub fn add_department(&self, name: &str, parent: Option<u64>) -> u64 {
        expect(
            "add_department",
            self.write(|p| p.add_department(name, parent)),
        )
    }

    /// A workgroup without members (its owner becomes the first member added).
    pub fn add_group(&self, name: &str) -> u64 {
        self.write(|p| p.add_group(name))
    }

    /// # Panics
    /// If the group or user does not exist.
    #[track_caller]
    pub fn add_group_member(&self, group: u64, user: u64) {
        expect(
            "add_group_member",
            self.write(|p| p.add_group_member(group, user)),
        );
    }

    /// A user leaves a workgroup: the group's posts are no longer visible to them.
    ///
    /// # Panics
    /// If the group does not exist.
    #[track_caller]
    pub fn remove_group_member(&self, group: u64, user: u64) {
        expect(
            "remove_group_member",
            self.write(|p| p.remove_group_member(group, user)),
        );
    }

    /// # Panics
    /// If the user does not exist.
    #[track_caller]
    pub fn set_user_active(&self, user: u64, active: bool) {
        expect(
            "set_user_active",
            self.write(|p| p.set_user_active(user, active)),
        );
    }

    /// Moves a user (the webhook user included) to other departments.
    ///
    /// # Panics
    /// If the user or a department does not exist.
    #[track_caller]
    pub fn set_user_departments(&self, user: u64, departments: Vec<u64>) {
        expect(
            "set_user_departments",
            self.write(|p| p.set_user_departments(user, departments)),
        );
    }

    /// Replaces the scopes of the webhook.
    pub fn set_scopes(&self, scopes: &[&str]) {
        self.write(|p| p.cfg.scopes = scopes.iter().map(|s| (*s).to_owned()).collect());
    }

    /// Replaces the scopes of the OAuth app (tokens already issued follow at once).
    pub fn set_oauth_scopes(&self, scopes: &[&str]) {
        self.write(|p| p.cfg.oauth.scopes = scopes.iter().map(|s| (*s).to_owned()).collect());
    }

    // ---- the OAuth app -----------------------------------------------------------

    /// A fresh refresh token for the installing admin: what the `ONAPPINSTALL` callback
    /// hands over.
    pub fn issue_refresh_token(&self) -> String {
        self.write(|p| {
            let user = p.oauth_user();
            let token = p.mint_refresh(user);
            p.oauth.issued.push(token.clone());
            token
        })
    }

    /// A fresh single-use authorization code (valid 30 s), as `/oauth/authorize/` would
    /// put in its redirect.
    pub fn authorization_code(&self) -> String {
        self.write(|p| {
            let user = p.oauth_user();
            p.mint_code(user)
        })
    }

    /// Every access token issued so far expires now (refresh tokens stay valid).
    pub fn expire_access_tokens(&self) {
        self.write(|p| p.expire_access_tokens());
    }

    /// The admin revoked the app: no access token, refresh token or code issued so far
    /// works. Event bindings and the offline queue stay.
    pub fn revoke_grants(&self) {
        self.write(|p| p.revoke_grants());
    }

    /// Successful `grant_type=refresh_token` exchanges.
    pub fn oauth_refreshes(&self) -> u64 {
        self.read(|p| p.oauth.refreshes)
    }

    /// Every access and refresh token the token endpoint handed out, oldest first (secrets:
    /// for tests that search logs for them).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.read(|p| p.oauth.issued.clone())
    }

    // ---- events ------------------------------------------------------------------

    /// The app's `event.bind` registrations, by id.
    pub fn event_bindings(&self) -> Vec<EventBinding> {
        self.read(|p| p.binding_views())
    }

    /// The offline queue, by id (reserved and error rows included).
    pub fn offline_rows(&self) -> Vec<OfflineRow> {
        self.read(|p| p.offline_views())
    }

    /// Online pushes sent so far, in the order they finished.
    pub fn pushes(&self) -> Vec<PushRecord> {
        self.read(|p| p.events.pushes.clone())
    }

    /// Sends one push for `event` and `post_id` to `url` now, with `application_token` in
    /// place of the app's and an access token the portal never issued (a forgery). Not
    /// recorded in [`FakePortal::pushes`]. Returns the handler's status, if it answered.
    pub async fn push_with_token(
        &self,
        event: &str,
        post_id: u64,
        url: &str,
        application_token: &str,
    ) -> Option<u16> {
        let (form, ts, timeout) = self.write(|p| {
            let form = p.forged_push(event, post_id, url, application_token);
            (form, p.now_secs(), p.cfg.push_timeout)
        });
        let client = events::push_client(timeout);
        events::deliver(&client, url, &events::with_ts(form, ts))
            .await
            .0
    }

    // ---- what people do in the UI ------------------------------------------------

    /// # Panics
    /// If the author does not exist or the text is empty.
    #[track_caller]
    pub fn create_post(&self, author: u64, post: NewPost) -> u64 {
        expect(
            "create_post",
            self.write(|p| p.ui_create_post(author, post)),
        )
    }

    /// Same title rule as `log.blogpost.update`: no title makes the post MICRO.
    ///
    /// # Panics
    /// If the post does not exist or the text is empty.
    #[track_caller]
    pub fn update_post(&self, id: u64, title: Option<String>, text: &str) {
        expect(
            "update_post",
            self.write(|p| p.ui_update_post(id, title, text)),
        );
    }

    /// # Panics
    /// If the post does not exist.
    #[track_caller]
    pub fn set_important(&self, id: u64, important: bool) {
        expect(
            "set_important",
            self.write(|p| p.ui_set_important(id, important)),
        );
    }

    /// Makes a post important until `until` (unix seconds), as its author's edit does.
    ///
    /// # Panics
    /// If the post does not exist.
    #[track_caller]
    pub fn set_important_until(&self, id: u64, until: i64) {
        expect(
            "set_important_until",
            self.write(|p| p.ui_set_important_until(id, until)),
        );
    }

    /// Marks an important post as read by `user` (`log.blogpost.getusers.important`).
    ///
    /// # Panics
    /// If the post or user does not exist.
    #[track_caller]
    pub fn read_important(&self, id: u64, user: u64) {
        expect(
            "read_important",
            self.write(|p| p.ui_read_important(id, user)),
        );
    }

    /// # Panics
    /// If the post does not exist.
    #[track_caller]
    pub fn share_post(&self, id: u64, dest: Vec<String>) {
        expect("share_post", self.write(|p| p.ui_share_post(id, dest)));
    }

    /// # Panics
    /// If the post does not exist or is already deleted.
    #[track_caller]
    pub fn delete_post(&self, id: u64) {
        expect("delete_post", self.write(|p| p.ui_delete_post(id)));
    }

    /// A human's comment: `NUM_COMMENTS` + 1 and the post moves to the top of the feed.
    ///
    /// # Panics
    /// If the post or author does not exist or the text is empty.
    #[track_caller]
    pub fn add_comment(&self, post: u64, author: u64, text: &str) -> u64 {
        expect(
            "add_comment",
            self.write(|p| p.ui_add_comment(post, author, text)),
        )
    }

    /// The author attaches a file to a post (an edit: the post moves up the feed). Returns
    /// the attached-object id.
    ///
    /// # Panics
    /// If the post does not exist or `bytes` is empty.
    #[track_caller]
    pub fn add_post_file(&self, post: u64, name: &str, bytes: &[u8]) -> u64 {
        expect(
            "add_post_file",
            self.write(|p| p.ui_add_post_file(post, name, bytes)),
        )
    }

    /// The author takes a file off a post (an edit).
    ///
    /// # Panics
    /// If the post does not exist.
    #[track_caller]
    pub fn remove_post_file(&self, post: u64, attached_id: u64) {
        expect(
            "remove_post_file",
            self.write(|p| p.ui_remove_post_file(post, attached_id)),
        );
    }

    /// # Panics
    /// If the comment does not exist or is already deleted.
    #[track_caller]
    pub fn delete_comment(&self, comment_id: u64) {
        expect(
            "delete_comment",
            self.write(|p| p.ui_delete_comment(comment_id)),
        );
    }

    /// Models a feed entry whose post is not (or no longer) published: it keeps its
    /// place in the feed query but is dropped from the page, like the real server.
    ///
    /// # Panics
    /// If the post does not exist.
    #[track_caller]
    pub fn set_published(&self, id: u64, published: bool) {
        expect(
            "set_published",
            self.write(|p| p.post_mut(id).map(|x| x.published = published)),
        );
    }

    /// `HAS_PROPS = "N"` hides all `UF_*` fields of the post in `log.blogpost.get`.
    ///
    /// # Panics
    /// If the post does not exist.
    #[track_caller]
    pub fn set_has_props(&self, id: u64, has_props: bool) {
        expect(
            "set_has_props",
            self.write(|p| p.post_mut(id).map(|x| x.has_props = has_props)),
        );
    }

    /// Shifts the portal clock (dates it prints, what counts as "now" for the feed).
    pub fn set_clock_offset(&self, secs: i64) {
        self.write(|p| p.set_clock_offset(secs));
    }

    // ---- state -------------------------------------------------------------------

    pub fn post(&self, id: u64) -> Option<PostView> {
        self.read(|p| p.posts.get(&id).map(|x| p.post_view(x)))
    }

    /// All posts including deleted ones, by id.
    pub fn posts(&self) -> Vec<PostView> {
        self.read(|p| p.posts.values().map(|x| p.post_view(x)).collect())
    }

    /// Live comments of a post, oldest first.
    /// Live comments on every post, counted without copying.
    pub fn comment_count(&self) -> usize {
        self.read(|p| p.comments.values().filter(|c| !c.deleted).count())
    }

    pub fn comments(&self, post: u64) -> Vec<CommentView> {
        self.read(|p| p.comment_views(post))
    }

    /// Name and bytes of each file attached to a blog comment, in order.
    pub fn comment_files(&self, comment_id: u64) -> Vec<(String, Vec<u8>)> {
        self.read(|p| {
            let Some(c) = p.comments.get(&comment_id) else {
                return Vec::new();
            };
            c.files
                .iter()
                .filter_map(|a| p.attachments.get(a))
                .filter_map(|d| p.disk.get(d))
                .map(|f| (f.name.clone(), f.content.clone()))
                .collect()
        })
    }

    /// A post's attached files: (attached-object id, name), in order.
    pub fn post_files(&self, post: u64) -> Vec<(u64, String)> {
        self.read(|p| {
            let Some(x) = p.posts.get(&post) else {
                return Vec::new();
            };
            x.files
                .iter()
                .filter_map(|a| {
                    let disk = p.attachments.get(a)?;
                    Some((*a, p.disk.get(disk)?.name.clone()))
                })
                .collect()
        })
    }

    /// Successful file downloads (`DOWNLOAD_URL` fetches).
    pub fn downloads(&self) -> usize {
        self.read(|p| {
            p.requests
                .iter()
                .filter(|r| r.method == DOWNLOAD_METHOD && r.status == 200)
                .count()
        })
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.read(|p| p.requests.clone())
    }

    /// Top-level REST requests of `method` (lower-case name).
    pub fn request_count(&self, method: &str) -> usize {
        let method = method.to_ascii_lowercase();
        self.read(|p| p.requests.iter().filter(|r| r.method == method).count())
    }

    /// Calls of `method` including `batch` sub-calls.
    pub fn call_count(&self, method: &str) -> usize {
        let method = method.to_ascii_lowercase();
        self.read(|p| {
            p.requests
                .iter()
                .map(|r| {
                    usize::from(r.method == method)
                        + r.sub_calls.iter().filter(|s| s.method == method).count()
                })
                .sum()
        })
    }

    /// How many requests the leaky bucket answered with `503 QUERY_LIMIT_EXCEEDED`.
    pub fn rate_limit_rejections(&self) -> usize {
        self.read(|p| p.rate_limit_rejections)
    }

    // ---- faults ------------------------------------------------------------------

    pub fn inject(&self, f: Fault) {
        self.write(|p| p.inject(f));
    }

    /// Injected faults not used up yet (a delay counts as used once its request started).
    pub fn faults_left(&self) -> usize {
        self.read(|p| p.faults.iter().map(|f| f.times).sum())
    }

    /// Fails a `ratio` of matching calls with a kind picked from `kinds`, using the
    /// seeded RNG. A ratio of 0 (or no kinds) removes the rule for `method`.
    pub fn set_fault_ratio(&self, method: Option<&str>, ratio: f64, kinds: Vec<FaultKind>) {
        self.write(|p| p.set_fault_ratio(method, ratio, kinds));
    }

    /// Replaces the limiter (`None` disables it); the bucket starts empty.
    pub fn set_rate_limit(&self, limit: Option<LeakyBucket>) {
        self.write(|p| p.set_rate_limit(limit));
    }

    /// Waits until `pred` holds, re-checking on every state change (REST requests
    /// included). Returns `false` on timeout.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&FakePortal) -> bool) -> bool {
        let mut changes = self.inner.shared.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if pred(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return pred(self),
            }
        }
    }
}
