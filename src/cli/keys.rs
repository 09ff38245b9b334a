//! `strongroom keys …`: KEK management on a running server, over its API
//! (the rewrap runs in the server; this only starts and follows it).

use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{api_client, api_key_from_env, refusal, server_url};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Every KEK version per purpose: created, encryptions, active.
    List(Server),
    /// A new KEK version for PURPOSE (kyc, card, bank, generic).
    Rotate(RotateArgs),
    /// Start a background rewrap of every DEK onto the newest KEK versions
    /// and follow it with a progress bar (Ctrl-C stops following, not the
    /// rewrap).
    Rewrap(RewrapArgs),
    /// The progress of the last rewrap.
    Status(RewrapArgs),
    /// Destroy a KEK version no DEK uses any more (refused while any does,
    /// and for the newest version).
    Destroy(DestroyArgs),
}

#[derive(Debug, Args)]
pub struct Server {
    /// The server's base URL (https://…; http:// only to a loopback address).
    #[arg(long, env = "STRONGROOM_URL")]
    url: String,
    /// PEM file of the CA that issued the server's certificate (default: the
    /// system's roots).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Print the server's JSON answers instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    purpose: String,
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// Return at once instead of following the job to its end.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    purpose: String,
    version: u32,
    #[command(flatten)]
    server: Server,
}

/// One call to the server: the method, path and the JSON answer (`None`
/// for 204), or the refusal.
struct Api {
    client: reqwest::Client,
    base: String,
    key: zeroize::Zeroizing<String>,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    fn new(server: &Server) -> Result<Self, String> {
        Ok(Self {
            client: api_client(server.ca_file.as_deref())?,
            base: server.url.clone(),
            key: api_key_from_env()?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?,
        })
    }

    fn call(&self, method: reqwest::Method, path: &str) -> Result<Option<Value>, String> {
        let url = server_url(&self.base, path)?;
        self.runtime.block_on(async {
            let response = self
                .client
                .request(method, url.clone())
                .bearer_auth(self.key.as_str())
                // A destroy reads every entry that holds a DEK first.
                .timeout(Duration::from_secs(3600))
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
            if !status.is_success() {
                return Err(format!("the server refused: {}", refusal(status, &body)));
            }
            if body.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| format!("{url}: not JSON: {e}"))
        })
    }
}

pub fn run(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::List(server) => {
            let answer = Api::new(&server)?
                .call(reqwest::Method::GET, "/v1/keys")?
                .unwrap_or_default();
            if server.json {
                println!("{answer}");
                return Ok(());
            }
            println!(
                "{:<8} {:>7}  {:<30} {:>12}  active",
                "purpose", "version", "created_at", "encryptions"
            );
            for key in at(&answer, "keys").as_array().into_iter().flatten() {
                println!("{}", key_row(key));
            }
            Ok(())
        }
        KeysCommand::Rotate(args) => {
            let path = format!("/v1/keys/{}/rotate", path_segment(&args.purpose)?);
            let answer = Api::new(&args.server)?
                .call(reqwest::Method::POST, &path)?
                .unwrap_or_default();
            if args.server.json {
                println!("{answer}");
            } else {
                println!(
                    "{}",
                    printable(&format!(
                        "{} KEK version {} made; new writes use it. Rewrap to move older DEKs onto it.",
                        at(&answer, "purpose").as_str().unwrap_or("?"),
                        at(&answer, "version")
                    ))
                );
            }
            Ok(())
        }
        KeysCommand::Rewrap(args) => {
            let api = Api::new(&args.server)?;
            let started = api
                .call(reqwest::Method::POST, "/v1/keys/rewrap")?
                .unwrap_or_default();
            if !args.server.json {
                eprintln!(
                    "{}",
                    printable(&format!(
                        "rewrap {} started",
                        at(&started, "id").as_str().unwrap_or("?")
                    ))
                );
            }
            follow(&api, args.no_wait, args.server.json, started)
        }
        KeysCommand::Status(args) => {
            let api = Api::new(&args.server)?;
            let progress = api
                .call(reqwest::Method::GET, "/v1/keys/rewrap")?
                .unwrap_or_default();
            follow(&api, args.no_wait, args.server.json, progress)
        }
        KeysCommand::Destroy(args) => {
            let path = format!(
                "/v1/keys/{}/versions/{}",
                path_segment(&args.purpose)?,
                args.version
            );
            Api::new(&args.server)?.call(reqwest::Method::DELETE, &path)?;
            if args.server.json {
                println!("{}", serde_json::json!({"destroyed": true}));
            } else {
                println!(
                    "{} KEK version {} destroyed: what it wrapped and no DEK still uses is gone for good.",
                    args.purpose, args.version
                );
            }
            Ok(())
        }
    }
}

/// One line of `keys list`: the columns aligned under its header (a JSON
/// number does not pad itself, so each is made text first), without any
/// control character the server's strings might hold.
fn key_row(key: &Value) -> String {
    printable(&format!(
        "{:<8} {:>7}  {:<30} {:>12}  {}",
        at(key, "purpose").as_str().unwrap_or("?"),
        at(key, "version").to_string(),
        at(key, "created_at").as_str().unwrap_or("?"),
        at(key, "encryptions").to_string(),
        if at(key, "active").as_bool() == Some(true) {
            "yes"
        } else {
            ""
        }
    ))
}

/// `value`'s field `name` (`null` when absent).
fn at<'a>(value: &'a Value, name: &str) -> &'a Value {
    value.get(name).unwrap_or(&Value::Null)
}

