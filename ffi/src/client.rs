//! `HushClient`: one device's messenger behind a handle the app holds. Every call converts its
//! arguments, delegates to the messenger and converts the answer; the protocol lives below.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hush_client::messenger::{MAX_ATTACHMENT, MAX_TEXT};
use hush_client::{ClientError, EngineConfig, LinkOffer, Messenger, MessengerEvent};
use hush_proto::app::{Attachment, app_message};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{HushError, ListenerError};
use crate::types::{
    AccountInfo, ClientConfig, Conversation, GroupInfo, HushEvent, HushMessage, SafetyNumber,
    message, parse_account, parse_accounts, parse_group, parse_message_id,
};

/// Most messages one `history` call returns.
pub const MAX_HISTORY_PAGE: u32 = 1000;
/// Longest a caller may ask to wait (connection, device link).
pub const MAX_WAIT_MS: u64 = 3_600_000;
/// Link offers kept at once (each waits for its new device).
const MAX_LINK_OFFERS: usize = 4;
/// How long `shutdown` waits for calls still running to let go of the messenger.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Worker threads of the client's runtime.
const WORKER_THREADS: usize = 2;

/// Receives what happens: messages, receipts, typing, presence, connection changes, identity
/// warnings. Called on a thread of the library, one event at a time, in order; return quickly
/// (hand the event to the UI thread). An error returned (or thrown) is logged and ignored.
#[uniffi::export(with_foreign)]
pub trait HushListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: HushEvent) -> Result<(), ListenerError>;
}

enum State {
    /// Nothing started yet: call `open`, `create_account` or `link_device`.
    Idle,
    /// An account is being created or linked.
    Starting,
    Running(Arc<Messenger>),
    Closed,
}

struct Settings {
    profile: PathBuf,
    key: Zeroizing<[u8; 32]>,
    relay: SocketAddr,
    pin: String,
}

impl Settings {
    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            profile: self.profile.clone(),
            at_rest_key: Zeroizing::new(*self.key),
            relay: self.relay,
            pin: self.pin.clone(),
        }
    }
}

/// What the runtime's tasks share (never the runtime itself, so that no task drops it).
struct Inner {
    settings: Settings,
    state: Mutex<State>,
    listener: Arc<dyn HushListener>,
    offers: Mutex<HashMap<String, LinkOffer>>,
    /// Cancelled by `shutdown`: every call still running ends with `Closed`.
    closing: CancellationToken,
}

/// The messenger of one device. Create it with the profile directory and the at-rest key, then
/// call `open` (an existing profile), `create_account` or `link_device` (a new one). Every
/// method is safe to call from any thread, concurrently; after `shutdown` they fail with
/// `Closed`.
#[derive(uniffi::Object)]
pub struct HushClient {
    inner: Arc<Inner>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for HushClient {
    fn drop(&mut self) {
        self.inner.closing.cancel();
        if let Some(rt) = self.rt.take() {
            // Safe from any thread, including one of the runtime's own.
            rt.shutdown_background();
        }
    }
}

fn parse_config(mut c: ClientConfig) -> Result<Settings, HushError> {
    let key: Result<[u8; 32], _> = c.at_rest_key.as_slice().try_into();
    c.at_rest_key.zeroize();
    let key = Zeroizing::new(key.map_err(|_| {
        HushError::invalid("the at-rest key must be exactly 32 bytes (keep it in the keystore)")
    })?);
    if c.profile_dir.trim().is_empty() {
        return Err(HushError::invalid("the profile directory is empty"));
    }
    let relay: SocketAddr = c.relay_address.trim().parse().map_err(|_| {
        HushError::invalid(format!(
            "relay address `{}` is not IP:PORT",
            c.relay_address
        ))
    })?;
    let pin = c.relay_pin.trim().to_ascii_lowercase();
    let mut raw = [0u8; 32];
    if pin.len() != 64 || hex::decode_to_slice(&pin, &mut raw).is_err() {
        return Err(HushError::invalid(
            "the relay pin must be the certificate's SHA-256 as 64 hex digits",
        ));
    }
    Ok(Settings {
        profile: PathBuf::from(c.profile_dir),
        key,
        relay,
        pin,
    })
}

fn limit_wait(ms: u64) -> Result<Duration, HushError> {
    if ms > MAX_WAIT_MS {
        return Err(HushError::invalid(format!(
            "wait of {ms} ms is over the {MAX_WAIT_MS} ms allowed"
        )));
    }
    Ok(Duration::from_millis(ms))
}

impl Inner {
    fn state(&self) -> Result<MutexGuard<'_, State>, HushError> {
        self.state
            .lock()
            .map_err(|_| HushError::Internal("client state poisoned".into()))
    }

