//! `hush`: a command-line chat client. Each user has a profile directory (`--profile`, or
//! `HUSH_PROFILE`), so several users can run on one machine.
//!
//! Profile layout: `config` (relay address, certificate pin, username), `key` (the store's
//! at-rest key, mode 0600 — a desktop app would keep it in the platform keychain), `contacts`
//! (username → account id, learned from the relay's directory and verified), `db/` and
//! `history/` (encrypted stores).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hush_client::{ClientError, Conversation, EngineConfig, Messenger, MessengerEvent, private_fs};
use hush_core::keys::AccountId;
use hush_proto::app::{StoredMessage, app_message};
use hush_proto::relay_api::ErrorCode;
use rand::RngExt;
use tokio::io::AsyncBufReadExt;
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(name = "hush", about = "End-to-end encrypted chat over a Hush relay")]
struct Cli {
    /// Profile directory of this user [default: ~/.hush]
    #[arg(long, global = true, env = "HUSH_PROFILE")]
    profile: Option<PathBuf>,
    /// Seconds to wait for the relay before giving up with "relay unreachable"
    #[arg(
        long,
        global = true,
        env = "HUSH_CONNECT_TIMEOUT",
        default_value_t = 15
    )]
    connect_timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an account on a relay and claim a username
    Init {
        /// Relay address (HOST:PORT or IP:PORT, UDP)
        #[arg(long, value_parser = parse_relay)]
        relay: SocketAddr,
        /// The relay certificate's fingerprint (printed by hush-relay)
        #[arg(long)]
        pin: String,
        /// Username to claim (3-32 of a-z 0-9 _ . -, starting with a letter)
        #[arg(long)]
        name: String,
    },
    /// Send a text message
    Send {
        /// Recipient username
        to: String,
        /// The text
        text: String,
    },
    /// Chat interactively: type lines to send; incoming messages, typing and receipts are shown
    Chat {
        /// Contact username
        with: String,
    },
    /// Print incoming messages, receipts and typing for a while
    Listen {
        /// How long (seconds)
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Show the conversation with a contact
    History {
        /// Contact username
        with: String,
        /// Most messages shown
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Send a file (encrypted here, stored encrypted on the relay)
    Attach {
        /// Recipient username
        to: String,
        /// The file
        file: PathBuf,
    },
    /// Show the safety number with a contact, to compare in person
    Verify {
        /// Contact username
        with: String,
    },
    /// Link a device: without --code, on an existing device, show a code and wait for the new
    /// device; with --code, on the new device, join the account (makes a new profile)
    Link {
        /// The code shown by the existing device
        #[arg(long)]
        code: Option<String>,
        /// Relay address (HOST:PORT or IP:PORT), for the new device
        #[arg(long, value_parser = parse_relay)]
        relay: Option<SocketAddr>,
        /// Relay certificate fingerprint, for the new device
        #[arg(long)]
        pin: Option<String>,
        /// How long the existing device waits (seconds)
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// List this account's devices
    Devices,
    /// Remove one of this account's devices (from the account's first device)
    RemoveDevice {
        /// The device id (see `hush devices`)
        id: u32,
    },
    /// Group chats
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Show this device and account
    Whoami,
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Create a group with members (usernames); this account is its admin
    Create {
        /// The group's name
        name: String,
        /// Members' usernames
        members: Vec<String>,
    },
    /// Send a text to a group
    Send {
        /// The group's name
        name: String,
        /// The text
        text: String,
    },
    /// Add a member (admins only)
    Add {
        /// The group's name
        name: String,
        /// The username to add
        user: String,
    },
    /// Remove a member (admins only)
    Remove {
        /// The group's name
        name: String,
        /// The username to remove
        user: String,
    },
    /// List the groups this device is in
    List,
}

/// A relay address as given on the command line: `IP:PORT`, or `HOST:PORT` looked up once
/// (its first IPv4 address if it has one, as relays commonly listen on IPv4; else the first).
fn parse_relay(s: &str) -> Result<SocketAddr, String> {
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

fn home_profile() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".hush")
}

#[derive(Debug)]
struct Profile {
    dir: PathBuf,
    relay: SocketAddr,
    pin: String,
    name: String,
}

fn fail(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

fn read_profile(dir: &Path) -> Result<Profile, String> {
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
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
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

fn at_rest_key(dir: &Path) -> Result<Zeroizing<[u8; 32]>, String> {
    let bytes =
        Zeroizing::new(std::fs::read(dir.join("key")).map_err(|e| format!("profile key: {e}"))?);
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| fail("profile key is damaged"))?;
    Ok(Zeroizing::new(key))
}

fn engine_config(p: &Profile) -> Result<EngineConfig, String> {
    Ok(EngineConfig {
        profile: p.dir.clone(),
        at_rest_key: at_rest_key(&p.dir)?,
        relay: p.relay,
        pin: p.pin.clone(),
    })
}

fn contacts(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("contacts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, a)| (n.to_owned(), a.to_owned()))
        .collect()
}

fn save_contact(dir: &Path, name: &str, account: &AccountId) -> Result<(), String> {
    let mut c = contacts(dir);
    c.insert(name.to_owned(), hex::encode(account.as_bytes()));
    let text: String = c.iter().map(|(n, a)| format!("{n} {a}\n")).collect();
    private_fs::write_atomic(&dir.join("contacts"), text.as_bytes())
        .map_err(|e| format!("contacts: {e}"))
}

fn name_of(dir: &Path, account: &[u8]) -> String {
    let hexed = hex::encode(account);
    contacts(dir)
        .into_iter()
        .find(|(_, a)| *a == hexed)
        .map(|(n, _)| n)
        .unwrap_or_else(|| hexed.chars().take(12).collect())
}

/// A user-facing explanation of an engine error.
fn explain(e: &ClientError) -> String {
    match e {
        ClientError::Unreachable(why) => format!("relay unreachable ({why})"),
        ClientError::Revoked => {
            "this device was removed from the account; link it again (`hush link`) to use it".into()
        }
        ClientError::PinMismatch(addr) => format!(
            "the relay's certificate at {addr} does not match the pinned fingerprint: check --pin \
             against the fingerprint hush-relay prints"
        ),
        ClientError::ProfileInUse(dir) => {
            format!("the profile {dir} is open in another hush process; close that one first")
        }
        ClientError::Disconnected | ClientError::Timeout => {
            "relay unreachable: no connection, try again".into()
        }
        ClientError::Refused(r) => match r.code {
            ErrorCode::RateLimited => format!(
                "rate limited by the relay: try again in {} ms",
                r.retry_after_ms
            ),
            ErrorCode::NotFound => "unknown user".into(),
            ErrorCode::AccountExists => "this account already exists on the relay".into(),
            _ => format!("the relay refused: {}", r.message),
        },
        ClientError::Core(hush_core::Error::Protocol(hush_core::ProtocolError::DeviceListConflict(_))) => {
            "identity changed: the contact's device list conflicts with the one seen before; verify them (`hush verify`)".into()
        }
        other => other.to_string(),
    }
}

async fn contact(m: &Messenger, dir: &Path, name: &str) -> Result<AccountId, String> {
    if let Some(a) = contacts(dir).get(name) {
        let bytes = hex::decode(a).map_err(|_| fail("contacts file is damaged"))?;
        return AccountId::from_bytes(&bytes).map_err(|_| fail("contacts file is damaged"));
    }
    let account = m
        .engine()
        .lookup_username(name)
        .await
        .map_err(|e| match &e {
            ClientError::Refused(r) if r.code == ErrorCode::NotFound => {
                format!("unknown user `{name}`")
            }
            _ => explain(&e),
        })?;
    save_contact(dir, name, &account)?;
    Ok(account)
}

fn text_of(m: &StoredMessage) -> String {
    match m.message.as_ref().and_then(|a| a.kind.clone()) {
        Some(app_message::Kind::Text(t)) => t.body.clone(),
        Some(app_message::Kind::Attachment(a)) => format!("[file {} ({} bytes)]", a.name, a.size),
        Some(app_message::Kind::Reaction(r)) => format!("[reaction {}]", r.emoji),
        _ => String::new(),
    }
}

/// Writes a line; a closed stdout (the reader went away) is not an error worth a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        let mut out = std::io::stdout();
        let _ = writeln!(out, $($t)*);
        let _ = out.flush();
    }};
}

