//! The relay's settings and command line.
//!
//! Every setting has a default and can be set, from lowest to highest precedence, in a TOML file
//! (`--config FILE` or `HUSH_RELAY_CONFIG`), in an environment variable `HUSH_RELAY_<NAME>`
//! (`HUSH_RELAY_DATA_DIR`, `HUSH_RELAY_RATE_SENDS`, ...) or with a flag `--<name>` (`--data-dir`,
//! `--rate-sends`, ...). An empty environment variable counts as unset.
//!
//! In the file, settings are top-level keys named as in [`Config`], except the rate limits
//! (`[rate.sends]` with `per_second` and `burst`; either may be left out to keep the other's
//! default) and push (`[push]` with `allow_plain_http` and `timeout_ms`). Unknown keys are an
//! error. As flags and variables, a rate limit is written `PER_SECOND/BURST` (`--rate-sends
//! 200/400`), the certificate names as a comma-separated list, and `metrics_listen` as an address
//! or `off`.
//!
//! ```toml
//! data_dir = "/var/lib/hush-relay"
//! listen = "[::]:4433"
//! metrics_listen = "off"
//! cert_names = ["relay.example.org"]
//!
//! [rate.sends]
//! per_second = 200
//! burst = 400
//!
//! [push]
//! timeout_ms = 5000
//! ```

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Deserialize;

/// Prefix of the environment variables.
pub const ENV_PREFIX: &str = "HUSH_RELAY_";

/// Environment variable naming the settings file (like `--config`).
pub const CONFIG_ENV: &str = "HUSH_RELAY_CONFIG";

/// Largest settings file read.
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Errors of reading the settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line is wrong, or asked for `--help` or `--version`: the error carries the text
    /// to show, and `clap::Error::exit` shows it and exits with the right status.
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// The settings file could not be read.
    #[error("{path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The settings file is not valid: TOML syntax, an unknown key (named in the message) or a
    /// value of the wrong type.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A flag or environment variable whose value does not parse.
    #[error("{origin}: invalid value {value:?}: {reason}")]
    Value {
        /// The flag (`--listen`) or variable (`HUSH_RELAY_LISTEN`).
        origin: String,
        /// The value given.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A setting whose value parses but is not allowed.
    #[error("setting {setting}: {reason}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The storage backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The sled database in the data directory.
    #[default]
    Sled,
    /// Memory only: everything is lost on restart.
    Memory,
}

impl FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "sled" => Ok(Self::Sled),
            "memory" => Ok(Self::Memory),
            _ => Err("expected \"sled\" or \"memory\"".into()),
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sled => "sled",
            Self::Memory => "memory",
        })
    }
}

/// A token bucket: `burst` tokens at most, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: u32,
}

impl RateLimit {
    /// A bucket of `burst` refilled at `per_second`.
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// Parses `PER_SECOND/BURST`, e.g. `200/400` or `0.5/10`.
impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (rate, burst) = s
            .split_once('/')
            .ok_or("expected PER_SECOND/BURST, e.g. 200/400")?;
        let per_second = parse_num::<f64>(rate).map_err(|e| format!("per second: {e}"))?;
        let burst = parse_num::<u32>(burst).map_err(|e| format!("burst: {e}"))?;
        Ok(Self { per_second, burst })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.per_second, self.burst)
    }
}

/// The rate limits.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimits {
    /// Sends, per device.
    pub sends: RateLimit,
    /// Pre-key bundle fetches, per device.
    pub prekey_fetches: RateLimit,
    /// Account creations, per source IP address.
    pub account_creations: RateLimit,
    /// Pre-key and device-list uploads, per device.
    pub uploads: RateLimit,
    /// Blob uploads begun, per device.
    pub blob_uploads: RateLimit,
    /// Sends, per account (all its devices together).
    pub account_sends: RateLimit,
    /// Pre-key bundle and device-list fetches, per account (all its devices together).
    pub account_prekey_fetches: RateLimit,
    /// Pre-key and device-list uploads, per account (all its devices together).
    pub account_uploads: RateLimit,
    /// One-time pre-keys handed out, per target device (past it, bundles come without).
    pub one_time_keys_per_target: RateLimit,
    /// One-time pre-keys handed out, per (requesting account, target account).
    pub one_time_keys_per_pair: RateLimit,
    /// One-time pre-keys handed out, per requesting account over all targets.
    pub one_time_keys_per_requester: RateLimit,
    /// Downloads of one blob, by everyone together.
    pub blob_downloads: RateLimit,
    /// Blob downloads, per downloading account (all its devices together).
    pub account_blob_downloads: RateLimit,
    /// Blob bytes downloaded per downloading account, in MiB (a download costs its size).
    pub account_blob_download_mib: RateLimit,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            sends: RateLimit::new(200.0, 400),
            prekey_fetches: RateLimit::new(20.0, 100),
            account_creations: RateLimit::new(1.0, 10),
            uploads: RateLimit::new(10.0, 20),
            blob_uploads: RateLimit::new(2.0, 10),
            account_sends: RateLimit::new(400.0, 800),
            account_prekey_fetches: RateLimit::new(40.0, 200),
            account_uploads: RateLimit::new(20.0, 40),
            one_time_keys_per_target: RateLimit::new(0.05, 30),
            one_time_keys_per_pair: RateLimit::new(0.001, 3),
            one_time_keys_per_requester: RateLimit::new(1.0, 200),
            blob_downloads: RateLimit::new(10.0, 100),
            account_blob_downloads: RateLimit::new(20.0, 200),
            account_blob_download_mib: RateLimit::new(10.0, 2048),
        }
    }
}

