//! Who is on the connection: the challenge, authentication (a signature over the TLS exporter
//! and the challenge by a listed device), account creation, and the device-linking channel.

use std::sync::Arc;
use std::time::Duration;

use hush_proto::relay_api::{self as api, ErrorCode, server_frame};

use super::{ConnState, Now, Phase, Refusal, Reply, arr};
use crate::admit::LinkRefused;
use crate::limits;
use crate::router::{Handle, Live};
use crate::shared::{AccountDevices, Relay, address_block, random};
use crate::store::DeviceId;
use crate::verify::{self, CheckedList};

impl ConnState {
    pub(super) fn hello(&mut self) -> server_frame::Kind {
        let nonce = random::<{ limits::CHALLENGE_LEN }>();
        if matches!(self.phase, Phase::Open | Phase::Challenged(_)) {
            self.phase = Phase::Challenged(nonce);
        }
        server_frame::Kind::Challenge(api::Challenge {
            nonce: nonce.to_vec(),
        })
    }

    pub(super) fn authenticate(
        &mut self,
        relay: &Arc<Relay>,
        a: &api::Authenticate,
    ) -> Result<server_frame::Kind, Refusal> {
        // A challenge is good for one attempt.
        let challenge = match self.phase {
            Phase::Device(_) => {
                return Err(Refusal::new(
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is already authenticated",
                ));
            }
            Phase::Open => {
                return Err(Refusal::new(
                    ErrorCode::AuthFailed,
                    "no challenge outstanding",
                ));
            }
            Phase::Anonymous => {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "this connection declared itself anonymous",
                ));
            }
            Phase::Challenged(c) => c,
        };
        self.phase = Phase::Open;
        let account: [u8; 32] = arr(&a.account, "account")?;
        let devices = relay
            .devices_of_within(&account, std::time::Duration::ZERO)?
            .ok_or_else(|| Refusal::new(ErrorCode::AuthFailed, "unknown account"))?;
        let listed = devices.devices.get(&a.device_id).ok_or_else(|| {
            Refusal::new(ErrorCode::DeviceRevoked, "device not on the account's list")
        })?;
        let transcript = verify::auth_transcript(&self.exporter, &challenge, &account, a.device_id);
        verify::auth_signature(&listed.signing_key, &transcript, &a.signature)
            .map_err(|_| Refusal::new(ErrorCode::AuthFailed, "bad authentication signature"))?;
        let device = DeviceId {
            account,
            device: a.device_id,
        };
        // Counted against the account only once the proof holds: nobody learns anything about
        // an account they cannot authenticate as.
        let slot = relay.admission.account(account).ok_or_else(|| {
            Refusal::new(
                ErrorCode::TooManyConnections,
                "too many connections for this account",
            )
        })?;
        let handle = Handle {
            conn_id: self.id,
            tx: self.tx.clone(),
            pending: Arc::clone(&self.pending),
        };
        if let Some(old) = relay.router.register(device, handle)
            && old.conn_id != self.id
        {
            old.send(Live::Replaced);
        }
        // A list published between the check above and the registration could not reach this
        // connection with its revocation: check again now that it is registered.
        let still = relay
            .devices_of_within(&account, std::time::Duration::ZERO)?
            .and_then(|d| d.devices.get(&a.device_id).map(|l| l.signing_key));
        if still != Some(listed.signing_key) {
            relay.router.unregister(&device, self.id);
            return Err(Refusal::new(
                ErrorCode::DeviceRevoked,
                "device not on the account's list",
            ));
        }
        self.phase = Phase::Device(device);
        self.account_slot = Some(slot);
        tracing::debug!(conn = self.id, "device authenticated");
        // Catch up with what was queued while away (then `QueueDrained`).
        self.need_fetch = true;
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    /// Tells a device whose stock of one-time keys runs low (right after authentication).
    pub(super) fn tell_if_pre_keys_low(&mut self, relay: &Relay, device: &DeviceId) {
        if let Ok((otk, kem)) = relay.store.pre_key_counts(device)
            && (otk < limits::PRE_KEYS_LOW || kem < limits::PRE_KEYS_LOW)
        {
            // Told now: claims during this low spell do not tell it again.
            relay.first_low(device);
            relay.metrics.pre_keys_low_sent.inc();
            self.push(
                0,
                server_frame::Kind::PreKeysLow(api::PreKeysLow {
                    one_time_left: u32::try_from(otk).unwrap_or(u32::MAX),
                    kem_left: u32::try_from(kem).unwrap_or(u32::MAX),
                }),
            );
        }
    }

    pub(super) fn create_account(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        c: &api::CreateAccount,
        now: Now,
    ) -> Result<Reply, Refusal> {
        relay
            .rate_limiters
            .accounts
            .check(&address_block(self.remote), 1, now.at)
            .map_err(Refusal::rate)?;
        let max = relay.cfg.max_devices_per_account as usize;
        let checked = CheckedList::check(&c.signed_device_list, None, max)?;
        let devices =
            AccountDevices::from_signed(&c.signed_device_list, Some(&checked.account), max)?;
        let signed = c.signed_device_list.clone();
        self.submit(relay, rid, true, move |r| {
            r.store
                .create_account(&checked.account, checked.version, &signed)?;
            r.cache_list(checked.account, devices);
            tracing::info!("account created");
            Ok(server_frame::Kind::Ok(api::Ok {}))
        });
        Ok(Reply::Later)
    }

    /// Leaves a new device's link message. It belongs to this connection: it is removed when
    /// taken, after [`limits::PROVISION_TTL_MS`], or when this connection ends; an
    /// unauthenticated connection that holds one stays open until it expires.
    pub(super) fn provision_put(
        &mut self,
        relay: &Arc<Relay>,
        p: api::ProvisionPut,
        now: Now,
    ) -> Result<server_frame::Kind, Refusal> {
        let channel: [u8; 32] = arr(&p.channel, "channel")?;
        if p.body.is_empty() || p.body.len() > limits::MAX_PROVISION_BYTES {
            return Err(Refusal::new(ErrorCode::TooLarge, "link message size"));
        }
        // One code, one new device: on a cluster the offer (made through any node) is taken
        // now, atomically, whatever happens next; a single relay uses its own up below.
        let offered = if relay.shared_store() {
            relay.store.take_shared_offer(&channel)?
        } else {
            relay.admission.is_offered(&channel, now.wall_ms)
        };
        if !offered {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                "no device offers this link code: it was used, it expired, or it is mistyped",
            ));
        }
        relay
            .rate_limiters
            .accounts
            .check(&address_block(self.remote), 1, now.at)
            .map_err(Refusal::rate)?;
        let ttl = Duration::from_millis(limits::PROVISION_TTL_MS);
        let expires_at = now.wall_ms.saturating_add(limits::PROVISION_TTL_MS);
        let block = address_block(self.remote);
        let guard = relay
            .admission
            .put_link(
                self.remote,
                channel,
                p.body.clone(),
                now.wall_ms,
                expires_at,
                self.link.as_ref(),
            )
            .map_err(|refused| match refused {
                LinkRefused::BlockFull { retry_after_ms } => {
                    let mut r = Refusal::new(
                        ErrorCode::RateLimited,
                        "too many pending links from this address block",
                    );
                    r.retry_after_ms = retry_after_ms;
                    r
                }
                LinkRefused::TableFull { retry_after_ms } => {
                    tracing::info!("link refused: the table of pending links is full");
                    let mut r = Refusal::new(
                        ErrorCode::LinkTableFull,
                        "the relay's table of pending links is full",
                    );
                    r.retry_after_ms = retry_after_ms;
                    r
                }
            });
        let guard = match guard {
            Ok(g) => g,
            Err(r) => {
                // Refused: the address keeps its token.
                relay.rate_limiters.accounts.refund(&block, 1);
                return Err(r);
            }
        };
        self.link = Some(guard);
        // The existing device may be on another node of a cluster: it finds the message there.
        relay
            .store
            .share_link(&channel, &p.body, limits::PROVISION_TTL_MS)?;
        // One code, one new device.
        relay.admission.use_offer(&channel);
        if self.device().is_none() {
            // The new device waits on this connection for its link to be taken.
            self.auth_deadline = self.auth_deadline.max(now.at + ttl);
        }
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    /// Opens a link offer for the channel of the code this (existing) device shows.
    pub(super) fn provision_offer(
        &mut self,
        relay: &Relay,
        o: &api::ProvisionOffer,
        now: Now,
    ) -> Result<server_frame::Kind, Refusal> {
        let account = self.me()?.account;
        let channel: [u8; 32] = arr(&o.channel, "channel")?;
        let expires_at = now.wall_ms.saturating_add(limits::PROVISION_TTL_MS);
        relay
            .admission
            .offer_link(account, channel, now.wall_ms, expires_at)
            .map_err(|refused| {
                let (code, why, retry) = match refused {
                    LinkRefused::BlockFull { retry_after_ms } => (
                        ErrorCode::RateLimited,
                        "this account has too many link codes open",
                        retry_after_ms,
                    ),
                    LinkRefused::TableFull { retry_after_ms } => (
                        ErrorCode::LinkTableFull,
                        "the relay's table of link offers is full",
                        retry_after_ms,
                    ),
                };
                let mut r = Refusal::new(code, why);
                r.retry_after_ms = retry;
                r
            })?;
        // The new device may reach another node of a cluster.
        relay
            .store
            .share_offer(&channel, &account, limits::PROVISION_TTL_MS)?;
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    pub(super) fn provision_take(
        &mut self,
        relay: &Relay,
        t: &api::ProvisionTake,
        now: Now,
    ) -> Result<server_frame::Kind, Refusal> {
        self.me()?;
        let channel: [u8; 32] = arr(&t.channel, "channel")?;
        // Taken once, wherever it was left: the copy shared with other nodes goes too.
        let local = relay.admission.take_link(&channel, now.wall_ms);
        let shared = relay.store.take_shared_link(&channel)?;
        match local.or(shared) {
            Some(body) => Ok(server_frame::Kind::Provision(api::ProvisionResult { body })),
            None => Err(Refusal::new(ErrorCode::NotFound, "no link message yet")),
        }
    }
}
