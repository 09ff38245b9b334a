//! Power-loss durability, shown mechanically: the real binary runs under
//! `strace`, once per storage engine, and every write it acknowledges (each
//! `201` it sends) must follow a completed `fsync`/`fdatasync` of the
//! engine's log that began after the request arrived: sled's `db`, fjall's
//! journal (`<n>.jnl`), redb's one file (`strongroom.redb`). sled 0.34
//! alone ends its writes with `sync_file_range`, which flushes neither the
//! drive's cache nor the file's metadata (DESIGN.md invariant 7;
//! docs/operations.md, docs/architecture.md "What a flush syncs").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};

use common::process::{dev, terminate_wrapped, wrapped};
use common::try_http;
use strongroom::store::Engine;

/// Clients writing at once (so rounds of group commit cover several
/// requests), and the writes each makes.
const CLIENTS: usize = 4;
const WRITES_PER_CLIENT: usize = 10;

/// The syscalls traced: the syncs, and every way tokio reads a request from
/// a socket or writes a response to it.
const TRACED: &str = "trace=fsync,fdatasync,sync_file_range,\
                      read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg";

fn strace_is_installed() {
    let found = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "strace is not installed, and this test needs it to see the server's \
         fsync/fdatasync calls: apt-get install strace (.ci/run does)"
    );
}

/// One line of `strace -f -yy` output, as this test needs it.
#[derive(Debug, PartialEq)]
enum Event {
    /// A read that returned the start of a request to store a card, on the
    /// connection named.
    Request(String),
    /// A write that sends a `201` on the connection named.
    Created(String),
    /// A completed, successful `fsync`/`fdatasync` of the file named.
    Synced(String),
}

/// The events of a trace, in order. strace prints a call on one line when
/// it completes, or across two (`… <unfinished ...>`, then
/// `<... name resumed> …`) when another thread's call comes in between;
/// what a read returned is on the line of its completion, what a write
/// sends on the line of its start, and the descriptor on the first line.
fn events(trace: &str) -> Vec<Event> {
    let mut unfinished: HashMap<&str, (&str, String)> = HashMap::new();
    let mut out = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let (name, fd, tail) = if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let Some((_, fd)) = unfinished.remove(pid) else {
                continue;
            };
            (name, fd, tail)
        } else {
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            let fd = descriptor(args);
            if rest.ends_with("<unfinished ...>") {
                // A write's data is on this line: its start.
                if args.contains("\"HTTP/1.1 201 ") {
                    out.push(Event::Created(fd.clone()));
                }
                unfinished.insert(pid, (name, fd));
                continue;
            }
            if args.contains("\"HTTP/1.1 201 ") {
                out.push(Event::Created(fd.clone()));
            }
            (name, fd, args)
        };
        // The call has completed on this line. (A failed read shows no data.)
        match name {
            "fsync" | "fdatasync" if tail.trim_end().ends_with("= 0") => {
                out.push(Event::Synced(fd));
            }
            "read" | "readv" | "recvfrom" | "recvmsg"
                if tail.contains("\"POST /v1/records/card ") =>
            {
                out.push(Event::Request(fd));
            }
            _ => {}
        }
    }
    out
}

/// The descriptor a call's arguments start with, as `-yy` decodes it:
/// `7</path/to/file>` or `9<TCP:[127.0.0.1:1->127.0.0.1:2]>`.
fn descriptor(args: &str) -> String {
    let end = [">, ", ">)", "> <unfinished"]
        .iter()
        .filter_map(|end| args.find(end))
        .min()
        .map_or(args.len(), |i| i + 1);
    args[..end].to_owned()
}

