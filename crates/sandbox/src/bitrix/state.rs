//! The portal model: directory, feed, clock, request log, limiter and fault queue.
//! Everything here is synchronous and runs under the portal mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::config::{
    CommentView, Fault, FaultKind, LeakyBucket, NewPost, NewUser, PortalConfig, PostView,
    RequestRecord,
};
use super::events::{EventState, Origin, PostEvent};
use super::oauth::OAuthState;
use super::time::{self, MICROS};

/// Misuse of the model through the Rust or control API (REST errors are `ApiError`s).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SandboxError {
    #[error("no user {0}")]
    UnknownUser(u64),
    #[error("no department {0}")]
    UnknownDepartment(u64),
    #[error("no group {0}")]
    UnknownGroup(u64),
    #[error("no post {0}")]
    UnknownPost(u64),
    #[error("no comment {0}")]
    UnknownComment(u64),
    #[error("text must not be empty")]
    EmptyText,
}

pub(crate) struct User {
    pub id: u64,
    pub name: String,
    pub last_name: String,
    pub photo: Option<String>,
    pub admin: bool,
    pub departments: Vec<u64>,
    pub active: bool,
    pub registered: i64,
    /// `None`: `user<id>@<portal host>`.
    pub email: Option<String>,
}

pub(crate) struct Department {
    pub id: u64,
    pub name: String,
    pub parent: Option<u64>,
    pub sort: i64,
    pub head: Option<u64>,
}

pub(crate) struct Group {
    pub id: u64,
    pub name: String,
    pub owner: u64,
    pub members: BTreeSet<u64>,
    pub created: i64,
    pub activity: i64,
}

pub(crate) struct Post {
    pub id: u64,
    pub log_id: u64,
    pub blog_id: u64,
    pub author: u64,
    pub title: String,
    pub micro: bool,
    pub text: String,
    pub dest: Vec<String>,
    pub important: bool,
    pub important_date_end: Option<i64>,
    pub important_readers: Vec<u64>,
    pub categories: Vec<u64>,
    /// Attached-object ids.
    pub files: Vec<u64>,
    pub has_props: bool,
    pub published: bool,
    pub deleted: bool,
    /// Microseconds; the feed only shows entries whose date has come.
    pub date_publish: i64,
    pub log_update: i64,
    pub num_comments: u64,
}

impl Post {
    /// The rights the blog module stores for the post, which `LOG_RIGHTS` filters on: its
    /// destinations, the author's own `U<author>` (`"U".$arPost["AUTHOR_ID"]` is always
    /// appended), and for posts to everyone `G2` and `AU` besides the `UA` the REST docs name.
    pub(crate) fn rights(&self) -> Vec<String> {
        let mut rights = self.dest.clone();
        if self.dest.iter().any(|d| d == "UA") {
            rights.extend(["G2".to_string(), "AU".to_string()]);
        }
        rights.push(format!("U{}", self.author));
        rights
    }
}

pub(crate) struct Comment {
    pub id: u64,
    pub log_comment_id: u64,
    pub post_id: u64,
    pub author: u64,
    pub text: String,
    pub date: i64,
    /// Attached-object ids.
    pub files: Vec<u64>,
    pub deleted: bool,
}

pub(crate) struct DiskFile {
    pub id: u64,
    pub name: String,
    pub size: u64,
    /// The bytes, served by the download endpoint.
    pub content: Vec<u8>,
    pub created_by: u64,
    pub created: i64,
    pub image: Option<(u32, u32)>,
}

pub(crate) struct Category {
    pub id: u64,
    pub blog_id: u64,
    pub name: String,
}

/// Id counters. Secondary id spaces advance with random gaps (other feed activity)
/// so that "feed id = post id + constant" assumptions fail in tests.
struct Ids {
    user: u64,
    department: u64,
    group: u64,
    post: u64,
    log: u64,
    blog: u64,
    comment: u64,
    log_comment: u64,
    attach: u64,
    disk: u64,
    category: u64,
}

struct Bucket {
    cfg: LeakyBucket,
    level: f64,
    at: Instant,
}

struct FaultRatio {
    method: Option<String>,
    ratio: f64,
    kinds: Vec<FaultKind>,
}

/// Where a fault applies: before the method runs (transport) or as its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultLevel {
    Transport,
    Method,
}

impl FaultKind {
    fn level(&self) -> FaultLevel {
        match self {
            FaultKind::OperationTimeLimit | FaultKind::MethodError { .. } => FaultLevel::Method,
            _ => FaultLevel::Transport,
        }
    }
}

