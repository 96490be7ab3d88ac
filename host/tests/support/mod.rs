//! Running the `glia` binary from a test: `glia serve` as a child process
//! on a free port, the client commands against it, and plain GETs, all with
//! one admin key.

#![allow(dead_code, reason = "each test binary uses part of the support")]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

pub const GLIA: &str = env!("CARGO_BIN_EXE_glia");

/// The admin key the servers here are started with, and the clients send.
pub const ADMIN_KEY: &str = "glia_binary_test_admin_key_00000000000000000";

/// A `glia serve` child process; killed when dropped.
pub struct Served {
    pub child: Child,
    pub url: String,
    /// What it printed to stderr before it was ready.
    pub printed: Vec<String>,
    /// Every stderr line after `ready`.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `glia serve --listen 127.0.0.1:0` with `args`, `GLIA_LOG=log`,
/// and `GLIA_ADMIN_KEY` set to `admin_key` (unset when `None`); returns
/// once it is ready.
pub fn serve<I, S>(args: I, log: &str, admin_key: Option<&str>) -> Served
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(GLIA);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("GLIA_LOG", log)
        .env_remove("GLIA_ADMIN_KEY");
    if let Some(key) = admin_key {
        command.env("GLIA_ADMIN_KEY", key);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glia serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut printed = Vec::new();
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("glia serve exited before it was ready: {printed:?}"))
            .expect("read stderr");
        if let Some(rest) = line.strip_prefix("ready on ") {
            break rest.split_whitespace().next().expect("url").to_string();
        }
        printed.push(line);
    };
    // Keep draining stderr, so the server never blocks on a full pipe.
    let collected = Arc::new(Mutex::new(Vec::new()));
    let sink = collected.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    Served {
        child,
        url,
        printed,
        lines: collected,
    }
}

/// Runs a client command against `url` with the admin key.
pub fn glia(args: &[&str], url: &str) -> Output {
    Command::new(GLIA)
        .args(args)
        .args(["--url", url])
        .env("GLIA_API_KEY", ADMIN_KEY)
        .output()
        .expect("run glia")
}

/// A GET with the admin key, through the CLI's own HTTP client crate;
/// `read` takes the response apart on the same runtime.
fn get<T>(url: &str, read: impl AsyncFnOnce(reqwest::Response) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("GET");
        read(response).await
    })
}

/// A GET answered with JSON.
pub fn get_json(url: &str) -> serde_json::Value {
    get(url, async |r: reqwest::Response| {
        r.json().await.expect("JSON")
    })
}

/// A GET answered with text.
pub fn get_text(url: &str) -> String {
    get(url, async |r: reqwest::Response| {
        r.text().await.expect("text")
    })
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
