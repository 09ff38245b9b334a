//! Configuration: one TOML file (`deny_unknown_fields`), `STRONGROOM_*`
//! environment variables and command-line flags, in rising precedence,
//! validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::crypto::KdfPolicy;
use crate::keyring::KeyringSettings;

/// Defaults, documented in docs/operations.md.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8200";
pub const DEFAULT_DATA_DIR: &str = "data";
pub const DEFAULT_KEYS_DIR: &str = "keys";
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
pub const DEFAULT_UNSEAL_FAILURES_PER_MINUTE: u32 = 10;
/// Searches by PAN or national id per officer in a sliding hour (misses
/// included): each one is a guess at a value the officer sees only masked.
pub const DEFAULT_SENSITIVE_SEARCHES_PER_HOUR: u32 = 20;
/// Search misses by one officer within 10 minutes that log a WARN line.
pub const DEFAULT_SEARCH_MISS_ALERT: usize = 5;
/// Requests one publishable key may make in a sliding minute, from all its
/// pages together (docs/payment-path.md, "Collect").
pub const DEFAULT_COLLECT_PER_KEY_PER_MINUTE: u32 = 600;
/// Requests with publishable keys from one client address in a sliding
/// minute: a shopper needs two (card, CVC), and a few retries.
pub const DEFAULT_COLLECT_PER_ADDRESS_PER_MINUTE: u32 = 30;

/// The configuration file's contents. Every field is optional; unknown
/// fields are an error, so a typo never silently falls back to a default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// A second address serving `GET /metrics` without a credential, in
    /// plain HTTP (docs/operations.md, "Readiness and metrics"). None: off.
    pub metrics_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub keys_dir: Option<PathBuf>,
    pub body_limit_bytes: Option<usize>,
    pub kek_usage_limit: Option<u64>,
    pub kek_cryptoperiod_days: Option<u32>,
    pub unseal_failures_per_minute: Option<u32>,
    pub audit_checkpoint_every: Option<u64>,
    pub session_idle_minutes: Option<u32>,
    pub session_absolute_minutes: Option<u32>,
    pub lockout_threshold: Option<u32>,
    pub reveals_per_hour: Option<u32>,
    pub sensitive_searches_per_hour: Option<u32>,
    /// `[collect]`: publishable keys and ephemeral CVCs.
    pub collect: Option<CollectFileConfig>,
    /// `[relay]`: the outbound client of the payment relay.
    #[serde(default)]
    pub relay: RelayFileConfig,
    /// `[canaries]`: the alarm webhook and canary cards' IIN.
    #[serde(default)]
    pub canaries: CanariesFileConfig,
    /// `[retention]`: automatic erasure per record type, and the
    /// sweeper's pace (docs/lifecycle.md, "Retention").
    #[serde(default)]
    pub retention: RetentionFileConfig,
    /// `[tls]`: the certificate `serve` presents (docs/operations.md "TLS").
    #[serde(default)]
    pub tls: FileTls,
    /// `[store]`: the embedded engine and its cache, or a PostgreSQL
    /// database (`store = "postgres://…"` or `[store] url = …`).
    #[serde(default, deserialize_with = "StoreFileConfig::deserialize_entry")]
    pub store: StoreFileConfig,
    /// `[keys]`: the background rewrap's pace (docs/lifecycle.md).
    #[serde(default)]
    pub keys: KeysFileConfig,
}

/// `[keys]` in the configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFileConfig {
    /// Entries per rewrap batch (one transaction), 1 to 10 000.
    pub rewrap_batch: Option<u32>,
    /// The share of time the rewrap may work, 1 to 100 percent.
    pub rewrap_duty_percent: Option<u32>,
    /// How long an erasure epoch lasts, in hours (1 to 8760); 0 turns
    /// epochs off.
    pub erasure_epoch_hours: Option<u32>,
    /// How old a KEK version's successor must be before it may be
    /// destroyed, in seconds (60 to 86 400).
    pub destroy_grace_seconds: Option<u32>,
}

/// The default wait between a rotation and the destruction of the version
/// it replaced: five minutes.
pub const DEFAULT_DESTROY_GRACE_SECONDS: u32 = 300;

/// The default length of an erasure epoch: a day.
pub const DEFAULT_ERASURE_EPOCH_HOURS: u32 = 24;

