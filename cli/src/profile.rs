//! The profile directory: its config, at-rest key, and making or clearing a new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hush_client::{EngineConfig, private_fs};
use rand::RngExt;
use zeroize::Zeroizing;

/// A relay address as given on the command line: `IP:PORT`, or `HOST:PORT` looked up once
/// (its first IPv4 address if it has one, as relays commonly listen on IPv4; else the first).
pub(crate) fn parse_relay(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let all: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("`{s}` is not HOST:PORT ({e})"))?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or_else(|| all.first())
        .copied()
        .ok_or_else(|| format!("`{s}` has no address"))
}

pub(crate) fn home_profile() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".hush")
}

#[derive(Debug)]
pub(crate) struct Profile {
    pub(crate) dir: PathBuf,
    pub(crate) relay: SocketAddr,
    pub(crate) pin: String,
    pub(crate) name: String,
    /// Whether presence (online, last seen) is shared with contacts while chatting.
    pub(crate) presence: bool,
}

pub(crate) fn fail(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

pub(crate) fn read_profile(dir: &Path) -> Result<Profile, String> {
    let text = std::fs::read_to_string(dir.join("config")).map_err(|_| {
        format!(
            "no profile in {} (run `hush init --relay ADDR --pin FINGERPRINT --name NAME` first)",
            dir.display()
        )
    })?;
    let mut map = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            map.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    let get = |k: &str| {
        map.get(k)
            .cloned()
            .ok_or_else(|| format!("profile config lacks `{k}`"))
    };
    Ok(Profile {
        dir: dir.to_path_buf(),
        relay: get("relay")?
            .parse()
            .map_err(|_| fail("profile config: bad relay address"))?,
        pin: get("pin")?,
        name: get("name")?,
        presence: map.get("presence").is_none_or(|v| v != "off"),
    })
}

/// Turns sharing presence on or off in the profile's config.
pub(crate) fn set_presence(dir: &Path, on: bool) -> Result<(), String> {
    read_profile(dir)?;
    let path = dir.join("config");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("config: {e}"))?;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.split_once('=')
                .is_none_or(|(k, _)| k.trim() != "presence")
        })
        .map(str::to_owned)
        .collect();
    lines.push(format!("presence = {}", if on { "on" } else { "off" }));
    private_fs::write_atomic(&path, format!("{}\n", lines.join("\n")).as_bytes())
        .map_err(|e| format!("config: {e}"))
}

/// Sets the profile's username if it has none (a linked device learns it from the others).
pub(crate) fn set_name_if_empty(dir: &Path, name: &str) -> Result<(), String> {
    if !read_profile(dir)?.name.is_empty() {
        return Ok(());
    }
    let path = dir.join("config");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("config: {e}"))?;
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, _)) if k.trim() == "name" => format!("name = {name}"),
            _ => l.to_owned(),
        })
        .collect();
    private_fs::write_atomic(&path, format!("{}\n", lines.join("\n")).as_bytes())
        .map_err(|e| format!("config: {e}"))
}

/// Words for a profile that cannot be opened: which store, and the way out.
pub(crate) fn explain_open(p: &Profile, e: &hush_client::ClientError) -> String {
    use hush_client::ClientError;
    match e {
        ClientError::Store(why) => format!(
            "the encrypted store in {} cannot be read ({why}): it is damaged, or the profile's \
             `key` file is not the one it was written with. Restore the profile from a backup, \
             or move it away and set this device up again (`hush link`, or `hush init` for a \
             new account)",
            p.dir.display()
        ),
        e => crate::show::explain(e),
    }
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn at_rest_key(dir: &Path) -> Result<Zeroizing<[u8; 32]>, String> {
    let bytes =
        Zeroizing::new(std::fs::read(dir.join("key")).map_err(|e| format!("profile key: {e}"))?);
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| fail("profile key is damaged"))?;
    Ok(Zeroizing::new(key))
}

pub(crate) fn engine_config(p: &Profile) -> Result<EngineConfig, String> {
    Ok(EngineConfig {
        profile: p.dir.clone(),
        at_rest_key: at_rest_key(&p.dir)?,
        relay: p.relay,
        pin: p.pin.clone(),
    })
}

/// What `hush` itself keeps in a profile directory, beside what the client library keeps there
/// ([`hush_client::profile::ENTRIES`]).
const CLI_ENTRIES: [&str; 3] = ["config", "key", "contacts"];

/// Whether `name` is an entry `hush` or its client library writes in a profile directory.
fn is_profile_entry(name: &str) -> bool {
    CLI_ENTRIES.contains(&name) || hush_client::profile::ENTRIES.contains(&name)
}

/// Makes ready to create a profile in `dir`: refused if it holds one; what a failed `init` or
/// `link` left there (no `config`, which is written last) is cleared. Returns whether the
/// directory did not exist (then a failure removes it whole).
pub(crate) fn prepare_new_profile(dir: &Path) -> Result<bool, String> {
    if dir.join("config").exists() {
        return Err(format!("{} already holds a profile", dir.display()));
    }
    if !dir.exists() {
        return Ok(true);
    }
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if let Some(other) = entries.iter().find(|n| !is_profile_entry(n)) {
        return Err(format!(
            "{} is not empty (it holds `{other}`): choose another --profile",
            dir.display()
        ));
    }
    discard_new_profile(dir, false);
    Ok(false)
}

/// Removes what an unfinished `init` or `link` wrote: the whole directory if it made it,
/// otherwise the profile's own entries only.
pub(crate) fn discard_new_profile(dir: &Path, made_dir: bool) {
    if made_dir {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    for name in CLI_ENTRIES
        .iter()
        .chain(hush_client::profile::ENTRIES.iter())
    {
        let p = dir.join(name);
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// Creates the profile directory (0700) and its fresh at-rest key (0600).
pub(crate) fn make_profile_dir(dir: &Path) -> Result<(), String> {
    private_fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    rand_core::UnwrapErr(rand::rngs::SysRng).fill(&mut key[..]);
    write_private(&dir.join("key"), &key[..])
}