    fn messenger(&self) -> Result<Arc<Messenger>, HushError> {
        match &*self.state()? {
            State::Running(m) => Ok(Arc::clone(m)),
            State::Idle => Err(HushError::NoAccount(
                "call open, create_account or link_device first".into(),
            )),
            State::Starting => Err(HushError::NoAccount(
                "the account is still being set up".into(),
            )),
            State::Closed => Err(HushError::closed()),
        }
    }

    /// Moves from `Idle` to `Starting`, or says why not.
    fn begin_start(&self) -> Result<(), HushError> {
        let mut s = self.state()?;
        match &*s {
            State::Idle => {
                *s = State::Starting;
                Ok(())
            }
            State::Starting => Err(HushError::AlreadySetUp(
                "an account is already being set up".into(),
            )),
            State::Running(_) => Err(HushError::AlreadySetUp("the client is running".into())),
            State::Closed => Err(HushError::closed()),
        }
    }

    /// Ends a start: keeps the messenger (or, if shut down meanwhile, stops it).
    fn finish_start(
        self: &Arc<Self>,
        started: Result<(Messenger, UnboundedReceiver<MessengerEvent>), HushError>,
    ) -> Result<(), HushError> {
        let mut s = self.state()?;
        match started {
            Ok((m, events)) => {
                if matches!(*s, State::Closed) {
                    drop(s);
                    tokio::spawn(m.shutdown());
                    return Err(HushError::closed());
                }
                let m = Arc::new(m);
                *s = State::Running(Arc::clone(&m));
                drop(s);
                self.dispatch(events)
            }
            Err(e) => {
                if matches!(*s, State::Starting) {
                    *s = State::Idle;
                }
                Err(e)
            }
        }
    }