/// `[store]` in the configuration file (docs/operations.md, "Storage" and
/// "PostgreSQL store"): a table, or just a PostgreSQL URL as a string
/// (`store = "postgres://…"`, the same as `[store] url = "postgres://…"`).
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFileConfig {
    /// The engine of a new data directory; an existing one keeps its own.
    pub engine: Option<crate::store::Engine>,
    /// The engine's cache in MiB.
    pub cache_mib: Option<u64>,
    /// A PostgreSQL database instead of an embedded engine.
    pub url: Option<String>,
    /// Connections in the PostgreSQL pool.
    pub pool_size: Option<usize>,
    /// PEM roots the PostgreSQL server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for StoreFileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFileConfig")
            .field("engine", &self.engine)
            .field("cache_mib", &self.cache_mib)
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `store` as written: a URL string or a `[store]` table.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoreFileEntry {
    Url(String),
    Table(StoreFileConfig),
}

impl StoreFileConfig {
    /// Reads `store = "…"` as `[store] url = "…"`.
    pub fn deserialize_entry<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        Ok(match StoreFileEntry::deserialize(deserializer)? {
            StoreFileEntry::Url(url) => Self {
                url: Some(url),
                ..Self::default()
            },
            StoreFileEntry::Table(table) => table,
        })
    }

    /// The PostgreSQL settings when the store is a database, validated.
    fn postgres(&self) -> Result<Option<crate::store::PostgresSettings>, ConfigError> {
        let Some(url) = &self.url else {
            if self.pool_size.is_some() || self.ca_file.is_some() {
                return Err(ConfigError(
                    "store.pool_size and store.ca_file need store.url (a PostgreSQL store)".into(),
                ));
            }
            return Ok(None);
        };
        let shown = crate::store::redact_url(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError(format!(
                "store.url {shown} is not a postgres:// or postgresql:// URL"
            )));
        }
        if url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError(format!(
                "store.url {shown} is not a valid PostgreSQL URL"
            )));
        }
        if self.engine.is_some() || self.cache_mib.is_some() {
            return Err(ConfigError(
                "store.engine and store.cache_mib are for an embedded store; a PostgreSQL store (store.url) takes neither"
                    .into(),
            ));
        }
        Ok(Some(crate::store::PostgresSettings {
            url: url.clone(),
            pool_size: ranged(
                "store.pool_size",
                self.pool_size,
                crate::store::DEFAULT_POOL_SIZE,
                // A round, its tail read and a backup's snapshot waiting on
                // the round must never exhaust the pool (see MIN_POOL_SIZE).
                crate::store::MIN_POOL_SIZE..=1000,
            )?,
            ca_file: self.ca_file.clone(),
        }))
    }
}

/// Which store the configuration names.
#[derive(Debug, Clone, Copy)]
pub enum StoreBackend<'a> {
    /// An embedded engine in the data directory.
    Embedded {
        data_dir: &'a Path,
        settings: crate::store::StoreSettings,
    },
    /// A PostgreSQL database shared by every node.
    Postgres(&'a crate::store::PostgresSettings),
}

/// The `[collect]` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectFileConfig {
    pub per_key_per_minute: Option<u32>,
    pub per_address_per_minute: Option<u32>,
    pub cvc_ttl_seconds: Option<u32>,
    pub max_cvcs: Option<u32>,
}

/// Collect settings, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectSettings {
    pub per_key_per_minute: u32,
    pub per_address_per_minute: u32,
    /// How long an attached CVC is held (1 s to 1 h).
    pub cvc_ttl_seconds: u32,
    /// How many CVCs are held at once.
    pub max_cvcs: u32,
}

impl Default for CollectSettings {
    fn default() -> Self {
        Self {
            per_key_per_minute: DEFAULT_COLLECT_PER_KEY_PER_MINUTE,
            per_address_per_minute: DEFAULT_COLLECT_PER_ADDRESS_PER_MINUTE,
            cvc_ttl_seconds: crate::cvc::DEFAULT_TTL_SECONDS,
            max_cvcs: u32::try_from(crate::cvc::DEFAULT_CAPACITY).unwrap_or(u32::MAX),
        }
    }
}

impl CollectSettings {
    /// The `[collect]` section over the defaults, each value in range.
    pub fn resolve(file: Option<CollectFileConfig>) -> Result<Self, ConfigError> {
        let file = file.unwrap_or_default();
        let defaults = Self::default();
        Ok(Self {
            per_key_per_minute: ranged(
                "collect.per_key_per_minute",
                file.per_key_per_minute,
                defaults.per_key_per_minute,
                1..=1_000_000,
            )?,
            per_address_per_minute: ranged(
                "collect.per_address_per_minute",
                file.per_address_per_minute,
                defaults.per_address_per_minute,
                1..=1_000_000,
            )?,
            cvc_ttl_seconds: ranged(
                "collect.cvc_ttl_seconds",
                file.cvc_ttl_seconds,
                defaults.cvc_ttl_seconds,
                1..=crate::cvc::MAX_TTL_SECONDS,
            )?,
            max_cvcs: ranged(
                "collect.max_cvcs",
                file.max_cvcs,
                defaults.max_cvcs,
                1..=10_000_000,
            )?,
        })
    }
}

/// `[relay]` in the configuration file (docs/operations.md).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFileConfig {
    pub allow_private_destinations: Option<bool>,
    pub max_body_bytes: Option<usize>,
    pub connect_timeout_ms: Option<u64>,
}

