//! Groups: creating and changing them, sending to every member account (going on past one that
//! cannot be reached), and asking sibling devices for the account's groups after a link.

use crate::conn::RelayConnection;
use crate::error::ClientError;
use crate::profile::GROUP_SYNC_FILE;
use hush_core::device::Outgoing;
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::sender_key::GroupId;
use hush_core::{Error as CoreError, ProtocolError};
use hush_proto::client::sealed;
use hush_proto::relay_api::{self as api, ErrorCode, client_frame};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::send::SEND_ATTEMPTS;
use super::{CONNECT_WAIT, Engine, Inner, now_ms, rng};

/// What a group send reached: per member account (this account's own devices not counted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupDelivery {
    /// Member accounts whose devices the relay took the message for.
    pub delivered: Vec<AccountId>,
    /// Member accounts it could not be given to.
    pub failed: Vec<GroupFailure>,
}

/// A member account a group message did not reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupFailure {
    /// The account.
    pub account: AccountId,
    /// Why (for the user).
    pub reason: String,
    /// Refused for good ([`ClientError::is_permanent`]): sending again will not help.
    pub permanent: bool,
}

/// Whether a failure concerns one recipient account only (its list, pre-keys, or the relay's
/// refusal of its envelopes), so that a group send goes on with the others; otherwise (the
/// connection, the local store) it concerns every recipient.
pub(super) fn is_account_failure(e: &ClientError) -> bool {
    match e {
        ClientError::Refused(r) => !matches!(
            r.code,
            ErrorCode::Draining | ErrorCode::Unauthenticated | ErrorCode::Internal
        ),
        ClientError::Store(_) => false,
        ClientError::Core(_) | ClientError::Protocol(_) => true,
        _ => false,
    }
}

