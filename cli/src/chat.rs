//! `hush chat`: one conversation, live. It opens with the last messages, marks what it shows
//! read, shows what arrives (messages, read state, typing, presence) and sends each line typed,
//! online or not: a line typed without the relay waits in the outbox and leaves, once, when
//! the relay is back.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use hush_client::messenger::{MessageId, MessageStatus};
use hush_client::{ConnectionState, Conversation, MessengerEvent};
use hush_core::keys::AccountId;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::Ctx;
use crate::contacts::learn_sender;
use crate::show::{conversation_label, describe, explain, history_line};
use crate::term::{Input, Terminal};

/// Messages of the conversation shown when the chat opens (more if more are unread).
const OPENING_MESSAGES: usize = 10;
/// Most messages shown when the chat opens.
const OPENING_MAX: usize = 200;
/// How often "typing" is told again while the user keeps typing.
const TYPING_REFRESH: Duration = Duration::from_secs(3);
/// Quiet keyboard time after which "stopped typing" is told.
const TYPING_IDLE: Duration = Duration::from_secs(5);
/// How long a peer's "typing" is shown without being told again.
const PEER_TYPING_SHOWN: Duration = Duration::from_secs(10);

pub(crate) async fn run(
    c: &mut Ctx<'_>,
    conv: Conversation,
    events: &mut UnboundedReceiver<MessengerEvent>,
) -> Result<(), String> {
    let (m, p) = (c.m, c.p);
    let label = conversation_label(m, &p.dir, &conv);
    // What waits at the relay first (bounded; at once without the relay), so that the chat
    // opens with the conversation as it is.
    c.sync(events).await;
    let mut term = Terminal::new("> ").map_err(|e| format!("terminal: {e}"))?;
    term.print(&format!(
        "chatting with {label}; type a line and press enter ({} to leave)",
        if term.is_interactive() {
            "Ctrl-D"
        } else {
            "end of input"
        }
    ));
    let unread = m
        .unread()
        .map_err(|e| explain(&e))?
        .into_iter()
        .find(|(cv, _)| *cv == conv)
        .map_or(0, |(_, n)| n);
    let shown = m
        .history(conv, None, OPENING_MESSAGES.max(unread).min(OPENING_MAX))
        .map_err(|e| explain(&e))?;
    let first_unread = shown.len().saturating_sub(unread);
    for (i, msg) in shown.iter().enumerate() {
        if unread > 0 && i == first_unread {
            term.print(&format!("-- {unread} unread --"));
        }
        term.print(&history_line(&p.dir, msg));
    }
    // What else came meanwhile (other conversations, warnings) is said once.
    for ev in std::mem::take(&mut c.seen) {
        learn_sender(m, &p.dir, &ev).await;
        let here =
            matches!(&ev, MessengerEvent::Message { conversation, .. } if *conversation == conv);
        let noise = matches!(
            ev,
            MessengerEvent::Connection(_)
                | MessengerEvent::Typing { .. }
                | MessengerEvent::Presence { .. }
        );
        if !here && !noise {
            for line in describe(m, &p.dir, &ev) {
                term.print(&line);
            }
        }
    }
    let _ = m.mark_read(conv).await;
    // Presence: with a contact, told on opening and on leaving (if shared).
    let peer: Option<AccountId> = match conv {
        Conversation::Direct(a) if p.presence => Some(a),
        _ => None,
    };
    if let Some(a) = peer {
        let _ = m.set_presence(true, &[a]).await;
    }
    let result = chat_loop(c, conv, events, &mut term, peer).await;
    // What arrived just before leaving is read, whether or not its receipt had started: the
    // mark is stored now and the receipt goes when it can.
    let _ = m.mark_read(conv).await;
    if let Some(a) = peer {
        let _ = m.set_presence(false, &[a]).await;
    }
    result
}

/// What the chat sends without waiting for it (read receipts, typing, presence): the screen keeps
/// up with events while a send waits for a slow relay, or for one that went away.
type Background<'a> = FuturesUnordered<Pin<Box<dyn Future<Output = ()> + 'a>>>;

