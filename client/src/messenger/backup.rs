//! Backups and history transfer for the messenger (docs/PROTOCOL.md §22): the application's
//! part of an archive (`hush.app.v1.AppBackup`: history, the account's name, contacts,
//! settings), encrypted backups kept on the relay under names derived from a recovery key and
//! refreshed after changes, the transfer of recent history to a newly linked device, and the
//! recovery of an account from its backup.
//!
//! The recovery key is kept in the history store (encrypted at rest, namespace `Meta`, key
//! `backup`: the key's 32 bytes ‖ the next slot (1 byte) ‖ when the last backup was made, u64
//! BE ms), so that this device can refresh the backup; it is shown to the user once.

use std::sync::Arc;
use std::time::Duration;

use hush_core::backup::RecoveryKey;
use hush_core::keys::AccountId;
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_proto::app::{self, AppMessage, StoredMessage, app_message};
use prost::Message;
use rand::RngExt;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::{Conversation, Messenger, MessengerEvent, Shared, conversation_of_conv, history};
use crate::engine::{
    Engine, EngineConfig, MAX_ARCHIVE_BLOB, now_ms, open_archive, rng, seal_archive,
};
use crate::error::ClientError;

/// The history store's record of the backup settings.
const BACKUP_RECORD: &[u8] = b"backup";

/// Least time between two automatic backups (a change after that makes a new one; `backup
/// now` makes one at once).
pub const BACKUP_REFRESH_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// A backup is written again once this old even without changes: well within the relay's blob
/// lifetime (30 days by default), so a running app's backup never expires.
pub(crate) const BACKUP_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Most messages of one conversation a backup carries (the newest).
pub const BACKUP_MESSAGES_PER_CONVERSATION: usize = 100_000;

/// Most messages of one conversation a history transfer carries, whatever is asked.
pub const MAX_TRANSFER_PER_CONVERSATION: usize = 10_000;

/// The application's state that a backup or a history transfer carries besides the history
/// (the messenger does not keep it: the application tells it, see
/// [`Messenger::set_app_state`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppState {
    /// The account's username, or empty.
    pub name: String,
    /// Contacts: usernames and their accounts.
    pub contacts: Vec<(String, AccountId)>,
    /// Application settings (key, value).
    pub settings: Vec<(String, String)>,
}

/// What a restore or a history transfer brought back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Messages added to the history.
    pub messages: usize,
    /// Groups this device is in now.
    pub groups: usize,
    /// The application's state from the archive.
    pub app: AppState,
}

/// Where the backup of this device stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The slot written (0 or 1).
    pub slot: u8,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Messages in it.
    pub messages: usize,
}

/// The stored backup settings.
struct BackupSettings {
    key: RecoveryKey,
    next_slot: u8,
    last: u64,
}

fn read_settings(h: &history::History) -> Result<Option<BackupSettings>, ClientError> {
    let Some(v) = h
        .store
        .get(Namespace::Meta, BACKUP_RECORD)
        .map_err(ClientError::Store)?
    else {
        return Ok(None);
    };
    let (key, rest) = v
        .split_at_checked(32)
        .ok_or(ClientError::Protocol("backup record"))?;
    let (slot, last) = rest
        .split_first()
        .ok_or(ClientError::Protocol("backup record"))?;
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| ClientError::Protocol("backup record"))?;
    let last: [u8; 8] = last
        .try_into()
        .map_err(|_| ClientError::Protocol("backup record"))?;
    Ok(Some(BackupSettings {
        key: RecoveryKey::from_bytes(&key),
        next_slot: *slot % hush_core::consts::BACKUP_SLOTS,
        last: u64::from_be_bytes(last),
    }))
}

