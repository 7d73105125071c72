//! `hush`: a command-line chat client. Each user has a profile directory (`--profile`, or
//! `HUSH_PROFILE`), so several users can run on one machine.
//!
//! Profile layout: `config` (relay address, certificate pin, username), `key` (the store's
//! at-rest key, mode 0600 — a desktop app would keep it in the platform keychain), `contacts`
//! (username → account id, learned from the relay's directory and verified), `db/` and
//! `history/` (encrypted stores).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hush_client::messenger::{MessageId, MessageStatus};
use hush_client::{ClientError, ConnectionState, Conversation, Messenger, MessengerEvent};
use tokio::sync::mpsc::UnboundedReceiver;

/// Writes a line; a closed stdout (the reader went away) is not an error worth a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        let mut out = std::io::stdout();
        let _ = std::io::Write::write_fmt(&mut out, format_args!("{}\n", format_args!($($t)*)));
        let _ = std::io::Write::flush(&mut out);
    }};
}

mod backup;
mod chat;
mod contacts;
mod files;
mod groups;
mod profile;
mod setup;
mod show;
mod term;

use contacts::{contact, learn_sender};
use profile::{
    Profile, discard_new_profile, engine_config, home_profile, parse_relay, prepare_new_profile,
    read_profile,
};
use show::{conversation_label, explain, history_line, print_event};

#[derive(Parser)]
#[command(name = "hush", about = "End-to-end encrypted chat over a Hush relay")]
struct Cli {
    /// Profile directory of this user [default: ~/.hush]
    #[arg(long, global = true, env = "HUSH_PROFILE")]
    profile: Option<PathBuf>,
    /// Seconds to wait for the relay where nothing can be done without it (a new contact,
    /// groups, devices) and for a message to leave before saying it waits
    #[arg(
        long,
        global = true,
        env = "HUSH_CONNECT_TIMEOUT",
        default_value_t = 15
    )]
    connect_timeout: u64,
    /// Seconds that reading commands (history, whoami, group list, ...) spend taking in what
    /// waits at the relay before showing what this device has
    #[arg(long, global = true, env = "HUSH_SYNC_WAIT", default_value_t = 5)]
    sync_wait: u64,
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
    /// Send a text message (kept and sent later if the relay cannot be reached now)
    Send {
        /// Recipient username
        to: String,
        /// The text
        text: String,
    },
    /// Chat interactively with a contact or a group: the last messages, then what arrives,
    /// typing and read state; type a line to send it
    Chat {
        /// Contact username
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        with: Option<String>,
        /// A group (name or id) instead of a contact
        #[arg(long)]
        group: Option<String>,
    },
    /// Print what arrives (messages, read state, typing) for a while, after the unread counts
    Listen {
        /// How long (seconds)
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Show the conversation with a contact or a group, with times and read state
    History {
        /// Contact username
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        with: Option<String>,
        /// A group (name or id) instead of a contact
        #[arg(long)]
        group: Option<String>,
        /// Most messages shown
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show how many messages are unread, per conversation
    Unread,
    /// Send a file (encrypted here, stored encrypted on the relay)
    Attach {
        /// Recipient username
        to: String,
        /// The file
        file: PathBuf,
    },
    /// Save a received file: decrypted, its digest checked, to a new file (never over an
    /// existing one)
    Save {
        /// The file's message id (at least its first 8 hex digits, as shown with the file), or
        /// `last` for the file received last
        id: String,
        /// Where to save it; a directory gets the file's own name inside it [default: the file's
        /// own name, in the current directory]
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
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
        /// On the existing device: how many of the newest messages of every conversation the
        /// new device gets (0: none)
        #[arg(long, default_value_t = 100)]
        history: usize,
    },
    /// Encrypted backups on the relay, restorable with a recovery key (`hush restore`)
    Backup {
        #[command(subcommand)]
        cmd: BackupCmd,
    },
    /// Restore an account from its backup on a new device, with the recovery key that
    /// `hush backup enable` showed (makes a new profile; the account's earlier devices are
    /// removed)
    Restore {
        /// Relay address (HOST:PORT or IP:PORT) the backup is on
        #[arg(long, value_parser = parse_relay)]
        relay: Option<SocketAddr>,
        /// Relay certificate fingerprint
        #[arg(long)]
        pin: Option<String>,
        /// The recovery key (56 characters; dashes, spaces and case do not matter)
        #[arg(long)]
        recovery_key: String,
    },
    /// List this account's devices
    Devices,
    /// Remove one of this account's devices (from the account's first device)
    RemoveDevice {
        /// The device id (see `hush devices`)
        id: u32,
    },
    /// Share presence (online, last seen) with contacts while chatting, or stop
    Presence {
        /// `on` or `off`
        #[arg(value_parser = ["on", "off"])]
        state: String,
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
enum BackupCmd {
    /// Turn backups on (on the account's first device): shows the recovery key once, makes the
    /// first backup; later ones follow changes (at most every 10 minutes) and `backup now`
    Enable,
    /// Make a backup now
    Now,
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
        /// The group (name, or id as `group list` shows it)
        group: String,
        /// The text
        text: String,
    },
    /// Add a member (admins only)
    Add {
        /// The group (name or id)
        group: String,
        /// The username to add
        user: String,
    },
    /// Remove a member (admins only)
    Remove {
        /// The group (name or id)
        group: String,
        /// The username to remove
        user: String,
    },
    /// List the groups this device is in, with their ids and members
    List,
}

/// What a command works with: the open messenger, the profile, and the settings of waiting.
pub(crate) struct Ctx<'a> {
    pub(crate) m: &'a Messenger,
    pub(crate) p: &'a Profile,
    pub(crate) connect_timeout: Duration,
    pub(crate) sync_wait: Duration,
    /// Events taken while waiting (shown at the end if the command did not show them).
    pub(crate) seen: Vec<MessengerEvent>,
    /// What waited at the relay was taken in already (once per command is enough).
    pub(crate) synced: bool,
}

impl Ctx<'_> {
    /// Waits for the relay where a command cannot do without it; says which relay could not
    /// be reached otherwise.
    pub(crate) async fn online(&self) -> Result<(), String> {
        self.m
            .engine()
            .connected(self.connect_timeout)
            .await
            .map_err(|e| match e {
                ClientError::Disconnected | ClientError::Timeout => unreachable_words(self),
                e => explain(&e),
            })
    }

    /// Takes in what waits at the relay (until caught up, at most `sync_wait`), so that what
    /// a reading command shows is current; without the relay, returns as soon as that is
    /// known, and says the device shows what it has. Done once per command.
    pub(crate) async fn sync(&mut self, events: &mut UnboundedReceiver<MessengerEvent>) {
        if std::mem::replace(&mut self.synced, true) {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.sync_wait;
        let state = self.m.engine().settled(self.sync_wait).await;
        if state == ConnectionState::Online {
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
                if matches!(ev, MessengerEvent::CaughtUp) {
                    return;
                }
                if matches!(ev, MessengerEvent::ContactsSynced { .. }) {
                    // Names first: what the command shows then uses them.
                    learn_sender(self.m, &self.p.dir, &ev).await;
                }
                self.seen.push(ev);
            }
        }
        if self.m.engine().state() != ConnectionState::Online && !self.m.engine().is_revoked() {
            say!(
                "offline: the relay at {} cannot be reached; showing what this device has",
                self.p.relay
            );
        }
    }
}