async fn chat_loop(
    c: &mut Ctx<'_>,
    conv: Conversation,
    events: &mut UnboundedReceiver<MessengerEvent>,
    term: &mut Terminal,
    peer: Option<AccountId>,
) -> Result<(), String> {
    let (m, p) = (c.m, c.p);
    // Lines typed while the relay could not be reached: their "sent" is worth a line.
    let mut waiting: HashSet<MessageId> = HashSet::new();
    let mut typing_told: Option<Instant> = None;
    let mut last_key: Option<Instant> = None;
    let mut peer_typing_until: Option<Instant> = None;
    // Whether the peer has been seen online in this chat (to answer its presence once).
    let mut peer_online = false;
    let settle = m.engine().settled(c.sync_wait);
    tokio::pin!(settle);
    let mut settled = false;
    let mut background: Background<'_> = FuturesUnordered::new();
    loop {
        let typing_idle_at = last_key.map(|k| k + TYPING_IDLE);
        tokio::select! {
            Some(()) = background.next(), if !background.is_empty() => {}
            state = &mut settle, if !settled => {
                settled = true;
                if state != ConnectionState::Online {
                    term.print(&format!(
                        "offline: the relay at {} cannot be reached; what you type is kept and sent when it is back",
                        p.relay
                    ));
                }
            }
            input = term.next() => match input {
                Input::Line(text) if !text.trim().is_empty() => {
                    last_key = None;
                    typing_told = None;
                    match m.send_text(conv, &text, None).await {
                        Ok(id) => {
                            if m.engine().state() != ConnectionState::Online {
                                waiting.insert(id);
                                term.print("  (waiting: sent when the relay is back)");
                            }
                        }
                        Err(e) => term.print(&format!("not sent: {}", explain(&e))),
                    }
                }
                Input::Line(_) => {}
                Input::Edited => {
                    last_key = Some(Instant::now());
                    if typing_told.is_none_or(|t| t.elapsed() >= TYPING_REFRESH) {
                        // Told again after the refresh interval, should this one not get out.
                        typing_told = Some(Instant::now());
                        background.push(Box::pin(async move {
                            let _ = m.typing(conv, true).await;
                        }));
                    }
                }
                Input::Eof => return Ok(()),
            },
            () = sleep_until(typing_idle_at) => {
                last_key = None;
                if typing_told.take().is_some() {
                    background.push(Box::pin(async move {
                        let _ = m.typing(conv, false).await;
                    }));
                }
            }
            () = sleep_until(peer_typing_until) => {
                peer_typing_until = None;
                term.status(None);
            }
            ev = events.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                learn_sender(m, &p.dir, &ev).await;
                match &ev {
                    MessengerEvent::Typing { conversation, typing, .. } if *conversation == conv => {
                        if *typing {
                            if let Some(line) = describe(m, &p.dir, &ev).first() {
                                term.status(Some(line));
                            }
                            peer_typing_until = Some(Instant::now() + PEER_TYPING_SHOWN);
                        } else {
                            peer_typing_until = None;
                            term.status(None);
                        }
                        continue;
                    }
                    // Typing elsewhere is not this chat's business.
                    MessengerEvent::Typing { .. } => continue,
                    MessengerEvent::Message { conversation, message } if *conversation == conv => {
                        if !message.outgoing {
                            peer_typing_until = None;
                            term.status(None);
                            term.print(&history_line(&p.dir, message));
                            background.push(Box::pin(async move {
                                let _ = m.mark_read(conv).await;
                            }));
                        } else {
                            term.print(&history_line(&p.dir, message));
                        }
                        continue;
                    }
                    // "Sent" is said only of what was said to wait.
                    MessengerEvent::Status { message_ids, status: MessageStatus::Sent, .. }
                        if !message_ids.iter().any(|id| waiting.remove(id)) => continue,
                    MessengerEvent::Presence { from, online, .. } if Some(*from) == peer => {
                        // Answered once when the peer comes online, so that both see each other.
                        if *online && !peer_online {
                            let from = *from;
                            background.push(Box::pin(async move {
                                let _ = m.set_presence(true, &[from]).await;
                            }));
                        }
                        peer_online = *online;
                    }
                    MessengerEvent::CaughtUp => continue,
                    _ => {}
                }
                for line in describe(m, &p.dir, &ev) {
                    term.print(&line);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