fn write_settings(h: &mut history::History, s: &BackupSettings) -> Result<(), ClientError> {
    let mut v = Zeroizing::new(Vec::with_capacity(41));
    v.extend_from_slice(s.key.as_bytes());
    v.push(s.next_slot);
    v.extend_from_slice(&s.last.to_be_bytes());
    let mut batch = Batch::new();
    batch.put(Namespace::Meta, BACKUP_RECORD.to_vec(), v);
    h.store.commit(batch).map_err(ClientError::Store)
}

fn app_of(a: &app::AppBackup) -> AppState {
    AppState {
        name: a.name.clone(),
        contacts: a
            .contacts
            .iter()
            .filter_map(|c| {
                hush_net::username::normalize(&c.username)
                    .ok()
                    .zip(AccountId::from_bytes(&c.account).ok())
            })
            .collect(),
        settings: a
            .settings
            .iter()
            .map(|s| (s.key.clone(), s.value.clone()))
            .collect(),
    }
}

impl Shared {
    /// The application's part of an archive: the newest `per_conversation` messages of every
    /// conversation, and the application's state.
    fn app_backup(&self, per_conversation: usize) -> Result<Vec<u8>, ClientError> {
        let state = self
            .app_state
            .lock()
            .map_err(|_| ClientError::Closed)?
            .clone();
        let mut messages = Vec::new();
        {
            let h = self.lock_history()?;
            let mut convs: Vec<Vec<u8>> = h
                .by_key
                .keys()
                .map(|k| history::conv_part(k).to_vec())
                .collect();
            convs.dedup();
            convs.sort();
            convs.dedup();
            for ck in convs {
                let Some(conv) = conversation_of_conv(&ck) else {
                    continue;
                };
                for m in h.page(&conv, None, per_conversation) {
                    messages.push(app::BackupMessage {
                        conversation: ck.clone(),
                        message: Some(m),
                    });
                }
            }
        }
        let a = app::AppBackup {
            messages,
            name: state.name,
            contacts: state
                .contacts
                .iter()
                .map(|(u, a)| app::SyncedContact {
                    username: u.clone(),
                    account: a.as_bytes().to_vec(),
                })
                .collect(),
            settings: state
                .settings
                .iter()
                .map(|(k, v)| app::BackupSetting {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        };
        Ok(a.encode_to_vec())
    }

    /// Takes in the application's part of an archive: its messages are added to the history
    /// (those held already are skipped). Returns the messages added and the state.
    fn take_app_backup(&self, bytes: &[u8]) -> Result<(usize, AppState), ClientError> {
        let a = app::AppBackup::decode(bytes)
            .map_err(|_| ClientError::Protocol("the archive's application part"))?;
        let mut added = 0;
        let mut h = self.lock_history()?;
        for m in a.messages.iter() {
            let (Some(conv), Some(msg)) = (conversation_of_conv(&m.conversation), &m.message)
            else {
                continue;
            };
            let mut msg: StoredMessage = msg.clone();
            // Read on the old device, or before: nothing to tell anyone now.
            msg.read = true;
            msg.read_untold = false;
            if h.insert(&conv, msg)?.is_some() {
                added += 1;
            }
        }
        Ok((added, app_of(&a)))
    }

    /// Makes a backup now, if backups are on: seals the archive (with the account key) and
    /// uploads it to the next slot.
    async fn backup_now(&self) -> Result<Option<BackupReport>, ClientError> {
        let _one = self.backing_up.lock().await;
        let Some(mut settings) = read_settings(&*self.lock_history()?)? else {
            return Ok(None);
        };
        let app = self.app_backup(BACKUP_MESSAGES_PER_CONVERSATION)?;
        let archive = self.engine.export_archive(true, app)?;
        let messages =
            app::AppBackup::decode(archive.app.as_slice()).map_or(0, |a| a.messages.len());
        let archive_key = settings.key.archive_key()?;
        let sealed = seal_archive(&archive_key, &archive)?;
        let slot = settings.next_slot;
        self.engine
            .upload_backup(&settings.key, slot, &sealed)
            .await?;
        settings.next_slot = (slot + 1) % hush_core::consts::BACKUP_SLOTS;
        settings.last = now_ms();
        write_settings(&mut *self.lock_history()?, &settings)?;
        tracing::info!(slot, bytes = sealed.len(), "backup made");
        Ok(Some(BackupReport {
            slot,
            bytes: sealed.len() as u64,
            messages,
        }))
    }

    /// Downloads, opens and takes in a history transfer meant for this device.
    pub(super) async fn take_history(&self, t: &app::HistoryTransfer) -> Result<(), ClientError> {
        let key: [u8; 32] = t
            .key
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Protocol("history transfer key"))?;
        let key = Zeroizing::new(key);
        let events = self.events.clone();
        let progress = move |done: u64, total: u64| {
            let _ = events.send(MessengerEvent::HistoryProgress { done, total });
        };
        let sealed = self
            .engine
            .download_blob_with_progress(&t.blob_id, &t.capability, MAX_ARCHIVE_BLOB, &progress)
            .await?;
        let archive = open_archive(&key, &sealed)?;
        let summary = self.engine.import_archive(&archive)?;
        let (messages, app) = self.take_app_backup(&archive.app)?;
        tracing::info!(messages, "history transfer taken in");
        self.emit(MessengerEvent::HistoryImported(Box::new(Restored {
            messages,
            groups: summary.groups,
            app,
        })));
        Ok(())
    }
}

/// Waits for changes and refreshes the backup, at most once per [`BACKUP_REFRESH_INTERVAL`];
/// without changes, once it is [`BACKUP_MAX_AGE`] old (the relay lets blobs expire, so an idle
/// account's backup is written again well before).
pub(super) async fn refresher(shared: Arc<Shared>) {
    let mut changed = shared.changed.subscribe();
    let stop = shared.outbox_stop.clone();
    loop {
        let due = match shared.lock_history().and_then(|h| read_settings(&h)) {
            Ok(Some(s)) => s.last.saturating_add(BACKUP_MAX_AGE.as_millis() as u64),
            _ => u64::MAX,
        };
        // Checked at least daily: the clock may jump while the process sleeps.
        let nap = due.saturating_sub(now_ms()).min(DAY_MS);
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_millis(nap)) => if now_ms() < due { continue },
            () = stop.cancelled() => return,
        }
        let last = match shared.lock_history().and_then(|h| read_settings(&h)) {
            Ok(Some(s)) => s.last,
            _ => continue,
        };
        let wait = last
            .saturating_add(BACKUP_REFRESH_INTERVAL.as_millis() as u64)
            .saturating_sub(now_ms());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            () = stop.cancelled() => return,
        }
        if let Err(e) = shared.backup_now().await {
            tracing::info!(error = %e, "backup not refreshed; tried again after the next change");
        }
    }
}

