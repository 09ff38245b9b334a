//! Running the real `strongroom` binary: commands on a vault directory,
//! servers on free loopback ports, and stopping them.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_strongroom");

/// `strongroom <args…>` with no `STRONGROOM_*` variable inherited.
pub fn strongroom(args: &[&str]) -> Command {
    wrapped(&[], args)
}

/// `<wrapper…> strongroom <args…>`: the binary run by another program (such
/// as `strace`), with no `STRONGROOM_*` variable inherited.
pub fn wrapped(wrapper: &[&str], args: &[&str]) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command.args(wrapper_args).arg(BIN);
            command
        }
        None => Command::new(BIN),
    };
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("STRONGROOM_") {
            command.env_remove(key);
        }
    }
    command
}

/// `strongroom <command> --data-dir <dir>/data --keys-dir <dir>/keys <extra…>`.
pub fn in_vault(dir: &Path, command: &str, extra: &[&str]) -> Command {
    let (data, keys) = (dir.join("data"), dir.join("keys"));
    let mut cmd = strongroom(&[
        command,
        "--data-dir",
        data.to_str().unwrap(),
        "--keys-dir",
        keys.to_str().unwrap(),
    ]);
    cmd.args(extra).stdin(Stdio::null());
    cmd
}

/// `strongroom audit verify` of a data directory with its keys directory.
pub fn verify_data_dir(data: &Path, keys: &Path) -> std::process::Output {
    strongroom(&[
        "audit",
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--keys-dir",
        keys.to_str().unwrap(),
    ])
    .output()
    .unwrap()
}

/// `init --shares 5 --threshold 3 --json` in `dir`: what it printed.
pub fn init_shares(dir: &Path) -> Value {
    let out = in_vault(
        dir,
        "init",
        &["--shares", "5", "--threshold", "3", "--json"],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn wait_until_listening(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("server exited early: {status}");
        }
        assert!(Instant::now() < deadline, "server did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A configuration file in `dir` that serves plain HTTP (`tls.disabled =
/// true`, as behind a TLS-terminating proxy): what tests that speak plain
/// HTTP to `serve` start it with.
pub fn plain_http_config(dir: &Path) -> PathBuf {
    let path = dir.join("plain-http.toml");
    std::fs::write(&path, "[tls]\ndisabled = true\n").unwrap();
    path
}

/// `strongroom serve` over plain HTTP ([`plain_http_config`]) on a free
/// loopback port of the vault in `dir`, once it listens. `stderr`:
/// `Stdio::piped()` to read it in [`terminate`].
pub fn serve(dir: &Path, stderr: Stdio) -> (Child, SocketAddr) {
    let config = plain_http_config(dir);
    serve_with_config(dir, &config, stderr)
}

/// `strongroom serve --config <config>` on a free loopback port of the
/// vault in `dir`, once it accepts connections.
pub fn serve_with_config(dir: &Path, config: &Path, stderr: Stdio) -> (Child, SocketAddr) {
    let addr = free_addr();
    let mut child = in_vault(
        dir,
        "serve",
        &[
            "--listen",
            &addr.to_string(),
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(stderr)
    .spawn()
    .unwrap();
    wait_until_listening(addr, &mut child);
    (child, addr)
}

/// Sends SIGTERM and returns the exit status and whatever was piped to
/// stderr.
pub fn terminate(mut child: Child) -> (ExitStatus, String) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (status, stderr)
}

/// Starts `command` (a `strongroom dev --json …`, maybe [`wrapped`]) and
/// waits for the credentials it prints on its first line: the child, the
/// credentials and the address it serves on. stdin is closed, stderr goes
/// to `stderr`.
pub fn dev(mut command: Command, stderr: Stdio) -> (Child, Value, SocketAddr) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let credentials: Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("dev printed no credentials ({e}): {first:?}"));
    let addr = credentials["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    (child, credentials, addr)
}

/// `<wrapper…> strongroom dev --json` on a free loopback port, its vault in
/// `vault` (new or empty), as [`dev`] starts it.
pub fn dev_in(vault: &Path, wrapper: &[&str], stderr: Stdio) -> (Child, Value, SocketAddr) {
    let args = [
        "dev",
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        vault.to_str().unwrap(),
    ];
    dev(wrapped(wrapper, &args), stderr)
}

/// Stops a server run under a wrapper (`strace`): SIGTERM to the wrapper's
/// one child, the server, then the wrapper's exit status (strace exits with
/// its tracee's).
pub fn terminate_wrapped(mut wrapper: Child) -> ExitStatus {
    let pid = wrapper.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let server = children.split_whitespace().next().unwrap_or_else(|| {
        let _ = wrapper.kill();
        panic!("the wrapper {pid} has no child")
    });
    assert!(
        Command::new("kill")
            .args(["-TERM", server])
            .status()
            .unwrap()
            .success()
    );
    wrapper.wait().unwrap()
}

/// A running `serve` (stderr piped), killed if a test fails before
/// stopping it.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl Server {
    /// `serve --config <config>` on a free loopback port of the vault in
    /// `dir`, once it accepts connections.
    pub fn start(dir: &Path, config: &Path) -> Self {
        let (child, addr) = serve_with_config(dir, config, Stdio::piped());
        Self {
            child: Some(child),
            addr,
        }
    }

    /// SIGTERM; the server must stop cleanly. Its stderr.
    pub fn stop(mut self) -> String {
        let (status, log) = terminate(self.child.take().unwrap());
        assert!(status.success(), "{status}: {log}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
