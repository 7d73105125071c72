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
//!
//! Each setting is defined once, in the table of [`settings`]; `value` reads and writes the kinds
//! of value, and `doc` renders the sample file and the table of docs/OPERATIONS.md.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

#[cfg(test)]
mod doc;
mod settings;
mod value;

#[cfg(test)]
mod tests;

pub use settings::{Config, PushConfig, RateLimits, SETTINGS};
pub use value::{RateLimit, StoreKind, TcpListen, VapidSubject};

use settings::Setting;

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
    /// The settings file is not valid TOML, or is too large.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A key of the settings file that is not a setting, or whose value is of the wrong type or
    /// does not parse.
    #[error("{path}: {key}: {reason}")]
    FileKey {
        /// The file.
        path: PathBuf,
        /// The key, with its table (`rate.sends`, `rate.sends.burst`).
        key: String,
        /// What is wrong.
        reason: String,
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

impl Config {
    /// Checks the values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |setting, reason| Err(ConfigError::Invalid { setting, reason });
        for s in settings::all() {
            if let Err(reason) = s.field.check(self) {
                return fail(s.name, reason);
            }
        }
        if self.max_envelope_bytes > self.max_frame_bytes {
            return fail("max_envelope_bytes", "must not exceed max_frame_bytes");
        }
        if u64::from(self.rate.account_blob_download_mib.burst).saturating_mul(1 << 20)
            < self.blob_max_bytes
        {
            return fail(
                "rate_account_blob_download_mib",
                "burst must be at least blob_max_bytes (in MiB), or the largest blobs can never be downloaded",
            );
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

/// The command line: `--config`, the subcommands, and one flag per setting.
fn command(settings: &[Setting]) -> clap::Command {
    Cli::command().args(settings.iter().map(Setting::arg))
}

/// The environment variable of a setting: `HUSH_RELAY_` and its name in capitals.
pub fn env_name(setting: &str) -> String {
    format!("{ENV_PREFIX}{}", setting.to_ascii_uppercase())
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
    let settings = settings::all();
    let matches = command(&settings).try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let env = |k: &str| env(k).filter(|v| !v.is_empty());

    let mut config = Config::default();
    if let Some(path) = cli.config.or_else(|| env(CONFIG_ENV).map(PathBuf::from)) {
        let table = read_file(&path)?;
        apply_file(&settings, table, &mut config)
            .map_err(|(key, reason)| ConfigError::FileKey { path, key, reason })?;
    }
    for s in &settings {
        let name = s.env();
        if let Some(value) = env(&name) {
            s.field
                .set_text(&mut config, &value)
                .map_err(|reason| ConfigError::Value {
                    origin: name,
                    value,
                    reason,
                })?;
        }
    }
    for s in &settings {
        if let Some(value) = flag_value(&matches, s.name) {
            s.field
                .set_text(&mut config, &value)
                .map_err(|reason| ConfigError::Value {
                    origin: s.flag(),
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

/// Reads the settings file as TOML, at most [`MAX_CONFIG_FILE`] bytes of it.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
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
    text.parse::<toml::Table>().map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Sets the settings the file names; `Err((key, reason))` for a key that is not a setting or a
/// value that does not fit it.
fn apply_file(
    settings: &[Setting],
    file: toml::Table,
    config: &mut Config,
) -> Result<(), (String, String)> {
    for (key, value) in file {
        if let Some(s) = settings.iter().find(|s| s.table.is_none() && s.key == key) {
            s.field.set_toml(config, value).map_err(|e| (key, e))?;
        } else if settings.iter().any(|s| s.table == Some(key.as_str())) {
            let toml::Value::Table(inner) = value else {
                return Err((key, "expected a table".into()));
            };
            for (sub, value) in inner {
                let s = settings
                    .iter()
                    .find(|s| s.table == Some(key.as_str()) && s.key == sub)
                    .ok_or_else(|| (format!("{key}.{sub}"), "unknown setting".to_string()))?;
                s.field
                    .set_toml(config, value)
                    .map_err(|e| (format!("{key}.{sub}"), e))?;
            }
        } else {
            return Err((key, "unknown setting".into()));
        }
    }
    Ok(())
}