    /// Hands the messenger's events to the listener on a thread of their own, so a slow
    /// listener never stalls the runtime.
    fn dispatch(&self, mut events: UnboundedReceiver<MessengerEvent>) -> Result<(), HushError> {
        let listener = Arc::clone(&self.listener);
        let closing = self.closing.clone();
        std::thread::Builder::new()
            .name("hush-events".into())
            .spawn(move || {
                while let Some(ev) = events.blocking_recv() {
                    // Nothing reaches the app after `shutdown`.
                    if closing.is_cancelled() {
                        break;
                    }
                    if let Err(e) = listener.on_event(HushEvent::from(ev)) {
                        tracing::warn!(error = %e, "the listener failed on an event");
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| HushError::Internal(format!("event thread: {e}")))
    }

    async fn shutdown(&self) {
        let prev = match self.state.lock() {
            Ok(mut s) => std::mem::replace(&mut *s, State::Closed),
            Err(_) => return,
        };
        self.closing.cancel();
        if let Ok(mut o) = self.offers.lock() {
            o.clear();
        }
        let State::Running(mut m) = prev else {
            return;
        };
        // Calls still running were cancelled above; they let go of the messenger shortly.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        loop {
            match Arc::try_unwrap(m) {
                Ok(messenger) => {
                    messenger.shutdown().await;
                    return;
                }
                Err(back) if tokio::time::Instant::now() < deadline => {
                    m = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    tracing::warn!("calls still hold the messenger; it stops when they end");
                    return;
                }
            }
        }
    }
}

/// The profile holds an account store already.
fn has_store(profile: &Path) -> bool {
    profile.join("db").exists()
}

/// Undoes what a failed create or link left in a profile that was empty before.
fn clean_profile(profile: &Path) {
    for dir in ["db", "history"] {
        let _ = std::fs::remove_dir_all(profile.join(dir));
    }
}

impl HushClient {
    fn rt(&self) -> Result<&tokio::runtime::Runtime, HushError> {
        self.rt.as_ref().ok_or_else(HushError::closed)
    }

    /// Runs `f` on the client's runtime; it ends with `Closed` if the client shuts down first.
    async fn run<T, F>(&self, f: impl FnOnce(Arc<Inner>) -> F) -> Result<T, HushError>
    where
        F: Future<Output = Result<T, HushError>> + Send + 'static,
        T: Send + 'static,
    {
        let rt = self.rt()?;
        if self.inner.closing.is_cancelled() {
            return Err(HushError::closed());
        }
        let closing = self.inner.closing.clone();
        let fut = f(Arc::clone(&self.inner));
        let task = rt.spawn(async move {
            tokio::select! {
                biased;
                () = closing.cancelled() => Err(HushError::closed()),
                r = fut => r,
            }
        });
        match task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(HushError::Internal("a call failed unexpectedly".into())),
            Err(_) => Err(HushError::closed()),
        }
    }

    /// Runs `f` with the running messenger, once `conv` (if a group) is one this device is in:
    /// the messenger stores a message before sending it, so a message to a group this device
    /// does not know would otherwise stay in history, unsendable.
    async fn with_conv<T, F>(
        &self,
        conv: hush_client::Conversation,
        f: impl FnOnce(Arc<Messenger>) -> F + Send,
    ) -> Result<T, HushError>
    where
        F: Future<Output = Result<T, HushError>> + Send + 'static,
        T: Send + 'static,
    {
        let m = self.inner.messenger()?;
        if let hush_client::Conversation::Group(g) = conv
            && !m.engine().groups()?.iter().any(|(id, _)| *id == g)
        {
            return Err(HushError::NotFound(
                "this device is not in that group".into(),
            ));
        }
        self.run(move |_| f(m)).await
    }

    /// Runs `f` with the running messenger.
    async fn with<T, F>(&self, f: impl FnOnce(Arc<Messenger>) -> F + Send) -> Result<T, HushError>
    where
        F: Future<Output = Result<T, HushError>> + Send + 'static,
        T: Send + 'static,
    {
        let m = self.inner.messenger()?;
        self.run(move |_| f(m)).await
    }
}

/// Finds an attachment of a conversation in history.
fn find_attachment(
    m: &Messenger,
    conv: hush_client::Conversation,
    id: &[u8; 16],
) -> Result<Attachment, HushError> {
    match m.message(id)? {
        Some((c, s)) if c == conv => match s.message.as_ref().and_then(|a| a.kind.clone()) {
            Some(app_message::Kind::Attachment(att)) => Ok(att),
            _ => Err(HushError::invalid("that message is not an attachment")),
        },
        _ => Err(HushError::NotFound(
            "no such message in this conversation".into(),
        )),
    }
}

fn check_text(text: &str) -> Result<(), HushError> {
    if text.is_empty() {
        return Err(HushError::invalid("the text is empty"));
    }
    if text.len() > MAX_TEXT {
        return Err(HushError::TooLarge(format!(
            "a text is at most {MAX_TEXT} bytes, this one has {}",
            text.len()
        )));
    }
    Ok(())
}

fn check_attachment(len: usize) -> Result<(), HushError> {
    if len > MAX_ATTACHMENT {
        return Err(HushError::TooLarge(format!(
            "an attachment is at most {MAX_ATTACHMENT} bytes, this one has {len}"
        )));
    }
    Ok(())
}

#[uniffi::export]
impl HushClient {
    /// A client for the profile in `config.profile_dir`; nothing is opened or sent until
    /// `open`, `create_account` or `link_device`. `listener` receives every event from then on.
    #[uniffi::constructor]
    pub fn new(
        config: ClientConfig,
        listener: Arc<dyn HushListener>,
    ) -> Result<Arc<Self>, HushError> {
        let settings = parse_config(config)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("hush")
            .enable_all()
            .build()
            .map_err(|e| HushError::Internal(format!("runtime: {e}")))?;
        Ok(Arc::new(Self {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::new(State::Idle),
                listener,
                offers: Mutex::new(HashMap::new()),
                closing: CancellationToken::new(),
            }),
            rt: Some(rt),
        }))
    }

    /// Whether the profile holds an account (then call `open`; otherwise `create_account` or
    /// `link_device`).
    pub fn has_account(&self) -> bool {
        has_store(&self.inner.settings.profile)
    }

    /// Opens the account in the profile and starts connecting (a `Connection` event follows).
    pub fn open(&self) -> Result<AccountInfo, HushError> {
        let rt = self.rt()?;
        if self.inner.closing.is_cancelled() {
            return Err(HushError::closed());
        }
        if !has_store(&self.inner.settings.profile) {
            return Err(HushError::NoAccount(
                "this profile holds no account: call create_account or link_device".into(),
            ));
        }
        self.inner.begin_start()?;
        let _entered = rt.enter();
        let started = Messenger::open(self.inner.settings.engine_config()).map_err(|e| match e {
            ClientError::Core(hush_core::Error::Protocol(hush_core::ProtocolError::Misuse(_))) => {
                HushError::NoAccount(
                    "this profile holds no account: call create_account or link_device".into(),
                )
            }
            e => e.into(),
        });
        self.inner.finish_start(started)?;
        self.account()
    }

    /// Creates a new account in an empty profile and registers it on the relay.
    pub async fn create_account(&self) -> Result<AccountInfo, HushError> {
        self.inner.begin_start()?;
        let r = self
            .run(|inner| async move {
                let profile = inner.settings.profile.clone();
                let fresh = !has_store(&profile);
                let started = Messenger::create_account(inner.settings.engine_config())
                    .await
                    .map_err(|e| match e {
                        ClientError::Core(hush_core::Error::Protocol(
                            hush_core::ProtocolError::Misuse(_),
                        )) => HushError::AlreadySetUp(
                            "this profile already holds an account: call open".into(),
                        ),
                        e => e.into(),
                    });
                if started.is_err() && fresh {
                    clean_profile(&profile);
                }
                inner.finish_start(started)
            })
            .await;
        self.reset_if_starting();
        r?;
        self.account()
    }

    /// Sets this (new) device up from a link code shown by the account's existing device
    /// (`offer_link` there); it connects once that device has added it (`complete_link`).
    pub async fn link_device(&self, code: String) -> Result<AccountInfo, HushError> {
        if !code.trim().starts_with("hush-link:") {
            return Err(HushError::invalid(
                "not a link code (it starts with `hush-link:`)",
            ));
        }
        self.inner.begin_start()?;
        let r = self
            .run(|inner| async move {
                let profile = inner.settings.profile.clone();
                let fresh = !has_store(&profile);
                let started = Messenger::link(inner.settings.engine_config(), &code)
                    .await
                    .map_err(|e| match e {
                        ClientError::Core(hush_core::Error::Protocol(
                            hush_core::ProtocolError::Misuse(_),
                        )) => HushError::AlreadySetUp(
                            "this profile already holds an account: call open".into(),
                        ),
                        e => e.into(),
                    });
                if started.is_err() && fresh {
                    clean_profile(&profile);
                }
                inner.finish_start(started)
            })
            .await;
        self.reset_if_starting();
        r?;
        self.account()
    }

    /// This account and device.
    pub fn account(&self) -> Result<AccountInfo, HushError> {
        let a = self.inner.messenger()?.address();
        Ok(AccountInfo {
            account_id: hex::encode(a.account.as_bytes()),
            device_id: a.device_id,
        })
    }

    /// Waits until connected to the relay (at most `timeout_ms`).
    pub async fn wait_connected(&self, timeout_ms: u64) -> Result<(), HushError> {
        let wait = limit_wait(timeout_ms)?;
        self.with(move |m| async move {
            m.engine().connected(wait).await.map_err(|e| match e {
                ClientError::Disconnected | ClientError::Timeout => HushError::NotConnected(
                    format!("no connection to the relay within {timeout_ms} ms"),
                ),
                e => e.into(),
            })
        })
        .await
    }

    /// Claims `name` for this account (first come, first served; replaces a name held before)
    /// and sends it along with messages from now on.
    pub async fn claim_username(&self, name: String) -> Result<(), HushError> {
        self.with(move |m| async move {
            m.engine().claim_username(&name).await?;
            m.set_name(&name.to_ascii_lowercase());
            Ok(())
        })
        .await
    }

    /// Releases this account's username.
    pub async fn release_username(&self) -> Result<(), HushError> {
        self.with(|m| async move {
            m.engine().release_username().await?;
            m.set_name("");
            Ok(())
        })
        .await
    }

    /// Sets the username sent along with messages (the one this account claimed earlier);
    /// receivers check it in the relay's directory.
    pub fn set_username(&self, name: String) -> Result<(), HushError> {
        self.inner.messenger()?.set_name(&name.to_ascii_lowercase());
        Ok(())
    }

    /// The account holding `name`, verified against the account key's signature.
    pub async fn lookup_username(&self, name: String) -> Result<String, HushError> {
        self.with(move |m| async move {
            match m.engine().lookup_username(&name).await {
                Ok(a) => Ok(hex::encode(a.as_bytes())),
                Err(ClientError::Refused(r))
                    if r.code == hush_proto::relay_api::ErrorCode::NotFound =>
                {
                    Err(HushError::UnknownUser(format!("nobody goes by `{name}`")))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Sends a text, optionally as a reply to message `reply_to`: stores it and returns its id
    /// at once, status `Waiting`, online or not. The client sends it, after the conversation's
    /// earlier messages, as soon as the relay can be reached (a `Status` event with `Sent`);
    /// refused for good, it becomes `Failed` (a `SendFailed` event).
    pub async fn send_text(
        &self,
        conversation: Conversation,
        text: String,
        reply_to: Option<String>,
    ) -> Result<String, HushError> {
        let conv = conversation.parse()?;
        let reply = reply_to.as_deref().map(parse_message_id).transpose()?;
        check_text(&text)?;
        self.with_conv(conv, move |m| async move {
            Ok(hex::encode(m.send_text(conv, &text, reply).await?))
        })
        .await
    }

    /// Puts back in the outbox a message of this device that is `Failed` (after the user fixed
    /// the cause, or to try once more); returns at once, the message `Waiting`. Nothing
    /// happens for a message already sent or still waiting.
    pub async fn retry_send(&self, message_id: String) -> Result<(), HushError> {
        let id = parse_message_id(&message_id)?;
        self.with(move |m| async move { Ok(m.retry(&id).await?) })
            .await
    }

    /// The stored message with id `message_id`, or none.
    pub fn message(&self, message_id: String) -> Result<Option<HushMessage>, HushError> {
        let id = parse_message_id(&message_id)?;
        let m = self.inner.messenger()?;
        Ok(m.message(&id)?.map(|(c, s)| message(c.into(), &s)))
    }

    /// Reacts to message `target` (an empty `emoji` removes the reaction); returns the
    /// reaction's id.
    pub async fn send_reaction(
        &self,
        conversation: Conversation,
        target: String,
        emoji: String,
    ) -> Result<String, HushError> {
        let conv = conversation.parse()?;
        let target = parse_message_id(&target)?;
        if emoji.len() > 64 {
            return Err(HushError::invalid("an emoji is at most 64 bytes"));
        }
        self.with_conv(conv, move |m| async move {
            Ok(hex::encode(m.react(conv, target, &emoji).await?))
        })
        .await
    }

    /// Encrypts `data`, uploads it and sends it as an attachment; returns the message id.
    pub async fn send_attachment(
        &self,
        conversation: Conversation,
        name: String,
        mime: String,
        data: Vec<u8>,
    ) -> Result<String, HushError> {
        let conv = conversation.parse()?;
        check_attachment(data.len())?;
        self.with_conv(conv, move |m| async move {
            Ok(hex::encode(
                m.send_attachment(conv, &name, &mime, &data).await?,
            ))
        })
        .await
    }

    /// Sends the file at `path` as an attachment (named after the file).
    pub async fn send_file(
        &self,
        conversation: Conversation,
        path: String,
        mime: String,
    ) -> Result<String, HushError> {
        let conv = conversation.parse()?;
        let path = PathBuf::from(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| HushError::invalid("the path names no file"))?;
        self.with_conv(conv, move |m| async move {
            let data = tokio::task::spawn_blocking(move || {
                let len = std::fs::metadata(&path)
                    .map_err(|e| HushError::invalid(format!("{}: {e}", path.display())))?
                    .len();
                check_attachment(usize::try_from(len).unwrap_or(usize::MAX))?;
                std::fs::read(&path)
                    .map_err(|e| HushError::invalid(format!("{}: {e}", path.display())))
            })
            .await
            .map_err(|_| HushError::Internal("file read failed".into()))??;
            Ok(hex::encode(
                m.send_attachment(conv, &name, &mime, &data).await?,
            ))
        })
        .await
    }

    /// Downloads the attachment of message `message_id`, checks its digest and decrypts it.
    pub async fn download_attachment(
        &self,
        conversation: Conversation,
        message_id: String,
    ) -> Result<Vec<u8>, HushError> {
        let conv = conversation.parse()?;
        let id = parse_message_id(&message_id)?;
        self.with(move |m| async move {
            let a = find_attachment(&m, conv, &id)?;
            Ok(m.download(&a).await?.to_vec())
        })
        .await
    }

    /// Downloads the attachment of message `message_id` into the file `path` (replaced).
    pub async fn save_attachment(
        &self,
        conversation: Conversation,
        message_id: String,
        path: String,
    ) -> Result<(), HushError> {
        let conv = conversation.parse()?;
        let id = parse_message_id(&message_id)?;
        if path.is_empty() {
            return Err(HushError::invalid("the path is empty"));
        }
        self.with(move |m| async move {
            let a = find_attachment(&m, conv, &id)?;
            let data = m.download(&a).await?;
            tokio::task::spawn_blocking(move || {
                std::fs::write(&path, data.as_slice())
                    .map_err(|e| HushError::Storage(format!("{path}: {e}")))
            })
            .await
            .map_err(|_| HushError::Internal("file write failed".into()))?
        })
        .await
    }

    /// Marks every unread incoming message of the conversation read and tells the senders.
    pub async fn mark_read(&self, conversation: Conversation) -> Result<(), HushError> {
        let conv = conversation.parse()?;
        self.with_conv(conv, move |m| async move { Ok(m.mark_read(conv).await?) })
            .await
    }

    /// Tells the conversation this user started (or stopped) typing; only connected devices
    /// see it.
    pub async fn set_typing(
        &self,
        conversation: Conversation,
        typing: bool,
    ) -> Result<(), HushError> {
        let conv = conversation.parse()?;
        self.with_conv(
            conv,
            move |m| async move { Ok(m.typing(conv, typing).await?) },
        )
        .await
    }

    /// Switches sharing presence on or off (off also hides others' presence); tells `contacts`.
    pub async fn set_presence(&self, online: bool, contacts: Vec<String>) -> Result<(), HushError> {
        let contacts = parse_accounts(&contacts)?;
        self.with(move |m| async move { Ok(m.set_presence(online, &contacts).await?) })
            .await
    }

    /// Registers the push endpoint the relay wakes this device at when mail arrives while it is
    /// offline (`https://` URL of a push distributor or gateway; the wake-up carries no
    /// content). An empty `url` unregisters. Remembered in the profile and registered again on
    /// every connection.
    pub async fn register_push(&self, url: String) -> Result<(), HushError> {
        if url.len() > 2048 {
            return Err(HushError::InvalidArgument(
                "push URL longer than 2048 bytes".into(),
            ));
        }
        self.with(move |m| async move { Ok(m.engine().register_push(&url).await?) })
            .await
    }

    /// Up to `limit` messages of the conversation, oldest first: the newest ones, or those
    /// before message `before` (page backwards with the first id of the previous page).
    pub fn history(
        &self,
        conversation: Conversation,
        before: Option<String>,
        limit: u32,
    ) -> Result<Vec<HushMessage>, HushError> {
        let conv = conversation.parse()?;
        let before = before.as_deref().map(parse_message_id).transpose()?;
        if limit == 0 || limit > MAX_HISTORY_PAGE {
            return Err(HushError::invalid(format!(
                "limit must be 1 to {MAX_HISTORY_PAGE}"
            )));
        }
        let m = self.inner.messenger()?;
        let page = m.history(conv, before, limit as usize)?;
        Ok(page
            .iter()
            .map(|s| message(conversation.clone(), s))
            .collect())
    }

    /// Creates a group with `members` (account ids) and this account as admin; returns its id.
    pub async fn create_group(
        &self,
        name: String,
        members: Vec<String>,
    ) -> Result<String, HushError> {
        let members = parse_accounts(&members)?;
        if name.trim().is_empty() {
            return Err(HushError::invalid("the group name is empty"));
        }
        self.with(move |m| async move {
            Ok(hex::encode(
                m.engine().create_group(&name, &members).await?.0,
            ))
        })
        .await
    }

    /// Adds members to a group (admins only).
    pub async fn add_group_members(
        &self,
        group_id: String,
        members: Vec<String>,
    ) -> Result<(), HushError> {
        let g = parse_group(&group_id)?;
        let add: Vec<_> = parse_accounts(&members)?
            .into_iter()
            .map(|a| (a, false))
            .collect();
        if add.is_empty() {
            return Err(HushError::invalid("no members given"));
        }
        self.with(move |m| async move { Ok(m.engine().update_group(&g, &add, &[]).await?) })
            .await
    }

    /// Removes members from a group (admins only).
    pub async fn remove_group_members(
        &self,
        group_id: String,
        members: Vec<String>,
    ) -> Result<(), HushError> {
        let g = parse_group(&group_id)?;
        let remove = parse_accounts(&members)?;
        if remove.is_empty() {
            return Err(HushError::invalid("no members given"));
        }
        self.with(move |m| async move { Ok(m.engine().update_group(&g, &[], &remove).await?) })
            .await
    }

    /// The groups this device is in.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, HushError> {
        Ok(self
            .inner
            .messenger()?
            .engine()
            .groups()?
            .into_iter()
            .map(|(g, name)| GroupInfo {
                id: hex::encode(g.0),
                name,
            })
            .collect())
    }

    /// The device ids of `account_id` as this device last verified them (this account's own
    /// devices for its own id).
    pub fn devices(&self, account_id: String) -> Result<Vec<u32>, HushError> {
        let a = parse_account(&account_id)?;
        Ok(self.inner.messenger()?.engine().devices_of(&a)?)
    }

    /// Starts linking a new device (on the account's first device): returns the code to show
    /// the user (as text or a QR code) for the new device's `link_device`; then call
    /// `complete_link` with it.
    pub fn offer_link(&self) -> Result<String, HushError> {
        let offer = self
            .inner
            .messenger()?
            .engine()
            .offer_link()
            .map_err(|e| match e {
                ClientError::Config(why) => HushError::NotPermitted(why),
                e => e.into(),
            })?;
        let code = offer.code.clone();
        let mut offers = self
            .inner
            .offers
            .lock()
            .map_err(|_| HushError::Internal("link offers poisoned".into()))?;
        if offers.len() >= MAX_LINK_OFFERS {
            return Err(HushError::NotPermitted(format!(
                "at most {MAX_LINK_OFFERS} links may wait at once"
            )));
        }
        offers.insert(code.clone(), offer);
        Ok(code)
    }

    /// Waits (at most `timeout_ms`) for the new device of the offer `code` and adds it to the
    /// account; returns its device id. The code is used up either way.
    pub async fn complete_link(&self, code: String, timeout_ms: u64) -> Result<u32, HushError> {
        let wait = limit_wait(timeout_ms)?;
        let offer = self
            .inner
            .offers
            .lock()
            .map_err(|_| HushError::Internal("link offers poisoned".into()))?
            .remove(code.trim())
            .ok_or_else(|| HushError::NotFound("no link offer with this code is waiting".into()))?;
        self.with(move |m| async move { Ok(m.engine().complete_link(&offer, wait).await?) })
            .await
    }

    /// Gives this account's other devices its username and `contacts` (call it when a device
    /// was linked, and when a contact is added): they get a `ContactsSynced` event.
    pub async fn sync_contacts(
        &self,
        name: String,
        contacts: Vec<crate::types::Contact>,
    ) -> Result<(), HushError> {
        let parsed = contacts
            .iter()
            .map(|c| Ok((c.username.clone(), parse_account(&c.account_id)?)))
            .collect::<Result<Vec<_>, HushError>>()?;
        self.with(move |m| async move { Ok(m.sync_contacts(&name, &parsed).await?) })
            .await
    }

    /// Removes one of this account's other devices (on the account's first device).
    pub async fn remove_device(&self, device_id: u32) -> Result<(), HushError> {
        self.with(move |m| async move {
            m.engine()
                .remove_device(device_id)
                .await
                .map_err(|e| match e {
                    ClientError::Config(why) if why.starts_with("only") => {
                        HushError::NotPermitted(why)
                    }
                    e => e.into(),
                })
        })
        .await
    }

    /// The safety number with a contact: compare it in person (or scan the QR code).
    pub fn safety_number(&self, contact: String) -> Result<SafetyNumber, HushError> {
        let theirs = parse_account(&contact)?;
        let mine = self.inner.messenger()?.address().account;
        let n = hush_core::safety::SafetyNumber::new(mine.as_bytes(), theirs.as_bytes());
        Ok(SafetyNumber {
            digits: n.digits(),
            display: n.display_groups(),
            qr_payload: n.qr_payload(),
        })
    }

    /// Whether a QR payload scanned from the contact's screen shows the same safety number.
    pub fn verify_safety_qr(&self, contact: String, scanned: Vec<u8>) -> Result<bool, HushError> {
        let theirs = parse_account(&contact)?;
        let mine = self.inner.messenger()?.address().account;
        let n = hush_core::safety::SafetyNumber::new(mine.as_bytes(), theirs.as_bytes());
        match n.compare_scanned(&scanned) {
            Ok(c) => Ok(c == hush_core::safety::Comparison::Match),
            Err(e) => Err(HushError::invalid(format!("scanned code: {e}"))),
        }
    }

    /// Stops the client: calls still running end with `Closed`, the connection closes, and
    /// every later call fails with `Closed`. Safe to call more than once.
    pub async fn shutdown(&self) -> Result<(), HushError> {
        let Ok(rt) = self.rt() else {
            return Ok(());
        };
        let inner = Arc::clone(&self.inner);
        rt.spawn(async move { inner.shutdown().await })
            .await
            .map_err(|_| HushError::Internal("shutdown failed".into()))
    }
}

impl HushClient {
    /// A start whose call was dropped by the host leaves `Starting` behind: back to `Idle`.
    fn reset_if_starting(&self) {
        if let Ok(mut s) = self.inner.state.lock()
            && matches!(*s, State::Starting)
        {
            *s = State::Idle;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;

    impl HushListener for Quiet {
        fn on_event(&self, _event: HushEvent) -> Result<(), ListenerError> {
            Ok(())
        }
    }

    fn config(dir: &Path) -> ClientConfig {
        ClientConfig {
            profile_dir: dir.to_string_lossy().into_owned(),
            at_rest_key: vec![5; 32],
            relay_address: "127.0.0.1:9".into(),
            relay_pin: "ab".repeat(32),
        }
    }

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.at_rest_key = vec![1; 31];
        let e = HushClient::new(c, Arc::new(Quiet)).err().unwrap();
        assert!(e.to_string().contains("32 bytes"), "{e}");
        let mut c = config(dir.path());
        c.relay_pin = "xyz".into();
        assert!(matches!(
            HushClient::new(c, Arc::new(Quiet)),
            Err(HushError::InvalidArgument(_))
        ));
        let mut c = config(dir.path());
        c.profile_dir = " ".into();
        assert!(matches!(
            HushClient::new(c, Arc::new(Quiet)),
            Err(HushError::InvalidArgument(_))
        ));
    }

    #[test]
    fn calls_before_setup_and_after_shutdown_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = HushClient::new(config(dir.path()), Arc::new(Quiet)).unwrap();
        let alice = Conversation::Direct {
            account_id: hex::encode(
                hush_core::keys::AccountKeyPair::from_secret_bytes(&[3; 32])
                    .id()
                    .as_bytes(),
            ),
        };
        assert!(!c.has_account());
        assert!(matches!(c.open(), Err(HushError::NoAccount(_))));
        assert!(matches!(c.account(), Err(HushError::NoAccount(_))));
        assert!(matches!(c.groups(), Err(HushError::NoAccount(_))));
        assert!(matches!(c.offer_link(), Err(HushError::NoAccount(_))));
        assert!(matches!(
            c.history(alice.clone(), None, 10),
            Err(HushError::NoAccount(_))
        ));
        assert!(matches!(
            block_on(c.send_text(alice.clone(), "hi".into(), None)),
            Err(HushError::NoAccount(_))
        ));
        // Concurrent calls from many threads: each gets its answer.
        let c2 = Arc::clone(&c);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = Arc::clone(&c2);
                let a = alice.clone();
                std::thread::spawn(move || {
                    block_on(c.mark_read(a.clone())).is_err() && c.history(a, None, 1).is_err()
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
        block_on(c.shutdown()).unwrap();
        block_on(c.shutdown()).unwrap();
        assert!(matches!(c.open(), Err(HushError::Closed(_))));
        assert!(matches!(
            block_on(c.create_account()),
            Err(HushError::Closed(_))
        ));
        assert!(matches!(
            block_on(c.send_text(alice, "hi".into(), None)),
            Err(HushError::Closed(_))
        ));
        // Dropped from inside a runtime: no panic.
        block_on(async move { drop(c) });
    }
}