/// Learns the name of an unknown sender from what it claims, if the relay's directory (signed
/// by the account key) confirms it.
async fn learn_sender(m: &Messenger, dir: &Path, ev: &MessengerEvent) {
    let MessengerEvent::Message { message, .. } = ev else {
        return;
    };
    let claimed = message
        .message
        .as_ref()
        .map(|a| a.sender_name.clone())
        .unwrap_or_default();
    if claimed.is_empty() || message.outgoing {
        return;
    }
    let hexed = hex::encode(&message.sender_account);
    if contacts(dir).values().any(|a| *a == hexed) {
        return;
    }
    if let Ok(account) = m.engine().lookup_username(&claimed).await
        && account.as_bytes().as_slice() == message.sender_account.as_slice()
    {
        let _ = save_contact(dir, &claimed, &account);
    }
}

fn print_event(dir: &Path, ev: &MessengerEvent) {
    match ev {
        MessengerEvent::Message {
            message,
            conversation: Conversation::Group(_),
        } if !message.outgoing => {
            say!(
                "group message from {}: {}",
                name_of(dir, &message.sender_account),
                text_of(message)
            );
        }
        MessengerEvent::Message { message, .. } if !message.outgoing => {
            say!(
                "message from {}: {}",
                name_of(dir, &message.sender_account),
                text_of(message)
            );
        }
        MessengerEvent::Message { message, .. } => {
            say!("sent from another device: {}", text_of(message));
        }
        MessengerEvent::Receipt {
            from,
            read,
            message_ids,
        } => {
            for id in message_ids {
                say!(
                    "{} by {}: {}",
                    if *read { "read" } else { "delivered" },
                    name_of(dir, from.as_bytes()),
                    hex::encode(id)
                );
            }
        }
        MessengerEvent::Typing { from, typing, .. } => {
            let who = name_of(dir, from.account.as_bytes());
            if *typing {
                say!("{who} is typing");
            } else {
                say!("{who} stopped typing");
            }
        }
        MessengerEvent::Presence { from, online, .. } => {
            say!(
                "{} is {}",
                name_of(dir, from.as_bytes()),
                if *online { "online" } else { "offline" }
            );
        }
        MessengerEvent::Connection(true) => say!("connected"),
        MessengerEvent::Connection(false) => say!("disconnected; reconnecting"),
        MessengerEvent::Revoked => say!("this device was removed from its account"),
        MessengerEvent::DevicesChanged { account, added, .. } if !added.is_empty() => say!(
            "warning: {} has new or changed devices {:?}; compare safety numbers (`hush verify`)",
            name_of(dir, account.as_bytes()),
            added
        ),
        MessengerEvent::DevicesChanged {
            account, removed, ..
        } => say!(
            "{} removed devices {:?}",
            name_of(dir, account.as_bytes()),
            removed
        ),
        MessengerEvent::GroupsChanged => say!("your groups changed (`hush group list`)"),
        MessengerEvent::CaughtUp => {}
        MessengerEvent::Sent { message_id, .. } => {
            say!("sent (after reconnecting): {}", hex::encode(message_id));
        }
        MessengerEvent::SendFailed {
            message_id, reason, ..
        } => {
            say!("not sent: {} ({reason})", hex::encode(message_id));
        }
        MessengerEvent::Undecryptable { from, .. } => say!(
            "a message from {} could not be decrypted",
            name_of(dir, from.account.as_bytes())
        ),
        MessengerEvent::StoreFailed => say!("the local store failed; restart `hush`"),
        MessengerEvent::Undelivered {
            message_id,
            accounts,
            ..
        } => {
            for f in accounts {
                say!(
                    "{} not delivered to {} ({}{})",
                    hex::encode(message_id),
                    name_of(dir, f.account.as_bytes()),
                    f.reason,
                    if f.permanent { "" } else { "; will try again" }
                );
            }
        }
        MessengerEvent::IdentityWarning { account } => say!(
            "WARNING: the identity of {} could not be verified (conflicting or forged device list); do not trust new messages until you compare safety numbers",
            name_of(dir, account.as_bytes())
        ),
    }
    let _ = std::io::stdout().flush();
}