/// Push notification delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushConfig {
    /// Whether push endpoints may be plain `http://` (testing only).
    pub allow_plain_http: bool,
    /// Timeout of one push request (ms).
    pub timeout_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            allow_plain_http: false,
            timeout_ms: 10_000,
        }
    }
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The relay's settings, with concrete values.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Directory of the database and the TLS identity.
    pub data_dir: PathBuf,
    /// QUIC (UDP) listen address.
    pub listen: SocketAddr,
    /// Metrics (HTTP over TCP) listen address; `None` disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Storage backend.
    pub store: StoreKind,
    /// DNS names (or IP addresses) in the generated certificate.
    pub cert_names: Vec<String>,
    /// Open connections at most.
    pub max_connections: u32,
    /// A connection with no traffic for this long is closed (ms).
    pub idle_timeout_ms: u64,
    /// Largest frame on a stream (bytes).
    pub max_frame_bytes: usize,
    /// Largest envelope body (bytes).
    pub max_envelope_bytes: usize,
    /// Envelopes in one send at most.
    pub max_envelopes_per_send: usize,
    /// Devices per account at most.
    pub max_devices_per_account: u32,
    /// Queued envelopes are deleted after this long (ms).
    pub mailbox_ttl_ms: u64,
    /// Envelopes queued per device at most.
    pub max_queue_len: usize,
    /// Bytes queued per device at most (body plus a fixed 128 per envelope).
    pub max_queue_bytes: u64,
    /// Envelopes queued per device from one sending account at most.
    pub max_queue_len_per_sender: usize,
    /// Bytes queued per device from one sending account at most.
    pub max_queue_bytes_per_sender: u64,
    /// Bytes queued for all devices of one account at most.
    pub max_account_mailbox_bytes: u64,
    /// Bytes queued in all mailboxes of the relay at most.
    pub max_mailbox_bytes: u64,
    /// Interval of the expiry sweep (ms).
    pub sweep_interval_ms: u64,
    /// Sends made durable by one flush at most (group commit).
    pub flush_batch_max: usize,
    /// Largest blob (bytes).
    pub blob_max_bytes: u64,
    /// Blobs are deleted after this long (ms).
    pub blob_ttl_ms: u64,
    /// Bytes of blobs one account may have stored at once (declared sizes, uploads in progress
    /// included).
    pub blob_account_max_bytes: u64,
    /// Bytes of blobs the relay stores at most, all accounts together.
    pub blob_total_max_bytes: u64,
    /// Time a blob stream has to deliver its whole request frame (ms).
    pub blob_request_timeout_ms: u64,
    /// Time one chunk (64 KiB, or the rest) of a blob upload may take to arrive, and one chunk of
    /// a download to be taken by the client (ms).
    pub blob_chunk_timeout_ms: u64,
    /// Memory sled may use to cache the database (bytes).
    pub sled_cache_bytes: u64,
    /// Rate limits.
    pub rate: RateLimits,
    /// New connections must prove their address with a QUIC retry once more than this many
    /// connections are open (0: always).
    pub retry_under_load_connections: u32,
    /// Push delivery.
    pub push: PushConfig,
    /// Log filter (`tracing` env-filter syntax).
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./hush-data"),
            listen: SocketAddr::from(([0u16; 8], 4433)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            store: StoreKind::Sled,
            cert_names: vec!["localhost".into()],
            max_connections: 10_000,
            idle_timeout_ms: 60_000,
            max_frame_bytes: 1024 * 1024,
            max_envelope_bytes: 64 * 1024,
            max_envelopes_per_send: 1200,
            max_devices_per_account: 16,
            mailbox_ttl_ms: 30 * DAY_MS,
            max_queue_len: 10_000,
            max_queue_bytes: 128 * 1024 * 1024,
            max_queue_len_per_sender: 1000,
            max_queue_bytes_per_sender: 16 * 1024 * 1024,
            max_account_mailbox_bytes: 512 * 1024 * 1024,
            max_mailbox_bytes: 16 * 1024 * 1024 * 1024,
            sweep_interval_ms: 60_000,
            flush_batch_max: 1024,
            blob_max_bytes: 100 * 1024 * 1024,
            blob_ttl_ms: 30 * DAY_MS,
            blob_account_max_bytes: 2 << 30,
            blob_total_max_bytes: 100 << 30,
            blob_request_timeout_ms: 10_000,
            blob_chunk_timeout_ms: 30_000,
            sled_cache_bytes: 64 << 20,
            rate: RateLimits::default(),
            retry_under_load_connections: 2000,
            push: PushConfig::default(),
            log: "info".into(),
        }
    }
}

impl Config {
    /// Checks the values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |setting, reason| Err(ConfigError::Invalid { setting, reason });
        if self.data_dir.as_os_str().is_empty() {
            return fail("data_dir", "must not be empty");
        }
        if self.cert_names.is_empty() {
            return fail("cert_names", "needs at least one name");
        }
        if self
            .cert_names
            .iter()
            .any(|n| n.is_empty() || n.chars().any(|c| c.is_whitespace() || c == ','))
        {
            return fail("cert_names", "a name is empty or contains a space or comma");
        }
        let positive: [(&'static str, u64); 23] = [
            ("max_connections", self.max_connections.into()),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_envelope_bytes", self.max_envelope_bytes as u64),
            ("max_envelopes_per_send", self.max_envelopes_per_send as u64),
            (
                "max_devices_per_account",
                self.max_devices_per_account.into(),
            ),
            ("mailbox_ttl_ms", self.mailbox_ttl_ms),
            ("max_queue_len", self.max_queue_len as u64),
            ("max_queue_bytes", self.max_queue_bytes),
            (
                "max_queue_len_per_sender",
                self.max_queue_len_per_sender as u64,
            ),
            (
                "max_queue_bytes_per_sender",
                self.max_queue_bytes_per_sender,
            ),
            ("max_account_mailbox_bytes", self.max_account_mailbox_bytes),
            ("max_mailbox_bytes", self.max_mailbox_bytes),
            ("sweep_interval_ms", self.sweep_interval_ms),
            ("flush_batch_max", self.flush_batch_max as u64),
            ("blob_max_bytes", self.blob_max_bytes),
            ("blob_ttl_ms", self.blob_ttl_ms),
            ("blob_account_max_bytes", self.blob_account_max_bytes),
            ("blob_total_max_bytes", self.blob_total_max_bytes),
            ("blob_request_timeout_ms", self.blob_request_timeout_ms),
            ("blob_chunk_timeout_ms", self.blob_chunk_timeout_ms),
            ("sled_cache_bytes", self.sled_cache_bytes),
            ("push_timeout_ms", self.push.timeout_ms),
        ];
        if let Some((setting, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return fail(setting, "must be greater than zero");
        }
        if self.max_envelope_bytes > self.max_frame_bytes {
            return fail("max_envelope_bytes", "must not exceed max_frame_bytes");
        }
        let r = &self.rate;
        for (setting, limit) in [
            ("rate_sends", r.sends),
            ("rate_prekey_fetches", r.prekey_fetches),
            ("rate_account_creations", r.account_creations),
            ("rate_uploads", r.uploads),
            ("rate_blob_uploads", r.blob_uploads),
            ("rate_account_sends", r.account_sends),
            ("rate_account_prekey_fetches", r.account_prekey_fetches),
            ("rate_account_uploads", r.account_uploads),
            ("rate_one_time_keys_per_target", r.one_time_keys_per_target),
            ("rate_one_time_keys_per_pair", r.one_time_keys_per_pair),
            (
                "rate_one_time_keys_per_requester",
                r.one_time_keys_per_requester,
            ),
            ("rate_blob_downloads", r.blob_downloads),
            ("rate_account_blob_downloads", r.account_blob_downloads),
            (
                "rate_account_blob_download_mib",
                r.account_blob_download_mib,
            ),
        ] {
            if !(limit.per_second.is_finite() && limit.per_second > 0.0) {
                return fail(setting, "per second must be a positive number");
            }
            if limit.burst == 0 {
                return fail(setting, "burst must be at least 1");
            }
        }
        if u64::from(r.account_blob_download_mib.burst).saturating_mul(1 << 20)
            < self.blob_max_bytes
        {
            return fail(
                "rate_account_blob_download_mib",
                "burst must be at least blob_max_bytes (in MiB), or the largest blobs can never be downloaded",
            );
        }
        if self.log.trim().is_empty() {
            return fail("log", "must not be empty");
        }
        Ok(())
    }
}

/// What the relay was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Serve (also when no command is given).
    Run(Config),
    /// Write a backup of the database (relay stopped).
    Export {
        /// The settings (the data directory is the one exported).
        config: Config,
        /// The backup file to write.
        out: PathBuf,
    },
    /// Restore a backup into an empty database (relay stopped).
    Import {
        /// The settings (the data directory is the one restored into).
        config: Config,
        /// The backup file to read.
        from: PathBuf,
    },
    /// Print the TLS certificate's fingerprint (creating the identity if there is none).
    Fingerprint(Config),
}

