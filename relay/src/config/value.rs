//! The kinds of value a setting holds: how each is read from a flag or variable and from the
//! settings file, how it is written back out (defaults in `--help`, the sample file), and the
//! checks a value must pass.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

/// A setting's value.
pub(crate) trait SettingValue: Sized {
    /// Whether a flag of this kind may be given without a value (`--push-allow-plain-http`).
    const SWITCH: bool = false;

    /// Reads the text of a flag or an environment variable.
    fn from_text(text: &str) -> Result<Self, String>;

    /// Reads the value of a key in the settings file over `self`, which a table may change only
    /// in part.
    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String>;

    /// The text form, as [`SettingValue::from_text`] reads it.
    fn to_text(&self) -> String;

    /// The form in the settings file, as [`SettingValue::set_from_toml`] reads it.
    fn to_toml(&self) -> toml::Value;

    /// A value different from `self` and from its `n - 1`th variant, for tests.
    #[cfg(test)]
    fn variant(&self, n: u32) -> Self;
}

/// Reads a file value through its serde form, e.g. `invalid type: string "many", expected u32`.
fn from_toml<T: for<'de> Deserialize<'de>>(value: toml::Value) -> Result<T, String> {
    value
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())
}

/// A number; `_` may separate digits (`10_000`).
pub(crate) fn parse_num<T: FromStr>(s: &str) -> Result<T, String>
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

macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn from_text(text: &str) -> Result<Self, String> {
                parse_num(text)
            }

            fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
                *self = from_toml(value)?;
                Ok(())
            }

            fn to_text(&self) -> String {
                self.to_string()
            }

            fn to_toml(&self) -> toml::Value {
                toml::Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
            }

            #[cfg(test)]
            fn variant(&self, n: u32) -> Self {
                self + n as $t
            }
        }
    )*};
}

integer_values!(u8, u32, u64, usize);

impl SettingValue for bool {
    const SWITCH: bool = true;

    fn from_text(text: &str) -> Result<Self, String> {
        parse_bool(text)
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        *self = from_toml(value)?;
        Ok(())
    }

    fn to_text(&self) -> String {
        self.to_string()
    }

    fn to_toml(&self) -> toml::Value {
        toml::Value::Boolean(*self)
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        *self ^ (n % 2 == 1)
    }
}

/// A path, taken as written (not trimmed).
impl SettingValue for PathBuf {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        *self = from_toml(value)?;
        Ok(())
    }

    fn to_text(&self) -> String {
        self.to_string_lossy().into_owned()
    }

    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.to_text())
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        PathBuf::from(format!("{}-{n}", self.display()))
    }
}

/// Free text: trimmed when it comes from a flag or variable, as written in the file.
impl SettingValue for String {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text.trim().to_string())
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        *self = from_toml(value)?;
        Ok(())
    }

    fn to_text(&self) -> String {
        self.clone()
    }

    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.clone())
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        format!("{self},hush_relay=debug{n}")
    }
}

impl SettingValue for SocketAddr {
    fn from_text(text: &str) -> Result<Self, String> {
        parse_addr(text)
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        *self = parse_addr(&from_toml::<String>(value)?)?;
        Ok(())
    }

    fn to_text(&self) -> String {
        self.to_string()
    }

    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.to_string())
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        SocketAddr::new(self.ip(), self.port() + n as u16)
    }
}

/// An address, or `off` for none.
impl SettingValue for Option<SocketAddr> {
    fn from_text(text: &str) -> Result<Self, String> {
        if text.trim().eq_ignore_ascii_case("off") {
            Ok(None)
        } else {
            parse_addr(text).map(Some)
        }
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        *self = Self::from_text(&from_toml::<String>(value)?)?;
        Ok(())
    }

    fn to_text(&self) -> String {
        self.map_or_else(|| "off".into(), |a| a.to_string())
    }

    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.to_text())
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        let base = SocketAddr::from(([127, 0, 0, 1], 9464));
        n.is_multiple_of(2).then(|| base.variant(n))
    }
}

/// Names: a comma-separated list as text, an array of strings in the file.
impl SettingValue for Vec<String> {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect())
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        *self = from_toml(value)?;
        Ok(())
    }

    fn to_text(&self) -> String {
        self.join(",")
    }

    fn to_toml(&self) -> toml::Value {
        toml::Value::Array(self.iter().cloned().map(toml::Value::String).collect())
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        vec![format!("n{n}.test"), "other.test".into()]
    }
}

