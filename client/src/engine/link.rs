//! Devices of the account: linking a new device through the relay's provisioning channel (the
//! code, the offer, the encrypted link message) and removing one.

use crate::conn::RelayConnection;
use crate::error::ClientError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hush_core::device::Device;
use hush_core::keys::AccountId;
use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
use rand::RngExt;
use std::time::Duration;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::{CONNECT_WAIT, Engine, EngineConfig, Event, now_ms, open_store, rng};
use crate::profile::GROUP_SYNC_FILE;

/// Prefix of a link code.
pub(super) const LINK_PREFIX: &str = "hush-link:";

/// How long a new device goes on offering its link message under a code no device offers yet
/// (the existing device offers it as it shows it) before saying the code is used or unknown.
pub(super) const LINK_OFFER_GRACE: Duration = Duration::from_secs(3);

/// How often the existing device asks the relay for the new device's answer (and the new
/// device offers its message again within [`LINK_OFFER_GRACE`]).
pub(super) const LINK_POLL: Duration = Duration::from_millis(300);

/// How long a new device keeps the connection that left its link message open, at most: as
/// long as the relay keeps the message (docs/RELAY_PROTOCOL.md §13).
pub(super) const LINK_HOLD: Duration = Duration::from_secs(10 * 60);

/// A device-link offer: the code to show, and the secret this device keeps to finish the link.
pub struct LinkOffer {
    /// `hush-link:` + hex(account id ‖ 32-byte secret). Whoever has it can ask to join the
    /// account until the link completes: show it only to the user.
    pub code: String,
    secret: Zeroizing<[u8; 32]>,
    /// Whether the code was offered at the relay (see [`Engine::open_link`]).
    opened: std::sync::atomic::AtomicBool,
}

/// The relay channel and the AEAD key of a link secret (HKDF-SHA256, distinct labels).
pub(super) fn link_keys(secret: &[u8; 32]) -> Result<([u8; 32], Zeroizing<[u8; 32]>), ClientError> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, secret);
    let mut channel = [0u8; 32];
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(b"Hush-Link-Channel-v1", &mut channel)
        .and_then(|()| hk.expand(b"Hush-Link-Key-v1", &mut key[..]))
        .map_err(|_| ClientError::Protocol("link key derivation"))?;
    Ok((channel, key))
}

