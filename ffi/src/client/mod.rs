//! `HushClient`: one device's messenger behind a handle the app holds. Every call converts its
//! arguments, delegates to the messenger and converts the answer; the protocol lives below.

use hush_client::profile;
use hush_client::{ClientError, EngineConfig, LinkOffer, Messenger, MessengerEvent};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroize;

mod account;
mod conversations;
mod lifecycle;

pub use lifecycle::{LinkInfo, LinkState, Liveness, NetworkMove, Transport, WakeReport};

use crate::error::{HushError, ListenerError};
use crate::types::{AccountInfo, ClientConfig, HushEvent};

/// Most messages one `history` call returns.
pub const MAX_HISTORY_PAGE: u32 = 1000;
/// Longest a caller may ask to wait (connection, device link).
pub const MAX_WAIT_MS: u64 = 3_600_000;
/// Link offers kept at once (each waits for its new device).
const MAX_LINK_OFFERS: usize = 4;
/// How long `shutdown` waits for calls still running to let go of the messenger.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for the listener to return from an event it is being told.
const LISTENER_WAIT: Duration = Duration::from_secs(3);
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

/// What the runtime's tasks share (never the runtime itself, so that no task drops it).
struct Inner {
    settings: EngineConfig,
    state: Mutex<State>,
    listener: Arc<dyn HushListener>,
    offers: Mutex<HashMap<String, LinkOffer>>,
    /// Cancelled by `shutdown`: every call still running ends with `Closed`.
    closing: CancellationToken,
    /// Held by the event thread while it tells the listener an event. Once `shutdown` has
    /// cancelled `closing` and then taken this, the listener is never called again: an app
    /// (or an interpreter) may tear down what the listener uses as soon as `shutdown` returns.
    telling: Arc<Mutex<()>>,
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

/// The settings of `c`, checked by the client library; the key bytes are wiped here.
fn parse_config(mut c: ClientConfig) -> Result<EngineConfig, HushError> {
    let settings = profile::settings(
        &c.profile_dir,
        &c.at_rest_key,
        &c.relay_address,
        &c.relay_pin,
    );
    c.at_rest_key.zeroize();
    Ok(settings?)
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
        let telling = Arc::clone(&self.telling);
        std::thread::Builder::new()
            .name("hush-events".into())
            .spawn(move || {
                while let Some(ev) = events.blocking_recv() {
                    let Ok(_telling) = telling.lock() else {
                        break;
                    };
                    // Nothing reaches the app after `shutdown`: checked under `telling`, which
                    // `shutdown` takes after cancelling.
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
        self.listener_quiet().await;
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

impl Inner {
    /// Waits (at most `LISTENER_WAIT`) until an event being told when `closing` was cancelled
    /// has been told; no later one is. A listener that itself waits for `shutdown` to return
    /// would never return: the wait is bounded for it.
    async fn listener_quiet(&self) {
        let deadline = tokio::time::Instant::now() + LISTENER_WAIT;
        loop {
            let busy = matches!(self.telling.try_lock(), Err(TryLockError::WouldBlock));
            if !busy {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("the listener is still busy with an event at shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
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
                telling: Arc::new(Mutex::new(())),
            }),
            rt: Some(rt),
        }))
    }

    /// Whether the profile holds an account (then call `open`; otherwise `create_account` or
    /// `link_device`).
    pub fn has_account(&self) -> bool {
        profile::has_account(&self.inner.settings.profile)
    }

    /// Opens the account in the profile and starts connecting (a `Connection` event follows).
    pub fn open(&self) -> Result<AccountInfo, HushError> {
        let rt = self.rt()?;
        if self.inner.closing.is_cancelled() {
            return Err(HushError::closed());
        }
        if !profile::has_account(&self.inner.settings.profile) {
            return Err(ClientError::NoAccount.into());
        }
        self.inner.begin_start()?;
        let _entered = rt.enter();
        let started = Messenger::open(self.inner.settings.clone()).map_err(HushError::from);
        self.inner.finish_start(started)?;
        self.account()
    }

    /// Creates a new account in an empty profile and registers it on the relay.
    pub async fn create_account(&self) -> Result<AccountInfo, HushError> {
        self.inner.begin_start()?;
        let r = self
            .run(|inner| async move {
                let started = Messenger::create_account(inner.settings.clone())
                    .await
                    .map_err(HushError::from);
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
                let started = Messenger::link(inner.settings.clone(), &code)
                    .await
                    .map_err(HushError::from);
                inner.finish_start(started)
            })
            .await;
        self.reset_if_starting();
        r?;
        self.account()
    }

    /// Restores an account from its encrypted backup on the relay, with the recovery key that
    /// `enable_backup` returned, as a new device in an empty profile: history, groups and
    /// contacts come back; the account's earlier devices are removed.
    pub async fn restore_account(
        &self,
        recovery_key: String,
    ) -> Result<crate::types::RestoredAccount, HushError> {
        self.inner.begin_start()?;
        let r = self
            .run(|inner| async move {
                let started = Messenger::restore(inner.settings.clone(), &recovery_key)
                    .await
                    .map_err(HushError::from);
                match started {
                    Ok((m, events, restored)) => {
                        inner.finish_start(Ok((m, events)))?;
                        Ok(restored)
                    }
                    Err(e) => inner.finish_start(Err(e)).map(|()| Default::default()),
                }
            })
            .await;
        self.reset_if_starting();
        let restored = r?;
        let a = self.account()?;
        Ok(crate::types::RestoredAccount {
            account_id: a.account_id,
            device_id: a.device_id,
            messages: restored.messages as u64,
            groups: restored.groups as u64,
            name: restored.app.name,
            contacts: restored
                .app
                .contacts
                .into_iter()
                .map(|(username, a)| crate::types::Contact {
                    username,
                    account_id: hex::encode(a.as_bytes()),
                })
                .collect(),
        })
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

    /// Stops the client: calls still running end with `Closed`, the connection closes, and
    /// every later call fails with `Closed`. Once it returns, the listener is not being called
    /// and never is again (an event it is being told is waited for, at most 3 s), so what the
    /// listener uses may be torn down. Safe to call more than once.
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
    use crate::types::Conversation;
    use std::path::Path;

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

    /// Tells the test when it is called, then waits to be let go.
    struct Held {
        entered: std::sync::mpsc::SyncSender<()>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl HushListener for Held {
        fn on_event(&self, _event: HushEvent) -> Result<(), ListenerError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.entered.send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
            Ok(())
        }
    }

    #[test]
    fn shutdown_returns_only_once_the_listener_is_done_and_it_is_never_called_again() {
        let dir = tempfile::tempdir().unwrap();
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(4);
        let (go, go_rx) = std::sync::mpsc::channel();
        let held = Arc::new(Held {
            entered: entered_tx,
            go: Mutex::new(go_rx),
            calls: 0.into(),
        });
        let listener: Arc<dyn HushListener> = Arc::clone(&held) as _;
        let c = HushClient::new(config(dir.path()), listener).unwrap();
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        c.inner.dispatch(rx).unwrap();
        events.send(MessengerEvent::CaughtUp).unwrap();
        entered.recv().unwrap();

        // The listener is busy with the event: shutdown waits for it.
        let (done_tx, done) = std::sync::mpsc::channel();
        let c2 = Arc::clone(&c);
        let stopping = std::thread::spawn(move || {
            block_on(c2.shutdown()).unwrap();
            done_tx.send(()).unwrap();
        });
        assert!(done.recv_timeout(Duration::from_millis(200)).is_err());
        go.send(()).unwrap();
        done.recv().unwrap();
        stopping.join().unwrap();

        // Told nothing more: the event thread ends on the next event, without calling.
        go.send(()).unwrap();
        let _ = events.send(MessengerEvent::CaughtUp);
        block_on(events.closed());
        assert_eq!(held.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