fn unreachable_words(c: &Ctx<'_>) -> String {
    format!(
        "relay unreachable: no connection to {} within {} s; is hush-relay running there?",
        c.p.relay,
        c.connect_timeout.as_secs()
    )
}

async fn run(cli: Cli) -> Result<(), String> {
    let dir = cli.profile.unwrap_or_else(home_profile);
    match cli.command {
        Cmd::Init { relay, pin, name } => {
            let fresh = prepare_new_profile(&dir)?;
            let made = setup::init(&dir, relay, pin, name, cli.connect_timeout).await;
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
            let made = setup::link(&dir, relay, pin, &code).await;
            if made.is_err() {
                discard_new_profile(&dir, fresh);
            }
            made
        }
        Cmd::Restore {
            relay,
            pin,
            recovery_key,
        } => {
            let fresh = prepare_new_profile(&dir)?;
            let made = backup::restore(&dir, relay, pin, &recovery_key, cli.connect_timeout).await;
            if made.is_err() {
                discard_new_profile(&dir, fresh);
            }
            made
        }
        Cmd::Presence { state } => profile::set_presence(&dir, state == "on").map(|()| {
            say!(
                "presence {}: contacts you chat with {}",
                state,
                if state == "on" {
                    "see when you are online"
                } else {
                    "no longer see when you are online, and you no longer see theirs"
                }
            );
        }),
        cmd => {
            let profile = read_profile(&dir)?;
            let (m, mut events) = Messenger::open(engine_config(&profile)?)
                .map_err(|e| profile::explain_open(&profile, &e))?;
            m.set_name(&profile.name);
            m.set_app_state(backup::app_state(&profile));
            if !profile.presence {
                let _ = m.set_presence(false, &[]).await;
            }
            let mut ctx = Ctx {
                m: &m,
                p: &profile,
                connect_timeout: Duration::from_secs(cli.connect_timeout),
                sync_wait: Duration::from_secs(cli.sync_wait),
                seen: Vec::new(),
                synced: false,
            };
            let interactive = matches!(cmd, Cmd::Chat { .. } | Cmd::Listen { .. });
            let result = command(&mut ctx, cmd, &mut events).await;
            if !interactive {
                show_unseen(&mut ctx, &mut events).await;
            }
            m.shutdown().await;
            result
        }
    }
}