/// A purpose as a path segment (letters and `_` only: nothing else is one).
fn path_segment(purpose: &str) -> Result<&str, String> {
    if !purpose.is_empty() && purpose.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        Ok(purpose)
    } else {
        Err(format!(
            "{purpose:?} is not a KEK purpose (kyc, card, bank, generic)"
        ))
    }
}

/// Shows `progress` and, unless `no_wait`, polls it every second until
/// the job is no longer running, with a bar on a terminal (a line every
/// ten seconds otherwise; the JSON answers with `json`).
fn follow(api: &Api, no_wait: bool, json: bool, mut progress: Value) -> Result<(), String> {
    let terminal = std::io::stderr().is_terminal();
    let mut polls = 0u64;
    loop {
        let running = at(&progress, "state") == "running";
        if json {
            if !running || no_wait || polls.is_multiple_of(10) {
                println!("{progress}");
            }
        } else if terminal {
            eprint!("\r{}\x1b[K", bar(&progress));
            let _ = std::io::stderr().flush();
        } else if !running || no_wait || polls.is_multiple_of(10) {
            eprintln!("{}", bar(&progress));
        }
        if !running || no_wait {
            if terminal && !json {
                eprintln!();
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
        polls += 1;
        progress = api
            .call(reqwest::Method::GET, "/v1/keys/rewrap")?
            .unwrap_or_default();
    }
}

/// `[#####.....] 52 % 52000/100000 rewrapped 51000, 1800/s, eta …`,
/// without any control character the server's strings might hold.
fn bar(progress: &Value) -> String {
    printable(&raw_bar(progress))
}

/// `text` without control characters (a terminal's escape sequences).
pub(super) fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

fn raw_bar(progress: &Value) -> String {
    const WIDTH: u64 = 30;
    let done = at(progress, "done").as_u64().unwrap_or(0);
    let remaining = at(progress, "remaining").as_u64();
    let state = at(progress, "state").as_str().unwrap_or("?");
    let (filled, percent, of) = match remaining {
        // Nothing to read at all is all done.
        Some(0) if done == 0 => (WIDTH, "100 %".to_owned(), "0/0".to_owned()),
        Some(remaining) => {
            let total = done.saturating_add(remaining).max(1);
            (
                WIDTH * done / total,
                format!("{:>3} %", 100 * done / total),
                format!("{done}/{total}"),
            )
        }
        None => (0, "  ? %".to_owned(), format!("{done}/?")),
    };
    let filled = usize::try_from(filled).unwrap_or(0);
    let empty = usize::try_from(WIDTH).unwrap_or(0).saturating_sub(filled);
    let mut line = format!(
        "[{}{}] {percent} {of} {state}, {} rewrapped",
        "#".repeat(filled),
        ".".repeat(empty),
        at(progress, "rewrapped").as_u64().unwrap_or(0)
    );
    if let Some(rate) = at(progress, "rate").as_f64() {
        line.push_str(&format!(", {rate:.0}/s"));
    }
    if let Some(eta) = at(progress, "eta").as_str() {
        line.push_str(&format!(", eta {eta}"));
    }
    if let Some(failed) = at(progress, "failed").as_u64().filter(|f| *f > 0) {
        line.push_str(&format!(", {failed} unreadable (see the server log)"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `keys list`: numbers padded like the header says, and a server's
    /// escape sequence never reaches the terminal.
    #[test]
    fn a_key_row_is_aligned_and_printable() {
        let row = key_row(&serde_json::json!({
            "purpose": "card", "version": 2,
            "created_at": "2026-11-30T15:10:50.063380175Z",
            "encryptions": 3, "active": true
        }));
        assert_eq!(
            row,
            "card           2  2026-11-30T15:10:50.063380175Z            3  yes"
        );
        let hostile = key_row(&serde_json::json!({
            "purpose": "card\u{1b}[2J", "version": 1, "created_at": "x\u{7}",
            "encryptions": 0, "active": false
        }));
        assert!(!hostile.chars().any(char::is_control), "{hostile:?}");
    }

    #[test]
    fn the_bar_fills_with_the_progress() {
        let half = bar(
            &serde_json::json!({"state":"running","done":50,"remaining":50,"rewrapped":40,"rate":12.0}),
        );
        assert!(
            half.starts_with(&format!("[{}{}]", "#".repeat(15), ".".repeat(15))),
            "{half}"
        );
        assert!(
            half.contains(" 50 % 50/100 running, 40 rewrapped, 12/s"),
            "{half}"
        );
        let unknown = bar(&serde_json::json!({"state":"running","done":7,"remaining":null}));
        assert!(unknown.contains("? % 7/?"), "{unknown}");
        let done = bar(&serde_json::json!({"state":"finished","done":9,"remaining":0,"failed":2}));
        assert!(done.contains("100 % 9/9 finished"), "{done}");
        assert!(done.contains("2 unreadable"), "{done}");
        let empty = bar(&serde_json::json!({"state":"finished","done":0,"remaining":0}));
        assert!(empty.contains("100 % 0/0 finished"), "{empty}");
    }

    #[test]
    fn no_escape_sequence_reaches_the_terminal() {
        let line = bar(
            &serde_json::json!({"state":"running\u{1b}[2J","done":1,"remaining":1,"eta":"\u{7}soon"}),
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("running[2J") && line.contains("eta soon"),
            "{line}"
        );
    }

    #[test]
    fn only_a_purpose_shaped_word_reaches_the_path() {
        assert_eq!(path_segment("card"), Ok("card"));
        assert!(path_segment("../sys/seal").is_err());
        assert!(path_segment("").is_err());
    }
}
