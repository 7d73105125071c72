//! Backups and history transfer at the engine's level (docs/PROTOCOL.md §22): the core's
//! archive of the account state, sealed and kept on the relay as blobs; the recovery of an
//! account from its backup by a new device (RELAY_PROTOCOL.md §16: named uploads,
//! RecoverDeviceList).

use hush_core::backup::{self, BackupError, RecoveryKey};
use hush_core::device::{Device, ImportSummary, decode_archive};
use hush_core::keys::AccountId;
use hush_proto::relay_api::{self as api, client_frame, server_frame};
use hush_proto::store as pstore;
use rand::RngExt;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::{CONNECT_WAIT, Engine, EngineConfig, Event, now_ms, open_store, rng};
use crate::conn::{Progress, RelayConnection};
use crate::error::ClientError;

/// Largest archive blob a device downloads (a bound on memory; the relay's own blob cap is
/// usually lower).
pub const MAX_ARCHIVE_BLOB: usize = hush_core::consts::MAX_BACKUP_BYTES + (1 << 20);

impl Engine {
    /// Whether this device holds the account key (only such a device makes backups a recovery
    /// can use: the archive carries the key).
    pub fn holds_account_key(&self) -> Result<bool, ClientError> {
        Ok(self.inner.lock()?.holds_account_key())
    }

    /// The core's archive of this device's account state, with the application's part `app`;
    /// with `with_account_secret`, the account key's secret too (a backup).
    pub fn export_archive(
        &self,
        with_account_secret: bool,
        app: Vec<u8>,
    ) -> Result<pstore::BackupArchive, ClientError> {
        Ok(self
            .inner
            .lock()?
            .export_backup(with_account_secret, app, now_ms())?)
    }

    /// Takes in an archive of this account (history transfer): device lists and group records
    /// this device lacks. Groups now known are reported.
    pub fn import_archive(
        &self,
        archive: &pstore::BackupArchive,
    ) -> Result<ImportSummary, ClientError> {
        let summary = self.inner.lock()?.import_backup(archive, now_ms())?;
        if summary.group_records > 0 {
            self.inner.emit(Event::GroupsChanged);
        }
        Ok(summary)
    }

    /// Uploads a sealed archive to the backup slot `slot` of `key` (a named upload that
    /// replaces the slot's previous blob).
    pub async fn upload_backup(
        &self,
        key: &RecoveryKey,
        slot: u8,
        sealed: &[u8],
    ) -> Result<(), ClientError> {
        let s = key.slot(slot)?;
        let conn = self.inner.current(CONNECT_WAIT).await?;
        conn.upload_named_blob(
            sealed,
            Some((&s.blob_id[..], &s.capability[..])),
            &crate::conn::no_progress,
        )
        .await?;
        Ok(())
    }

    /// Recovers the account whose backup `key` names, as a new device in the empty profile of
    /// `cfg`: downloads both backup slots (on an anonymous connection), takes the newest that
    /// opens, creates a new device holding the account key with a device list that replaces
    /// every earlier device, publishes that list with `RecoverDeviceList`, and starts. Returns
    /// the archive (its application part is the caller's) and the slot it came from.
    pub async fn restore(
        cfg: EngineConfig,
        key: &RecoveryKey,
        progress: Progress<'_>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>, Recovered), ClientError> {
        let (conn, mut events) = RelayConnection::connect(cfg.relay, &cfg.pin).await?;
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        conn.request(client_frame::Kind::Anonymous(api::Anonymous {}))
            .await?;
        let archive_key = key.archive_key()?;
        let mut best: Option<(pstore::BackupArchive, u8)> = None;
        let mut refused: Option<BackupError> = None;
        for slot in 0..hush_core::consts::BACKUP_SLOTS {
            let s = key.slot(slot)?;
            let sealed = match conn
                .download_blob(&s.blob_id, &s.capability[..], MAX_ARCHIVE_BLOB, progress)
                .await
            {
                Ok(b) => b,
                Err(ClientError::BlobGone) => continue,
                Err(e) => return Err(e),
            };
            let archive = match backup::open(&archive_key, &sealed)
                .map_err(ClientError::from)
                .and_then(|plain| Ok(decode_archive(&plain)?))
            {
                Ok(a) => a,
                Err(ClientError::Backup(e)) => {
                    tracing::warn!(slot, error = %e, "a backup slot does not open");
                    refused = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if best
                .as_ref()
                .is_none_or(|(b, _)| archive.created_at > b.created_at)
            {
                best = Some((archive, slot));
            }
        }
        let Some((archive, slot)) = best else {
            conn.close();
            return Err(refused.map_or(ClientError::NoBackup, ClientError::Backup));
        };
        let account = AccountId::from_bytes(&archive.account_key)?;
        // The list the relay holds now (it may be newer than the archive's).
        let held = match conn
            .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
                account: account.as_bytes().to_vec(),
            }))
            .await
        {
            Ok(server_frame::Kind::DeviceList(l)) => Some(l.signed_device_list),
            Ok(_) => return Err(ClientError::Protocol("unexpected answer to a list fetch")),
            Err(e) if RelayConnection::is_code(&e, api::ErrorCode::NotFound) => None,
            Err(e) => return Err(e),
        };
        conn.close();
        let own: Vec<&[u8]> = held.iter().map(Vec::as_slice).collect();
        let store = open_store(&cfg.profile, &cfg.at_rest_key)?;
        let device_id = rng().random_range(2..=u32::MAX / 2);
        let device = Device::restore(store, &mut rng(), &archive, &own, device_id, &[], now_ms())?;
        let list = device
            .device_list(&account)
            .map(|l| l.signed_bytes().to_vec())
            .ok_or(ClientError::Protocol(
                "a recovered account has no device list",
            ))?;
        let (conn, _events) = RelayConnection::connect(cfg.relay, &cfg.pin).await?;
        conn.request(client_frame::Kind::RecoverDeviceList(
            api::RecoverDeviceList {
                signed_device_list: list,
            },
        ))
        .await?;
        conn.close();
        tracing::info!("account recovered from its backup as a new device");
        let (engine, rx) = Self::start(cfg, device);
        Ok((engine, rx, Recovered { archive, slot }))
    }
}

/// What [`Engine::restore`] recovered.
pub struct Recovered {
    /// The archive taken (the newest that opened).
    pub archive: pstore::BackupArchive,
    /// The backup slot it came from.
    pub slot: u8,
}

/// Seals an archive's plaintext under `archive_key` (a fresh nonce).
pub fn seal_archive(
    archive_key: &[u8; 32],
    archive: &pstore::BackupArchive,
) -> Result<Vec<u8>, ClientError> {
    let plain = Zeroizing::new(prost::Message::encode_to_vec(archive));
    Ok(backup::seal(archive_key, &plain, &mut rng())?)
}

/// Opens a sealed archive and decodes it.
pub fn open_archive(
    archive_key: &[u8; 32],
    sealed: &[u8],
) -> Result<pstore::BackupArchive, ClientError> {
    let plain = backup::open(archive_key, sealed)?;
    Ok(decode_archive(&plain)?)
}