pub(crate) struct Portal {
    pub cfg: PortalConfig,
    pub users: BTreeMap<u64, User>,
    pub departments: BTreeMap<u64, Department>,
    pub groups: BTreeMap<u64, Group>,
    pub posts: BTreeMap<u64, Post>,
    pub comments: BTreeMap<u64, Comment>,
    pub categories: Vec<Category>,
    /// Attached-object id → Disk file id.
    pub attachments: BTreeMap<u64, u64>,
    pub disk: BTreeMap<u64, DiskFile>,
    blogs: BTreeMap<u64, u64>,
    ids: Ids,
    clock_offset: i64,
    last_stamp: i64,
    pub requests: Vec<RequestRecord>,
    pub rate_limit_rejections: usize,
    bucket: Option<Bucket>,
    pub(crate) faults: Vec<Fault>,
    ratios: Vec<FaultRatio>,
    rng: fastrand::Rng,
    operating: HashMap<String, Vec<(i64, f64)>>,
    seq: u64,
    /// Issued OAuth tokens and codes.
    pub oauth: OAuthState,
    /// Event bindings, the offline queue, pushes.
    pub events: EventState,
    /// `http://HOST:PORT` of the listener (empty until it serves).
    pub base_url: String,
    /// Tokens, codes and process ids (apart from `rng`, so that id gaps do not depend
    /// on how many tokens a test minted).
    pub secrets: fastrand::Rng,
}

pub(crate) const ROOT_DEPARTMENT: u64 = 1;

impl Portal {
    pub(crate) fn new(mut cfg: PortalConfig) -> Self {
        if cfg.oauth.user == 0 {
            cfg.oauth.user = cfg.webhook_user;
        }
        let rng = fastrand::Rng::with_seed(cfg.seed);
        let secrets = fastrand::Rng::with_seed(cfg.seed ^ 0x0a07_5ec2_e75a_17ed);
        let bucket = cfg.rate_limit.clone().map(|cfg| Bucket {
            cfg,
            level: 0.0,
            at: Instant::now(),
        });
        let webhook_user = cfg.webhook_user;
        let mut p = Portal {
            users: BTreeMap::new(),
            departments: BTreeMap::new(),
            groups: BTreeMap::new(),
            posts: BTreeMap::new(),
            comments: BTreeMap::new(),
            categories: Vec::new(),
            attachments: BTreeMap::new(),
            disk: BTreeMap::new(),
            blogs: BTreeMap::new(),
            ids: Ids {
                user: webhook_user,
                department: ROOT_DEPARTMENT,
                group: 0,
                post: 200,
                log: 3100,
                blog: 40,
                comment: 700,
                log_comment: 5200,
                attach: 500,
                disk: 8900,
                category: 8,
            },
            clock_offset: 0,
            last_stamp: i64::MIN,
            requests: Vec::new(),
            rate_limit_rejections: 0,
            bucket,
            faults: Vec::new(),
            ratios: Vec::new(),
            rng,
            operating: HashMap::new(),
            seq: 0,
            oauth: OAuthState::default(),
            events: EventState::default(),
            base_url: String::new(),
            secrets,
            cfg,
        };
        // Every intranet user belongs to the company tree; the root always exists.
        p.departments.insert(
            ROOT_DEPARTMENT,
            Department {
                id: ROOT_DEPARTMENT,
                name: "Bridge Sandbox".to_owned(),
                parent: None,
                sort: 500,
                head: Some(webhook_user),
            },
        );
        let now = p.now_micros();
        p.users.insert(
            webhook_user,
            User {
                id: webhook_user,
                name: "Bridge".to_owned(),
                last_name: "Bot".to_owned(),
                photo: None,
                admin: p.cfg.webhook_user_admin,
                departments: vec![ROOT_DEPARTMENT],
                active: true,
                registered: now,
                email: None,
            },
        );
        p
    }

    // ---- clock -------------------------------------------------------------------

    pub(crate) fn now_micros(&self) -> i64 {
        time::wall_micros().saturating_add(self.clock_offset)
    }

    /// Portal time of a wall-clock instant.
    pub(crate) fn to_portal(&self, wall_micros: i64) -> i64 {
        wall_micros.saturating_add(self.clock_offset)
    }

    pub(crate) fn now_secs(&self) -> i64 {
        self.now_micros().div_euclid(MICROS)
    }

    /// A strictly increasing event time, so activity order never ties within a test.
    pub(crate) fn stamp(&mut self) -> i64 {
        let s = self.now_micros().max(self.last_stamp.saturating_add(1));
        self.last_stamp = s;
        s
    }

    pub(crate) fn set_clock_offset(&mut self, secs: i64) {
        self.clock_offset = secs.saturating_mul(MICROS);
        self.last_stamp = i64::MIN;
    }

    pub(crate) fn tz(&self) -> i32 {
        self.cfg.utc_offset_secs
    }

