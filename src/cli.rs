//! The command line (clap): `init`, `serve`, `dev`, `migrate`, `audit`,
//! `backup`, `restore`. `main.rs` only calls
//! [`run`]. Secrets are printed once, to stdout, and never logged.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

mod keys;
use serde_json::json;
use zeroize::Zeroizing;

use crate::access::{LockoutPolicy, Role, SessionPolicy};
use crate::api::{AppSettings, AppState, router};
use crate::audit::{
    ExportLine, KnownHead, Verification, export_store, read_head_file, verify_lines_since,
    verify_store_since,
};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, FileConfig, Overrides, StoreBackend, TlsSettings};
use crate::keyring::{Keyring, SealMethod, check_private};
use crate::store::{self, Engine, PostgresSettings, PostgresStore, Store};

#[derive(Debug, Parser)]
#[command(
    name = "strongroom",
    version,
    about = "A vault for KYC records and payment credentials"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the store and the root key; print the shares (or nothing, for
    /// a passphrase) and the first admin API key, once.
    Init(InitArgs),
    /// Serve the API over HTTPS (the [tls] section of --config; plain HTTP
    /// only with tls.disabled = true). Starts sealed; unseal over the API.
    Serve(ServeArgs),
    /// A fresh, initialised and unsealed server for trying Strongroom out
    /// (plain HTTP, loopback only).
    Dev(DevArgs),
    /// Create or update the schema of a PostgreSQL store ([store] url of
    /// --config): the one command that creates a schema without a vault.
    Migrate(MigrateArgs),
    /// Verify or export the audit log (offline: stop the server first).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Fetch a consistent, signed backup from a running server into a new
    /// file (mode 0600). The admin API key comes from the environment
    /// variable STRONGROOM_API_KEY, never from the command line (where
    /// other users could read it).
    Backup(BackupArgs),
    /// Manage KEKs on a running server: list, rotate, rewrap (with a
    /// progress bar), destroy a version no DEK uses. The admin API key
    /// comes from STRONGROOM_API_KEY, as for backup.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Restore a backup into a new data directory (offline). The backup's
    /// signature is checked against the vault's audit.pub, kept apart from
    /// the backup; nothing is created unless every check passes.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// TOML configuration file whose store is a PostgreSQL URL.
    #[arg(long, env = "STRONGROOM_CONFIG")]
    config: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// Write the backup here; an existing file is never replaced.
    #[arg(long)]
    out: PathBuf,
    /// The server's base URL (https://…; http:// only to a loopback address).
    #[arg(long, env = "STRONGROOM_URL")]
    url: String,
    /// PEM file of the CA that issued the server's certificate (default: the
    /// system's roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// The backup file.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// The new data directory (absent or empty; created 0700).
    #[arg(long, env = "STRONGROOM_DATA_DIR")]
    data_dir: PathBuf,
    /// The keys directory: root.json and audit.pub are written there unless
    /// present (present ones must be this vault's); audit.head is set to the
    /// backup's signed head.
    #[arg(long, env = "STRONGROOM_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// The vault's audit.pub, from a source you trust (default:
    /// audit.pub in the keys directory).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// The engine of the new store (default: [store] engine of --config, or
    /// the default engine); a backup moves between engines.
    #[arg(long)]
    engine: Option<Engine>,
    /// TOML configuration file ([store], keys_dir).
    #[arg(long, env = "STRONGROOM_CONFIG")]
    config: Option<PathBuf>,
    /// The live vault's keys/epoch.json (the erasure epochs' secrets,
    /// which a backup never carries), copied into the keys directory; a
    /// backup restores only within the epoch it was taken in.
    #[arg(long)]
    epoch_file: Option<PathBuf>,
    /// Restore even though the keys directory's audit.head names a later
    /// audit entry than the backup reaches (the entries after the backup
    /// are lost to the log; the old audit.head is kept beside the new one).
    #[arg(long)]
    accept_rollback: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain and the checkpoint signatures; exit 0 when they
    /// hold, 1 naming the first bad entry otherwise.
    Verify(AuditVerifyArgs),
    /// Write the log as JSONL to stdout, ending with a checkpoint.
    Export(AuditExportArgs),
}

#[derive(Debug, Args)]
struct AuditVerifyArgs {
    /// Verify the log in this data directory (of `init`/`serve`, or of
    /// `dev --data-dir`). Nothing is created there.
    #[arg(
        long,
        env = "STRONGROOM_DATA_DIR",
        conflicts_with_all = ["file", "config"],
        required_unless_present_any = ["file", "config"]
    )]
    data_dir: Option<PathBuf>,
    /// Verify the log in the store of this configuration file (a
    /// PostgreSQL store: `store = "postgres://…"`; audit.pub from its
    /// keys_dir unless --keys-dir or --public-key is given).
    #[arg(long, conflicts_with = "file")]
    config: Option<PathBuf>,
    /// Keys directory holding audit.pub (with --data-dir; default: the
    /// `keys` directory beside the store).
    #[arg(long, env = "STRONGROOM_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// Verify this exported JSONL file.
    #[arg(long, requires = "public_key")]
    file: Option<PathBuf>,
    /// The audit verification key (keys/audit.pub).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// A signed head the log must still reach, as SEQ:HASH (a checkpoint's
    /// seq and hash). For a data directory, keys/audit.head (beside
    /// audit.pub) is used when this is not given.
    #[arg(long, value_parser = parse_known_head)]
    min_head: Option<KnownHead>,
}