/// `[canaries]` in the configuration file (docs/operations.md). Its
/// `Debug` prints the webhook's host only: the path of a webhook URL often
/// holds its credential.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanariesFileConfig {
    /// `https://…`: where each canary alarm is posted, through the relay's
    /// client and under its destination rules.
    pub webhook_url: Option<String>,
    /// A PEM file: the only roots the webhook's certificate is checked
    /// against (the platform's when absent).
    pub webhook_ca_file: Option<PathBuf>,
    /// The IIN canary cards are made under when a request names none.
    pub card_iin: Option<String>,
}

impl std::fmt::Debug for CanariesFileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanariesFileConfig")
            .field(
                "webhook_host",
                &self
                    .webhook_url
                    .as_deref()
                    .and_then(crate::canary::webhook_host),
            )
            .field("webhook_ca_file", &self.webhook_ca_file)
            .field("card_iin", &self.card_iin)
            .finish()
    }
}

impl CanariesFileConfig {
    /// The section, checked: the webhook URL as a relay route's base URL
    /// is (HTTPS, no user info, query or fragment; an IP literal under
    /// `relay`'s address rules), its CA file readable PEM, the IIN 6 to 8
    /// digits.
    fn resolve(
        self,
        relay: &crate::relay::upstream::RelaySettings,
    ) -> Result<crate::canary::CanarySettings, ConfigError> {
        let webhook = match (self.webhook_url, self.webhook_ca_file) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError(
                    "canaries.webhook_ca_file needs canaries.webhook_url".into(),
                ));
            }
            (Some(url), ca_file) => {
                let parsed = crate::relay::upstream::check_base_url(&url)
                    .map_err(|e| ConfigError(format!("canaries.webhook_url: {e}")))?;
                crate::relay::upstream::Upstream::new(relay.clone())
                    .check_literal(&parsed)
                    .map_err(|e| ConfigError(format!("canaries.webhook_url: {e}")))?;
                let ca_pem = match ca_file {
                    None => None,
                    Some(path) => {
                        let pem = std::fs::read_to_string(&path).map_err(|e| {
                            ConfigError(format!("cannot read {}: {e}", path.display()))
                        })?;
                        // The check a relay route's CA gets.
                        crate::relay::routes::check_ca_pem(&pem).map_err(|why| {
                            ConfigError(format!("canaries.webhook_ca_file {why}"))
                        })?;
                        Some(pem)
                    }
                };
                Some(crate::canary::Webhook { url, ca_pem })
            }
        };
        if let Some(iin) = &self.card_iin {
            crate::canary::check_iin(iin).map_err(|_| {
                ConfigError(
                    "canaries.card_iin must be 6 to 8 digits in a card brand's range".into(),
                )
            })?;
        }
        Ok(crate::canary::CanarySettings {
            webhook,
            card_iin: self.card_iin,
        })
    }
}

/// `[retention]` as written: for each record type, `"<N><h|d|y> after
/// <created|last_use|close>"` (absent: never erased automatically), and
/// how often the sweeper runs.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFileConfig {
    pub card: Option<String>,
    pub bank_account: Option<String>,
    pub kyc: Option<String>,
    /// Minutes between sweeps, 1 to 1440 (default 60).
    pub sweep_interval_minutes: Option<u32>,
}

impl RetentionFileConfig {
    fn resolve(self) -> Result<crate::lifecycle::RetentionSettings, ConfigError> {
        use crate::lifecycle::{DEFAULT_SWEEP_INTERVAL, RetentionRule, RetentionSettings};
        use crate::records::RecordType;
        let mut rules = Vec::new();
        for (record_type, text) in [
            (RecordType::Card, self.card),
            (RecordType::BankAccount, self.bank_account),
            (RecordType::Kyc, self.kyc),
        ] {
            if let Some(text) = text {
                let rule = RetentionRule::parse(&text).map_err(|why| {
                    ConfigError(format!("retention.{}: {why}", record_type.as_str()))
                })?;
                rules.push((record_type, rule));
            }
        }
        let minutes = ranged(
            "retention.sweep_interval_minutes",
            self.sweep_interval_minutes,
            u32::try_from(DEFAULT_SWEEP_INTERVAL.whole_minutes()).unwrap_or(60),
            1..=1440,
        )?;
        Ok(RetentionSettings {
            rules,
            sweep_interval: time::Duration::minutes(i64::from(minutes)),
        })
    }
}

/// The `[tls]` section as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub disabled: Option<bool>,
}

/// How `serve` meets its clients, once the `[tls]` section is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSettings {
    /// HTTPS with this certificate chain and key (PEM); with
    /// `client_ca_file`, client certificates issued by that CA are asked
    /// for (and verified) but not required.
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: Option<PathBuf>,
    },
    /// `tls.disabled = true`: plain HTTP, for a deployment behind a
    /// TLS-terminating proxy. Said in a WARN line at every start.
    Disabled,
    /// Nothing configured: `serve` refuses to start (`dev` serves plain
    /// HTTP on loopback whatever this says).
    Unset,
}