    pub(crate) fn iso(&self, micros: i64) -> String {
        time::format_iso(micros.div_euclid(MICROS), self.tz())
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn gap(&mut self) -> u64 {
        self.rng.u64(1..=3)
    }

    // ---- directory ---------------------------------------------------------------

    pub(crate) fn add_user(&mut self, u: NewUser) -> Result<u64, SandboxError> {
        if let Some(d) = u
            .departments
            .iter()
            .find(|d| !self.departments.contains_key(d))
        {
            return Err(SandboxError::UnknownDepartment(*d));
        }
        self.ids.user += 1;
        let id = self.ids.user;
        let registered = self.now_micros();
        self.users.insert(
            id,
            User {
                id,
                name: u.name,
                last_name: u.last_name,
                photo: u.photo,
                admin: u.admin,
                departments: u.departments,
                active: u.active,
                registered,
                email: u.email,
            },
        );
        Ok(id)
    }

    pub(crate) fn add_department(
        &mut self,
        name: &str,
        parent: Option<u64>,
    ) -> Result<u64, SandboxError> {
        if let Some(p) = parent.filter(|p| !self.departments.contains_key(p)) {
            return Err(SandboxError::UnknownDepartment(p));
        }
        self.ids.department += 1;
        let id = self.ids.department;
        self.departments.insert(
            id,
            Department {
                id,
                name: name.to_owned(),
                parent,
                sort: 500,
                head: None,
            },
        );
        Ok(id)
    }

    pub(crate) fn add_group(&mut self, name: &str) -> u64 {
        self.ids.group += 1;
        let id = self.ids.group;
        let now = self.now_micros();
        self.groups.insert(
            id,
            Group {
                id,
                name: name.to_owned(),
                owner: self.cfg.webhook_user,
                members: BTreeSet::new(),
                created: now,
                activity: now,
            },
        );
        id
    }

    pub(crate) fn remove_group_member(
        &mut self,
        group: u64,
        user: u64,
    ) -> Result<(), SandboxError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(SandboxError::UnknownGroup(group))?;
        g.members.remove(&user);
        Ok(())
    }

    pub(crate) fn add_group_member(&mut self, group: u64, user: u64) -> Result<(), SandboxError> {
        if !self.users.contains_key(&user) {
            return Err(SandboxError::UnknownUser(user));
        }
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(SandboxError::UnknownGroup(group))?;
        if g.members.is_empty() {
            g.owner = user;
        }
        g.members.insert(user);
        Ok(())
    }

    pub(crate) fn set_user_active(&mut self, user: u64, active: bool) -> Result<(), SandboxError> {
        let u = self
            .users
            .get_mut(&user)
            .ok_or(SandboxError::UnknownUser(user))?;
        u.active = active;
        Ok(())
    }

    pub(crate) fn set_user_departments(
        &mut self,
        user: u64,
        departments: Vec<u64>,
    ) -> Result<(), SandboxError> {
        if let Some(d) = departments
            .iter()
            .find(|d| !self.departments.contains_key(d))
        {
            return Err(SandboxError::UnknownDepartment(*d));
        }
        let u = self
            .users
            .get_mut(&user)
            .ok_or(SandboxError::UnknownUser(user))?;
        u.departments = departments;
        Ok(())
    }

    pub(crate) fn is_admin(&self, user: u64) -> bool {
        self.users.get(&user).is_some_and(|u| u.admin)
    }

    pub(crate) fn photo_url(&self, photo: &str) -> String {
        if photo.starts_with("http://") || photo.starts_with("https://") {
            return photo.to_owned();
        }
        let digest = hex::encode(Sha256::digest(photo.as_bytes()));
        format!(
            "https://{}/upload/main/{}/{}",
            self.cfg.portal_host,
            &digest[..3],
            photo
        )
    }

    // ---- visibility --------------------------------------------------------------

    /// Whether `dept` is `target` or lies below it.
    fn department_within(&self, dept: u64, target: u64) -> bool {
        let mut cur = Some(dept);
        let mut hops = 0;
        while let Some(d) = cur {
            if d == target {
                return true;
            }
            hops += 1;
            if hops > self.departments.len() {
                return false;
            }
            cur = self.departments.get(&d).and_then(|d| d.parent);
        }
        false
    }

    /// Whether destination `code` addresses `user`.
    pub(crate) fn code_includes(&self, code: &str, user: u64) -> bool {
        let Some(u) = self.users.get(&user) else {
            return false;
        };
        if code == "UA" {
            return u.active;
        }
        if let Some(n) = code_id(code, "SG") {
            return self
                .groups
                .get(&n)
                .is_some_and(|g| g.members.contains(&user));
        }
        if let Some(n) = code_id(code, "DR") {
            return u.departments.iter().any(|d| self.department_within(*d, n));
        }
        if let Some(n) = code_id(code, "U") {
            return n == user;
        }
        false
    }