/// Where the relay listens for TLS over TCP (docs/RELAY_PROTOCOL.md §17).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcpListen {
    /// The address and port number of `listen`, over TCP.
    #[default]
    Same,
    /// No TCP listener: QUIC only.
    Off,
    /// This address.
    At(SocketAddr),
}

impl TcpListen {
    /// The address to bind, given the QUIC address `listen`; `None` when off.
    pub fn resolve(self, listen: SocketAddr) -> Option<SocketAddr> {
        match self {
            Self::Same => Some(listen),
            Self::Off => None,
            Self::At(a) => Some(a),
        }
    }
}

impl SettingValue for TcpListen {
    fn from_text(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("same") {
            Ok(Self::Same)
        } else if t.eq_ignore_ascii_case("off") {
            Ok(Self::Off)
        } else {
            parse_addr(t)
                .map(Self::At)
                .map_err(|e| format!("{e} (or \"same\", or \"off\")"))
        }
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        *self = Self::from_text(&from_toml::<String>(value)?)?;
        Ok(())
    }

    fn to_text(&self) -> String {
        match self {
            Self::Same => "same".into(),
            Self::Off => "off".into(),
            Self::At(a) => a.to_string(),
        }
    }

    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.to_text())
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        match (self, n % 2) {
            (Self::At(_), 0) => Self::Off,
            (Self::At(_), _) => Self::Same,
            _ => Self::At(SocketAddr::from(([127, 0, 0, 1], 4500)).variant(n)),
        }
    }
}

/// The contact a VAPID token names (`sub`, RFC 8292 §2.1): empty (left out), `mailto:` and an
/// address, or an `https://` URL. No spaces or control characters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VapidSubject(String);

impl VapidSubject {
    /// Checks a subject.
    pub fn new(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let mailto = t
            .strip_prefix("mailto:")
            .is_some_and(|a| a.len() > 2 && a.contains('@'));
        let https = t.strip_prefix("https://").is_some_and(|h| !h.is_empty());
        let printable = t.chars().all(|c| c.is_ascii_graphic());
        if t.is_empty() || (printable && (mailto || https)) {
            Ok(Self(t.to_string()))
        } else {
            Err("expected \"mailto:\" and an address, or an \"https://\" URL".into())
        }
    }

    /// The subject; empty when none is configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl SettingValue for VapidSubject {
    fn from_text(text: &str) -> Result<Self, String> {
        Self::new(text)
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        *self = Self::new(&from_toml::<String>(value)?)?;
        Ok(())
    }

    fn to_text(&self) -> String {
        self.0.clone()
    }

    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.0.clone())
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        Self(format!("mailto:ops{n}@relay.example"))
    }
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
    /// A Redis Cluster (`redis_nodes`), shared by every relay node of a deployment.
    Redis,
}

impl FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "sled" => Ok(Self::Sled),
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            _ => Err("expected \"sled\", \"memory\" or \"redis\"".into()),
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sled => "sled",
            Self::Memory => "memory",
            Self::Redis => "redis",
        })
    }
}

impl SettingValue for StoreKind {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse()
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        *self = from_toml(value)?;
        Ok(())
    }

    fn to_text(&self) -> String {
        self.to_string()
    }

    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.to_string())
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        match (self, n % 2) {
            (Self::Sled, 1) | (Self::Memory, 0) => Self::Memory,
            _ => Self::Sled,
        }
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

/// A rate limit in the file is a table of `per_second` and `burst`; either may be left out to
/// keep its value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateTable {
    per_second: Option<f64>,
    burst: Option<u32>,
}

impl SettingValue for RateLimit {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse()
    }

    fn set_from_toml(&mut self, value: toml::Value) -> Result<(), String> {
        let table: RateTable = from_toml(value)?;
        if let Some(p) = table.per_second {
            self.per_second = p;
        }
        if let Some(b) = table.burst {
            self.burst = b;
        }
        Ok(())
    }

    fn to_text(&self) -> String {
        self.to_string()
    }

    fn to_toml(&self) -> toml::Value {
        let mut table = toml::Table::new();
        table.insert("per_second".into(), toml::Value::Float(self.per_second));
        table.insert("burst".into(), toml::Value::Integer(self.burst.into()));
        toml::Value::Table(table)
    }

    #[cfg(test)]
    fn variant(&self, n: u32) -> Self {
        Self::new(self.per_second + f64::from(n), self.burst + n)
    }
}