async fn run(cli: Cli) -> Result<(), String> {
    let dir = cli.profile.unwrap_or_else(home_profile);
    match cli.command {
        Cmd::Init { relay, pin, name } => {
            let fresh = prepare_new_profile(&dir)?;
            let made = init(&dir, relay, pin, name, cli.connect_timeout).await;
            if made.is_err() {
                discard_new_profile(&dir, fresh);
            }
            made
        }
        Cmd::Link {
            code: Some(code),
            relay,
            pin,
            ..
        } => {
            let fresh = prepare_new_profile(&dir)?;
            let made = link(&dir, relay, pin, &code).await;
            if made.is_err() {
                discard_new_profile(&dir, fresh);
            }
            made
        }
        cmd => {
            let profile = read_profile(&dir)?;
            let (m, mut events) =
                Messenger::open(engine_config(&profile)?).map_err(|e| explain(&e))?;
            m.engine()
                .connected(Duration::from_secs(cli.connect_timeout))
                .await
                .map_err(|e| match e {
                    ClientError::Disconnected | ClientError::Timeout => format!(
                        "relay unreachable: no connection to {} within {} s; is hush-relay running there?",
                        profile.relay, cli.connect_timeout
                    ),
                    e => explain(&e),
                })?;
            m.set_name(&profile.name);
            let result = command(&m, &profile, cmd, &mut events).await;
            m.shutdown().await;
            result
        }
    }
}

