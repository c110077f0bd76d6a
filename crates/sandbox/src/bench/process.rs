//! The bridge binary as a child process: a config file, `run`, `/readyz`, RSS, SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Where the bridge binary is: `$LIVEFEED_BRIDGE_BIN`, else beside this executable (cargo
/// puts every binary of the workspace in the same directory).
pub fn bridge_binary() -> PathBuf {
    if let Ok(path) = std::env::var("LIVEFEED_BRIDGE_BIN") {
        return PathBuf::from(path);
    }
    let me = std::env::current_exe().expect("the running executable has a path");
    me.with_file_name("livefeed-bridge")
}

/// Remove a run's directory, unless `BENCH_KEEP` is set (to read the bridge's log, run with
/// `BENCH_BRIDGE_LOG=info` or `debug`, after a run).
pub fn remove_dir(dir: &Path) {
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A free loopback port (bound and released; the bridge binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A fresh directory under the system's temp dir for one bridge's config, log and store.
pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "livefeed-bench-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Check `done` every `period` until it holds or `patience` runs out; whether it held. The
/// fakes' own `wait_until` re-checks on every change, which with a large state takes CPU from
/// the bridge being measured.
pub async fn poll_until(
    period: Duration,
    patience: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(period).await;
    }
}

/// A running bridge.
pub struct Bridge {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its log (stderr).
    pub log: PathBuf,
    /// From spawn to the first `/readyz` 200.
    pub ready_after: Duration,
}

impl Bridge {
    /// Write `config` into `dir`, start the binary on it, wait (up to `patience`) until
    /// `/readyz` answers 200. `config` must listen on `port`.
    pub async fn start(dir: &Path, config: &str, port: u16, patience: Duration) -> Bridge {
        let path = dir.join("bridge.yaml");
        std::fs::write(&path, config).expect("config written");
        let log = dir.join("bridge.log");
        let err = std::fs::File::create(&log).expect("log file");
        let started = Instant::now();
        let child = Command::new(bridge_binary())
            .args(["run", "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_BRIDGE_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); build it first: cargo build --release --locked --workspace --bins",
                    bridge_binary().display()
                )
            });
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        loop {
            let ok = http
                .get(format!("{base}/readyz"))
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if started.elapsed() > patience {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("the bridge was not ready within {patience:?}:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Bridge {
            ready_after: started.elapsed(),
            child,
            base,
            log,
        }
    }

    /// Resident set size now, in bytes (Linux `/proc`).
    pub fn rss_bytes(&self) -> Option<u64> {
        self.status_bytes("VmRSS:")
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.status_bytes("VmHWM:")
    }

    /// A `kB` field of `/proc/PID/status`, in bytes.
    fn status_bytes(&self, field: &str) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap_or_default()
    }

    /// SIGTERM, then wait for the exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}