impl TlsSettings {
    fn resolve(file: FileTls) -> Result<Self, ConfigError> {
        let disabled = file.disabled.unwrap_or(false);
        match (file.cert_file, file.key_file, file.client_ca_file, disabled) {
            (Some(cert_file), Some(key_file), client_ca_file, false) => Ok(Self::Files {
                cert_file,
                key_file,
                client_ca_file,
            }),
            (None, None, None, true) => Ok(Self::Disabled),
            (None, None, None, false) => Ok(Self::Unset),
            (_, _, _, true) => Err(ConfigError(
                "tls.disabled = true cannot be combined with tls.cert_file, tls.key_file or tls.client_ca_file".into(),
            )),
            (Some(_), None, _, false) => Err(ConfigError(
                "tls.cert_file is set but tls.key_file is not: give both".into(),
            )),
            (None, Some(_), _, false) => Err(ConfigError(
                "tls.key_file is set but tls.cert_file is not: give both".into(),
            )),
            (None, None, Some(_), false) => Err(ConfigError(
                "tls.client_ca_file needs tls.cert_file and tls.key_file: client certificates are asked for during the TLS handshake".into(),
            )),
        }
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.message())))
    }
}

/// Values given by flags or environment variables (clap merges the two,
/// the flag winning); each overrides the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub keys_dir: Option<PathBuf>,
}

/// A configuration error, said plainly at start-up.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Creates the data directory `dir` (and any missing parent) with mode
/// 0700, then checks it as [`check_data_dir`] does: an existing directory
/// keeps its mode and is refused if others may enter it.
pub fn create_data_dir(dir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ConfigError(format!("cannot create {}: {e}", dir.display())))?;
    check_data_dir(dir)
}

