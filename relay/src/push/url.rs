//! Push endpoint URLs: the strict parser that registrations go through and that every wake-up
//! goes through again before its POST.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::MAX_URL_LEN;

/// Why an endpoint URL was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Longer than [`MAX_URL_LEN`].
    #[error("push URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    /// Not `http://` or `https://`.
    #[error("push URL scheme must be http or https")]
    UnsupportedScheme,
    /// Nothing between the scheme and the path.
    #[error("push URL has no host")]
    MissingHost,
    /// Not a DNS name, an IPv4 address or a bracketed IPv6 address.
    #[error("push URL host is invalid")]
    InvalidHost,
    /// Not a decimal number from 1 to 65535.
    #[error("push URL port is invalid")]
    InvalidPort,
    /// `user:password@` before the host.
    #[error("push URL must not carry user information")]
    UserInfo,
    /// A `#fragment`.
    #[error("push URL must not carry a fragment")]
    Fragment,
    /// A path or query with spaces, control or non-ASCII characters.
    #[error("push URL path or query has invalid characters")]
    InvalidPath,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// A parsed push endpoint URL: scheme, host, port, and request target.
///
/// Its `Debug` output leaves out the request target, which may be a capability.
#[derive(Clone, PartialEq, Eq)]
pub struct PushUrl {
    https: bool,
    host: Host,
    port: u16,
    target: String,
}

impl fmt::Debug for PushUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushUrl")
            .field("https", &self.https)
            .field("host", &self.host())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn parse_port(s: &str) -> Result<u16, UrlError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlError::InvalidPort);
    }
    match s.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(UrlError::InvalidPort),
    }
}

fn parse_name(s: &str) -> Result<Host, UrlError> {
    if s.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s
            .parse::<Ipv4Addr>()
            .map(Host::V4)
            .map_err(|_| UrlError::InvalidHost);
    }
    if s.len() > 253 {
        return Err(UrlError::InvalidHost);
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(UrlError::InvalidHost);
        }
    }
    // A final label of digits only would make this a malformed IPv4 address, not a name.
    if s.rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(UrlError::InvalidHost);
    }
    Ok(Host::Name(s.to_ascii_lowercase()))
}

fn parse_authority(authority: &str, default_port: u16) -> Result<(Host, u16), UrlError> {
    if authority.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(UrlError::InvalidHost)?;
        let ip = inside
            .parse::<Ipv6Addr>()
            .map_err(|_| UrlError::InvalidHost)?;
        let port = if after.is_empty() {
            default_port
        } else {
            parse_port(after.strip_prefix(':').ok_or(UrlError::InvalidHost)?)?
        };
        return Ok((Host::V6(ip), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, parse_port(port)?),
        None => (authority, default_port),
    };
    Ok((parse_name(host)?, port))
}

impl PushUrl {
    /// Parses `http[s]://host[:port][/path][?query]`. The host is a DNS name, an IPv4 address
    /// or a bracketed IPv6 address; user information, fragments, and spaces, control or
    /// non-ASCII characters are rejected.
    pub fn parse(url: &str) -> Result<PushUrl, UrlError> {
        if url.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
            (false, rest)
        } else {
            return Err(UrlError::UnsupportedScheme);
        };
        if rest.contains('#') {
            return Err(UrlError::Fragment);
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at_checked(split).ok_or(UrlError::InvalidPath)?;
        let (host, port) = parse_authority(authority, if https { 443 } else { 80 })?;
        if !tail.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UrlError::InvalidPath);
        }
        let target = if tail.starts_with('/') {
            tail.to_owned()
        } else {
            format!("/{tail}")
        };
        Ok(PushUrl {
            https,
            host,
            port,
            target,
        })
    }

    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host: a lower-cased DNS name or an IP address (IPv6 without brackets). Safe to log.
    pub fn host(&self) -> String {
        match &self.host {
            Host::Name(name) => name.clone(),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) => ip.to_string(),
        }
    }

    /// The TCP port (the scheme's default when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path and query, starting with `/`. May be a capability: never log it.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The `Host` header value: the host (IPv6 in brackets) and the port unless it is the
    /// scheme's default.
    pub fn authority(&self) -> String {
        let host = match &self.host {
            Host::V6(ip) => format!("[{ip}]"),
            _ => self.host(),
        };
        let default_port = if self.https { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl PushUrl {
    /// The IP address of a URL whose host is an address literal (which is connected to without
    /// any name resolution), or `None` for a DNS name.
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.host {
            Host::Name(_) => None,
            Host::V4(ip) => Some(IpAddr::V4(*ip)),
            Host::V6(ip) => Some(IpAddr::V6(*ip)),
        }
    }

    /// The URL as the HTTP client takes it, rebuilt from the checked parts. Holds the request
    /// target: never log it.
    pub(super) fn to_request_url(&self) -> Result<reqwest::Url, UrlError> {
        let scheme = if self.https { "https" } else { "http" };
        reqwest::Url::parse(&format!("{scheme}://{}{}", self.authority(), self.target))
            .map_err(|_| UrlError::InvalidPath)
    }
}