/// What a profile directory holds (files and stores written by `hush` and its engine).
const PROFILE_ENTRIES: [&str; 8] = [
    "config",
    "key",
    "contacts",
    "db",
    "history",
    "uploaded-pre-keys",
    "push-endpoint",
    "group-sync-pending",
];

/// Makes ready to create a profile in `dir`: refused if it holds one; what a failed `init` or
/// `link` left there (no `config`, which is written last) is cleared. Returns whether the
/// directory did not exist (then a failure removes it whole).
fn prepare_new_profile(dir: &Path) -> Result<bool, String> {
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
    if let Some(other) = entries
        .iter()
        .find(|n| !PROFILE_ENTRIES.contains(&n.as_str()))
    {
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
fn discard_new_profile(dir: &Path, made_dir: bool) {
    if made_dir {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    for name in PROFILE_ENTRIES {
        let p = dir.join(name);
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// Creates the profile directory (0700) and its fresh at-rest key (0600).
fn make_profile_dir(dir: &Path) -> Result<(), String> {
    private_fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    rand_core::UnwrapErr(rand::rngs::SysRng).fill(&mut key[..]);
    write_private(&dir.join("key"), &key[..])
}

async fn init(
    dir: &Path,
    relay: SocketAddr,
    pin: String,
    name: String,
    connect_timeout: u64,
) -> Result<(), String> {
    make_profile_dir(dir)?;
    let profile = Profile {
        dir: dir.to_path_buf(),
        relay,
        pin,
        name: name.clone(),
    };
    let (m, _events) = Messenger::create_account(engine_config(&profile)?)
        .await
        .map_err(|e| explain(&e))?;
    // The messenger is shut down whatever happens, so that a failure leaves its stores closed
    // (and the caller can remove them).
    let made = async {
        m.engine()
            .connected(Duration::from_secs(connect_timeout))
            .await
            .map_err(|e| explain(&e))?;
        m.engine()
            .claim_username(&name)
            .await
            .map_err(|e| match &e {
                ClientError::Refused(r) if r.code == ErrorCode::UsernameTaken => {
                    format!("the username `{name}` is taken")
                }
                _ => explain(&e),
            })?;
        // Written last: a profile without it is an unfinished one.
        private_fs::write_atomic(
            &dir.join("config"),
            format!(
                "relay = {}\npin = {}\nname = {}\n",
                profile.relay, profile.pin, profile.name
            )
            .as_bytes(),
        )
        .map_err(|e| format!("config: {e}"))?;
        say!(
            "created account {} as `{name}`",
            hex::encode(m.address().account.as_bytes())
        );
        Ok(())
    }
    .await;
    m.shutdown().await;
    made
}

async fn link(
    dir: &Path,
    relay: Option<SocketAddr>,
    pin: Option<String>,
    code: &str,
) -> Result<(), String> {
    let (Some(relay), Some(pin)) = (relay, pin) else {
        return Err("joining needs --relay and --pin".into());
    };
    make_profile_dir(dir)?;
    let profile = Profile {
        dir: dir.to_path_buf(),
        relay,
        pin,
        name: String::new(),
    };
    let (m, _events) = Messenger::link(engine_config(&profile)?, code)
        .await
        .map_err(|e| explain(&e))?;
    say!("waiting for the other device to add this one");
    let made = async {
        m.engine()
            .connected(Duration::from_secs(300))
            .await
            .map_err(|e| explain(&e))?;
        private_fs::write_atomic(
            &dir.join("config"),
            format!(
                "relay = {}\npin = {}\nname = \n",
                profile.relay, profile.pin
            )
            .as_bytes(),
        )
        .map_err(|e| format!("config: {e}"))?;
        say!(
            "linked as device {} of account {}",
            m.address().device_id,
            hex::encode(m.address().account.as_bytes())
        );
        Ok(())
    }
    .await;
    m.shutdown().await;
    made
}

async fn command(
    m: &Messenger,
    p: &Profile,
    cmd: Cmd,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<MessengerEvent>,
) -> Result<(), String> {
    match cmd {
        Cmd::Init { .. } => Err("already initialized".into()),
        Cmd::Link { code: Some(_), .. } => Err("this profile is already set up".into()),
        Cmd::Send { to, text } => {
            let a = contact(m, &p.dir, &to).await?;
            let id = m
                .send_text(Conversation::Direct(a), &text, None)
                .await
                .map_err(|e| explain(&e))?;
            say!("sent {}", hex::encode(id));
            Ok(())
        }
        Cmd::Attach { to, file } => {
            let a = contact(m, &p.dir, &to).await?;
            let data = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = m
                .send_attachment(
                    Conversation::Direct(a),
                    &name,
                    "application/octet-stream",
                    &data,
                )
                .await
                .map_err(|e| explain(&e))?;
            say!("sent {}", hex::encode(id));
            Ok(())
        }
        Cmd::Listen { seconds } => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
                learn_sender(m, &p.dir, &ev).await;
                print_event(&p.dir, &ev);
            }
            Ok(())
        }
        Cmd::History { with, limit } => {
            let a = contact(m, &p.dir, &with).await?;
            // First take in what arrived while away (messages, receipts), as an app does when
            // it opens; bounded, so an unreachable relay does not hold the history back.
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(ev) = events.recv().await {
                    if matches!(ev, MessengerEvent::CaughtUp) {
                        break;
                    }
                }
            })
            .await;
            let msgs = m
                .history(Conversation::Direct(a), None, limit)
                .map_err(|e| explain(&e))?;
            for msg in msgs {
                let who = if msg.outgoing {
                    "me".to_owned()
                } else {
                    name_of(&p.dir, &msg.sender_account)
                };
                let state = if msg.outgoing {
                    if !msg.failed.is_empty() && !msg.sent {
                        &format!(" (not sent: {})", msg.failed)
                    } else if !msg.read_by.is_empty() {
                        " (read)"
                    } else if !msg.delivered_to.is_empty() {
                        " (delivered)"
                    } else if msg.sent {
                        " (sent)"
                    } else {
                        " (sending)"
                    }
                } else {
                    ""
                };
                say!("{who}: {}{state}", text_of(&msg));
            }
            Ok(())
        }
        Cmd::Verify { with } => {
            let a = contact(m, &p.dir, &with).await?;
            let n =
                hush_core::safety::SafetyNumber::new(m.address().account.as_bytes(), a.as_bytes());
            say!("safety number with {with}:\n{}", n.display_groups());
            Ok(())
        }
        Cmd::Link { wait, .. } => {
            let offer = m.engine().offer_link().map_err(|e| explain(&e))?;
            say!(
                "on the new device run:\n  hush --profile DIR link --relay {} --pin {} --code {}",
                p.relay,
                p.pin,
                offer.code
            );
            let id = m
                .engine()
                .complete_link(&offer, Duration::from_secs(wait))
                .await
                .map_err(|e| explain(&e))?;
            say!("linked device {id}");
            Ok(())
        }
        Cmd::Devices => {
            let me = m.address();
            for d in m
                .engine()
                .devices_of(&me.account)
                .map_err(|e| explain(&e))?
            {
                let this = if d == me.device_id {
                    " (this device)"
                } else {
                    ""
                };
                say!("device {d}{this}");
            }
            Ok(())
        }
        Cmd::RemoveDevice { id } => {
            m.engine()
                .remove_device(id)
                .await
                .map_err(|e| explain(&e))?;
            say!("removed device {id}");
            Ok(())
        }
        Cmd::Group { cmd } => group_command(m, p, cmd).await,
        Cmd::Whoami => {
            let me = m.address();
            say!(
                "{} account {} device {}",
                p.name,
                hex::encode(me.account.as_bytes()),
                me.device_id
            );
            Ok(())
        }
        Cmd::Chat { with } => {
            let a = contact(m, &p.dir, &with).await?;
            let conv = Conversation::Direct(a);
            let _ = m.mark_read(conv).await;
            say!("chatting with {with}; type a line and press enter (Ctrl-D to leave)");
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(text)) if !text.trim().is_empty() => {
                            let _ = m.typing(conv, false).await;
                            match m.send_text(conv, &text, None).await {
                                Ok(id) => say!("sent {}", hex::encode(id)),
                                Err(e) => say!("not sent: {}", explain(&e)),
                            }
                        }
                        Ok(Some(_)) => {}
                        _ => return Ok(()),
                    },
                    ev = events.recv() => match ev {
                        Some(ev) => {
                            let incoming = matches!(&ev, MessengerEvent::Message { message, .. } if !message.outgoing);
                            learn_sender(m, &p.dir, &ev).await;
                            print_event(&p.dir, &ev);
                            if incoming {
                                let _ = m.mark_read(conv).await;
                            }
                        }
                        None => return Ok(()),
                    },
                }
            }
        }
    }
}