impl Messenger {
    /// Tells the messenger the application's state that backups and history transfers carry.
    pub fn set_app_state(&self, state: AppState) {
        if let Ok(mut s) = self.shared.app_state.lock() {
            *s = state;
        }
    }

    /// Whether backups are on.
    pub fn backup_enabled(&self) -> Result<bool, ClientError> {
        Ok(read_settings(&*self.shared.lock_history()?)?.is_some())
    }

    /// Turns backups on (this device must hold the account key): makes a new recovery key,
    /// keeps it, and makes the first backup. Returns the key as the user writes it down: show
    /// it once. Backups on already are [`ClientError::Invalid`].
    pub async fn enable_backup(&self) -> Result<Zeroizing<String>, ClientError> {
        if !self.shared.engine.holds_account_key()? {
            return Err(ClientError::NotPermitted(
                "only the account's first device (the one that holds the account key) makes \
                 backups",
            ));
        }
        let key = {
            let mut h = self.shared.lock_history()?;
            if read_settings(&h)?.is_some() {
                return Err(ClientError::Invalid(
                    "backups are on already (their recovery key was shown when they were \
                     turned on)"
                        .into(),
                ));
            }
            let key = RecoveryKey::generate(&mut rng());
            write_settings(
                &mut h,
                &BackupSettings {
                    key: key.clone(),
                    next_slot: 0,
                    last: 0,
                },
            )?;
            key
        };
        self.shared.backup_now().await?;
        Ok(key.to_text())
    }