/// The blind Hush relay.
///
/// Settings come from flags, then HUSH_RELAY_<NAME> environment variables, then the --config
/// file, then the defaults shown.
#[derive(Parser, Debug)]
#[command(name = "hush-relay", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// TOML settings file [default: none] [env: HUSH_RELAY_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Flags,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Serve (the default)
    Run,
    /// Write a backup of the database to a file (with the relay stopped)
    Export {
        /// Backup file to write
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore a backup into an empty database (with the relay stopped)
    Import {
        /// Backup file to read
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// Print the TLS certificate's SHA-256 fingerprint, which clients pin
    Fingerprint,
}

/// One flag per setting; the field name is the setting's name. The values are read from the
/// matches by that name and parsed by [`apply`], the same code as for environment variables.
#[derive(clap::Args, Debug)]
#[allow(dead_code)] // read through `ArgMatches`, not through the fields
struct Flags {
    /// Directory of the database and TLS identity [default: ./hush-data] [env: HUSH_RELAY_DATA_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<String>,
    /// QUIC listen address (UDP) [default: [::]:4433] [env: HUSH_RELAY_LISTEN]
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// Metrics listen address (TCP), or "off" [default: 127.0.0.1:9464] [env: HUSH_RELAY_METRICS_LISTEN]
    #[arg(long, global = true, value_name = "ADDR|off")]
    metrics_listen: Option<String>,
    /// Storage backend: sled or memory (lost on restart) [default: sled] [env: HUSH_RELAY_STORE]
    #[arg(long, global = true, value_name = "KIND")]
    store: Option<String>,
    /// Comma-separated names in a newly generated certificate [default: localhost] [env: HUSH_RELAY_CERT_NAMES]
    #[arg(long, global = true, value_name = "NAMES")]
    cert_names: Option<String>,
    /// Open connections at most (count) [default: 10000] [env: HUSH_RELAY_MAX_CONNECTIONS]
    #[arg(long, global = true, value_name = "N")]
    max_connections: Option<String>,
    /// Close a connection idle this long (ms) [default: 60000] [env: HUSH_RELAY_IDLE_TIMEOUT_MS]
    #[arg(long, global = true, value_name = "MS")]
    idle_timeout_ms: Option<String>,
    /// Largest frame on a stream (bytes) [default: 1048576 = 1 MiB] [env: HUSH_RELAY_MAX_FRAME_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    max_frame_bytes: Option<String>,
    /// Largest envelope body (bytes) [default: 65536 = 64 KiB] [env: HUSH_RELAY_MAX_ENVELOPE_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    max_envelope_bytes: Option<String>,
    /// Envelopes in one send at most (count) [default: 1200] [env: HUSH_RELAY_MAX_ENVELOPES_PER_SEND]
    #[arg(long, global = true, value_name = "N")]
    max_envelopes_per_send: Option<String>,
    /// Devices per account at most (count) [default: 16] [env: HUSH_RELAY_MAX_DEVICES_PER_ACCOUNT]
    #[arg(long, global = true, value_name = "N")]
    max_devices_per_account: Option<String>,
    /// Delete queued envelopes after this long (ms) [default: 2592000000 = 30 days] [env: HUSH_RELAY_MAILBOX_TTL_MS]
    #[arg(long, global = true, value_name = "MS")]
    mailbox_ttl_ms: Option<String>,
    /// Envelopes queued per device at most (count) [default: 10000] [env: HUSH_RELAY_MAX_QUEUE_LEN]
    #[arg(long, global = true, value_name = "N")]
    max_queue_len: Option<String>,
    /// Bytes queued per device at most, body plus 128 per envelope (bytes) [default: 134217728 = 128 MiB] [env: HUSH_RELAY_MAX_QUEUE_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    max_queue_bytes: Option<String>,
    /// Envelopes queued per device from one sending account at most (count) [default: 1000] [env: HUSH_RELAY_MAX_QUEUE_LEN_PER_SENDER]
    #[arg(long, global = true, value_name = "N")]
    max_queue_len_per_sender: Option<String>,
    /// Bytes queued per device from one sending account at most (bytes) [default: 16777216 = 16 MiB] [env: HUSH_RELAY_MAX_QUEUE_BYTES_PER_SENDER]
    #[arg(long, global = true, value_name = "BYTES")]
    max_queue_bytes_per_sender: Option<String>,
    /// Bytes queued for all devices of one account at most (bytes) [default: 536870912 = 512 MiB] [env: HUSH_RELAY_MAX_ACCOUNT_MAILBOX_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    max_account_mailbox_bytes: Option<String>,
    /// Bytes queued in all mailboxes at most (bytes) [default: 17179869184 = 16 GiB] [env: HUSH_RELAY_MAX_MAILBOX_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    max_mailbox_bytes: Option<String>,
    /// Interval of the expiry sweep (ms) [default: 60000] [env: HUSH_RELAY_SWEEP_INTERVAL_MS]
    #[arg(long, global = true, value_name = "MS")]
    sweep_interval_ms: Option<String>,
    /// Sends made durable by one flush at most (group commit; count) [default: 1024] [env: HUSH_RELAY_FLUSH_BATCH_MAX]
    #[arg(long, global = true, value_name = "N")]
    flush_batch_max: Option<String>,
    /// Largest blob (bytes) [default: 104857600 = 100 MiB] [env: HUSH_RELAY_BLOB_MAX_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    blob_max_bytes: Option<String>,
    /// Delete blobs after this long (ms) [default: 2592000000 = 30 days] [env: HUSH_RELAY_BLOB_TTL_MS]
    #[arg(long, global = true, value_name = "MS")]
    blob_ttl_ms: Option<String>,
    /// Blob storage one account may use at once (bytes) [default: 2147483648 = 2 GiB] [env: HUSH_RELAY_BLOB_ACCOUNT_MAX_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    blob_account_max_bytes: Option<String>,
    /// Blob storage of the relay, all accounts together (bytes) [default: 107374182400 = 100 GiB] [env: HUSH_RELAY_BLOB_TOTAL_MAX_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    blob_total_max_bytes: Option<String>,
    /// Time a blob stream has to send its request frame (ms) [default: 10000] [env: HUSH_RELAY_BLOB_REQUEST_TIMEOUT_MS]
    #[arg(long, global = true, value_name = "MS")]
    blob_request_timeout_ms: Option<String>,
    /// Time one 64 KiB chunk of a blob upload or download may take (ms) [default: 30000] [env: HUSH_RELAY_BLOB_CHUNK_TIMEOUT_MS]
    #[arg(long, global = true, value_name = "MS")]
    blob_chunk_timeout_ms: Option<String>,
    /// Memory sled may use to cache the database (bytes) [default: 67108864 = 64 MiB] [env: HUSH_RELAY_SLED_CACHE_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    sled_cache_bytes: Option<String>,
    /// Sends per device (per second/burst) [default: 200/400] [env: HUSH_RELAY_RATE_SENDS]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_sends: Option<String>,
    /// Pre-key fetches per device (per second/burst) [default: 20/100] [env: HUSH_RELAY_RATE_PREKEY_FETCHES]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_prekey_fetches: Option<String>,
    /// Account creations per source IP (per second/burst) [default: 1/10] [env: HUSH_RELAY_RATE_ACCOUNT_CREATIONS]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_account_creations: Option<String>,
    /// Key and device-list uploads per device (per second/burst) [default: 10/20] [env: HUSH_RELAY_RATE_UPLOADS]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_uploads: Option<String>,
    /// Blob uploads per device (per second/burst) [default: 2/10] [env: HUSH_RELAY_RATE_BLOB_UPLOADS]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_blob_uploads: Option<String>,
    /// Sends per account, all devices together (per second/burst) [default: 400/800] [env: HUSH_RELAY_RATE_ACCOUNT_SENDS]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_account_sends: Option<String>,
    /// Pre-key fetches per account, all devices together (per second/burst) [default: 40/200] [env: HUSH_RELAY_RATE_ACCOUNT_PREKEY_FETCHES]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_account_prekey_fetches: Option<String>,
    /// Key and device-list uploads per account, all devices together (per second/burst) [default: 20/40] [env: HUSH_RELAY_RATE_ACCOUNT_UPLOADS]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_account_uploads: Option<String>,
    /// One-time pre-keys handed out per target device; past it bundles come without (per second/burst) [default: 0.05/30] [env: HUSH_RELAY_RATE_ONE_TIME_KEYS_PER_TARGET]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_one_time_keys_per_target: Option<String>,
    /// One-time pre-keys handed out per requesting account and target account (per second/burst) [default: 0.001/3] [env: HUSH_RELAY_RATE_ONE_TIME_KEYS_PER_PAIR]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_one_time_keys_per_pair: Option<String>,
    /// One-time pre-keys handed out per requesting account over all targets (per second/burst) [default: 1/200] [env: HUSH_RELAY_RATE_ONE_TIME_KEYS_PER_REQUESTER]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_one_time_keys_per_requester: Option<String>,
    /// Downloads of one blob, everyone together (per second/burst) [default: 10/100] [env: HUSH_RELAY_RATE_BLOB_DOWNLOADS]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_blob_downloads: Option<String>,
    /// Blob downloads per account, all devices together (per second/burst) [default: 20/200] [env: HUSH_RELAY_RATE_ACCOUNT_BLOB_DOWNLOADS]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_account_blob_downloads: Option<String>,
    /// Blob MiB downloaded per account, all devices together (MiB per second/burst) [default: 10/2048] [env: HUSH_RELAY_RATE_ACCOUNT_BLOB_DOWNLOAD_MIB]
    #[arg(long, global = true, value_name = "RATE/BURST")]
    rate_account_blob_download_mib: Option<String>,
    /// Require QUIC address validation above this many connections (count, 0 = always) [default: 2000] [env: HUSH_RELAY_RETRY_UNDER_LOAD_CONNECTIONS]
    #[arg(long, global = true, value_name = "N")]
    retry_under_load_connections: Option<String>,
    /// Allow plain http:// push endpoints, for testing (true/false) [default: false] [env: HUSH_RELAY_PUSH_ALLOW_PLAIN_HTTP]
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    push_allow_plain_http: Option<String>,
    /// Timeout of one push request (ms) [default: 10000] [env: HUSH_RELAY_PUSH_TIMEOUT_MS]
    #[arg(long, global = true, value_name = "MS")]
    push_timeout_ms: Option<String>,
    /// Log filter, e.g. "info" or "hush_relay=debug" [default: info] [env: HUSH_RELAY_LOG]
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
}

/// Every setting settable by flag or environment variable, by name.
pub const SETTINGS: &[&str] = &[
    "data_dir",
    "listen",
    "metrics_listen",
    "store",
    "cert_names",
    "max_connections",
    "idle_timeout_ms",
    "max_frame_bytes",
    "max_envelope_bytes",
    "max_envelopes_per_send",
    "max_devices_per_account",
    "mailbox_ttl_ms",
    "max_queue_len",
    "max_queue_bytes",
    "max_queue_len_per_sender",
    "max_queue_bytes_per_sender",
    "max_account_mailbox_bytes",
    "max_mailbox_bytes",
    "sweep_interval_ms",
    "flush_batch_max",
    "blob_max_bytes",
    "blob_ttl_ms",
    "blob_account_max_bytes",
    "blob_total_max_bytes",
    "blob_request_timeout_ms",
    "blob_chunk_timeout_ms",
    "sled_cache_bytes",
    "rate_sends",
    "rate_prekey_fetches",
    "rate_account_creations",
    "rate_uploads",
    "rate_blob_uploads",
    "rate_account_sends",
    "rate_account_prekey_fetches",
    "rate_account_uploads",
    "rate_one_time_keys_per_target",
    "rate_one_time_keys_per_pair",
    "rate_one_time_keys_per_requester",
    "rate_blob_downloads",
    "rate_account_blob_downloads",
    "rate_account_blob_download_mib",
    "retry_under_load_connections",
    "push_allow_plain_http",
    "push_timeout_ms",
    "log",
];

/// The environment variable of a setting: `HUSH_RELAY_` and its name in capitals.
pub fn env_name(setting: &str) -> String {
    format!("{ENV_PREFIX}{}", setting.to_ascii_uppercase())
}

fn flag_name(setting: &str) -> String {
    format!("--{}", setting.replace('_', "-"))
}

/// A number; `_` may separate digits (`10_000`).
fn parse_num<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    s.trim()
        .replace('_', "")
        .parse::<T>()
        .map_err(|e| e.to_string())
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected IP:PORT, e.g. 0.0.0.0:4433 or [::]:4433".into())
}