/// Whether a descriptor, as `-yy` prints it (`7</tmp/…/store/db>`), is the
/// file whose sync makes `engine`'s acknowledged writes durable, in the
/// store directory `dev` makes (`<vault>/store`).
fn is_log(engine: Engine, descriptor: &str) -> bool {
    let Some((_, name)) = descriptor.rsplit_once("/store/") else {
        return false;
    };
    match engine {
        Engine::Sled => name == "db>",
        // The active journal, whichever number fjall has rotated to.
        Engine::Fjall => name
            .strip_suffix(".jnl>")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        Engine::Redb => name == "strongroom.redb>",
    }
}

/// Of the `201`s in `events`, those sent without a completed sync of a file
/// that `is_log` between their request's arrival and the answer; and how
/// many `201`s there were.
fn unsynced_acknowledgements(
    events: &[Event],
    is_log: impl Fn(&str) -> bool,
) -> (Vec<usize>, usize) {
    let mut arrived: HashMap<&str, usize> = HashMap::new();
    let mut last_sync = None;
    let mut unsynced = Vec::new();
    let mut created = 0;
    for (i, event) in events.iter().enumerate() {
        match event {
            Event::Request(connection) => {
                arrived.insert(connection, i);
            }
            Event::Synced(file) if is_log(file) => last_sync = Some(i),
            Event::Synced(_) => {}
            Event::Created(connection) => {
                created += 1;
                let request = arrived.remove(connection.as_str());
                match (request, last_sync) {
                    (Some(request), Some(sync)) if sync > request => {}
                    _ => unsynced.push(created),
                }
            }
        }
    }
    (unsynced, created)
}

#[test]
fn every_acknowledged_write_follows_an_fdatasync_of_the_store_sled() {
    every_acknowledged_write_follows_an_fdatasync_of_the_store(Engine::Sled);
}

#[test]
fn every_acknowledged_write_follows_an_fdatasync_of_the_store_fjall() {
    every_acknowledged_write_follows_an_fdatasync_of_the_store(Engine::Fjall);
}

#[test]
fn every_acknowledged_write_follows_an_fdatasync_of_the_store_redb() {
    every_acknowledged_write_follows_an_fdatasync_of_the_store(Engine::Redb);
}

/// Each engine has its test above.
#[test]
fn every_engine_is_traced() {
    assert_eq!(
        Engine::ALL,
        [Engine::Sled, Engine::Fjall, Engine::Redb],
        "add a strace test for the new engine"
    );
}

/// `dev` on a new vault whose configuration names `engine`, under strace,
/// with clients writing cards at once.
fn every_acknowledged_write_follows_an_fdatasync_of_the_store(engine: Engine) {
    strace_is_installed();
    let dir = tempfile::tempdir().unwrap();
    let trace_file = dir.path().join("strace.txt");
    let vault = dir.path().join("vault");
    let config = dir.path().join("strongroom.toml");
    std::fs::write(
        &config,
        format!("[store]\nengine = \"{}\"\n", engine.as_str()),
    )
    .unwrap();
    let strace = [
        "strace",
        "-f",
        "-qq",
        "-yy",
        "-s",
        "48",
        "-e",
        TRACED,
        "-e",
        "signal=none",
        "-o",
        trace_file.to_str().unwrap(),
    ];
    let args = [
        "dev",
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        vault.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let (server, credentials, addr) = dev(wrapped(&strace, &args), Stdio::null());
    let key = credentials["payment_service_api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let key = key.clone();
            std::thread::spawn(move || {
                let card = r#"{"pan":"4242424242424242","exp_month":12,"exp_year":2031}"#;
                (0..WRITES_PER_CLIENT)
                    .filter(|_| {
                        try_http(addr, "POST", "/v1/records/card", Some(&key), Some(card))
                            .is_ok_and(|reply| reply.status == 201)
                    })
                    .count()
            })
        })
        .collect();
    let acknowledged: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let status = terminate_wrapped(server);
    assert!(status.success(), "{status}");
    assert_eq!(acknowledged, CLIENTS * WRITES_PER_CLIENT);

    // The vault was created with the configured engine.
    assert_eq!(Engine::detect(&vault.join("store")), Some(engine));

    let trace = std::fs::read_to_string(&trace_file).unwrap();
    let events = events(&trace);
    let (unsynced, created) = unsynced_acknowledgements(&events, |file| is_log(engine, file));
    // The trace saw every answer, or the check below would prove nothing.
    assert_eq!(created, acknowledged, "201s in the trace");
    assert!(
        unsynced.is_empty(),
        "{} of {created} acknowledged writes were answered without an \
         fsync/fdatasync of the {} store's log after their request arrived \
         (the 201s numbered {unsynced:?})",
        unsynced.len(),
        engine.as_str()
    );
}