impl Engine {
    /// Removes one of this account's devices (this device must hold the account key): signs and
    /// publishes the list without it; the relay cuts it off at once. Then every group the
    /// account is in gets a refresh entry carrying the new list, after which the group log
    /// accepts no change signed by the removed device (PROTOCOL.md §17.4).
    pub async fn remove_device(&self, device_id: u32) -> Result<(), ClientError> {
        let signed = {
            let mut d = self.inner.lock()?;
            if device_id == d.address().device_id {
                return Err(ClientError::Invalid(
                    "a device does not remove itself".into(),
                ));
            }
            if !d.holds_account_key() {
                return Err(ClientError::NotPermitted(
                    "only the account's first device (the one that created the account, which \
                     holds its key) can remove devices",
                ));
            }
            d.remove_device(device_id, now_ms())?
                .signed_bytes()
                .to_vec()
        };
        let conn = self.inner.current(CONNECT_WAIT).await?;
        conn.request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: signed,
            },
        ))
        .await?;
        let groups: Vec<_> = self.groups()?.into_iter().map(|(g, _)| g).collect();
        for g in groups {
            if let Err(e) = self.update_group(&g, &[], &[]).await {
                tracing::warn!(error = %e, "a group log was not refreshed after removing a device");
            }
        }
        Ok(())
    }

    /// The device ids on `account`'s list as this device last verified it.
    pub fn devices_of(&self, account: &AccountId) -> Result<Vec<u32>, ClientError> {
        Ok(self
            .inner
            .lock()?
            .device_list(account)
            .map(|l| l.list().devices.keys().copied().collect())
            .unwrap_or_default())
    }

    /// Starts linking a new device to this account (this device must hold the account key):
    /// returns the offer, whose `code` the user carries to the new device (as text or a QR
    /// code). Then call [`Engine::complete_link`].
    pub fn offer_link(&self) -> Result<LinkOffer, ClientError> {
        let d = self.inner.lock()?;
        if !d.holds_account_key() {
            return Err(ClientError::NotPermitted(
                "only the account's first device can link new devices",
            ));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        rng().fill(&mut secret[..]);
        let mut raw = d.address().account.as_bytes().to_vec();
        raw.extend_from_slice(&secret[..]);
        Ok(LinkOffer {
            code: format!("{LINK_PREFIX}{}", hex::encode(&raw)),
            secret,
            opened: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Waits (at most `wait`) for the new device of `offer` to answer, adds it to this
    /// account's signed device list and publishes the list. Returns the new device's id.
    pub async fn complete_link(
        &self,
        offer: &LinkOffer,
        wait: Duration,
    ) -> Result<u32, ClientError> {
        let (channel, key) = link_keys(&offer.secret)?;
        let deadline = tokio::time::Instant::now() + wait;
        if !offer.opened.load(std::sync::atomic::Ordering::SeqCst) {
            self.open_link(offer).await?;
        }
        let body = loop {
            let conn = self.inner.current(CONNECT_WAIT).await?;
            match conn
                .request(client_frame::Kind::ProvisionTake(api::ProvisionTake {
                    channel: channel.to_vec(),
                }))
                .await
            {
                Ok(server_frame::Kind::Provision(p)) => break p.body,
                Ok(_) => return Err(ClientError::Protocol("unexpected answer to a link poll")),
                Err(e) if RelayConnection::is_code(&e, ErrorCode::NotFound) || e.is_transient() => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ClientError::Timeout);
                    }
                    tokio::time::sleep(LINK_POLL).await;
                }
                Err(e) => return Err(e),
            }
        };
        let plain = ChaCha20Poly1305::new(&Key::from(*key))
            .decrypt(
                &Nonce::from([0u8; 12]),
                Payload {
                    msg: &body,
                    aad: &channel,
                },
            )
            .map_err(|_| ClientError::Protocol("the link answer does not decrypt"))?;
        // The new device's id, identity and consent to being listed (docs/PROTOCOL.md §3.1).
        let consent = hush_core::device_list::DeviceConsent::from_bytes(&plain)
            .map_err(|_| ClientError::Protocol("malformed link answer"))?;
        let device_id = consent.device_id;
        let signed = {
            let mut d = self.inner.lock()?;
            let me = d.address();
            let taken = d
                .device_list(&me.account)
                .is_some_and(|l| l.list().devices.contains_key(&device_id));
            if taken || device_id == 0 {
                return Err(ClientError::Protocol(
                    "the new device chose a taken device id",
                ));
            }
            d.add_device(&consent, now_ms())?.signed_bytes().to_vec()
        };
        let conn = self.inner.current(CONNECT_WAIT).await?;
        conn.request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: signed,
            },
        ))
        .await?;
        Ok(device_id)
    }

    /// Sets up this (new) device from a link `code` shown by an existing device of the account:
    /// creates its keys, answers the offer through the relay, and starts; the engine connects
    /// once the existing device has added it to the account's list.
    pub async fn link(
        cfg: EngineConfig,
        code: &str,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>), ClientError> {
        let raw = code
            .trim()
            .strip_prefix(LINK_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|r| r.len() == 64)
            .ok_or_else(|| ClientError::Invalid("not a link code".into()))?;
        let (account, secret) = raw.split_at(32);
        let account = AccountId::from_bytes(account)?;
        let mut s = Zeroizing::new([0u8; 32]);
        s.copy_from_slice(secret);
        let (channel, key) = link_keys(&s)?;
        let store = open_store(&cfg.profile, &cfg.at_rest_key)?;
        // Device ids are chosen by the new device at random (the existing device refuses a
        // taken one); 1 is the first device's.
        let device_id = rng().random_range(2..=u32::MAX / 2);
        let device = Device::create_linked(store, &mut rng(), account, device_id, now_ms())?;
        let plain = device.consent().to_bytes();
        let body = ChaCha20Poly1305::new(&Key::from(*key))
            .encrypt(
                &Nonce::from([0u8; 12]),
                Payload {
                    msg: &plain,
                    aad: &channel,
                },
            )
            .map_err(|_| ClientError::Protocol("link answer encryption failed"))?;
        let (conn, events) = RelayConnection::connect(cfg.relay, &cfg.pin).await?;
        // Not offered: the code was used, has expired or is mistyped — said at once, after a
        // short grace for an existing device that shows the code and offers it a moment later.
        let grace = tokio::time::Instant::now() + LINK_OFFER_GRACE;
        loop {
            match conn
                .request(client_frame::Kind::ProvisionPut(api::ProvisionPut {
                    channel: channel.to_vec(),
                    body: body.clone(),
                }))
                .await
            {
                Ok(_) => break,
                Err(e)
                    if RelayConnection::is_code(&e, ErrorCode::NotFound)
                        && tokio::time::Instant::now() < grace =>
                {
                    tokio::time::sleep(LINK_POLL).await;
                }
                Err(e) if RelayConnection::is_code(&e, ErrorCode::NotFound) => {
                    return Err(ClientError::LinkCodeUnknown);
                }
                Err(e) => return Err(e),
            }
        }
        // Once connected, ask the account's other devices for its groups.
        crate::private_fs::write_atomic(&cfg.profile.join(GROUP_SYNC_FILE), b"")
            .map_err(|e| ClientError::Profile(e.to_string()))?;
        let (engine, rx) = Self::start(cfg, device);
        // The relay keeps the link message only while the connection that left it is open: hold
        // it until this device is on the account's list (the engine has authenticated), the
        // message has expired, or the engine stops.
        // (It holds no reference to the engine, whose store must close when the engine stops.)
        let mut connection = engine.inner.conn.subscribe();
        let stop = engine.inner.shutdown.clone();
        tokio::spawn(async move {
            let _events = events;
            let linked = connection.wait_for(|c| c.as_ref().is_some_and(|c| c.is_open()));
            tokio::select! {
                _ = tokio::time::timeout(LINK_HOLD, linked) => {}
                () = stop.cancelled() => {}
                () = conn.closed() => {}
            }
            conn.close();
        });
        Ok((engine, rx))
    }

    /// Offers `offer`'s code at the relay: from now on (for 10 minutes) one new device may
    /// answer it; a used, expired or mistyped code is refused there at once. Call it as the code
    /// is shown; [`Self::complete_link`] calls it if it was not.
    pub async fn open_link(&self, offer: &LinkOffer) -> Result<(), ClientError> {
        let (channel, _) = link_keys(&offer.secret)?;
        self.inner
            .current(CONNECT_WAIT)
            .await?
            .request(client_frame::Kind::ProvisionOffer(api::ProvisionOffer {
                channel: channel.to_vec(),
            }))
            .await?;
        offer
            .opened
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