fn parse_known_head(text: &str) -> Result<KnownHead, String> {
    text.parse().map_err(|e: &str| e.to_owned())
}

#[derive(Debug, Args)]
struct AuditExportArgs {
    /// Export the log in this data directory (of `init`/`serve`, or of
    /// `dev --data-dir`). Nothing is created there.
    #[arg(
        long,
        env = "STRONGROOM_DATA_DIR",
        conflicts_with = "config",
        required_unless_present = "config"
    )]
    data_dir: Option<PathBuf>,
    /// Export the log in the store of this configuration file (a
    /// PostgreSQL store).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct Locations {
    /// Data directory (the store).
    #[arg(long, env = "STRONGROOM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keys directory (sealed root key, audit public key).
    #[arg(long, env = "STRONGROOM_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "STRONGROOM_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    locations: Locations,
    /// Split the root key into this many Shamir shares…
    #[arg(long, requires = "threshold", conflicts_with = "passphrase_file")]
    shares: Option<u8>,
    /// …any this many of which unseal.
    #[arg(long, requires = "shares")]
    threshold: Option<u8>,
    /// Seal the root key with the passphrase in this file (mode 0600).
    #[arg(long, required_unless_present = "shares")]
    passphrase_file: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    locations: Locations,
    /// Listen address (IP:PORT); default 127.0.0.1:8200.
    #[arg(long, env = "STRONGROOM_LISTEN")]
    listen: Option<String>,
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Listen address (IP:PORT); port 0 picks a free one.
    #[arg(long, env = "STRONGROOM_LISTEN")]
    listen: Option<String>,
    /// Use this (new or empty) directory instead of a temporary one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the credentials as one JSON object on the first line.
    #[arg(long)]
    json: bool,
    /// TOML configuration file (its directories are ignored: dev makes its own).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Runs the command line; the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Init(args) => init(args),
        Command::Serve(args) => serve(args),
        Command::Dev(args) => dev(args),
        Command::Migrate(args) => migrate(args),
        Command::Audit(AuditCommand::Verify(args)) => audit_verify(args),
        Command::Audit(AuditCommand::Export(args)) => audit_export(args),
        Command::Backup(args) => backup(args),
        Command::Keys(command) => keys::run(command),
        Command::Restore(args) => restore(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("strongroom: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter without `STRONGROOM_LOG`.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

fn init_logging() {
    // The storage engines' own progress lines (fjall, its lsm-tree) are
    // kept to warnings unless STRONGROOM_LOG asks for them.
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRONGROOM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load_config(locations: &Locations, listen: Option<String>) -> Result<Config, String> {
    let file = match &locations.config {
        Some(path) => FileConfig::load(path).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    Config::resolve(
        file,
        Overrides {
            listen,
            data_dir: locations.data_dir.clone(),
            keys_dir: locations.keys_dir.clone(),
        },
    )
    .map_err(|e| e.to_string())
}

/// A new store (`init`, `dev`): in a data directory created 0700 with the
/// configured engine (a directory that already holds a store keeps it, and
/// `init` then finds the vault there and refuses), or the configured
/// PostgreSQL database, its schema created or brought up to date.
fn create_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    match config.store_backend() {
        StoreBackend::Embedded { data_dir, settings } => {
            crate::config::create_data_dir(data_dir).map_err(|e| e.to_string())?;
            let engine = Engine::detect(data_dir).unwrap_or(settings.engine);
            store::open_engine(engine, data_dir, settings.cache_bytes).map_err(|e| e.to_string())
        }
        StoreBackend::Postgres(settings) => Ok(Arc::new(connect_postgres(settings)?)),
    }
}

/// The configured PostgreSQL store, migrations applied (and logged).
fn connect_postgres(settings: &PostgresSettings) -> Result<PostgresStore, String> {
    let (store, report) = PostgresStore::migrate(settings).map_err(|e| e.to_string())?;
    if !report.applied.is_empty() {
        tracing::info!(
            from = report.from,
            to = report.to,
            database = %settings.redacted_url(),
            "PostgreSQL schema migrated"
        );
    }
    Ok(store)
}

/// The configured store of an existing vault (`serve`): the data directory
/// (only its owner may enter it) with the engine found there, never
/// creating one; or the PostgreSQL database, migrations applied at start.
/// A store without a vault is refused by `Keyring::open` after this.
fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    let (data_dir, settings) = match config.store_backend() {
        StoreBackend::Embedded { data_dir, settings } => (data_dir, settings),
        StoreBackend::Postgres(settings) => return Ok(Arc::new(connect_postgres(settings)?)),
    };
    crate::config::check_data_dir(data_dir).map_err(|e| e.to_string())?;
    let Some(engine) = Engine::detect(data_dir) else {
        return Err(format!(
            "{} holds no Strongroom store: run `strongroom init` first (nothing was created)",
            data_dir.display()
        ));
    };
    if engine != settings.engine {
        tracing::info!(
            found = engine.as_str(),
            configured = settings.engine.as_str(),
            "the data directory keeps the engine it was created with"
        );
    }
    store::open_engine(engine, data_dir, settings.cache_bytes).map_err(|e| e.to_string())
}

/// `strongroom migrate`: applies the schema migrations a PostgreSQL store
/// lacks and says what it did.
fn migrate(args: MigrateArgs) -> Result<(), String> {
    let locations = Locations {
        data_dir: None,
        keys_dir: None,
        config: Some(args.config),
    };
    let config = load_config(&locations, None)?;
    let StoreBackend::Postgres(settings) = config.store_backend() else {
        return Err(
            "the configured store is an embedded engine in the data directory, which has no \
             schema to migrate; migrate is for a PostgreSQL store (store = \"postgres://…\")"
                .into(),
        );
    };
    let (_store, report) = PostgresStore::migrate(settings).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        )
    } else if report.applied.is_empty() {
        writeln!(
            out,
            "The PostgreSQL schema of {} is at version {}: nothing to do.",
            settings.redacted_url(),
            report.to
        )
    } else {
        let applied: Vec<String> = report
            .applied
            .iter()
            .map(|m| format!("  {}: {}", m.version, m.description))
            .collect();
        writeln!(
            out,
            "Migrated the PostgreSQL schema of {} from version {} to {}; applied:\n{}\n\
             migrate creates the schema only: run `strongroom init` to create the vault in it.",
            settings.redacted_url(),
            report.from,
            report.to,
            applied.join("\n")
        )
    };
    written.map_err(|e| e.to_string())
}