/// The trace parser on lines as strace prints them, whole and split.
#[test]
fn trace_lines_become_events() {
    let trace = "\
10 recvfrom(9<TCP:[127.0.0.1:80->127.0.0.1:5]>, \"POST /v1/records/card HTTP/1.1\\r\\n\"..., 8192, 0, NULL, NULL) = 300
11 fdatasync(7</tmp/v/store/db> <unfinished ...>
12 read(8<TCP:[127.0.0.1:80->127.0.0.1:6]> <unfinished ...>
11 <... fdatasync resumed>) = 0
12 <... read resumed>\"POST /v1/records/card HTTP/1.1\\r\\n\"..., 8192) = 300
10 writev(9<TCP:[127.0.0.1:80->127.0.0.1:5]>, [{iov_base=\"HTTP/1.1 201 Created\\r\\n\"...}], 2) = 400
13 sync_file_range(7</tmp/v/store/db>, 0, 4096, SYNC_FILE_RANGE_WRITE) = 0
13 fsync(7</tmp/v/store/conf>) = 0
12 sendto(8<TCP:[127.0.0.1:80->127.0.0.1:6]>, \"HTTP/1.1 201 Created\\r\\n\"..., 400, MSG_NOSIGNAL, NULL, 0 <unfinished ...>
12 <... sendto resumed>) = 400
";
    let a = "9<TCP:[127.0.0.1:80->127.0.0.1:5]>".to_owned();
    let b = "8<TCP:[127.0.0.1:80->127.0.0.1:6]>".to_owned();
    let events = events(trace);
    assert_eq!(
        events,
        [
            Event::Request(a.clone()),
            Event::Synced("7</tmp/v/store/db>".into()),
            Event::Request(b.clone()),
            Event::Created(a),
            Event::Synced("7</tmp/v/store/conf>".into()),
            Event::Created(b),
        ]
    );
    // The first answer followed a sync of the log after its request; the
    // second's request came after that sync, and a sync of another file
    // does not count.
    assert_eq!(
        unsynced_acknowledgements(&events, |file| is_log(Engine::Sled, file)),
        (vec![2], 2)
    );
}

/// Which file counts as each engine's log.
#[test]
fn each_engine_has_its_log() {
    assert!(is_log(Engine::Sled, "7</tmp/v/store/db>"));
    assert!(!is_log(Engine::Sled, "7</tmp/v/store/conf>"));
    assert!(!is_log(Engine::Sled, "7</tmp/v/store/blobs/db>"));
    assert!(is_log(Engine::Fjall, "7</tmp/v/store/0.jnl>"));
    assert!(is_log(Engine::Fjall, "7</tmp/v/store/12.jnl>"));
    assert!(!is_log(Engine::Fjall, "7</tmp/v/store/keyspaces/1/0.jnl>"));
    assert!(!is_log(Engine::Fjall, "7</tmp/v/store/.jnl>"));
    assert!(!is_log(Engine::Fjall, "7</tmp/v/store/version>"));
    assert!(is_log(Engine::Redb, "7</tmp/v/store/strongroom.redb>"));
    assert!(!is_log(Engine::Redb, "7</tmp/v/store/db>"));
    assert!(!is_log(Engine::Redb, "7</tmp/v/other/strongroom.redb>"));
}