/// A check a setting's value must pass: `Err` says what is wrong.
pub(crate) type Check<T> = fn(&T) -> Result<(), &'static str>;

/// Any value will do.
pub(crate) fn any<T>(_: &T) -> Result<(), &'static str> {
    Ok(())
}

/// Numbers that are not zero.
pub(crate) trait Zero {
    /// Whether it is zero.
    fn is_zero(&self) -> bool;
}

macro_rules! zero {
    ($($t:ty),*) => {$(
        impl Zero for $t {
            fn is_zero(&self) -> bool {
                *self == 0
            }
        }
    )*};
}

zero!(u8, u32, u64, usize);

/// More than zero.
pub(crate) fn positive<T: Zero>(v: &T) -> Result<(), &'static str> {
    if v.is_zero() {
        Err("must be greater than zero")
    } else {
        Ok(())
    }
}

/// Bits of an IPv4 address.
pub(crate) fn v4_bits(v: &u8) -> Result<(), &'static str> {
    if *v > 32 {
        Err("must be at most 32")
    } else {
        Ok(())
    }
}

/// Bits of an IPv6 address.
pub(crate) fn v6_bits(v: &u8) -> Result<(), &'static str> {
    if *v > 128 {
        Err("must be at most 128")
    } else {
        Ok(())
    }
}

/// A path that is not empty.
#[allow(clippy::ptr_arg)] // a `Check` of the field's type
pub(crate) fn some_path(v: &PathBuf) -> Result<(), &'static str> {
    if v.as_os_str().is_empty() {
        Err("must not be empty")
    } else {
        Ok(())
    }
}

/// Text that is not blank.
#[allow(clippy::ptr_arg)] // a `Check` of the field's type
pub(crate) fn some_text(v: &String) -> Result<(), &'static str> {
    if v.trim().is_empty() {
        Err("must not be empty")
    } else {
        Ok(())
    }
}

/// Certificate names: at least one, none empty or with a space or comma.
#[allow(clippy::ptr_arg)] // a `Check` of the field's type
pub(crate) fn cert_names(v: &Vec<String>) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("needs at least one name");
    }
    if v.iter()
        .any(|n| n.is_empty() || n.chars().any(|c| c.is_whitespace() || c == ','))
    {
        return Err("a name is empty or contains a space or comma");
    }
    Ok(())
}

/// Redis node addresses: `host:port` (or `redis://…`), none empty or with spaces.
#[allow(clippy::ptr_arg)] // a `Check` of the field's type
pub(crate) fn redis_nodes(v: &Vec<String>) -> Result<(), &'static str> {
    if v.iter()
        .any(|n| n.is_empty() || n.chars().any(|c| c.is_whitespace() || c == ','))
    {
        return Err("a node address is empty or contains a space or comma");
    }
    Ok(())
}

/// A key prefix: no hash-tag braces (they would move keys to other slots).
#[allow(clippy::ptr_arg)] // a `Check` of the field's type
pub(crate) fn key_prefix(v: &String) -> Result<(), &'static str> {
    if v.contains(['{', '}']) || v.chars().any(char::is_whitespace) {
        return Err("may not contain '{', '}' or spaces");
    }
    Ok(())
}

/// A bucket that refills and holds at least one token.
pub(crate) fn rate(v: &RateLimit) -> Result<(), &'static str> {
    if !(v.per_second.is_finite() && v.per_second > 0.0) {
        return Err("per second must be a positive number");
    }
    if v.burst == 0 {
        return Err("burst must be at least 1");
    }
    Ok(())
}

/// Milliseconds in a day.
pub(crate) const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The default as a person reads it, for the values whose raw number is hard to read: bytes in
/// KiB, MiB or GiB, and milliseconds in days (`None` for the others).
pub(crate) fn readable(value_name: &str, text: &str) -> Option<String> {
    let n: u64 = text.parse().ok()?;
    match value_name {
        "BYTES" if n >= 1024 => [(30, "GiB"), (20, "MiB"), (10, "KiB")]
            .into_iter()
            .find(|(shift, _)| n.is_multiple_of(1u64 << shift))
            .map(|(shift, unit)| format!("{} {unit}", n >> shift)),
        "MS" if n >= DAY_MS && n.is_multiple_of(DAY_MS) => match n / DAY_MS {
            1 => Some("1 day".into()),
            days => Some(format!("{days} days")),
        },
        _ => None,
    }
}