/// After a one-shot command: the messages and warnings that arrived while it ran (and that it
/// did not show), so that nothing received goes unseen; they stay unread for `listen`/`chat`.
async fn show_unseen(c: &mut Ctx<'_>, events: &mut UnboundedReceiver<MessengerEvent>) {
    let mut all = std::mem::take(&mut c.seen);
    while let Ok(ev) = events.try_recv() {
        all.push(ev);
    }
    for ev in all {
        let worth = !matches!(
            ev,
            MessengerEvent::Connection(_)
                | MessengerEvent::CaughtUp
                | MessengerEvent::Status { .. }
                | MessengerEvent::Typing { .. }
                | MessengerEvent::Presence { .. }
        );
        if worth {
            learn_sender(c.m, &c.p.dir, &ev).await;
            print_event(c.m, &c.p.dir, &ev);
        }
    }
}

/// The conversation a command names: a contact, or `--group`.
pub(crate) async fn conversation(
    c: &mut Ctx<'_>,
    events: &mut UnboundedReceiver<MessengerEvent>,
    with: Option<&str>,
    group: Option<&str>,
) -> Result<Conversation, String> {
    match (with, group) {
        (_, Some(g)) => groups::find_group_synced(c, events, g)
            .await
            .map(Conversation::Group),
        (Some(w), None) => contact(c, w).await.map(Conversation::Direct),
        (None, None) => Err("name a contact or a --group".into()),
    }
}

/// After queuing a message: waits (at most `connect_timeout`) for it to leave and says where
/// it stands. A message that cannot leave now stays stored and is sent by the next `hush`
/// that reaches the relay: that is said, not "not sent".
pub(crate) async fn report_send(
    c: &mut Ctx<'_>,
    events: &mut UnboundedReceiver<MessengerEvent>,
    id: MessageId,
) -> Result<(), String> {
    let status =
        c.m.wait_sent(&id, c.connect_timeout)
            .await
            .map_err(|e| explain(&e))?;
    match status {
        MessageStatus::Waiting => {
            say!(
                "waiting {}: the relay at {} cannot be reached now; the message is kept here and \
                 sent the next time hush connects (`hush listen`)",
                hex::encode(id),
                c.p.relay
            );
            Ok(())
        }
        MessageStatus::Failed => {
            let reason =
                c.m.message(&id)
                    .ok()
                    .flatten()
                    .map(|(_, s)| s.failed.clone())
                    .unwrap_or_default();
            // The event says the same; it is not shown twice.
            while let Ok(ev) = events.try_recv() {
                if !matches!(ev, MessengerEvent::SendFailed { .. }) {
                    c.seen.push(ev);
                }
            }
            Err(format!("not sent: {reason}"))
        }
        _ => {
            say!("sent {}", hex::encode(id));
            Ok(())
        }
    }
}