fn read_passphrase(path: &Path) -> Result<Zeroizing<String>, String> {
    check_private(path).map_err(|e| e.to_string())?;
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    Ok(Zeroizing::new(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// The request-independent settings of the server, from the configuration.
fn app_settings(config: &Config) -> AppSettings {
    AppSettings {
        body_limit_bytes: config.body_limit_bytes,
        unseal_failures_per_minute: config.unseal_failures_per_minute,
        sessions: SessionPolicy {
            idle: config.session_idle,
            absolute: config.session_absolute,
        },
        lockout: LockoutPolicy {
            threshold: config.lockout_threshold,
            ..LockoutPolicy::default()
        },
        audit_checkpoint_every: config.audit_checkpoint_every,
        reveals_per_hour: usize::try_from(config.reveals_per_hour).unwrap_or(usize::MAX),
        sensitive_searches_per_hour: usize::try_from(config.sensitive_searches_per_hour)
            .unwrap_or(usize::MAX),
        collect: config.collect,
        relay: config.relay.clone(),
        canaries: config.canaries.clone(),
        retention: config.retention.clone(),
        // A PostgreSQL store has no data directory: a backup spools in the
        // system's temporary directory (docs/operations.md, "PostgreSQL store").
        data_dir: config.postgres.is_none().then(|| config.data_dir.clone()),
        // Only dev serves plain HTTP (it forgets any [tls] section).
        console_secure_cookie: config.tls != TlsSettings::Unset,
        rewrap: config.rewrap,
        erasure_epoch: config.erasure_epoch,
        kek_destroy_grace: config.kek_destroy_grace,
        ..AppSettings::default()
    }
}

/// Who the audit log names for what the command line does.
const CLI_ACTOR: &str = "strongroom-cli";

/// A vault just created: its server state (unsealed), the first admin's API
/// key and the shares, each to be shown once.
struct NewVault {
    state: AppState,
    admin_api_key: Zeroizing<String>,
    shares: Vec<Zeroizing<String>>,
}

/// Creates the vault and its first admin.
fn create_vault(
    config: &Config,
    store: Arc<dyn Store>,
    method: SealMethod,
) -> Result<NewVault, String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let initialised = Keyring::init(
        &config.keys_dir,
        Arc::clone(&store),
        Arc::clone(&clock),
        config.keyring,
        method,
    )
    .map_err(|e| e.to_string())?;
    let state = AppState::new(
        Arc::new(initialised.keyring),
        store,
        clock,
        app_settings(config),
    );
    let api_key = state
        .create_service_now(CLI_ACTOR, "admin", vec![Role::Admin])
        .map_err(|e| format!("{:?}", e.problem().detail))?;
    Ok(NewVault {
        state,
        admin_api_key: Zeroizing::new(api_key.expose_secret().to_owned()),
        shares: initialised.shares,
    })
}

fn init(args: InitArgs) -> Result<(), String> {
    let config = load_config(&args.locations, None)?;
    let method = match (args.shares, args.threshold, &args.passphrase_file) {
        (Some(count), Some(threshold), None) => SealMethod::Shares { count, threshold },
        (None, None, Some(path)) => SealMethod::Passphrase(read_passphrase(path)?),
        _ => return Err("give --shares N --threshold M, or --passphrase-file F".into()),
    };
    let store = create_store(&config)?;
    let NewVault {
        state,
        admin_api_key: admin_key,
        shares,
    } = create_vault(&config, Arc::clone(&store), method)?;
    state.seal();
    store.flush().map_err(|e| e.to_string())?;

    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let value = if shares.is_empty() {
            json!({ "admin_api_key": admin_key.as_str() })
        } else {
            let shares: Vec<&str> = shares.iter().map(|s| s.as_str()).collect();
            json!({ "shares": shares, "admin_api_key": admin_key.as_str() })
        };
        writeln!(out, "{value}")
    } else {
        let mut text =
            String::from("Strongroom initialised. These are shown once: store them apart.\n\n");
        for (i, share) in shares.iter().enumerate() {
            text.push_str(&format!("Unseal share {}: {}\n", i + 1, share.as_str()));
        }
        text.push_str(&format!("Admin API key:  {}\n", admin_key.as_str()));
        writeln!(out, "{text}")
    };
    written.map_err(|e| e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Resolves on SIGINT or SIGTERM. The handlers are registered now, when this
/// is called, not when the future is first polled: a signal that arrives
/// while the server starts must stop it gracefully, not kill it outright
/// (the default action), which it would before registration.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    })
}

/// Serves `state` on `listener` (over TLS with `tls`) until SIGINT or
/// SIGTERM, then signs the audit head, seals and flushes.
async fn serve_until_signal(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let background = crate::api::spawn_background(&state);
    crate::tls::serve(listener, tls, router(state.clone()), signal).await;
    for task in background {
        task.abort();
    }
    state.seal();
    state.store.flush().map_err(|e| e.to_string())?;
    tracing::info!("stopped; keys zeroized");
    Ok(())
}

/// Serves `GET /metrics` on `addr` in plain HTTP, without a credential,
/// until the process ends (docs/operations.md, "Readiness and metrics").
async fn serve_metrics(addr: std::net::SocketAddr, state: AppState) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (metrics_listen): {e}"))?;
    if addr.ip().is_loopback() {
        tracing::info!(addr = %addr, "serving metrics without credentials (metrics_listen)");
    } else {
        // Whoever reaches it learns when this node is sealed and how busy
        // each route is: keep it on a network only the scraper reaches.
        tracing::warn!(
            addr = %addr,
            "serving metrics WITHOUT CREDENTIALS on a non-loopback address (metrics_listen): make sure only the scraper can reach it"
        );
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, crate::api::metrics_listener_router(state)).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

/// What `serve` says when no TLS is configured.
const TLS_REQUIRED: &str = "serve needs TLS: set tls.cert_file and tls.key_file (PEM) in the [tls] section \
     of the configuration file, or tls.disabled = true when a TLS-terminating proxy stands in \
     front of this server (docs/operations.md, \"TLS\")";

/// The TLS configuration `serve` presents, or `None` for plain HTTP (only
/// with `tls.disabled = true`, warned about at every start).
fn edge_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match &config.tls {
        TlsSettings::Files {
            cert_file,
            key_file,
            client_ca_file,
        } => crate::tls::server_config(cert_file, key_file, client_ca_file.as_deref())
            .map(Some)
            .map_err(|e| e.to_string()),
        TlsSettings::Disabled => {
            tracing::warn!(
                addr = %config.listen,
                "TLS is disabled (tls.disabled = true): serving plain HTTP. Only behind a \
                 TLS-terminating proxy; API keys and data cross this hop in the clear, and \
                 certificate-bound principals are refused (no client certificate reaches \
                 the server)"
            );
            Ok(None)
        }
        TlsSettings::Unset => Err(TLS_REQUIRED.to_owned()),
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let config = load_config(&args.locations, args.listen)?;
    let store = open_store(&config)?;
    let keyring = Keyring::open(
        &config.keys_dir,
        Arc::clone(&store),
        Arc::new(SystemClock),
        config.keyring,
    )
    .map_err(|e| e.to_string())?;
    let tls = edge_tls(&config)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    runtime()?.block_on(async {
        // Before the port opens: from then on SIGTERM means a clean stop.
        let signal = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        tracing::info!(addr = %config.listen, scheme, vault = keyring.vault_id(), "serving, sealed");
        let state = AppState::new(
            Arc::new(keyring),
            store,
            Arc::new(SystemClock),
            app_settings(&config),
        );
        if let Some(addr) = config.metrics_listen {
            serve_metrics(addr, state.clone()).await?;
        }
        serve_until_signal(listener, tls, state, signal).await
    })
}

fn dev(args: DevArgs) -> Result<(), String> {
    let (_temp, data_dir) = match args.data_dir {
        Some(dir) => {
            let not_empty = std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if not_empty {
                return Err(format!(
                    "{} is not empty; dev mode starts from nothing",
                    dir.display()
                ));
            }
            if !dir.exists() {
                crate::config::create_data_dir(&dir).map_err(|e| e.to_string())?;
            }
            (None, dir)
        }
        None => {
            // Created 0700.
            let temp = tempfile::Builder::new()
                .prefix("strongroom-dev-")
                .tempdir()
                .map_err(|e| e.to_string())?;
            let path = temp.path().to_path_buf();
            (Some(temp), path)
        }
    };
    let locations = Locations {
        data_dir: Some(data_dir.join("store")),
        keys_dir: Some(data_dir.join("keys")),
        config: args.config,
    };
    let mut config = load_config(&locations, args.listen)?;
    if !config.listen.ip().is_loopback() {
        return Err(format!(
            "dev serves plain HTTP (no TLS), so only on a loopback address, not {}; \
             use serve with a certificate to listen elsewhere",
            config.listen
        ));
    }
    if config.tls != TlsSettings::Unset {
        tracing::info!("dev serves plain HTTP on loopback; the [tls] section is ignored");
        config.tls = TlsSettings::Unset;
    }
    // Test processors run on this machine: dev lets the relay reach
    // loopback and private addresses, and says so (docs/payment-path.md).
    config.relay.allow_private_destinations = true;
    eprintln!(
        "note: dev sets relay.allow_private_destinations = true: relay routes may reach \
         loopback and private addresses"
    );
    let passphrase = Zeroizing::new(hex::encode(
        crate::crypto::random_array::<24>().map_err(|e| e.to_string())?,
    ));
    // dev is always a fresh embedded store, whatever the file's [store].
    config.postgres = None;
    let store = create_store(&config)?;
    let NewVault {
        state,
        admin_api_key: admin_key,
        ..
    } = create_vault(&config, store, SealMethod::Passphrase(passphrase.clone()))?;
    let service = |name: &str, role: Role| {
        state
            .create_service_now(CLI_ACTOR, name, vec![role])
            .map(|k| Zeroizing::new(k.expose_secret().to_owned()))
            .map_err(|e| e.problem().detail)
    };
    // A second admin: relay routes need another admin's approval (dual
    // control), so a new user can try the whole payment path at once.
    let second_admin_key = service("admin2", Role::Admin)?;
    let payment_key = service("payments", Role::PaymentService)?;
    let auditor_key = service("auditor", Role::Auditor)?;
    let mut staff = serde_json::Map::new();
    // Staff sign in to the console; the auditor and admin logins are
    // people beside the API keys above (an API key cannot use the console).
    for (name, role) in [
        ("officer", Role::ComplianceOfficer),
        ("approver", Role::ComplianceApprover),
        ("audit-staff", Role::Auditor),
        ("admin-staff", Role::Admin),
    ] {
        let password = Zeroizing::new(hex::encode(
            crate::crypto::random_array::<16>().map_err(|e| e.to_string())?,
        ));
        state
            .create_staff_now(CLI_ACTOR, name, vec![role], &password)
            .map_err(|e| e.problem().detail)?;
        staff.insert(
            name.to_owned(),
            json!({"username": name, "password": password.as_str()}),
        );
    }
    runtime()?.block_on(async {
        // Before the port opens: from then on SIGTERM means a clean stop.
        let signal = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let url = format!("http://{addr}");
        let mut out = std::io::stdout().lock();
        let written = if args.json {
            let value = json!({
                "url": url,
                "admin_api_key": admin_key.as_str(),
                "second_admin_api_key": second_admin_key.as_str(),
                "payment_service_api_key": payment_key.as_str(),
                "auditor_api_key": auditor_key.as_str(),
                "staff": staff,
                "console_url": format!("{url}/console"),
                "unseal_passphrase": passphrase.as_str(),
            });
            writeln!(out, "{value}")
        } else {
            writeln!(
                out,
                "Strongroom dev server (throw-away data, unsealed) at {url}\n\
                 Admin API key:           {}\n\
                 Second admin API key:    {} (approves relay routes)\n\
                 Payment service API key: {}\n\
                 Auditor API key:         {}\n\
                 Unseal passphrase:       {}\n\
                 Console:                 {url}/console\n\
                 Staff logins (console):\n{}\
                 Try: curl {url}/v1/sys/health",
                admin_key.as_str(),
                second_admin_key.as_str(),
                payment_key.as_str(),
                auditor_key.as_str(),
                passphrase.as_str(),
                staff_lines(&staff),
            )
        };
        written
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
        drop(out);
        serve_until_signal(listener, None, state, signal).await
    })
}

fn at<'a>(value: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    value.get(key).unwrap_or(&serde_json::Value::Null)
}

/// The dev staff logins, one per line: role, username, password.
fn staff_lines(staff: &serde_json::Map<String, serde_json::Value>) -> String {
    staff
        .values()
        .map(|login| {
            format!(
                "  {:<12} password {}\n",
                at(login, "username").as_str().unwrap_or_default(),
                at(login, "password").as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn report(result: &Verification) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string(result).map_err(|e| e.to_string())?
    );
    if result.ok {
        if result.unsigned_tail > 0 {
            eprintln!(
                "note: the last {} entries are seal or unseal entries written while the vault was sealed; the next unseal signs them",
                result.unsigned_tail
            );
        }
        Ok(())
    } else {
        Err(format!(
            "audit verification failed at entry {}: {}",
            result.first_bad_seq.unwrap_or(0),
            result.problem.as_deref().unwrap_or("unknown")
        ))
    }
}

fn audit_verify(args: AuditVerifyArgs) -> Result<(), String> {
    if let Some(file) = &args.file {
        let public_key =
            crate::audit::read_public_key(args.public_key.as_deref().unwrap_or(Path::new("")))?;
        let reader = std::io::BufReader::new(
            std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?,
        );
        let lines = std::io::BufRead::lines(reader)
            .enumerate()
            .map(|(i, line)| {
                let line = line.map_err(|e| e.to_string())?;
                serde_json::from_str::<ExportLine>(&line)
                    .map_err(|_| format!("line {} is not an audit record", i + 1))
            });
        return report(&verify_lines_since(
            lines,
            &public_key,
            true,
            args.min_head.as_ref(),
        ));
    }
    let vault = match (&args.data_dir, &args.config) {
        (Some(data_dir), _) => OfflineVault::locate(data_dir)?,
        (None, Some(config)) => OfflineVault::configured(config)?,
        (None, None) => return Err("give --data-dir, --config or --file".into()),
    };
    let store = vault.open()?;
    let public_key_path = match (&args.public_key, &args.keys_dir) {
        (Some(path), _) => path.clone(),
        (None, Some(keys)) => keys.join(AUDIT_PUBLIC_KEY),
        (None, None) => {
            let beside = vault.public_key_beside()?;
            // Whoever could rewrite the log could also have replaced this
            // file: say which key vouched for it.
            eprintln!(
                "verifying with the public key beside the store ({}); for a copy you were given, pass --public-key from a source you trust",
                beside.display()
            );
            beside
        }
    };
    let public_key = crate::audit::read_public_key(&public_key_path)?;
    // The newest signed head the server recorded, beside audit.pub: a data
    // directory put back to an older copy ends before it.
    let known = match args.min_head {
        Some(known) => Some(known),
        None => read_head_file(
            public_key_path.parent().unwrap_or(Path::new(".")),
            &public_key,
        )?,
    };
    report(&verify_store_since(
        store.as_ref(),
        &public_key,
        false,
        known.as_ref(),
    ))
}

fn audit_export(args: AuditExportArgs) -> Result<(), String> {
    let vault = match (&args.data_dir, &args.config) {
        (Some(data_dir), _) => OfflineVault::locate(data_dir)?,
        (None, Some(config)) => OfflineVault::configured(config)?,
        (None, None) => return Err("give --data-dir or --config".into()),
    };
    let store = vault.open()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    export_store(store.as_ref(), &mut out)?;
    out.flush().map_err(|e| e.to_string())
}

/// The audit verification key's file name in a keys directory.
const AUDIT_PUBLIC_KEY: &str = "audit.pub";

/// What the offline commands accept as `--data-dir`.
const OFFLINE_LAYOUTS: &str = "expected the data directory of `strongroom init` / \
     `serve` (the store's own files) or the directory given to \
     `strongroom dev --data-dir` (holding `store/` and `keys/`)";

/// A vault's store found for an offline command (`audit verify`, `audit
/// export`), which must never create one: sled creates a database wherever
/// it is opened, so the directory is recognised first; a PostgreSQL store
/// is opened only if its schema is already there.
enum OfflineVault {
    Embedded {
        store: PathBuf,
        engine: Engine,
    },
    Postgres {
        settings: PostgresSettings,
        keys_dir: PathBuf,
    },
}

impl OfflineVault {
    /// `data_dir` is the store itself (the `init` / `serve` layout) or holds
    /// it as `store/` (the `dev` layout); anything else is an error that
    /// says what was expected, and nothing is created.
    fn locate(data_dir: &Path) -> Result<Self, String> {
        let dev_store = data_dir.join("store");
        let (store, engine) = if let Some(engine) = Engine::detect(data_dir) {
            (data_dir.to_path_buf(), engine)
        } else if let Some(engine) = Engine::detect(&dev_store) {
            (dev_store, engine)
        } else if !data_dir.exists() {
            return Err(format!(
                "{} does not exist; {OFFLINE_LAYOUTS}",
                data_dir.display()
            ));
        } else {
            return Err(format!(
                "{} holds no Strongroom store; {OFFLINE_LAYOUTS}. Nothing was created",
                data_dir.display()
            ));
        };
        Ok(Self::Embedded { store, engine })
    }

    /// The store of the configuration file `path`: a PostgreSQL store (an
    /// embedded one is given with --data-dir).
    fn configured(path: &Path) -> Result<Self, String> {
        let locations = Locations {
            data_dir: None,
            keys_dir: None,
            config: Some(path.to_path_buf()),
        };
        let config = load_config(&locations, None)?;
        match config.store_backend() {
            StoreBackend::Postgres(settings) => Ok(Self::Postgres {
                settings: settings.clone(),
                keys_dir: config.keys_dir.clone(),
            }),
            StoreBackend::Embedded { data_dir, .. } => Self::locate(data_dir),
        }
    }

    /// `audit.pub` in the keys directory beside the store, where `dev` puts
    /// it (`D/keys` beside `D/store`) and where `init` does when the data
    /// and keys directories are siblings (`data/`, `keys/`).
    fn public_key_beside(&self) -> Result<PathBuf, String> {
        let store = match self {
            Self::Embedded { store, .. } => store,
            Self::Postgres { keys_dir, .. } => {
                let path = keys_dir.join(AUDIT_PUBLIC_KEY);
                return if path.is_file() {
                    Ok(path)
                } else {
                    Err(format!(
                        "no {AUDIT_PUBLIC_KEY} in the configured keys directory ({}): give \
                         --keys-dir or --public-key",
                        keys_dir.display()
                    ))
                };
            }
        };
        let keys = match store.parent() {
            Some(parent) => parent.join("keys"),
            None => PathBuf::from("keys"),
        };
        let path = keys.join(AUDIT_PUBLIC_KEY);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "no {AUDIT_PUBLIC_KEY} beside the store {} (looked for {}): give \
                 --keys-dir with the vault's keys directory, or --public-key with its \
                 {AUDIT_PUBLIC_KEY}",
                store.display(),
                path.display()
            ))
        }
    }

    /// Opens the store, which must hold an initialised vault.
    fn open(&self) -> Result<Arc<dyn Store>, String> {
        let (store, place): (Arc<dyn Store>, String) = match self {
            Self::Embedded { store, engine } => (
                store::open_engine(*engine, store, store::DEFAULT_CACHE_BYTES)
                    .map_err(|e| format!("{e} (is the server still running?)"))?,
                store.display().to_string(),
            ),
            Self::Postgres { settings, .. } => (
                Arc::new(PostgresStore::open_existing(settings).map_err(|e| e.to_string())?),
                settings.redacted_url(),
            ),
        };
        match Keyring::is_initialised(store.as_ref()) {
            Ok(true) => Ok(store),
            Ok(false) => Err(format!(
                "{place} holds a database but no Strongroom vault (`strongroom init` never \
                 completed there)"
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The environment variable `backup` reads the admin API key from.
const API_KEY_VARIABLE: &str = "STRONGROOM_API_KEY";

/// Whether `url` may carry an API key: HTTPS, or plain HTTP to this
/// machine. `path` is joined to it.
fn server_url(base: &str, path: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(base.trim_end_matches('/'))
        .map_err(|e| format!("--url {base:?}: {e}"))?;
    let loopback = url.host_str().is_some_and(|host| {
        host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(format!(
                "--url {base:?}: use https:// (plain http:// only to a loopback address: the API key would cross the network in the clear)"
            ));
        }
    }
    url.join(path).map_err(|e| e.to_string())
}

/// The admin API key from [`API_KEY_VARIABLE`] (never the command line).
fn api_key_from_env() -> Result<Zeroizing<String>, String> {
    let key = Zeroizing::new(std::env::var(API_KEY_VARIABLE).map_err(|_| {
        format!(
            "set {API_KEY_VARIABLE} to an admin API key (it is never taken from the command line)"
        )
    })?);
    if key.trim().is_empty() {
        return Err(format!("{API_KEY_VARIABLE} is empty"));
    }
    Ok(key)
}

/// The HTTPS client of the commands that talk to a running server: TLS
/// 1.2 or later, no proxy, no redirect, the system's roots or `ca_file`'s.
fn api_client(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .connect_timeout(std::time::Duration::from_secs(30));
    builder = match ca_file {
        None => builder.tls_built_in_root_certs(true),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| format!("{}: no PEM certificate in it", path.display()))?;
            certs
                .into_iter()
                .fold(builder.tls_built_in_root_certs(false), |b, c| {
                    b.add_root_certificate(c)
                })
        }
    };
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTPS client: {e}"))
}

/// A refusal of the server, as `problem+json` told it.
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> String {
    let problem: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    keys::printable(&format!(
        "{status} {}: {}",
        problem.get("code").and_then(|v| v.as_str()).unwrap_or("?"),
        problem.get("detail").and_then(|v| v.as_str()).unwrap_or("")
    ))
}

fn backup(args: BackupArgs) -> Result<(), String> {
    use crate::backup::{Trust, read};
    if std::fs::symlink_metadata(&args.out).is_ok() {
        return Err(format!(
            "{} exists; backup never replaces a file (nothing was fetched)",
            args.out.display()
        ));
    }
    let key = api_key_from_env()?;
    let url = server_url(&args.url, "/v1/sys/backup")?;
    let client = api_client(args.ca_file.as_deref())?;
    let directory = match args.out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // 0600, in the target's directory, so the final rename is atomic.
    let mut partial = tempfile::Builder::new()
        .prefix(".strongroom-backup-")
        .suffix(".partial")
        .tempfile_in(&directory)
        .map_err(|e| format!("cannot create a file in {}: {e}", directory.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let received = runtime.block_on(async {
        let mut response = client
            .get(url.clone())
            .bearer_auth(key.as_str())
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(format!(
                "the server refused the backup: {}",
                refusal(status, &body)
            ));
        }
        let expected = response.content_length();
        let mut received = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("the backup was cut off: {e}"))?
        {
            partial
                .write_all(&chunk)
                .map_err(|e| format!("{}: {e}", partial.path().display()))?;
            received += chunk.len() as u64;
        }
        if expected.is_some_and(|n| n != received) {
            return Err("the backup was cut off before its end".to_owned());
        }
        Ok(received)
    })?;
    partial
        .as_file()
        .sync_all()
        .map_err(|e| format!("{}: {e}", partial.path().display()))?;
    let verified = read(partial.as_file_mut(), Trust::HeaderKey, |_, _| Ok(()))
        .map_err(|e| format!("the received backup does not check out ({e}); nothing was kept"))?;
    partial.persist_noclobber(&args.out).map_err(|e| {
        format!(
            "cannot write {}: {} (the received backup was discarded)",
            args.out.display(),
            e.error
        )
    })?;
    std::fs::File::open(&directory)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", directory.display()))?;
    let header = verified.header;
    println!(
        "Backup of vault {} written to {} ({received} bytes, {} pairs, {} audit entries{}).\n\
         Keep the vault's keys/audit.pub apart from it: restore checks the backup's signature against it.\n\
         A restore also needs keys/epoch.json of the same erasure epoch (a backup never carries it): \
         keep a copy of the current one with the newest backup (docs/lifecycle.md).",
        header.vault_id,
        args.out.display(),
        header.pairs,
        header.audit_entries,
        header
            .audit_head
            .as_ref()
            .map(|h| format!(", signed audit head {}", h.seq))
            .unwrap_or_default()
    );
    Ok(())
}

fn restore(args: RestoreArgs) -> Result<(), String> {
    let locations = Locations {
        data_dir: Some(args.data_dir.clone()),
        keys_dir: args.keys_dir.clone(),
        config: args.config.clone(),
    };
    let config = load_config(&locations, None)?;
    if config.postgres.is_some() {
        return Err(
            "restore writes a new embedded data directory; the configuration names a \
             PostgreSQL store, which restore does not fill (nothing was created)"
                .into(),
        );
    }
    let plan = crate::backup::RestorePlan {
        file: args.input,
        data_dir: config.data_dir,
        keys_dir: config.keys_dir,
        public_key: args.public_key,
        engine: args.engine.unwrap_or(config.store.engine),
        cache_bytes: config.store.cache_bytes,
        accept_rollback: args.accept_rollback,
        epoch_file: args.epoch_file,
    };
    let restored = crate::backup::restore(&plan).map_err(|e| format!("restore refused: {e}"))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&restored).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "Restored vault {} (backup of {}) into {} ({} engine): {} pairs, {} audit entries verified{}.\n\
             Keys directory {}: {}.\n\
             Start `strongroom serve` on it and unseal with the vault's shares or passphrase.",
            restored.vault_id,
            restored.created_at,
            plan.data_dir.display(),
            restored.engine,
            restored.pairs,
            restored.audit_entries,
            restored
                .audit_head
                .as_ref()
                .map(|(seq, hash)| format!("; audit.head set to the signed head {seq} ({hash})"))
                .unwrap_or_default(),
            plan.keys_dir.display(),
            if restored.keys_written.is_empty() {
                "root.json and audit.pub were already there".to_owned()
            } else {
                format!("wrote {}", restored.keys_written.join(", "))
            },
        );
    }
    if let Some(seq) = restored.audit_head_moved_back_from {
        eprintln!(
            "note: audit.head named entry {seq}, newer than the backup: it now names the backup's head (the restored log ends there; --accept-rollback)"
        );
    }
    if let Some(kept) = &restored.previous_audit_head {
        eprintln!(
            "note: the previous audit.head is kept as {} (it records how far the log went before)",
            kept.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The console's cookies are `Secure` whenever `serve` could start:
    /// with a certificate, and behind a TLS-terminating proxy
    /// (`tls.disabled`), where the browser still sees HTTPS. Only `dev`
    /// (no `[tls]` left) serves them without.
    #[test]
    fn console_cookies_are_secure_unless_dev() {
        let secure = |text: &str| {
            let config = Config::resolve(
                toml::from_str(text).unwrap(),
                crate::config::Overrides::default(),
            )
            .unwrap();
            app_settings(&config).console_secure_cookie
        };
        assert!(secure("[tls]\ndisabled = true"));
        assert!(secure("[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\""));
        assert!(!secure(""));
    }
}
