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
use hush_client::{ClientError, Conversation, Messenger, MessengerEvent};
use tokio::io::AsyncBufReadExt;

/// Writes a line; a closed stdout (the reader went away) is not an error worth a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        let mut out = std::io::stdout();
        let _ = std::io::Write::write_fmt(&mut out, format_args!("{}\n", format_args!($($t)*)));
        let _ = std::io::Write::flush(&mut out);
    }};
}

mod contacts;
mod groups;
mod profile;
mod setup;
mod show;
mod term;

use contacts::{contact, learn_sender, name_of};
use profile::{
    Profile, discard_new_profile, engine_config, home_profile, parse_relay, prepare_new_profile,
    read_profile,
};
use show::{explain, print_event, text_of};

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
        Cmd::Group { cmd } => groups::group_command(m, p, cmd).await,
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