/// Refuses a data directory that does not exist (nothing creates one but
/// `init` and `dev`) or that group or others may read, write or enter: the
/// store holds the security state and the audit log.
pub fn check_data_dir(dir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir).map_err(|e| {
        ConfigError(format!(
            "the data directory {} cannot be opened ({e}); create it with `strongroom init`",
            dir.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(ConfigError(format!(
            "the data directory {} is not a directory",
            dir.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError(format!(
            "the data directory {} is open to group or others (mode {mode:o}); chmod 700 it",
            dir.display()
        )));
    }
    // Its owner could change the mode, or anything in it: it must be the
    // user the server runs as (the owner of /proc/self is this process's
    // effective user).
    use std::os::unix::fs::MetadataExt;
    if let Ok(me) = std::fs::metadata("/proc/self")
        && meta.uid() != me.uid()
    {
        return Err(ConfigError(format!(
            "the data directory {} belongs to user {}, not to the user the server runs as ({}); chown it",
            dir.display(),
            meta.uid(),
            me.uid()
        )));
    }
    Ok(())
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The unauthenticated metrics listener, if configured.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub body_limit_bytes: usize,
    pub unseal_failures_per_minute: u32,
    pub audit_checkpoint_every: u64,
    pub session_idle: time::Duration,
    pub session_absolute: time::Duration,
    pub lockout_threshold: u32,
    pub reveals_per_hour: u32,
    pub sensitive_searches_per_hour: u32,
    pub collect: CollectSettings,
    pub keyring: KeyringSettings,
    pub relay: crate::relay::upstream::RelaySettings,
    pub canaries: crate::canary::CanarySettings,
    /// Retention rules and the sweeper's pace.
    pub retention: crate::lifecycle::RetentionSettings,
    pub tls: TlsSettings,
    /// The embedded engine's settings (unused when `postgres` is set).
    pub store: crate::store::StoreSettings,
    /// The PostgreSQL database that is the store instead of an embedded
    /// engine in `data_dir`.
    pub postgres: Option<crate::store::PostgresSettings>,
    pub rewrap: crate::api::rewrap::RewrapSettings,
    pub erasure_epoch: Option<std::time::Duration>,
    pub kek_destroy_grace: time::Duration,
}

impl Config {
    /// The store this configuration names.
    pub fn store_backend(&self) -> StoreBackend<'_> {
        match &self.postgres {
            Some(settings) => StoreBackend::Postgres(settings),
            None => StoreBackend::Embedded {
                data_dir: &self.data_dir,
                settings: self.store,
            },
        }
    }
}

/// `value` (or `default`) if within `range`, else an error naming `name`.
fn ranged<T: PartialOrd + Copy + std::fmt::Display>(
    name: &str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError(format!(
            "{name} must be between {} and {}",
            range.start(),
            range.end()
        )))
    }
}

impl Config {
    /// Merges file and overrides over the defaults and validates the result.
    pub fn resolve(file: FileConfig, overrides: Overrides) -> Result<Self, ConfigError> {
        let listen_text = overrides
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| ConfigError(format!("listen address {listen_text:?} is not IP:PORT")))?;
        let metrics_listen = match file.metrics_listen {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    ConfigError(format!("metrics_listen address {text:?} is not IP:PORT"))
                })?;
                if addr == listen {
                    return Err(ConfigError(
                        "metrics_listen must differ from listen".to_owned(),
                    ));
                }
                Some(addr)
            }
        };
        let tls = TlsSettings::resolve(file.tls)?;
        let body_limit_bytes = file.body_limit_bytes.unwrap_or(DEFAULT_BODY_LIMIT);
        if !(1024..=64 * 1024 * 1024).contains(&body_limit_bytes) {
            return Err(ConfigError(
                "body_limit_bytes must be between 1 KiB and 64 MiB".into(),
            ));
        }
        let defaults = KeyringSettings::default();
        let kek_usage_limit = file.kek_usage_limit.unwrap_or(defaults.kek_usage_limit);
        if !(1..=(1u64 << 31)).contains(&kek_usage_limit) {
            return Err(ConfigError(
                "kek_usage_limit must be between 1 and 2^31".into(),
            ));
        }
        let kek_cryptoperiod = match file.kek_cryptoperiod_days {
            None => defaults.kek_cryptoperiod,
            Some(days @ 1..=3650) => time::Duration::days(i64::from(days)),
            Some(_) => {
                return Err(ConfigError(
                    "kek_cryptoperiod_days must be between 1 and 3650".into(),
                ));
            }
        };
        let unseal_failures_per_minute = file
            .unseal_failures_per_minute
            .unwrap_or(DEFAULT_UNSEAL_FAILURES_PER_MINUTE);
        if !(1..=1000).contains(&unseal_failures_per_minute) {
            return Err(ConfigError(
                "unseal_failures_per_minute must be between 1 and 1000".into(),
            ));
        }
        let audit_checkpoint_every = ranged(
            "audit_checkpoint_every",
            file.audit_checkpoint_every,
            1000,
            1..=1_000_000,
        )?;
        let session_idle = ranged(
            "session_idle_minutes",
            file.session_idle_minutes,
            15,
            1..=1440,
        )?;
        let session_absolute = ranged(
            "session_absolute_minutes",
            file.session_absolute_minutes,
            480,
            1..=10080,
        )?;
        let lockout_threshold = ranged("lockout_threshold", file.lockout_threshold, 5, 1..=10)?;
        let reveals_per_hour =
            ranged("reveals_per_hour", file.reveals_per_hour, 30, 1..=1_000_000)?;
        let sensitive_searches_per_hour = ranged(
            "sensitive_searches_per_hour",
            file.sensitive_searches_per_hour,
            DEFAULT_SENSITIVE_SEARCHES_PER_HOUR,
            1..=1000,
        )?;
        let collect = CollectSettings::resolve(file.collect)?;
        let relay_defaults = crate::relay::upstream::RelaySettings::default();
        let relay = crate::relay::upstream::RelaySettings {
            allow_private_destinations: file.relay.allow_private_destinations.unwrap_or(false),
            max_body_bytes: ranged(
                "relay.max_body_bytes",
                file.relay.max_body_bytes,
                relay_defaults.max_body_bytes,
                1024..=64 * 1024 * 1024,
            )?,
            connect_timeout: std::time::Duration::from_millis(ranged(
                "relay.connect_timeout_ms",
                file.relay.connect_timeout_ms,
                5000,
                100..=60_000,
            )?),
        };
        let rewrap_defaults = crate::api::rewrap::RewrapSettings::default();
        let rewrap = crate::api::rewrap::RewrapSettings {
            batch: ranged(
                "keys.rewrap_batch",
                file.keys.rewrap_batch.map(|b| b as usize),
                rewrap_defaults.batch,
                1..=10_000,
            )?,
            duty_percent: ranged(
                "keys.rewrap_duty_percent",
                file.keys.rewrap_duty_percent,
                rewrap_defaults.duty_percent,
                1..=100,
            )?,
        };
        let erasure_epoch = match ranged(
            "keys.erasure_epoch_hours",
            file.keys.erasure_epoch_hours,
            DEFAULT_ERASURE_EPOCH_HOURS,
            0..=8760,
        )? {
            0 => None,
            hours => Some(std::time::Duration::from_secs(3600 * u64::from(hours))),
        };
        let canaries = file.canaries.resolve(&relay)?;
        let kek_destroy_grace = time::Duration::seconds(i64::from(ranged(
            "keys.destroy_grace_seconds",
            file.keys.destroy_grace_seconds,
            DEFAULT_DESTROY_GRACE_SECONDS,
            // At least a minute: a write in flight must have landed.
            60..=86_400,
        )?));
        let retention = file.retention.resolve()?;
        let postgres = file.store.postgres()?;
        let store = crate::store::StoreSettings {
            engine: file.store.engine.unwrap_or(crate::store::Engine::DEFAULT),
            cache_bytes: ranged(
                "store.cache_mib",
                file.store.cache_mib,
                crate::store::DEFAULT_CACHE_BYTES >> 20,
                8..=1024 * 1024,
            )? << 20,
        };
        Ok(Self {
            retention,
            store,
            postgres,
            collect,
            relay,
            canaries,
            tls,
            reveals_per_hour,
            sensitive_searches_per_hour,
            audit_checkpoint_every,
            session_idle: time::Duration::minutes(i64::from(session_idle)),
            session_absolute: time::Duration::minutes(i64::from(session_absolute)),
            lockout_threshold,
            listen,
            metrics_listen,
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            keys_dir: overrides
                .keys_dir
                .or(file.keys_dir)
                .unwrap_or_else(|| DEFAULT_KEYS_DIR.into()),
            body_limit_bytes,
            unseal_failures_per_minute,
            keyring: KeyringSettings {
                kek_usage_limit,
                kek_cryptoperiod,
                kdf_policy: KdfPolicy::standard(),
            },
            rewrap,
            erasure_epoch,
            kek_destroy_grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_section_names_an_engine_and_a_cache() {
        let resolve = |text: &str| {
            toml::from_str::<FileConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    Config::resolve(file, Overrides::default()).map_err(|e| e.to_string())
                })
        };
        let default = resolve("").unwrap().store;
        assert_eq!(default, crate::store::StoreSettings::default());
        let set = resolve("[store]\nengine = \"sled\"\ncache_mib = 64").unwrap();
        assert_eq!(set.store.engine, crate::store::Engine::Sled);
        assert_eq!(set.store.cache_bytes, 64 << 20);
        assert!(resolve("[store]\nengine = \"leveldb\"").is_err());
        assert!(resolve("[store]\ncache = 64").is_err());
        let small = resolve("[store]\ncache_mib = 1").unwrap_err();
        assert!(small.contains("store.cache_mib"), "{small}");
        assert!(resolve("").unwrap().postgres.is_none());
    }

    #[test]
    fn the_store_may_be_a_postgres_url() {
        let resolve = |text: &str| {
            toml::from_str::<FileConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    Config::resolve(file, Overrides::default()).map_err(|e| e.to_string())
                })
        };
        let short = resolve("store = \"postgres://app:pw@db/vault?sslmode=require\"").unwrap();
        let pg = short.postgres.clone().unwrap();
        assert_eq!(pg.url, "postgres://app:pw@db/vault?sslmode=require");
        assert_eq!(pg.pool_size, crate::store::DEFAULT_POOL_SIZE);
        assert!(matches!(short.store_backend(), StoreBackend::Postgres(_)));
        let table = resolve(
            "[store]\nurl = \"postgresql://db/vault\"\npool_size = 4\nca_file = \"/etc/ca.pem\"",
        )
        .unwrap()
        .postgres
        .unwrap();
        assert_eq!(table.pool_size, 4);
        assert_eq!(table.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert!(matches!(
            resolve("").unwrap().store_backend(),
            StoreBackend::Embedded { .. }
        ));
        // Not PostgreSQL: refused, without the password in the message.
        let wrong = resolve("store = \"mysql://app:pw@db/vault\"").unwrap_err();
        assert!(wrong.contains("postgres://"), "{wrong}");
        assert!(!wrong.contains("pw"), "{wrong}");
        assert!(resolve("[store]\nurl = \"postgres://db/v\"\nengine = \"sled\"").is_err());
        assert!(resolve("[store]\npool_size = 4").is_err());
        assert!(resolve("[store]\nurl = \"postgres://db/v\"\npool_size = 0").is_err());
        // A round, its tail read and a backup waiting on the round need
        // three at once (MIN_POOL_SIZE).
        let small = resolve("[store]\nurl = \"postgres://db/v\"\npool_size = 3").unwrap_err();
        assert!(small.contains("store.pool_size"), "{small}");
        assert!(resolve("[store]\nurl = \"postgres://db/v\"\nport = 1").is_err());
        assert!(!format!("{:?}", short.postgres).contains("pw"));
    }

    #[test]
    fn the_metrics_listener_is_off_unless_set_and_apart_from_listen() {
        let resolve = |text: &str| {
            toml::from_str::<FileConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    Config::resolve(file, Overrides::default()).map_err(|e| e.to_string())
                })
        };
        assert_eq!(resolve("").unwrap().metrics_listen, None);
        let set = resolve("metrics_listen = \"127.0.0.1:9100\"").unwrap();
        assert_eq!(set.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        let bad = resolve("metrics_listen = \"localhost\"").unwrap_err();
        assert!(bad.contains("metrics_listen"), "{bad}");
        let same = resolve("listen = \"127.0.0.1:9100\"\nmetrics_listen = \"127.0.0.1:9100\"")
            .unwrap_err();
        assert!(same.contains("differ"), "{same}");
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\ndata_dir = \"/f\"").unwrap();
        let config = Config::resolve(
            file,
            Overrides {
                listen: Some("127.0.0.1:9001".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9001);
        assert_eq!(config.data_dir, PathBuf::from("/f"));
        assert_eq!(config.keys_dir, PathBuf::from(DEFAULT_KEYS_DIR));
        assert_eq!(config.body_limit_bytes, DEFAULT_BODY_LIMIT);
        assert_eq!(
            config.sensitive_searches_per_hour,
            DEFAULT_SENSITIVE_SEARCHES_PER_HOUR
        );
        let file: FileConfig = toml::from_str("sensitive_searches_per_hour = 3").unwrap();
        let config = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(config.sensitive_searches_per_hour, 3);
    }

    #[test]
    fn the_canaries_section() {
        let config = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(config.canaries, crate::canary::CanarySettings::default());
        let file: FileConfig = toml::from_str(
            "[canaries]\nwebhook_url = \"https://alarms.example/hook/s3cr3t\"\ncard_iin = \"431940\"",
        )
        .unwrap();
        let config = Config::resolve(file, Overrides::default()).unwrap();
        let webhook = config.canaries.webhook.clone().unwrap();
        assert_eq!(webhook.url, "https://alarms.example/hook/s3cr3t");
        assert!(!format!("{:?}", config.canaries).contains("s3cr3t"));
        assert_eq!(config.canaries.card_iin.as_deref(), Some("431940"));
        for bad in [
            "webhook_url = \"http://alarms.example/\"",
            "webhook_url = \"https://user:pw@alarms.example/\"",
            "webhook_url = \"https://127.0.0.1/hook\"",
            "webhook_ca_file = \"/nonexistent\"",
            "card_iin = \"4319\"",
            "webhook = \"https://alarms.example/\"",
        ] {
            let parsed = toml::from_str::<FileConfig>(&format!("[canaries]\n{bad}"));
            let refused = match parsed {
                Ok(file) => Config::resolve(file, Overrides::default()).is_err(),
                Err(_) => true,
            };
            assert!(refused, "{bad}");
        }
        // Loopback is allowed where the relay allows private destinations.
        let file: FileConfig = toml::from_str(
            "[relay]\nallow_private_destinations = true\n[canaries]\nwebhook_url = \"https://127.0.0.1:9/hook\"",
        )
        .unwrap();
        assert!(Config::resolve(file, Overrides::default()).is_ok());
    }

    #[test]
    fn the_relay_section() {
        let config = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(
            config.relay,
            crate::relay::upstream::RelaySettings::default()
        );
        assert!(!config.relay.allow_private_destinations);
        let file: FileConfig = toml::from_str(
            "[relay]\nallow_private_destinations = true\nmax_body_bytes = 2048\nconnect_timeout_ms = 250",
        )
        .unwrap();
        let config = Config::resolve(file, Overrides::default()).unwrap();
        assert!(config.relay.allow_private_destinations);
        assert_eq!(config.relay.max_body_bytes, 2048);
        assert_eq!(config.relay.connect_timeout.as_millis(), 250);
        assert!(toml::from_str::<FileConfig>("[relay]\nallow_private = true").is_err());
        for bad in ["max_body_bytes = 10", "connect_timeout_ms = 0"] {
            let file: FileConfig = toml::from_str(&format!("[relay]\n{bad}")).unwrap();
            assert!(
                Config::resolve(file, Overrides::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn data_directories_are_created_private_and_shared_ones_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b");
        create_data_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert!(check_data_dir(&dir).is_ok());
        for shared in [0o710, 0o701, 0o750, 0o755, 0o777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(shared)).unwrap();
            let e = check_data_dir(&dir).unwrap_err().to_string();
            assert!(e.contains("chmod 700"), "{e}");
            // An existing directory keeps its mode: refused, not changed.
            assert!(create_data_dir(&dir).is_err());
            assert_eq!(mode(&dir), shared);
        }
        let missing = base.path().join("missing");
        assert!(
            check_data_dir(&missing)
                .unwrap_err()
                .to_string()
                .contains("init")
        );
        assert!(!missing.exists());
        let file = base.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(check_data_dir(&file).is_err());
    }

    /// A private directory that another user owns (who could change its
    /// mode or its contents) is refused, reached directly or by a link.
    /// Needs root to give a directory away (CI runs as root).
    #[test]
    fn a_data_directory_owned_by_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            eprintln!("not root: cannot give a directory away; not checked here");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("theirs");
        create_data_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let e = check_data_dir(&dir).unwrap_err().to_string();
        assert!(
            e.contains("belongs to user 65534") && e.contains("chown"),
            "{e}"
        );
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(check_data_dir(&link).is_err());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<FileConfig>("listne = \"x\"").is_err());
        let bad = |text: &str| Config::resolve(toml::from_str(text).unwrap(), Overrides::default());
        // Whether plain HTTP may leave the machine is the command's call
        // (`dev` refuses; `serve` needs TLS or `tls.disabled`).
        assert!(bad("listen = \"0.0.0.0:8200\"").is_ok());
        assert!(bad("listen = \"nonsense\"").is_err());
        assert!(bad("body_limit_bytes = 10").is_err());
        assert!(bad("kek_usage_limit = 0").is_err());
        assert!(bad("kek_cryptoperiod_days = 0").is_err());
        assert!(bad("sensitive_searches_per_hour = 0").is_err());
        assert!(bad("sensitive_searches_per_hour = 1001").is_err());
        assert!(bad("").is_ok());
    }

    #[test]
    fn the_collect_section() {
        let resolve =
            |text: &str| Config::resolve(toml::from_str(text).unwrap(), Overrides::default());
        let config = resolve("").unwrap();
        assert_eq!(config.collect, CollectSettings::default());
        assert_eq!(config.collect.cvc_ttl_seconds, 900);
        assert_eq!(config.collect.per_key_per_minute, 600);
        assert_eq!(config.collect.per_address_per_minute, 30);
        assert_eq!(config.collect.max_cvcs, 100_000);
        let config = resolve(
            "[collect]\nper_key_per_minute = 5\nper_address_per_minute = 2\ncvc_ttl_seconds = 3600\nmax_cvcs = 10",
        )
        .unwrap();
        assert_eq!(
            config.collect,
            CollectSettings {
                per_key_per_minute: 5,
                per_address_per_minute: 2,
                cvc_ttl_seconds: 3600,
                max_cvcs: 10
            }
        );
        for bad in [
            "[collect]\ncvc_ttl_seconds = 0",
            "[collect]\ncvc_ttl_seconds = 3601",
            "[collect]\nper_key_per_minute = 0",
            "[collect]\nper_address_per_minute = 0",
            "[collect]\nmax_cvcs = 0",
        ] {
            let e = resolve(bad).unwrap_err().to_string();
            assert!(e.contains("collect."), "{bad}: {e}");
        }
        assert!(toml::from_str::<FileConfig>("[collect]\ncvc_ttl = 5").is_err());
        assert!(toml::from_str::<FileConfig>("cvc_ttl_seconds = 5").is_err());
    }

    #[test]
    fn the_retention_section() {
        use crate::lifecycle::Anchor;
        use crate::records::RecordType;
        let resolve =
            |text: &str| Config::resolve(toml::from_str(text).unwrap(), Overrides::default());
        let none = resolve("").unwrap().retention;
        assert!(none.rules.is_empty(), "no automatic erasure by default");
        assert_eq!(none.sweep_interval, time::Duration::hours(1));
        let set = resolve(
            "[retention]\ncard = \"400d after last_use\"\nkyc = \"5y after close\"\nsweep_interval_minutes = 5",
        )
        .unwrap()
        .retention;
        assert_eq!(set.sweep_interval, time::Duration::minutes(5));
        let card = set.rule(RecordType::Card).unwrap();
        assert_eq!(
            (card.period, card.anchor),
            (time::Duration::days(400), Anchor::LastUse)
        );
        assert_eq!(set.rule(RecordType::Kyc).unwrap().anchor, Anchor::Close);
        assert!(set.rule(RecordType::BankAccount).is_none());
        for bad in [
            "[retention]\ncard = \"400 days\"",
            "[retention]\nkyc = \"5y after birth\"",
            "[retention]\nsweep_interval_minutes = 0",
            "[retention]\nsweep_interval_minutes = 1441",
        ] {
            let e = resolve(bad).unwrap_err().to_string();
            assert!(e.contains("retention."), "{bad}: {e}");
        }
        assert!(
            toml::from_str::<FileConfig>("[retention]\ngeneric = \"1d after created\"").is_err()
        );
    }

    #[test]
    fn the_tls_section() {
        let tls = |text: &str| {
            Config::resolve(toml::from_str(text).unwrap(), Overrides::default()).map(|c| c.tls)
        };
        assert_eq!(tls("").unwrap(), TlsSettings::Unset);
        assert_eq!(
            tls("[tls]\ndisabled = true").unwrap(),
            TlsSettings::Disabled
        );
        assert_eq!(tls("[tls]\ndisabled = false").unwrap(), TlsSettings::Unset);
        assert_eq!(
            tls("[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"").unwrap(),
            TlsSettings::Files {
                cert_file: "c.pem".into(),
                key_file: "k.pem".into(),
                client_ca_file: None,
            }
        );
        assert_eq!(
            tls("[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca_file = \"ca\"").unwrap(),
            TlsSettings::Files {
                cert_file: "c".into(),
                key_file: "k".into(),
                client_ca_file: Some("ca".into()),
            }
        );
        for bad in [
            "[tls]\ncert_file = \"c\"",
            "[tls]\nkey_file = \"k\"",
            "[tls]\nclient_ca_file = \"ca\"",
            "[tls]\ndisabled = true\ncert_file = \"c\"\nkey_file = \"k\"",
            "[tls]\ndisabled = true\nclient_ca_file = \"ca\"",
        ] {
            assert!(tls(bad).is_err(), "{bad}");
        }
        assert!(toml::from_str::<FileConfig>("[tls]\ncert = \"c\"").is_err());
    }
}