    pub(crate) fn can_read(&self, user: u64, post: &Post) -> bool {
        post.author == user || post.dest.iter().any(|c| self.code_includes(c, user))
    }

    /// `checkBlogPostDestinationList`: drops codes that name nothing; `Err` when the
    /// author may not write to one of the groups.
    pub(crate) fn check_destinations(
        &self,
        author: u64,
        codes: &[String],
    ) -> Result<Vec<String>, ()> {
        let mut out: Vec<String> = Vec::new();
        for code in codes {
            let known = if code == "UA" {
                true
            } else if let Some(n) = code_id(code, "SG") {
                if !self.groups.contains_key(&n) {
                    false
                } else if self.is_admin(author)
                    || self
                        .groups
                        .get(&n)
                        .is_some_and(|g| g.members.contains(&author))
                {
                    true
                } else {
                    return Err(());
                }
            } else if let Some(n) = code_id(code, "DR") {
                self.departments.contains_key(&n)
            } else if let Some(n) = code_id(code, "U") {
                self.users.contains_key(&n)
            } else {
                code.strip_prefix("UE").is_some_and(|e| !e.is_empty())
            };
            if known && !out.contains(code) {
                out.push(code.clone());
            }
        }
        Ok(out)
    }

    // ---- feed --------------------------------------------------------------------

    fn blog_of(&mut self, user: u64) -> u64 {
        if let Some(b) = self.blogs.get(&user) {
            return *b;
        }
        self.ids.blog += 1;
        let b = self.ids.blog;
        self.blogs.insert(user, b);
        b
    }

