//! The account around the conversations: usernames, push, groups, devices and their links, the
//! contacts synced to them, and safety numbers.

use crate::error::HushError;
use crate::types::{GroupInfo, SafetyNumber, parse_account, parse_accounts, parse_group};
use hush_client::ClientError;

use super::{HushClient, MAX_LINK_OFFERS, limit_wait};

#[uniffi::export]
impl HushClient {
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

    /// Registers a WebPush subscription as the push endpoint: what a UnifiedPush distributor
    /// hands the app (the endpoint `url`, the subscription's public key `p256dh`, 65 bytes, and
    /// its `auth` secret, 16 bytes). The relay encrypts each wake-up for it (still content-free)
    /// and signs it with its VAPID key. Remembered in the profile and registered again on every
    /// connection; `register_push("")` unregisters.
    pub async fn register_web_push(
        &self,
        url: String,
        p256dh: Vec<u8>,
        auth: Vec<u8>,
    ) -> Result<(), HushError> {
        if url.len() > 2048 {
            return Err(HushError::InvalidArgument(
                "push URL longer than 2048 bytes".into(),
            ));
        }
        let auth = zeroize::Zeroizing::new(auth);
        self.with(move |m| async move { Ok(m.register_web_push(&url, &p256dh, &auth).await?) })
            .await
    }

    /// The relay's VAPID public key, 65 bytes (an uncompressed P-256 point): the "application
    /// server key" a UnifiedPush distributor or push service may ask for when the app
    /// subscribes (most take it base64url-encoded without padding). `NotFound` when the relay
    /// signs no WebPush wake-ups.
    pub async fn push_server_key(&self) -> Result<Vec<u8>, HushError> {
        self.with(move |m| async move {
            match m.engine().push_server_key().await {
                Ok(key) => Ok(key.to_vec()),
                Err(ClientError::Refused(r))
                    if r.code == hush_proto::relay_api::ErrorCode::NotFound =>
                {
                    Err(HushError::NotFound(
                        "the relay signs no WebPush wake-ups (it has no VAPID key)".into(),
                    ))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Lets sealed messages into this device's queue from anyone (`true`), or only from
    /// contacts who hold its delivery key (`false`, the default). Remembered in the profile.
    pub async fn set_sealed_from_anyone(&self, anyone: bool) -> Result<(), HushError> {
        self.with(move |m| async move { Ok(m.engine().set_sealed_from_anyone(anyone).await?) })
            .await
    }

    /// Rotates this device's delivery key: whoever holds the old one can no longer send to it
    /// until this device writes to them again (the core of blocking someone).
    pub async fn rotate_delivery_key(&self) -> Result<(), HushError> {
        self.with(move |m| async move { Ok(m.engine().rotate_delivery_key().await?) })
            .await
    }

    /// Creates a group with `members` (account ids) and this account as admin; returns its id.
    /// `NotConnected` naming a group id means the creation may have reached the relay and is
    /// settled by the client itself once it is connected again (the group then shows with a
    /// `GroupsChanged` event): do not create it again.
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
        let offer = self.inner.messenger()?.engine().offer_link()?;
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

    /// Tells what backups and history transfers carry besides the history: the account's
    /// username and the contacts (call it at start and when they change).
    pub fn set_backup_contacts(
        &self,
        name: String,
        contacts: Vec<crate::types::Contact>,
    ) -> Result<(), HushError> {
        let parsed = contacts
            .iter()
            .map(|c| Ok((c.username.clone(), parse_account(&c.account_id)?)))
            .collect::<Result<Vec<_>, HushError>>()?;
        self.inner
            .messenger()?
            .set_app_state(hush_client::messenger::AppState {
                name,
                contacts: parsed,
                settings: Vec::new(),
            });
        Ok(())
    }

    /// Turns encrypted backups on (on the account's first device) and makes the first one;
    /// returns the recovery key: show it once, and have the user write it down.
    pub async fn enable_backup(&self) -> Result<String, HushError> {
        self.with(move |m| async move { Ok(m.enable_backup().await?.as_str().to_owned()) })
            .await
    }

    /// Makes a backup now; false if backups are off.
    pub async fn backup_now(&self) -> Result<bool, HushError> {
        self.with(move |m| async move { Ok(m.backup_now().await?.is_some()) })
            .await
    }

    /// Gives the newly linked device `device_id` the newest `last` messages of every
    /// conversation, with the groups and contacts; returns the messages sent. The new device
    /// reports `HistoryProgress` and `HistoryImported`.
    pub async fn transfer_history(&self, device_id: u32, last: u32) -> Result<u64, HushError> {
        self.with(
            move |m| async move { Ok(m.transfer_history(device_id, last as usize).await? as u64) },
        )
        .await
    }

    /// Removes one of this account's other devices (on the account's first device).
    pub async fn remove_device(&self, device_id: u32) -> Result<(), HushError> {
        self.with(move |m| async move {
            m.engine()
                .remove_device(device_id)
                .await
                .map_err(HushError::from)
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
}