/// A group of this device by name.
fn group_by_name(m: &Messenger, name: &str) -> Result<hush_core::sender_key::GroupId, String> {
    let found: Vec<_> = m
        .engine()
        .groups()
        .map_err(|e| explain(&e))?
        .into_iter()
        .filter(|(_, n)| n == name)
        .collect();
    match found.as_slice() {
        [(g, _)] => Ok(*g),
        [] => Err(format!("no group named `{name}`")),
        _ => Err(format!("several groups are named `{name}`")),
    }
}

async fn group_command(m: &Messenger, p: &Profile, cmd: GroupCmd) -> Result<(), String> {
    match cmd {
        GroupCmd::Create { name, members } => {
            let mut accounts = Vec::new();
            for u in &members {
                accounts.push(contact(m, &p.dir, u).await?);
            }
            m.engine()
                .create_group(&name, &accounts)
                .await
                .map_err(|e| explain(&e))?;
            say!("created group `{name}` with {}", members.join(", "));
            Ok(())
        }
        GroupCmd::Send { name, text } => {
            let g = group_by_name(m, &name)?;
            let id = m
                .send_text(Conversation::Group(g), &text, None)
                .await
                .map_err(|e| explain(&e))?;
            say!("sent {}", hex::encode(id));
            Ok(())
        }
        GroupCmd::Add { name, user } => {
            let g = group_by_name(m, &name)?;
            let a = contact(m, &p.dir, &user).await?;
            m.engine()
                .update_group(&g, &[(a, false)], &[])
                .await
                .map_err(|e| explain(&e))?;
            say!("added {user} to `{name}`");
            Ok(())
        }
        GroupCmd::Remove { name, user } => {
            let g = group_by_name(m, &name)?;
            let a = contact(m, &p.dir, &user).await?;
            m.engine()
                .update_group(&g, &[], &[a])
                .await
                .map_err(|e| explain(&e))?;
            say!("removed {user} from `{name}`");
            Ok(())
        }
        GroupCmd::List => {
            for (_, n) in m.engine().groups().map_err(|e| explain(&e))? {
                say!("{n}");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hush: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hush: {e}");
            ExitCode::FAILURE
        }
    }
}