async fn command(
    c: &mut Ctx<'_>,
    cmd: Cmd,
    events: &mut UnboundedReceiver<MessengerEvent>,
) -> Result<(), String> {
    let (m, p) = (c.m, c.p);
    match cmd {
        Cmd::Init { .. } => Err("already initialized".into()),
        Cmd::Presence { .. } => Ok(()),
        Cmd::Restore { .. } => Err("this profile is already set up".into()),
        Cmd::Backup {
            cmd: BackupCmd::Enable,
        } => backup::enable(c).await,
        Cmd::Backup {
            cmd: BackupCmd::Now,
        } => backup::now(c).await,
        Cmd::Link { code: Some(_), .. } => Err("this profile is already set up".into()),
        Cmd::Send { to, text } => {
            let a = contact(c, &to).await?;
            let id = m
                .send_text(Conversation::Direct(a), &text, None)
                .await
                .map_err(|e| explain(&e))?;
            report_send(c, events, id).await
        }
        Cmd::Attach { to, file } => files::attach(c, events, &to, &file).await,
        Cmd::Save { id, out } => files::save(c, &id, out.as_deref(), events).await,
        Cmd::Listen { seconds } => {
            show_unread(c)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
                learn_sender(m, &p.dir, &ev).await;
                print_event(m, &p.dir, &ev);
            }
            Ok(())
        }
        Cmd::Unread => {
            c.sync(events).await;
            show_unread(c)?;
            Ok(())
        }
        Cmd::History { with, group, limit } => {
            let conv = conversation(c, events, with.as_deref(), group.as_deref()).await?;
            c.sync(events).await;
            let msgs = m.history(conv, None, limit).map_err(|e| explain(&e))?;
            if msgs.is_empty() {
                say!(
                    "no messages with {} yet",
                    conversation_label(m, &p.dir, &conv)
                );
            }
            for msg in &msgs {
                say!("{}", history_line(&p.dir, msg));
            }
            // Shown: they are read (the senders are told when the relay can be reached).
            c.seen.retain(|ev| {
                !matches!(ev, MessengerEvent::Message { conversation, .. } if *conversation == conv)
            });
            let _ = m.mark_read(conv).await;
            Ok(())
        }
        Cmd::Verify { with } => {
            let a = contact(c, &with).await?;
            let n =
                hush_core::safety::SafetyNumber::new(m.address().account.as_bytes(), a.as_bytes());
            say!("safety number with {with}:\n{}", n.display_groups());
            Ok(())
        }
        Cmd::Link { wait, history, .. } => {
            c.online().await?;
            let offer = m.engine().offer_link().map_err(|e| explain(&e))?;
            // Good at the relay before it is shown.
            m.engine()
                .open_link(&offer)
                .await
                .map_err(|e| explain(&e))?;
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
            // The new device shows the same names as this one. It publishes its keys as it
            // first connects, which may take a moment after the link: until then it is not
            // found, and the contacts are offered again.
            let known = contacts::all_contacts(&p.dir);
            let deadline = tokio::time::Instant::now() + c.connect_timeout;
            let mut synced = m.sync_contacts(&p.name, &known).await;
            while matches!(&synced, Err(ClientError::Refused(r)) if r.code == hush_proto::relay_api::ErrorCode::NotFound)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
                synced = m.sync_contacts(&p.name, &known).await;
            }
            match synced {
                Ok(()) => say!(
                    "gave the new device this account's name and {} contact{}",
                    known.len(),
                    if known.len() == 1 { "" } else { "s" }
                ),
                Err(e) => say!("the new device did not get the contacts: {}", explain(&e)),
            }
            backup::send_history(c, id, history).await;
            Ok(())
        }
        Cmd::Devices => {
            c.sync(events).await;
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
            c.online().await?;
            m.engine().remove_device(id).await.map_err(|e| match e {
                ClientError::NotPermitted(why) => {
                    format!("{why}: run `hush remove-device {id}` on that device")
                }
                ClientError::Invalid(why) => why,
                e => explain(&e),
            })?;
            say!("removed device {id}");
            Ok(())
        }
        Cmd::Group { cmd } => groups::group_command(c, cmd, events).await,
        Cmd::Whoami => {
            c.sync(events).await;
            let me = m.address();
            // Read again: another device of the account may just have told the name.
            let name = read_profile(&p.dir).map(|p| p.name).unwrap_or_default();
            say!(
                "{} account {} device {}",
                if name.is_empty() { "(no name)" } else { &name },
                hex::encode(me.account.as_bytes()),
                me.device_id
            );
            Ok(())
        }
        Cmd::Chat { with, group } => {
            let conv = conversation(c, events, with.as_deref(), group.as_deref()).await?;
            chat::run(c, conv, events).await
        }
    }
}

/// Says how many messages wait unread, per conversation, and where to read them.
fn show_unread(c: &Ctx<'_>) -> Result<(), String> {
    for (conv, n) in c.m.unread().map_err(|e| explain(&e))? {
        let (label, how) = match conv {
            Conversation::Direct(a) => {
                let name = contacts::name_of(&c.p.dir, a.as_bytes());
                (format!("from {name}"), format!("hush history {name}"))
            }
            Conversation::Group(g) => {
                let label = groups::group_label(c.m, &g);
                (
                    format!("in group {label}"),
                    format!("hush history --group {}", groups::group_ref(c.m, &g)),
                )
            }
        };
        say!(
            "{n} unread message{} {label} (`{how}`)",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: the local time zone can be read safely only then.
    show::learn_local_offset();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