fn parse_optional_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        Ok(None)
    } else {
        parse_addr(s).map(Some)
    }
}

fn parse_names(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// Sets one setting from its text form (flags and environment variables).
fn apply(c: &mut Config, setting: &str, raw: &str) -> Result<(), String> {
    match setting {
        "data_dir" => c.data_dir = PathBuf::from(raw),
        "listen" => c.listen = parse_addr(raw)?,
        "metrics_listen" => c.metrics_listen = parse_optional_addr(raw)?,
        "store" => c.store = raw.parse()?,
        "cert_names" => c.cert_names = parse_names(raw),
        "max_connections" => c.max_connections = parse_num(raw)?,
        "idle_timeout_ms" => c.idle_timeout_ms = parse_num(raw)?,
        "max_frame_bytes" => c.max_frame_bytes = parse_num(raw)?,
        "max_envelope_bytes" => c.max_envelope_bytes = parse_num(raw)?,
        "max_envelopes_per_send" => c.max_envelopes_per_send = parse_num(raw)?,
        "max_devices_per_account" => c.max_devices_per_account = parse_num(raw)?,
        "mailbox_ttl_ms" => c.mailbox_ttl_ms = parse_num(raw)?,
        "max_queue_len" => c.max_queue_len = parse_num(raw)?,
        "max_queue_bytes" => c.max_queue_bytes = parse_num(raw)?,
        "max_queue_len_per_sender" => c.max_queue_len_per_sender = parse_num(raw)?,
        "max_queue_bytes_per_sender" => c.max_queue_bytes_per_sender = parse_num(raw)?,
        "max_account_mailbox_bytes" => c.max_account_mailbox_bytes = parse_num(raw)?,
        "max_mailbox_bytes" => c.max_mailbox_bytes = parse_num(raw)?,
        "sweep_interval_ms" => c.sweep_interval_ms = parse_num(raw)?,
        "flush_batch_max" => c.flush_batch_max = parse_num(raw)?,
        "blob_max_bytes" => c.blob_max_bytes = parse_num(raw)?,
        "blob_ttl_ms" => c.blob_ttl_ms = parse_num(raw)?,
        "blob_account_max_bytes" => c.blob_account_max_bytes = parse_num(raw)?,
        "blob_total_max_bytes" => c.blob_total_max_bytes = parse_num(raw)?,
        "blob_request_timeout_ms" => c.blob_request_timeout_ms = parse_num(raw)?,
        "blob_chunk_timeout_ms" => c.blob_chunk_timeout_ms = parse_num(raw)?,
        "sled_cache_bytes" => c.sled_cache_bytes = parse_num(raw)?,
        "rate_sends" => c.rate.sends = raw.parse()?,
        "rate_prekey_fetches" => c.rate.prekey_fetches = raw.parse()?,
        "rate_account_creations" => c.rate.account_creations = raw.parse()?,
        "rate_uploads" => c.rate.uploads = raw.parse()?,
        "rate_blob_uploads" => c.rate.blob_uploads = raw.parse()?,
        "rate_account_sends" => c.rate.account_sends = raw.parse()?,
        "rate_account_prekey_fetches" => c.rate.account_prekey_fetches = raw.parse()?,
        "rate_account_uploads" => c.rate.account_uploads = raw.parse()?,
        "rate_one_time_keys_per_target" => c.rate.one_time_keys_per_target = raw.parse()?,
        "rate_one_time_keys_per_pair" => c.rate.one_time_keys_per_pair = raw.parse()?,
        "rate_one_time_keys_per_requester" => {
            c.rate.one_time_keys_per_requester = raw.parse()?;
        }
        "rate_blob_downloads" => c.rate.blob_downloads = raw.parse()?,
        "rate_account_blob_downloads" => c.rate.account_blob_downloads = raw.parse()?,
        "rate_account_blob_download_mib" => c.rate.account_blob_download_mib = raw.parse()?,
        "retry_under_load_connections" => c.retry_under_load_connections = parse_num(raw)?,
        "push_allow_plain_http" => c.push.allow_plain_http = parse_bool(raw)?,
        "push_timeout_ms" => c.push.timeout_ms = parse_num(raw)?,
        "log" => c.log = raw.trim().to_string(),
        _ => return Err("unknown setting".into()),
    }
    Ok(())
}

/// The settings file: every key optional, unknown keys refused.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    metrics_listen: Option<String>,
    store: Option<StoreKind>,
    cert_names: Option<Vec<String>>,
    max_connections: Option<u32>,
    idle_timeout_ms: Option<u64>,
    max_frame_bytes: Option<usize>,
    max_envelope_bytes: Option<usize>,
    max_envelopes_per_send: Option<usize>,
    max_devices_per_account: Option<u32>,
    mailbox_ttl_ms: Option<u64>,
    max_queue_len: Option<usize>,
    max_queue_bytes: Option<u64>,
    max_queue_len_per_sender: Option<usize>,
    max_queue_bytes_per_sender: Option<u64>,
    max_account_mailbox_bytes: Option<u64>,
    max_mailbox_bytes: Option<u64>,
    sweep_interval_ms: Option<u64>,
    flush_batch_max: Option<usize>,
    blob_max_bytes: Option<u64>,
    blob_ttl_ms: Option<u64>,
    blob_account_max_bytes: Option<u64>,
    blob_total_max_bytes: Option<u64>,
    blob_request_timeout_ms: Option<u64>,
    blob_chunk_timeout_ms: Option<u64>,
    sled_cache_bytes: Option<u64>,
    rate: Option<FileRates>,
    retry_under_load_connections: Option<u32>,
    push: Option<FilePush>,
    log: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRates {
    sends: Option<FileRate>,
    prekey_fetches: Option<FileRate>,
    account_creations: Option<FileRate>,
    uploads: Option<FileRate>,
    blob_uploads: Option<FileRate>,
    account_sends: Option<FileRate>,
    account_prekey_fetches: Option<FileRate>,
    account_uploads: Option<FileRate>,
    one_time_keys_per_target: Option<FileRate>,
    one_time_keys_per_pair: Option<FileRate>,
    one_time_keys_per_requester: Option<FileRate>,
    blob_downloads: Option<FileRate>,
    account_blob_downloads: Option<FileRate>,
    account_blob_download_mib: Option<FileRate>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRate {
    per_second: Option<f64>,
    burst: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilePush {
    allow_plain_http: Option<bool>,
    timeout_ms: Option<u64>,
}

impl FileRate {
    fn apply(self, to: &mut RateLimit) {
        if let Some(p) = self.per_second {
            to.per_second = p;
        }
        if let Some(b) = self.burst {
            to.burst = b;
        }
    }
}

impl FileConfig {
    /// Applies the keys present; `Err((key, reason))` for an address that does not parse.
    fn apply(self, c: &mut Config) -> Result<(), (&'static str, String)> {
        macro_rules! take {
            ($($field:ident),* $(,)?) => {
                $(if let Some(v) = self.$field { c.$field = v; })*
            };
        }
        take!(
            data_dir,
            store,
            cert_names,
            max_connections,
            idle_timeout_ms,
            max_frame_bytes,
            max_envelope_bytes,
            max_envelopes_per_send,
            max_devices_per_account,
            mailbox_ttl_ms,
            max_queue_len,
            max_queue_bytes,
            max_queue_len_per_sender,
            max_queue_bytes_per_sender,
            max_account_mailbox_bytes,
            max_mailbox_bytes,
            sweep_interval_ms,
            flush_batch_max,
            blob_max_bytes,
            blob_ttl_ms,
            blob_account_max_bytes,
            blob_total_max_bytes,
            blob_request_timeout_ms,
            blob_chunk_timeout_ms,
            sled_cache_bytes,
            retry_under_load_connections,
            log,
        );
        if let Some(v) = self.listen {
            c.listen = parse_addr(&v).map_err(|e| ("listen", e))?;
        }
        if let Some(v) = self.metrics_listen {
            c.metrics_listen = parse_optional_addr(&v).map_err(|e| ("metrics_listen", e))?;
        }
        let rates = self.rate.unwrap_or_default();
        let r = &mut c.rate;
        for (file, to) in [
            (rates.sends, &mut r.sends),
            (rates.prekey_fetches, &mut r.prekey_fetches),
            (rates.account_creations, &mut r.account_creations),
            (rates.uploads, &mut r.uploads),
            (rates.blob_uploads, &mut r.blob_uploads),
            (rates.account_sends, &mut r.account_sends),
            (rates.account_prekey_fetches, &mut r.account_prekey_fetches),
            (rates.account_uploads, &mut r.account_uploads),
            (
                rates.one_time_keys_per_target,
                &mut r.one_time_keys_per_target,
            ),
            (rates.one_time_keys_per_pair, &mut r.one_time_keys_per_pair),
            (
                rates.one_time_keys_per_requester,
                &mut r.one_time_keys_per_requester,
            ),
            (rates.blob_downloads, &mut r.blob_downloads),
            (rates.account_blob_downloads, &mut r.account_blob_downloads),
            (
                rates.account_blob_download_mib,
                &mut r.account_blob_download_mib,
            ),
        ] {
            if let Some(f) = file {
                f.apply(to);
            }
        }
        let push = self.push.unwrap_or_default();
        if let Some(v) = push.allow_plain_http {
            c.push.allow_plain_http = v;
        }
        if let Some(v) = push.timeout_ms {
            c.push.timeout_ms = v;
        }
        Ok(())
    }
}

/// Parses the command line (with the process environment) into what to do.
pub fn parse_from<I, T>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_from_env(args, &|k| std::env::var(k).ok())
}

/// Like [`parse_from`], reading environment variables through `env`.
pub fn parse_from_env<I, T>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let env = |k: &str| env(k).filter(|v| !v.is_empty());

    let mut config = Config::default();
    if let Some(path) = cli.config.or_else(|| env(CONFIG_ENV).map(PathBuf::from)) {
        read_file(&path)?
            .apply(&mut config)
            .map_err(|(key, reason)| ConfigError::File {
                path: path.clone(),
                message: format!("{key}: {reason}"),
            })?;
    }
    for setting in SETTINGS {
        let name = env_name(setting);
        if let Some(value) = env(&name) {
            apply(&mut config, setting, &value).map_err(|reason| ConfigError::Value {
                origin: name,
                value,
                reason,
            })?;
        }
    }
    for setting in SETTINGS {
        if let Some(value) = flag_value(&matches, setting) {
            apply(&mut config, setting, &value).map_err(|reason| ConfigError::Value {
                origin: flag_name(setting),
                value,
                reason,
            })?;
        }
    }
    config.validate()?;
    Ok(match cli.command.unwrap_or(Sub::Run) {
        Sub::Run => Command::Run(config),
        Sub::Export { out } => Command::Export { config, out },
        Sub::Import { from } => Command::Import { config, from },
        Sub::Fingerprint => Command::Fingerprint(config),
    })
}

/// A flag's value, looked up in the subcommand's matches first (global flags may come after it).
fn flag_value(matches: &ArgMatches, setting: &str) -> Option<String> {
    let sub = matches.subcommand().map(|(_, m)| m);
    sub.into_iter()
        .chain(std::iter::once(matches))
        .find_map(|m| m.try_get_one::<String>(setting).ok().flatten().cloned())
}

fn read_file(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
    use std::io::Read;
    let read_err = |source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(MAX_CONFIG_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(ConfigError::File {
            path: path.to_path_buf(),
            message: "file is larger than 1 MiB".into(),
        });
    }
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use std::collections::HashMap;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn run(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let argv = std::iter::once("hush-relay").chain(args.iter().copied());
        match parse_from_env(argv, env)? {
            Command::Run(c) => Ok(c),
            other => panic!("expected run, got {other:?}"),
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap().to_string();
        (dir, p)
    }

    #[test]
    fn defaults() {
        let c = run(&[], &no_env).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.data_dir, PathBuf::from("./hush-data"));
        assert_eq!(c.listen, "[::]:4433".parse().unwrap());
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.store, StoreKind::Sled);
        assert_eq!(c.cert_names, vec!["localhost".to_string()]);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.idle_timeout_ms, 60_000);
        assert_eq!(c.max_frame_bytes, 1 << 20);
        assert_eq!(c.max_envelope_bytes, 64 << 10);
        assert_eq!(c.max_envelopes_per_send, 1200);
        assert_eq!(c.max_devices_per_account, 16);
        assert_eq!(c.mailbox_ttl_ms, 2_592_000_000);
        assert_eq!(c.max_queue_len, 10_000);
        assert_eq!(c.max_queue_bytes, 128 << 20);
        assert_eq!(c.max_queue_len_per_sender, 1000);
        assert_eq!(c.max_queue_bytes_per_sender, 16 << 20);
        assert_eq!(c.max_account_mailbox_bytes, 512 << 20);
        assert_eq!(c.max_mailbox_bytes, 16 << 30);
        assert_eq!(c.rate.one_time_keys_per_target, RateLimit::new(0.05, 30));
        assert_eq!(c.rate.one_time_keys_per_pair, RateLimit::new(0.001, 3));
        assert_eq!(c.rate.one_time_keys_per_requester, RateLimit::new(1.0, 200));
        assert_eq!(c.sweep_interval_ms, 60_000);
        assert_eq!(c.flush_batch_max, 1024);
        assert_eq!(c.blob_max_bytes, 100 << 20);
        assert_eq!(c.blob_ttl_ms, 2_592_000_000);
        assert_eq!(c.rate.sends, RateLimit::new(200.0, 400));
        assert_eq!(c.rate.prekey_fetches, RateLimit::new(20.0, 100));
        assert_eq!(c.rate.account_creations, RateLimit::new(1.0, 10));
        assert_eq!(c.rate.uploads, RateLimit::new(10.0, 20));
        assert_eq!(c.rate.blob_uploads, RateLimit::new(2.0, 10));
        assert_eq!(c.rate.blob_downloads, RateLimit::new(10.0, 100));
        assert_eq!(c.rate.account_blob_downloads, RateLimit::new(20.0, 200));
        assert_eq!(c.rate.account_blob_download_mib, RateLimit::new(10.0, 2048));
        assert_eq!(c.blob_account_max_bytes, 2 << 30);
        assert_eq!(c.blob_total_max_bytes, 100 << 30);
        assert_eq!(c.blob_request_timeout_ms, 10_000);
        assert_eq!(c.blob_chunk_timeout_ms, 30_000);
        assert_eq!(c.sled_cache_bytes, 64 << 20);
        assert_eq!(c.retry_under_load_connections, 2000);
        assert!(!c.push.allow_plain_http);
        assert_eq!(c.push.timeout_ms, 10_000);
        assert_eq!(c.log, "info");
        c.validate().unwrap();
    }

    #[test]
    fn file_then_env_then_flag() {
        let (_d, path) = file(
            r#"
            data_dir = "/from/file"
            listen = "127.0.0.1:1111"
            max_queue_len = 5
            idle_timeout_ms = 7
            cert_names = ["a.test", "b.test"]
            metrics_listen = "off"

            [rate.sends]
            burst = 800

            [rate.uploads]
            per_second = 0.5
            burst = 3

            [rate.one_time_keys_per_pair]
            burst = 5

            [push]
            timeout_ms = 1234
            "#,
        );
        // File only.
        let c = run(&["--config", &path], &no_env).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.listen, "127.0.0.1:1111".parse().unwrap());
        assert_eq!(c.max_queue_len, 5);
        assert_eq!(c.cert_names, vec!["a.test".to_string(), "b.test".into()]);
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.rate.sends, RateLimit::new(200.0, 800), "burst only");
        assert_eq!(c.rate.uploads, RateLimit::new(0.5, 3));
        assert_eq!(c.rate.one_time_keys_per_pair, RateLimit::new(0.001, 5));
        assert_eq!(c.push.timeout_ms, 1234);

        // The environment beats the file, and can name the file.
        let env = env_of(&[
            ("HUSH_RELAY_CONFIG", &path),
            ("HUSH_RELAY_DATA_DIR", "/from/env"),
            ("HUSH_RELAY_MAX_QUEUE_LEN", "6"),
            ("HUSH_RELAY_RATE_SENDS", "1/2"),
            ("HUSH_RELAY_LISTEN", ""),
        ]);
        let c = run(&[], &env).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.max_queue_len, 6);
        assert_eq!(c.rate.sends, RateLimit::new(1.0, 2));
        assert_eq!(c.idle_timeout_ms, 7, "still from the file");
        assert_eq!(
            c.listen,
            "127.0.0.1:1111".parse().unwrap(),
            "empty env is unset"
        );

        // Flags beat both, also after the subcommand.
        let argv = [
            "hush-relay",
            "export",
            "--out",
            "/tmp/x.bk",
            "--data-dir",
            "/from/flag",
            "--rate-sends=3/4",
        ];
        match parse_from_env(argv, &env).unwrap() {
            Command::Export { config, out } => {
                assert_eq!(out, PathBuf::from("/tmp/x.bk"));
                assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
                assert_eq!(config.rate.sends, RateLimit::new(3.0, 4));
                assert_eq!(config.max_queue_len, 6);
            }
            other => panic!("{other:?}"),
        }
        let c = run(
            &[
                "--max-queue-len",
                "9",
                "--metrics-listen",
                "[::1]:9000",
                "run",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(c.max_queue_len, 9);
        assert_eq!(c.metrics_listen, Some("[::1]:9000".parse().unwrap()));
        // --config beats HUSH_RELAY_CONFIG.
        let (_d2, other) = file("max_queue_len = 77\n");
        let c = run(
            &["--config", &other],
            &env_of(&[("HUSH_RELAY_CONFIG", &path)]),
        )
        .unwrap();
        assert_eq!(c.max_queue_len, 77);
        assert_eq!(c.data_dir, Config::default().data_dir);
    }

    #[test]
    fn subcommands() {
        let p = |args: &[&str]| {
            parse_from_env(
                std::iter::once("hush-relay").chain(args.iter().copied()),
                &no_env,
            )
            .unwrap()
        };
        assert_eq!(p(&["run"]), Command::Run(Config::default()));
        assert_eq!(p(&[]), Command::Run(Config::default()));
        assert_eq!(p(&["fingerprint"]), Command::Fingerprint(Config::default()));
        assert_eq!(
            p(&["import", "--from", "b.bk"]),
            Command::Import {
                config: Config::default(),
                from: "b.bk".into()
            }
        );
        assert!(matches!(
            parse_from_env(["hush-relay", "export"], &no_env),
            Err(ConfigError::Usage(_))
        ));
        assert!(matches!(
            parse_from_env(["hush-relay", "serve"], &no_env),
            Err(ConfigError::Usage(_))
        ));
        let c = run(&["--push-allow-plain-http"], &no_env).unwrap();
        assert!(c.push.allow_plain_http);
        let c = run(
            &["--push-allow-plain-http=false"],
            &env_of(&[("HUSH_RELAY_PUSH_ALLOW_PLAIN_HTTP", "true")]),
        )
        .unwrap();
        assert!(!c.push.allow_plain_http);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        for (text, key) in [
            ("max_conections = 5\n", "max_conections"),
            ("[rate.sends]\nper_second = 1\nbrust = 2\n", "brust"),
            ("[rate.sendz]\nburst = 2\n", "sendz"),
            ("[push]\ntimeout = 2\n", "timeout"),
        ] {
            let (_d, path) = file(text);
            match run(&["--config", &path], &no_env) {
                Err(ConfigError::File { message, .. }) => {
                    assert!(message.contains(key), "{message}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_values_are_errors() {
        let bad_file = [
            "listen = \"nowhere\"\n",
            "max_connections = -1\n",
            "max_connections = \"many\"\n",
            "store = \"postgres\"\n",
            "[rate.sends]\nburst = 1.5\n",
            "this is not toml",
        ];
        for text in bad_file {
            let (_d, path) = file(text);
            assert!(
                matches!(
                    run(&["--config", &path], &no_env),
                    Err(ConfigError::File { .. })
                ),
                "{text}"
            );
        }
        assert!(matches!(
            run(&["--config", "/nonexistent/relay.toml"], &no_env),
            Err(ConfigError::ReadFile { .. })
        ));
        for (args, origin) in [
            (&["--listen", "4433"][..], "--listen"),
            (&["--max-queue-len=-3"][..], "--max-queue-len"),
            (&["--store", "disk"][..], "--store"),
            (
                &["--push-allow-plain-http=maybe"][..],
                "--push-allow-plain-http",
            ),
            (&["--metrics-listen", "on"][..], "--metrics-listen"),
        ] {
            match run(args, &no_env) {
                Err(ConfigError::Value { origin: o, .. }) => assert_eq!(o, origin),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        match run(&[], &env_of(&[("HUSH_RELAY_MAX_CONNECTIONS", "lots")])) {
            Err(ConfigError::Value { origin, value, .. }) => {
                assert_eq!(origin, "HUSH_RELAY_MAX_CONNECTIONS");
                assert_eq!(value, "lots");
            }
            other => panic!("{other:?}"),
        }
        for (args, setting) in [
            (&["--max-frame-bytes", "0"][..], "max_frame_bytes"),
            (&["--blob-ttl-ms", "0"][..], "blob_ttl_ms"),
            (&["--max-connections", "0"][..], "max_connections"),
            (&["--max-mailbox-bytes", "0"][..], "max_mailbox_bytes"),
            (
                &["--rate-one-time-keys-per-pair", "0/3"][..],
                "rate_one_time_keys_per_pair",
            ),
            (&["--rate-uploads", "1/0"][..], "rate_uploads"),
            (&["--rate-sends", "0/5"][..], "rate_sends"),
            (&["--rate-sends", "NaN/5"][..], "rate_sends"),
            (&["--rate-sends", "inf/5"][..], "rate_sends"),
            (
                &["--max-envelope-bytes", "2000000"][..],
                "max_envelope_bytes",
            ),
            (&["--cert-names", " , "][..], "cert_names"),
            (&["--log", " "][..], "log"),
            (&["--push-timeout-ms", "0"][..], "push_timeout_ms"),
        ] {
            match run(args, &no_env) {
                Err(ConfigError::Invalid { setting: s, .. }) => assert_eq!(s, setting, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        let (_d, path) = file("[rate.blob_uploads]\nburst = 0\n");
        assert!(matches!(
            run(&["--config", &path], &no_env),
            Err(ConfigError::Invalid {
                setting: "rate_blob_uploads",
                ..
            })
        ));
    }

    #[test]
    fn rate_syntax() {
        assert_eq!("200/400".parse(), Ok(RateLimit::new(200.0, 400)));
        assert_eq!(" 0.5 / 10 ".parse(), Ok(RateLimit::new(0.5, 10)));
        assert_eq!("1_000/2_000".parse::<RateLimit>().unwrap().burst, 2000);
        for bad in ["200", "200/", "/400", "a/b", "1/2/3", "1/-2", "1/2.5", ""] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
        assert_eq!(RateLimit::new(200.0, 400).to_string(), "200/400");
        assert_eq!(RateLimit::new(0.5, 10).to_string(), "0.5/10");
        let c = run(&["--rate-account-creations", "0.1/3"], &no_env).unwrap();
        assert_eq!(c.rate.account_creations, RateLimit::new(0.1, 3));
    }

    #[test]
    fn every_setting_has_a_documented_flag_and_variable() {
        let cmd = Cli::command();
        let args: Vec<_> = cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .collect();
        let mut defaults = Config::default();
        for setting in SETTINGS {
            let arg = args
                .iter()
                .find(|a| a.get_id() == setting)
                .unwrap_or_else(|| panic!("no flag for {setting}"));
            assert_eq!(format!("--{}", arg.get_long().unwrap()), flag_name(setting));
            let help = arg.get_help().unwrap().to_string();
            assert!(!help.contains('\n'), "{setting}: one line");
            assert!(help.contains("[default: "), "{setting}: {help}");
            assert!(
                help.contains(&format!("[env: {}]", env_name(setting))),
                "{setting}: {help}"
            );
            if setting.ends_with("_ms") {
                assert!(help.contains("(ms)"), "{setting}: {help}");
            }
            if setting.ends_with("_bytes") {
                assert!(help.contains("(bytes)"), "{setting}: {help}");
            }
            // Each setting's default, as shown, is accepted by the parser.
            let shown = help
                .split("[default: ")
                .nth(1)
                .unwrap()
                .split("] [env")
                .next()
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            apply(&mut defaults, setting, shown).unwrap_or_else(|e| panic!("{setting}: {e}"));
        }
        assert_eq!(defaults, Config::default(), "help shows the real defaults");
        // No flag without a setting (besides --config and the subcommands' own).
        for a in &args {
            let id = a.get_id().as_str();
            assert!(id == "config" || SETTINGS.contains(&id), "{id}");
        }
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--rate-sends <RATE/BURST>"));
        assert!(help.contains("fingerprint"));
        assert!(matches!(
            parse_from_env(["hush-relay", "--help"], &no_env),
            Err(ConfigError::Usage(e)) if e.kind() == clap::error::ErrorKind::DisplayHelp
        ));
    }

    #[test]
    fn the_documented_example_file_parses() {
        let doc = include_str!("config.rs");
        let start = doc.find("//! ```toml\n").unwrap() + "//! ```toml\n".len();
        let end = start + doc[start..].find("//! ```").unwrap();
        let text: String = doc[start..end]
            .lines()
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let (_d, path) = file(&text);
        let c = run(&["--config", &path], &no_env).unwrap();
        assert_eq!(c.cert_names, vec!["relay.example.org".to_string()]);
        assert_eq!(c.push.timeout_ms, 5000);
    }
}