    /// Category ids for the `#hashtags` of the text (and title of non-MICRO posts)
    /// plus explicit tag names, created per blog on first use.
    fn categorize(&mut self, blog_id: u64, names: Vec<String>) -> Vec<u64> {
        let mut ids = Vec::new();
        for name in names {
            let name = name.trim().to_lowercase();
            if name.is_empty() {
                continue;
            }
            let id = match self
                .categories
                .iter()
                .find(|c| c.blog_id == blog_id && c.name == name)
            {
                Some(c) => c.id,
                None => {
                    self.ids.category += 1;
                    let id = self.ids.category;
                    self.categories.push(Category { id, blog_id, name });
                    id
                }
            };
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    pub(crate) fn category_names(&self, ids: &[u64]) -> Vec<String> {
        ids.iter()
            .filter_map(|id| self.categories.iter().find(|c| c.id == *id))
            .map(|c| c.name.clone())
            .collect()
    }

    /// Stores an uploaded `[name, base64]` file in the author's Disk; `None` when the
    /// content decodes to nothing (the server skips such files silently).
    pub(crate) fn store_file(&mut self, author: u64, name: &str, base64: &str) -> Option<u64> {
        if base64.is_empty() || base64 == "false" {
            return None;
        }
        let bytes = decode_base64_lenient(base64);
        self.store_bytes(author, name, bytes)
    }

    /// Stores `bytes` as a file in the author's Disk; `None` for no bytes.
    pub(crate) fn store_bytes(&mut self, author: u64, name: &str, bytes: Vec<u8>) -> Option<u64> {
        if bytes.is_empty() {
            return None;
        }
        let name = if name.is_empty() {
            hex::encode(&Sha256::digest(&bytes)[..16])
        } else {
            name.to_owned()
        };
        self.ids.disk += self.rng.u64(1..=3);
        let id = self.ids.disk;
        let created = self.now_micros();
        let image = image_size(&name, &bytes);
        self.disk.insert(
            id,
            DiskFile {
                id,
                name,
                size: bytes.len() as u64,
                content: bytes,
                created_by: author,
                created,
                image,
            },
        );
        Some(id)
    }

    /// Attaches a Disk file to an entity; attached-object ids differ from Disk ids.
    pub(crate) fn attach(&mut self, disk_id: u64) -> u64 {
        self.ids.attach += 1;
        self.attachments.insert(self.ids.attach, disk_id);
        self.ids.attach
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_post(
        &mut self,
        author: u64,
        title: Option<&str>,
        text: &str,
        dest: Vec<String>,
        important: bool,
        important_date_end: Option<i64>,
        tags: Vec<String>,
        files: Vec<u64>,
    ) -> u64 {
        let (title, micro) = derive_title(title, text);
        let blog_id = self.blog_of(author);
        let mut names = tags;
        names.extend(detect_hashtags(text));
        if !micro {
            names.extend(detect_hashtags(&title));
        }
        let categories = self.categorize(blog_id, names);
        self.ids.post += 1;
        let id = self.ids.post;
        self.ids.log += 1 + self.gap();
        let log_id = self.ids.log;
        let now = self.stamp();
        self.posts.insert(
            id,
            Post {
                id,
                log_id,
                blog_id,
                author,
                title,
                micro,
                text: text.to_owned(),
                dest,
                important,
                important_date_end: important_date_end.filter(|_| important),
                // The server records the author as having read their own important post.
                important_readers: if important { vec![author] } else { Vec::new() },
                categories,
                files,
                has_props: true,
                published: true,
                deleted: false,
                date_publish: now,
                log_update: now,
                num_comments: 0,
            },
        );
        id
    }

    /// Replaces title and text with the `log.blogpost.update` title rule and bumps the
    /// entry's activity.
    pub(crate) fn edit_post(
        &mut self,
        id: u64,
        title: String,
        micro: bool,
        text: Option<String>,
        extra_tags: Vec<String>,
    ) {
        let now = self.stamp();
        let Some(post) = self.posts.get(&id) else {
            return;
        };
        let blog_id = post.blog_id;
        let new_text = text.unwrap_or_else(|| post.text.clone());
        let mut names = extra_tags;
        names.extend(detect_hashtags(&new_text));
        if !micro {
            names.extend(detect_hashtags(&title));
        }
        let categories = self.categorize(blog_id, names);
        if let Some(post) = self.posts.get_mut(&id) {
            post.title = title;
            post.micro = micro;
            post.text = new_text;
            post.categories = categories;
            post.log_update = now;
        }
    }

    pub(crate) fn live_post(&self, id: u64) -> Option<&Post> {
        self.posts.get(&id).filter(|p| !p.deleted)
    }

    pub(crate) fn set_important(&mut self, id: u64, important: bool, reader: u64) {
        if let Some(p) = self.posts.get_mut(&id) {
            p.important = important;
            if important {
                if !p.important_readers.contains(&reader) {
                    p.important_readers.push(reader);
                }
            } else {
                p.important_date_end = None;
            }
        }
    }

    pub(crate) fn remove_post(&mut self, id: u64) -> bool {
        let Some(post) = self.posts.get_mut(&id).filter(|p| !p.deleted) else {
            return false;
        };
        post.deleted = true;
        for c in self.comments.values_mut().filter(|c| c.post_id == id) {
            c.deleted = true;
        }
        true
    }

    pub(crate) fn insert_comment(
        &mut self,
        post_id: u64,
        author: u64,
        text: &str,
        files: Vec<u64>,
    ) -> u64 {
        self.ids.comment += 1;
        let id = self.ids.comment;
        self.ids.log_comment += 1 + self.gap();
        let log_comment_id = self.ids.log_comment;
        let now = self.stamp();
        self.comments.insert(
            id,
            Comment {
                id,
                log_comment_id,
                post_id,
                author,
                text: text.to_owned(),
                date: now,
                files,
                deleted: false,
            },
        );
        if let Some(p) = self.posts.get_mut(&post_id) {
            p.num_comments += 1;
            p.log_update = now;
        }
        id
    }

    pub(crate) fn remove_comment(&mut self, id: u64) -> bool {
        let Some(c) = self.comments.get_mut(&id).filter(|c| !c.deleted) else {
            return false;
        };
        c.deleted = true;
        let post_id = c.post_id;
        if let Some(p) = self.posts.get_mut(&post_id) {
            p.num_comments = p.num_comments.saturating_sub(1);
        }
        true
    }

    /// `Comment::checkDuplicate`: the author's latest comment on the post has the same
    /// trimmed text and that text is longer than 10 bytes.
    pub(crate) fn is_duplicate_comment(&self, post_id: u64, author: u64, text: &str) -> bool {
        let text = php_trim(text);
        if text.len() <= 10 {
            return false;
        }
        self.comments
            .values()
            .filter(|c| !c.deleted && c.post_id == post_id && c.author == author)
            .max_by_key(|c| c.id)
            .is_some_and(|c| php_trim(&c.text) == text)
    }

    // ---- UI actions (Rust and control API) ---------------------------------------

    pub(crate) fn ui_create_post(&mut self, author: u64, p: NewPost) -> Result<u64, SandboxError> {
        if !self.users.contains_key(&author) {
            return Err(SandboxError::UnknownUser(author));
        }
        if p.text.trim().is_empty() {
            return Err(SandboxError::EmptyText);
        }
        let dest = if p.dest.is_empty() {
            vec!["UA".to_owned()]
        } else {
            p.dest
        };
        let mut files = Vec::new();
        for f in p.files {
            if let Some(disk) = self.store_bytes(author, &f.name, f.bytes) {
                files.push(self.attach(disk));
            }
        }
        let id = self.insert_post(
            author,
            p.title.as_deref(),
            &p.text,
            dest,
            p.important,
            None,
            Vec::new(),
            files,
        );
        self.ui_event(PostEvent::Add, id, author);
        Ok(id)
    }

    /// The author attaches a file to a post in the UI (an edit of the post).
    pub(crate) fn ui_add_post_file(
        &mut self,
        id: u64,
        name: &str,
        bytes: &[u8],
    ) -> Result<u64, SandboxError> {
        let author = self
            .live_post(id)
            .ok_or(SandboxError::UnknownPost(id))?
            .author;
        let disk = self
            .store_bytes(author, name, bytes.to_vec())
            .ok_or(SandboxError::EmptyText)?;
        let attached = self.attach(disk);
        let now = self.stamp();
        if let Some(post) = self.posts.get_mut(&id) {
            post.files.push(attached);
            post.has_props = true;
            post.log_update = now;
        }
        self.ui_event(PostEvent::Update, id, author);
        Ok(attached)
    }

    /// The author takes a file off a post in the UI (an edit of the post).
    pub(crate) fn ui_remove_post_file(
        &mut self,
        id: u64,
        attached: u64,
    ) -> Result<(), SandboxError> {
        let author = self
            .live_post(id)
            .ok_or(SandboxError::UnknownPost(id))?
            .author;
        let now = self.stamp();
        if let Some(post) = self.posts.get_mut(&id) {
            post.files.retain(|f| *f != attached);
            post.log_update = now;
        }
        self.attachments.remove(&attached);
        self.ui_event(PostEvent::Update, id, author);
        Ok(())
    }

    /// A change made by a person in the UI: attributed to them, never to the app.
    fn ui_event(&mut self, kind: PostEvent, id: u64, user: u64) {
        let origin = Origin {
            user,
            app_connector: None,
        };
        self.post_event(kind, id, &origin);
    }

    pub(crate) fn ui_update_post(
        &mut self,
        id: u64,
        title: Option<String>,
        text: &str,
    ) -> Result<(), SandboxError> {
        let author = self
            .live_post(id)
            .ok_or(SandboxError::UnknownPost(id))?
            .author;
        if text.trim().is_empty() {
            return Err(SandboxError::EmptyText);
        }
        let (title, micro) = derive_title(title.as_deref(), text);
        self.edit_post(id, title, micro, Some(text.to_owned()), Vec::new());
        self.ui_event(PostEvent::Update, id, author);
        Ok(())
    }

    pub(crate) fn ui_set_important(
        &mut self,
        id: u64,
        important: bool,
    ) -> Result<(), SandboxError> {
        let author = self
            .live_post(id)
            .ok_or(SandboxError::UnknownPost(id))?
            .author;
        self.set_important(id, important, author);
        // The flag is set by editing the post.
        self.ui_event(PostEvent::Update, id, author);
        Ok(())
    }

    /// The author makes the post important until `until` (unix seconds): an edit.
    pub(crate) fn ui_set_important_until(
        &mut self,
        id: u64,
        until: i64,
    ) -> Result<(), SandboxError> {
        self.live_post(id).ok_or(SandboxError::UnknownPost(id))?;
        if let Some(p) = self.posts.get_mut(&id) {
            p.important_date_end = Some(until);
        }
        self.ui_set_important(id, true)
    }

    pub(crate) fn ui_read_important(&mut self, id: u64, user: u64) -> Result<(), SandboxError> {
        self.live_post(id).ok_or(SandboxError::UnknownPost(id))?;
        if !self.users.contains_key(&user) {
            return Err(SandboxError::UnknownUser(user));
        }
        if let Some(p) = self.posts.get_mut(&id)
            && !p.important_readers.contains(&user)
        {
            p.important_readers.push(user);
        }
        Ok(())
    }

    pub(crate) fn ui_share_post(&mut self, id: u64, dest: Vec<String>) -> Result<(), SandboxError> {
        let post = self
            .posts
            .get_mut(&id)
            .filter(|p| !p.deleted)
            .ok_or(SandboxError::UnknownPost(id))?;
        for code in dest {
            if !post.dest.contains(&code) {
                post.dest.push(code);
            }
        }
        Ok(())
    }

    pub(crate) fn ui_delete_post(&mut self, id: u64) -> Result<(), SandboxError> {
        let author = self.live_post(id).map(|p| p.author);
        match author {
            Some(author) if self.remove_post(id) => {
                self.ui_event(PostEvent::Delete, id, author);
                Ok(())
            }
            _ => Err(SandboxError::UnknownPost(id)),
        }
    }

    pub(crate) fn ui_add_comment(
        &mut self,
        post: u64,
        author: u64,
        text: &str,
    ) -> Result<u64, SandboxError> {
        self.live_post(post)
            .ok_or(SandboxError::UnknownPost(post))?;
        if !self.users.contains_key(&author) {
            return Err(SandboxError::UnknownUser(author));
        }
        if text.trim().is_empty() {
            return Err(SandboxError::EmptyText);
        }
        Ok(self.insert_comment(post, author, text, Vec::new()))
    }

    pub(crate) fn ui_delete_comment(&mut self, id: u64) -> Result<(), SandboxError> {
        if self.remove_comment(id) {
            Ok(())
        } else {
            Err(SandboxError::UnknownComment(id))
        }
    }

    pub(crate) fn post_mut(&mut self, id: u64) -> Result<&mut Post, SandboxError> {
        self.posts.get_mut(&id).ok_or(SandboxError::UnknownPost(id))
    }

    // ---- views -------------------------------------------------------------------

    pub(crate) fn post_view(&self, p: &Post) -> PostView {
        PostView {
            id: p.id,
            log_id: p.log_id,
            blog_id: p.blog_id,
            author: p.author,
            title: p.title.clone(),
            micro: p.micro,
            text: p.text.clone(),
            dest: p.dest.clone(),
            important: p.important,
            num_comments: p.num_comments,
            deleted: p.deleted,
            published: p.published,
            has_props: p.has_props,
            tags: self.category_names(&p.categories),
            files: p.files.clone(),
            date_publish: time::to_system_time(p.date_publish),
            log_update: time::to_system_time(p.log_update),
        }
    }

    pub(crate) fn comment_views(&self, post: u64) -> Vec<CommentView> {
        self.comments
            .values()
            .filter(|c| c.post_id == post && !c.deleted)
            .map(|c| CommentView {
                comment_id: c.id,
                log_comment_id: c.log_comment_id,
                post_id: c.post_id,
                author: c.author,
                text: c.text.clone(),
                date: time::to_system_time(c.date),
                files: c
                    .files
                    .iter()
                    .filter_map(|a| self.attachments.get(a).copied())
                    .collect(),
            })
            .collect()
    }

    // ---- limiter, faults, operating time -----------------------------------------

    pub(crate) fn set_rate_limit(&mut self, limit: Option<LeakyBucket>) {
        self.bucket = limit.map(|cfg| Bucket {
            cfg,
            level: 0.0,
            at: Instant::now(),
        });
    }

    /// Leaky bucket: `false` means reject (and the request does not fill the bucket).
    pub(crate) fn bucket_admit(&mut self) -> bool {
        let Some(b) = self.bucket.as_mut() else {
            return true;
        };
        let now = Instant::now();
        let drained = now.duration_since(b.at).as_secs_f64() * b.cfg.drain_per_sec;
        b.level = (b.level - drained).max(0.0);
        b.at = now;
        if b.level + 1.0 > b.cfg.burst {
            self.rate_limit_rejections += 1;
            return false;
        }
        b.level += 1.0;
        true
    }

    pub(crate) fn inject(&mut self, f: Fault) {
        if f.times > 0 {
            self.faults.push(f);
        }
    }

    pub(crate) fn set_fault_ratio(
        &mut self,
        method: Option<&str>,
        ratio: f64,
        kinds: Vec<FaultKind>,
    ) {
        let method = method.map(str::to_ascii_lowercase);
        self.ratios.retain(|r| r.method != method);
        if ratio > 0.0 && !kinds.is_empty() {
            self.ratios.push(FaultRatio {
                method,
                ratio: ratio.min(1.0),
                kinds,
            });
        }
    }

    /// A queued fault aimed at exactly `name` (e.g. `oauth.token`), any level; rules with
    /// `method: None` and probabilistic rules never apply to such endpoints.
    pub(crate) fn take_named_fault(&mut self, name: &str) -> Option<FaultKind> {
        let i = self.faults.iter().position(|f| {
            f.method
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(name))
        })?;
        let kind = self.faults[i].kind.clone();
        self.faults[i].times -= 1;
        if self.faults[i].times == 0 {
            self.faults.remove(i);
        }
        Some(kind)
    }

    /// The fault to apply to a call of `method` at `level`, if any: queued faults first
    /// (consumed), then the seeded probabilistic ones (specific methods before `None`).
    pub(crate) fn take_fault(&mut self, method: &str, level: FaultLevel) -> Option<FaultKind> {
        let matches = |m: &Option<String>| match m {
            Some(m) => m.eq_ignore_ascii_case(method),
            None => level == FaultLevel::Transport || method != "batch",
        };
        if let Some(i) = self
            .faults
            .iter()
            .position(|f| f.kind.level() == level && matches(&f.method))
        {
            let kind = self.faults[i].kind.clone();
            self.faults[i].times -= 1;
            if self.faults[i].times == 0 {
                self.faults.remove(i);
            }
            return Some(kind);
        }
        let mut order: Vec<usize> = (0..self.ratios.len()).collect();
        order.sort_by_key(|i| self.ratios[*i].method.is_none());
        for i in order {
            if !matches(&self.ratios[i].method) {
                continue;
            }
            let kinds: Vec<FaultKind> = self.ratios[i]
                .kinds
                .iter()
                .filter(|k| k.level() == level)
                .cloned()
                .collect();
            if kinds.is_empty() {
                continue;
            }
            if self.rng.f64() < self.ratios[i].ratio {
                let pick = self.rng.usize(..kinds.len());
                return Some(kinds[pick].clone());
            }
        }
        None
    }

    /// Adds execution time to the method's 10-minute window of 1-minute buckets and
    /// returns `(operating, operating_reset_at)`.
    pub(crate) fn record_operating(&mut self, method: &str, spent: f64) -> (f64, i64) {
        let now = self.now_secs();
        let window = self.operating.entry(method.to_owned()).or_default();
        window.retain(|(start, _)| start + 600 > now);
        match window.last_mut() {
            Some((start, total)) if *start + 60 > now => *total += spent,
            _ => window.push((now, spent)),
        }
        let total = window.iter().map(|(_, t)| t).sum();
        let reset = window.first().map_or(now + 600, |(s, _)| s + 600);
        (total, reset)
    }
}

/// `SG12` → 12 for prefix `SG`; the remainder must be all digits.
pub(crate) fn code_id(code: &str, prefix: &str) -> Option<u64> {
    let rest = code.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// PHP `trim()` default character set.
pub(crate) fn php_trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r', '\0', '\x0b'])
}

/// Title rule of `log.blogpost.add/update`: a non-empty title is kept; otherwise the
/// post is MICRO and its title is the text without BBCode tags, whitespace collapsed.
pub(crate) fn derive_title(title: Option<&str>, text: &str) -> (String, bool) {
    match title {
        Some(t) if !t.is_empty() => (t.to_owned(), false),
        _ => (micro_title(text), true),
    }
}

pub(crate) fn micro_title(text: &str) -> String {
    let stripped = kill_tags(text);
    stripped
        .split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes `[TAG…]` / `[/TAG]` / `[*]` markup, keeping the enclosed text.
fn kill_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let is_tag = after
            .strip_prefix('/')
            .unwrap_or(after)
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '*');
        match after.find(']') {
            Some(close) if is_tag && !after[..close].contains('[') => {
                rest = &after[close + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `#tag` words at the start of the text or after whitespace.
pub(crate) fn detect_hashtags(text: &str) -> Vec<String> {
    let mut tags = Vec::new();
    let mut prev_ws = true;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '#' && prev_ws {
            let start = i + 1;
            let mut end = start;
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            if end > start {
                tags.push(text[start..end].to_lowercase());
            }
            prev_ws = false;
            continue;
        }
        prev_ws = c.is_whitespace();
    }
    tags
}

/// PHP `base64_decode` in non-strict mode: characters outside the alphabet are skipped.
fn decode_base64_lenient(input: &str) -> Vec<u8> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' | b'-' => Some(62),
            b'/' | b'_' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for s in input.bytes().take_while(|b| *b != b'=').filter_map(sextet) {
        acc = (acc << 6) | s;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Pixel size of PNG and GIF images (other image types report 0×0).
fn image_size(name: &str, bytes: &[u8]) -> Option<(u32, u32)> {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    if !matches!(
        ext.as_str(),
        "png" | "jpg" | "jpeg" | "gif" | "webp" | "bmp"
    ) {
        return None;
    }
    if bytes.starts_with(b"\x89PNG") && bytes.len() >= 24 {
        let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        return Some((w, h));
    }
    if bytes.starts_with(b"GIF8") && bytes.len() >= 10 {
        let w = u32::from(u16::from_le_bytes([bytes[6], bytes[7]]));
        let h = u32::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        return Some((w, h));
    }
    Some((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_titles() {
        assert_eq!(
            micro_title("[B]Hello[/B]\n\n  [URL=http://x]world[/URL] [*]x"),
            "Hello world x"
        );
        assert_eq!(micro_title("a [1] b [ c ]"), "a [1] b [ c ]");
    }

    #[test]
    fn hashtags_and_base64() {
        assert_eq!(detect_hashtags("#Foo bar#no #ба_р."), ["foo", "ба_р"]);
        assert_eq!(decode_base64_lenient("aGVs\nbG8="), b"hello");
        assert!(decode_base64_lenient("!!!").is_empty());
    }
}