impl Engine {
    /// Creates a group with this account as admin and `members` (accounts) as members, and tells
    /// every member device. Returns the group id.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[AccountId],
    ) -> Result<GroupId, ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        for m in members {
            self.inner.refresh_list(&conn, m).await?;
        }
        let devices: Vec<DeviceAddress> = {
            let me = self.inner.lock()?.address();
            let d = self.inner.lock()?;
            let mut out = Vec::new();
            for m in members.iter().chain(std::iter::once(&me.account)) {
                if let Some(l) = d.device_list(m) {
                    out.extend(l.addresses().filter(|a| *a != me));
                }
            }
            out
        };
        self.inner.ensure_sessions(&conn, &devices).await?;
        let (g, outgoing) = self
            .inner
            .lock()?
            .create_group(name, members, &mut rng(), now_ms())?;
        self.inner
            .send_outgoing_checked(&conn, outgoing, false)
            .await?;
        Ok(g)
    }

    /// Sends `plaintext` to group `g`: one sender-key encryption, the same bytes to every member
    /// device (sender-key distributions first, where needed). A member account that cannot be
    /// reached (its device list or pre-keys cannot be fetched, the relay refuses its envelopes)
    /// does not stop the others: it is reported in [`GroupDelivery::failed`]. An error means
    /// nobody got it (no connection, unknown group, a local failure).
    pub async fn send_group(
        &self,
        g: &GroupId,
        plaintext: &[u8],
    ) -> Result<GroupDelivery, ClientError> {
        let r = self.group_send(g, plaintext, false, None).await;
        self.inner.after(r)
    }

    /// As [`Self::send_group`], to the member accounts in `only` (a message that some members
    /// did not get yet); accounts no longer members are left out.
    pub async fn send_group_to(
        &self,
        g: &GroupId,
        plaintext: &[u8],
        only: &[AccountId],
    ) -> Result<GroupDelivery, ClientError> {
        self.group_send(g, plaintext, false, Some(only)).await
    }

    /// Sends `plaintext` to the member devices of group `g` that are connected right now (typing,
    /// presence): never stored by the relay. Sender-key distributions it needs are stored.
    pub async fn send_group_ephemeral(
        &self,
        g: &GroupId,
        plaintext: &[u8],
    ) -> Result<(), ClientError> {
        self.group_send(g, plaintext, true, None).await.map(|_| ())
    }

    pub(super) async fn group_send(
        &self,
        g: &GroupId,
        plaintext: &[u8],
        ephemeral: bool,
        only: Option<&[AccountId]>,
    ) -> Result<GroupDelivery, ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        let me = self.inner.lock()?.address();
        let (members, unknown): (Vec<AccountId>, Vec<AccountId>) = {
            let d = self.inner.lock()?;
            let entry = d.group(g).ok_or(ClientError::Core(CoreError::Protocol(
                ProtocolError::UnknownGroup,
            )))?;
            let members: Vec<AccountId> = entry.state().members.keys().copied().collect();
            let unknown = members
                .iter()
                .filter(|a| d.device_list(a).is_none())
                .copied()
                .collect();
            (members, unknown)
        };
        // Accounts not to send to this time: outside `only`, or failed (with why).
        let mut skip: BTreeSet<AccountId> = members
            .iter()
            .filter(|a| only.is_some_and(|o| !o.contains(a)) && **a != me.account)
            .copied()
            .collect();
        let mut failed: BTreeMap<AccountId, ClientError> = BTreeMap::new();
        // Members whose device list this device has not seen yet (it learned them from the
        // group's log): fetch and verify their lists first.
        let to_fetch: Vec<AccountId> = unknown.into_iter().filter(|a| !skip.contains(a)).collect();
        for a in &to_fetch {
            if let Err(e) = self.inner.refresh_list(&conn, a).await {
                if !is_account_failure(&e) {
                    return Err(e);
                }
                failed.insert(*a, e);
                skip.insert(*a);
            }
        }
        let mut delivered: BTreeSet<AccountId> = BTreeSet::new();
        // Accounts still to reach after a device-set change; `None`: all not skipped.
        let mut remaining: Option<BTreeSet<AccountId>> = None;
        for attempt in 0..SEND_ATTEMPTS {
            // Sessions, per account: one whose bundles cannot be fetched is left out.
            let devices = self.inner.lock()?.group_devices(g)?;
            let accounts: BTreeSet<AccountId> = devices.iter().map(|d| d.account).collect();
            let to_reach: Vec<AccountId> =
                accounts.into_iter().filter(|a| !skip.contains(a)).collect();
            for a in &to_reach {
                let of: Vec<DeviceAddress> = devices
                    .iter()
                    .filter(|d| d.account == *a)
                    .copied()
                    .collect();
                if let Err(e) = self.inner.ensure_sessions(&conn, &of).await {
                    if !is_account_failure(&e) {
                        return Err(e);
                    }
                    failed.insert(*a, e);
                    skip.insert(*a);
                }
            }
            let left_out: Vec<AccountId> = skip.iter().copied().collect();
            let send = self.inner.lock()?.group_encrypt_except(
                g,
                plaintext,
                &left_out,
                &mut rng(),
                now_ms(),
            )?;
            // Distributions, per account: a refused one leaves that account out of the message.
            let dist_accounts: BTreeSet<AccountId> =
                send.distributions.iter().map(|o| o.to.account).collect();
            let mut dists = send.distributions;
            for a in dist_accounts {
                let (mine, rest): (Vec<Outgoing>, Vec<Outgoing>) =
                    dists.into_iter().partition(|o| o.to.account == a);
                dists = rest;
                if let Err(e) = self.inner.send_outgoing_checked(&conn, mine, true).await {
                    if !is_account_failure(&e) {
                        return Err(e);
                    }
                    failed.insert(a, e);
                    skip.insert(a);
                }
            }
            let accounts: BTreeSet<AccountId> = send
                .recipients
                .iter()
                .map(|r| r.account)
                .filter(|a| !skip.contains(a))
                .filter(|a| remaining.as_ref().is_none_or(|r| r.contains(a)))
                .collect();
            let mut again = BTreeSet::new();
            for account in accounts {
                // The one group ciphertext, sealed to each device on its own: the relay sees
                // envelopes to devices, not a group (PROTOCOL.md §21).
                // A device removed from the list since the message was prepared is left out.
                let envelopes = {
                    let d = self.inner.lock()?;
                    let mut out = Vec::new();
                    for r in send.recipients.iter().filter(|r| r.account == account) {
                        let inner = sealed::Kind::Group(send.message.clone());
                        out.extend(super::sealed::envelope_if_listed(&d, r, inner)?);
                    }
                    out
                };
                if envelopes.is_empty() {
                    continue;
                }
                let sent = if ephemeral {
                    self.inner
                        .send_request(&conn, account.as_bytes(), envelopes, |envelopes| {
                            client_frame::Kind::SendEphemeral(api::SendEphemeral {
                                recipient_account: account.as_bytes().to_vec(),
                                envelopes,
                            })
                        })
                        .await
                        .map(|_| ())
                } else {
                    self.inner
                        .send_envelopes(&conn, *account.as_bytes(), envelopes, false)
                        .await
                };
                match sent {
                    Ok(()) => {
                        delivered.insert(account);
                    }
                    Err(e)
                        if RelayConnection::is_code(&e, ErrorCode::DeviceMismatch)
                            && attempt + 1 < SEND_ATTEMPTS =>
                    {
                        // A member's devices changed: nothing was queued for that account. Learn
                        // its list and encrypt again for it (new devices get the sender key).
                        if let Err(e) = self.inner.refresh_list(&conn, &account).await {
                            if !is_account_failure(&e) {
                                return Err(e);
                            }
                            failed.insert(account, e);
                            skip.insert(account);
                        } else {
                            again.insert(account);
                        }
                    }
                    Err(e) if is_account_failure(&e) => {
                        failed.insert(account, e);
                        skip.insert(account);
                    }
                    Err(e) => return Err(e),
                }
            }
            if again.is_empty() {
                break;
            }
            remaining = Some(again);
        }
        delivered.remove(&me.account);
        if let Some(e) = failed.remove(&me.account) {
            tracing::warn!(error = %e, "a group message did not reach this account's other devices");
        }
        Ok(GroupDelivery {
            delivered: delivered.into_iter().collect(),
            failed: failed
                .into_iter()
                .map(|(account, e)| GroupFailure {
                    account,
                    permanent: e.is_permanent(),
                    reason: e.to_string(),
                })
                .collect(),
        })
    }

    /// Changes a group (this device's account must be an admin): adds `add` (accounts, with
    /// whether each is an admin), removes `remove`, and tells every member device.
    pub async fn update_group(
        &self,
        g: &GroupId,
        add: &[(AccountId, bool)],
        remove: &[AccountId],
    ) -> Result<(), ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        // Every member's current devices (and the added accounts'): a change must reach them all.
        let members: Vec<AccountId> = {
            let d = self.inner.lock()?;
            let entry = d.group(g).ok_or(ClientError::Core(CoreError::Protocol(
                ProtocolError::UnknownGroup,
            )))?;
            entry.state().members.keys().copied().collect()
        };
        for a in members.iter().chain(add.iter().map(|(a, _)| a)) {
            self.inner.refresh_list(&conn, a).await?;
        }
        let mut devices = self.inner.lock()?.group_devices(g)?;
        {
            let d = self.inner.lock()?;
            let me = d.address();
            for (a, _) in add {
                if let Some(l) = d.device_list(a) {
                    devices.extend(l.addresses().filter(|x| *x != me));
                }
            }
        }
        self.inner.ensure_sessions(&conn, &devices).await?;
        let outgoing =
            self.inner
                .lock()?
                .update_group(g, add, remove, None, &mut rng(), now_ms())?;
        self.inner
            .send_outgoing_checked(&conn, outgoing, false)
            .await
    }

    /// The groups this device is in: (id, name).
    pub fn groups(&self) -> Result<Vec<(GroupId, String)>, ClientError> {
        let d = self.inner.lock()?;
        let me = d.address().account;
        // A group this account was removed from is kept (its log) but no longer listed.
        Ok(d.group_ids()
            .into_iter()
            .filter_map(|g| {
                d.group(&g)
                    .filter(|e| e.state().members.contains_key(&me))
                    .map(|e| (g, e.state().name.clone()))
            })
            .collect())
    }

    /// The member accounts of group `g` as this device knows them (empty for an unknown group).
    pub fn group_members(&self, g: &GroupId) -> Result<Vec<AccountId>, ClientError> {
        let d = self.inner.lock()?;
        Ok(d.group(g)
            .map(|e| e.state().members.keys().copied().collect())
            .unwrap_or_default())
    }
}

impl Inner {
    /// A newly linked device asks its siblings for the logs of the account's groups (once; the
    /// marker file is removed when the requests are on the relay).
    pub(super) async fn sync_groups_from_siblings(
        &self,
        conn: &Arc<RelayConnection>,
    ) -> Result<(), ClientError> {
        let marker = self.profile.join(GROUP_SYNC_FILE);
        if !marker.exists() {
            return Ok(());
        }
        let siblings: Vec<DeviceAddress> = {
            let d = self.lock()?;
            let me = d.address();
            d.device_list(&me.account)
                .map(|l| l.addresses().filter(|a| *a != me).collect())
                .unwrap_or_default()
        };
        self.ensure_sessions(conn, &siblings).await?;
        let out = self.lock()?.request_group_sync(&mut rng(), now_ms())?;
        self.send_outgoing_checked(conn, out, true).await?;
        std::fs::remove_file(&marker).map_err(|e| ClientError::Profile(e.to_string()))?;
        Ok(())
    }
}