    /// Makes a backup now; `None` if backups are off.
    pub async fn backup_now(&self) -> Result<Option<BackupReport>, ClientError> {
        self.shared.backup_now().await
    }

    /// Sends the newest `last` messages of every conversation (at most
    /// [`MAX_TRANSFER_PER_CONVERSATION`]), with the account's groups, contacts and settings, to
    /// this account's newly linked device `device_id`: the archive is sealed under a fresh key
    /// and uploaded as a blob, and where it waits (blob id, capability, key) goes to the new
    /// device end to end. Returns the messages sent.
    pub async fn transfer_history(
        &self,
        device_id: u32,
        last: usize,
    ) -> Result<usize, ClientError> {
        let app = self
            .shared
            .app_backup(last.min(MAX_TRANSFER_PER_CONVERSATION))?;
        let messages = app::AppBackup::decode(app.as_slice()).map_or(0, |a| a.messages.len());
        let archive = self.shared.engine.export_archive(false, app)?;
        let mut key = Zeroizing::new([0u8; 32]);
        rng().fill(&mut key[..]);
        let sealed = seal_archive(&key, &archive)?;
        let (blob_id, capability) = self.shared.engine.upload_blob(&sealed).await?;
        let me = self.shared.me.account;
        let m = self.shared.wrap(
            &Conversation::Direct(me),
            app_message::Kind::HistoryTransfer(app::HistoryTransfer {
                device_id,
                blob_id,
                capability,
                key: key.to_vec(),
                size: sealed.len() as u64,
            }),
            false,
        );
        let bytes = Zeroizing::new(m.encode_to_vec());
        self.shared.engine.send(&me, &bytes).await?;
        Ok(messages)
    }

    /// Recovers an account from its backup on the relay of `cfg`, as a new device in an empty
    /// profile, with the recovery key the user wrote down (see [`Engine::restore`]): the
    /// history, groups and contacts come back, and backups go on with the same key.
    pub async fn restore(
        cfg: EngineConfig,
        recovery_key: &str,
    ) -> Result<(Self, mpsc::UnboundedReceiver<MessengerEvent>, Restored), ClientError> {
        let key = RecoveryKey::parse(recovery_key)?;
        let profile = cfg.profile.clone();
        if crate::profile::has_account(&profile) {
            return Err(ClientError::AccountExists);
        }
        let started = async {
            let history = super::history::open_history(&cfg)?;
            let (engine, rx, recovered) =
                Engine::restore(cfg, &key, &crate::conn::no_progress).await?;
            let groups = engine.groups()?.len();
            let (m, events) = Self::start(engine, rx, history)?;
            let (messages, app) = m.shared.take_app_backup(&recovered.archive.app)?;
            // The next backup goes to the other slot: the one restored from stays until a
            // newer backup is complete.
            write_settings(
                &mut *m.shared.lock_history()?,
                &BackupSettings {
                    key,
                    next_slot: recovered.slot.wrapping_add(1) % hush_core::consts::BACKUP_SLOTS,
                    last: 0,
                },
            )?;
            Ok((
                m,
                events,
                Restored {
                    messages,
                    groups,
                    app,
                },
            ))
        }
        .await;
        if started.is_err() {
            crate::profile::discard_new(&profile);
        }
        started
    }
}

/// An app message that is a history transfer for device `me`.
pub(super) fn transfer_for(m: &AppMessage, me: u32) -> Option<&app::HistoryTransfer> {
    match &m.kind {
        Some(app_message::Kind::HistoryTransfer(t)) if t.device_id == me => Some(t),
        _ => None,
    }
}
