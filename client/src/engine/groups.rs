//! Groups: creating and changing them (and sending the pending notices of this device's changes
//! until the relay takes them), sending to every member account (going on past one that
//! cannot be reached), and asking sibling devices for the account's groups after a link.

use crate::conn::RelayConnection;
use crate::error::ClientError;
use crate::profile::GROUP_SYNC_FILE;
use hush_core::device::{NoticeKey, Outgoing, PendingNotice};
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::sender_key::GroupId;
use hush_core::{Error as CoreError, ProtocolError};
use hush_proto::client::sealed;
use hush_proto::relay_api::{self as api, ErrorCode, client_frame};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::send::SEND_ATTEMPTS;
use super::{CONNECT_WAIT, Engine, Event, Inner, now_ms, rng};
use crate::conn::GroupLogAppend;
use hush_core::device::{CreationDropped, GroupLogUpdate, LogCheck, PendingCreation};

/// How many times a group creation whose append went unanswered is checked against its log
/// (over a new connection each time) before `create_group` leaves it to later connections.
const CREATION_ATTEMPTS: u32 = 3;

/// What checking a pending group creation against its log found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Creation {
    /// It is in the log: the group is stored.
    Landed,
    /// It cannot land (the slot holds another log, or the relay refused it): given up.
    Dropped,
    /// Not known yet: still pending.
    Pending,
}

/// How many times a group change is built again after losing its log position to another
/// member's change, before giving up.
const GROUP_LOG_ATTEMPTS: u32 = 8;

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
    /// Creates a group with this account as admin and `members` (accounts) as members: its
    /// creation is appended to a new log on the relay, and every member device is told (the
    /// devices of the members get the group secret). Returns the group id.
    ///
    /// The new group's secret is committed to the store (as a pending creation, PROTOCOL.md
    /// §17.5) before the creation leaves the device. If the relay's answer is lost (the
    /// connection drops, the relay does not answer in time), this waits, within
    /// [`CONNECT_WAIT`], for the connection to come back and reads the new log: the creation
    /// landed (the group is stored, `Ok`) or is appended again. If that cannot be told in time,
    /// it returns [`ClientError::GroupCreationPending`] with the group id: the creation is kept
    /// and completes by itself on a later connection, and the group then appears with a
    /// [`Event::GroupsChanged`]. The app should not create it again. Any other error means no
    /// group was made.
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
            let d = self.inner.lock()?;
            let me = d.address();
            let mut out = Vec::new();
            for m in members.iter().chain(std::iter::once(&me.account)) {
                if let Some(l) = d.device_list(m) {
                    out.extend(l.addresses().filter(|a| *a != me));
                }
            }
            out
        };
        self.inner.ensure_sessions(&conn, &devices).await?;
        let log = self.inner.anonymous().await?;
        // Committed as a pending creation before it leaves the device.
        let created = self
            .inner
            .lock()?
            .create_group(name, members, &mut rng(), now_ms());
        let w = self.inner.after(created.map_err(ClientError::from))?;
        let g = w.group;
        let appended = log
            .group_log_append(w.slot(), &w.write_token(), w.seq, w.entry.clone())
            .await;
        match appended {
            Ok(GroupLogAppend::Appended) => {
                let landed = self
                    .inner
                    .lock()?
                    .group_write_landed(w, &mut rng(), now_ms());
                match landed {
                    Ok(update) => {
                        self.inner.own_change_landed(&conn, &g, update).await;
                        return Ok(g);
                    }
                    Err(e) => {
                        // The creation is still pending: the next connection finds it in the
                        // log and stores the group.
                        tracing::warn!(error = %e, "a created group was not stored; it is stored on a later connection");
                        self.inner.recover_store();
                        return Err(ClientError::GroupCreationPending(g));
                    }
                }
            }
            // Nothing was stored: the relay refused the append for what it is.
            Err(ClientError::Refused(r)) => {
                let reason = if r.code == ErrorCode::Forbidden {
                    CreationDropped::SlotTaken
                } else {
                    CreationDropped::Refused
                };
                self.inner.give_up_creation(&g, reason)?;
                return Err(ClientError::Refused(r));
            }
            // Position 1 is taken (by this very creation, appended by the upkeep meanwhile, or
            // by another one): the log tells which.
            Ok(GroupLogAppend::Conflict { .. }) => {}
            Err(e) => {
                tracing::info!(error = %e, "a group creation's append was not answered; checking the log");
            }
        }
        drop(w);
        self.inner.settle_creation(&g).await
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

    /// Changes a group (this device's account must be an admin, or be removing only itself):
    /// adds `add` (accounts, with whether each is an admin), removes `remove`, and tells every
    /// member device. The change is appended at the next position of the group's log on the
    /// relay; if another member's change took that position first, the log is read and the
    /// change is built again on top of it. If it no longer applies then (for example the member
    /// to remove was removed meanwhile, or this account is no longer an admin), the error says
    /// why and nothing was changed.
    pub async fn update_group(
        &self,
        g: &GroupId,
        add: &[(AccountId, bool)],
        remove: &[AccountId],
    ) -> Result<(), ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        let log = self.inner.anonymous().await?;
        // Read the log first: a change is built on the newest state this device can see.
        self.inner.sync_group_log(&conn, &log, g).await?;
        for attempt in 0..GROUP_LOG_ATTEMPTS {
            // Every member's current devices (and the added accounts'): a change must reach them.
            let members: Vec<AccountId> = {
                let d = self.inner.lock()?;
                let entry = d.group(g).ok_or(ClientError::Core(CoreError::Protocol(
                    ProtocolError::UnknownGroup,
                )))?;
                entry.state().members.keys().copied().collect()
            };
            // An account that cannot be reached (its list conflicts, its pre-keys are gone, it
            // was deleted) does not stop the change, least of all its own removal: its devices
            // just get no notice (they read the log when they next connect).
            let accounts: BTreeSet<AccountId> = members
                .iter()
                .chain(add.iter().map(|(a, _)| a))
                .copied()
                .filter(|a| !remove.contains(a))
                .collect();
            self.inner.reach_accounts(&conn, &accounts).await?;
            let w = self
                .inner
                .lock()?
                .update_group(g, add, remove, None, &mut rng(), now_ms())?;
            match log
                .group_log_append(w.slot(), &w.write_token(), w.seq, w.entry.clone())
                .await?
            {
                GroupLogAppend::Appended => {
                    let landed = self
                        .inner
                        .lock()?
                        .group_write_landed(w, &mut rng(), now_ms());
                    match landed {
                        Ok(update) => self.inner.own_change_landed(&conn, g, update).await,
                        // Entries landed before it that this device had not read: reading the
                        // log applies them and this change.
                        Err(_) => self.inner.sync_group_log(&conn, &log, g).await?,
                    }
                    return Ok(());
                }
                GroupLogAppend::Conflict { head } => {
                    tracing::info!(
                        attempt,
                        head,
                        "group change lost its log position; rebuilding it"
                    );
                    self.inner.sync_group_log(&conn, &log, g).await?;
                }
            }
        }
        Err(ClientError::Protocol(
            "the group log kept moving; the change was not made",
        ))
    }

    /// Sends the group notices of this device's changes that the relay has not taken yet, now
    /// (after a pass under way, if any; they also go out by themselves on every connection and
    /// with the periodic upkeep), and returns how many are still pending (waiting for a session,
    /// a device list or the relay).
    pub async fn send_group_notices(&self) -> Result<usize, ClientError> {
        use std::sync::atomic::Ordering::AcqRel;
        let conn = self.inner.current(CONNECT_WAIT).await?;
        self.inner
            .notices_again
            .store(true, std::sync::atomic::Ordering::Release);
        {
            let _one_pass = self.inner.notices_sending.lock().await;
            // Also the passes asked for while this one waited (their askers went on).
            while self.inner.notices_again.swap(false, AcqRel) {
                self.inner.send_pending_notices(&conn).await?;
            }
        }
        Ok(self.inner.lock()?.pending_notice_count())
    }

    /// Reads the logs of every group this device knows or was invited to (after reconnecting:
    /// notices may have been missed while offline).
    pub async fn sync_groups(&self) -> Result<(), ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        self.inner.sync_all_group_logs(&conn).await
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

impl Inner {
    /// After `create_group`'s append went unanswered (or lost position 1): waits, within
    /// [`CONNECT_WAIT`], for a connection and checks the creation against its log, a few times.
    /// `Ok(g)` once the group is stored (here or by the connection upkeep meanwhile);
    /// [`ClientError::GroupCreationPending`] if it is still pending (it completes on a later
    /// connection); another error if it was given up (no group was made).
    pub(super) async fn settle_creation(&self, g: &GroupId) -> Result<GroupId, ClientError> {
        let settle = async {
            for attempt in 0..CREATION_ATTEMPTS {
                let Some(p) = self.lock()?.pending_creation(g)? else {
                    // Stored (or given up) by the connection upkeep meanwhile.
                    return Ok(());
                };
                let conn = match self.current(CONNECT_WAIT).await {
                    Ok(c) => c,
                    Err(e @ (ClientError::Closed | ClientError::Revoked)) => return Err(e),
                    Err(_) => return Ok(()),
                };
                let outcome = match self.anonymous().await {
                    Ok(log) => self.resolve_creation(&conn, &log, p, false).await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(Creation::Landed | Creation::Dropped) => return Ok(()),
                    Ok(Creation::Pending) => {}
                    Err(e @ (ClientError::Closed | ClientError::Revoked)) => return Err(e),
                    Err(e) => {
                        tracing::info!(attempt, error = %e, "a group creation is not resolved yet");
                    }
                }
            }
            Ok(())
        };
        if let Ok(Err(e)) = tokio::time::timeout(CONNECT_WAIT, settle).await {
            return Err(e);
        }
        let d = self.lock()?;
        if d.group(g).is_some() {
            Ok(*g)
        } else if d.pending_creation(g)?.is_some() {
            Err(ClientError::GroupCreationPending(*g))
        } else {
            Err(ClientError::Protocol(
                "the relay holds another log under the new group's slot; no group was made",
            ))
        }
    }

    /// Resolves every pending group creation (PROTOCOL.md §17.5) against its log on the relay,
    /// read over the anonymous connection: a creation found as entry 1 is stored (and its
    /// notices go out; the app sees [`Event::GroupsChanged`]), one whose log is empty is
    /// appended again, one whose slot holds another log is given up. Expired ones are dropped.
    /// Run on every connection (beside serving it) and with the periodic upkeep.
    pub(super) async fn resolve_pending_creations(
        &self,
        conn: &Arc<RelayConnection>,
    ) -> Result<(), ClientError> {
        if self.lock()?.pending_creation_count()? == 0 {
            return Ok(());
        }
        let pending = self.lock()?.pending_creations(now_ms());
        let pending = self.after(pending.map_err(ClientError::from))?;
        if pending.is_empty() {
            return Ok(());
        }
        let log = self.anonymous().await?;
        for p in pending {
            match self.resolve_creation(conn, &log, p, true).await {
                Ok(Creation::Landed) => {
                    tracing::info!("a group creation the relay had not confirmed is stored");
                }
                Ok(Creation::Dropped | Creation::Pending) => {}
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "a pending group creation is not resolved; tried again later");
                }
            }
        }
        Ok(())
    }

    /// Checks one pending creation against its slot's log: entry 1 byte-identical to the
    /// creation's entry means it landed; an empty log gets the same entry appended at position 1
    /// again; another entry 1 (the slot is taken) gives it up. `announce`: emit
    /// [`Event::GroupsChanged`] when the group is stored.
    async fn resolve_creation(
        &self,
        conn: &Arc<RelayConnection>,
        log: &Arc<RelayConnection>,
        p: PendingCreation,
        announce: bool,
    ) -> Result<Creation, ClientError> {
        let g = p.group;
        let w = p.write;
        for _ in 0..2 {
            let (head, entries) = log.group_log_read(w.slot(), 1).await?;
            match entries.first() {
                Some((1, e)) if *e == w.entry => {
                    return self.creation_landed(conn, w, announce).await;
                }
                Some(_) => {
                    tracing::warn!("a pending group creation's slot holds another log");
                    self.give_up_creation(&g, CreationDropped::SlotTaken)?;
                    return Ok(Creation::Dropped);
                }
                None if head == 0 => {
                    let appended = log
                        .group_log_append(w.slot(), &w.write_token(), w.seq, w.entry.clone())
                        .await;
                    match appended {
                        Ok(GroupLogAppend::Appended) => {
                            return self.creation_landed(conn, w, announce).await;
                        }
                        // Appended meanwhile (by this device, or another log): read again.
                        Ok(GroupLogAppend::Conflict { .. }) => {}
                        Err(ClientError::Refused(r)) => {
                            let e = ClientError::Refused(r);
                            if e.is_transient() {
                                return Err(e);
                            }
                            tracing::warn!(error = %e, "the relay refused a pending group creation");
                            let reason = match &e {
                                ClientError::Refused(r) if r.code == ErrorCode::Forbidden => {
                                    CreationDropped::SlotTaken
                                }
                                _ => CreationDropped::Refused,
                            };
                            self.give_up_creation(&g, reason)?;
                            return Ok(Creation::Dropped);
                        }
                        Err(e) => return Err(e),
                    }
                }
                // The relay names entries it does not serve: asked again later.
                None => return Ok(Creation::Pending),
            }
        }
        Ok(Creation::Pending)
    }

    /// A pending creation is in its log: stores the group (which drops the pending creation in
    /// the same commit) and sends its notices.
    async fn creation_landed(
        &self,
        conn: &Arc<RelayConnection>,
        w: hush_core::device::GroupLogWrite,
        announce: bool,
    ) -> Result<Creation, ClientError> {
        let g = w.group;
        let landed = self.lock()?.group_write_landed(w, &mut rng(), now_ms());
        let update = match landed {
            Ok(u) => u,
            Err(e) => {
                self.recover_store();
                return Err(e.into());
            }
        };
        let update = GroupLogUpdate {
            changed: announce && update.changed,
            ..update
        };
        self.after_group_log(conn, &g, update).await;
        Ok(Creation::Landed)
    }

    fn give_up_creation(&self, g: &GroupId, reason: CreationDropped) -> Result<(), ClientError> {
        let dropped = self.lock()?.drop_pending_creation(g, reason);
        self.after(dropped.map_err(ClientError::from)).map(|_| ())
    }
}

impl Inner {
    /// Fetches the lists of `accounts` and sets up sessions with their devices, going on past an
    /// account that cannot be reached (logged); a failure of the connection or the store stops.
    pub(super) async fn reach_accounts(
        &self,
        conn: &Arc<RelayConnection>,
        accounts: &BTreeSet<AccountId>,
    ) -> Result<(), ClientError> {
        for a in accounts {
            let reached = match self.refresh_list(conn, a).await {
                Ok(()) => {
                    let devices: Vec<DeviceAddress> = {
                        let d = self.lock()?;
                        let me = d.address();
                        d.device_list(a)
                            .map(|l| l.addresses().filter(|x| *x != me).collect())
                            .unwrap_or_default()
                    };
                    self.ensure_sessions(conn, &devices).await
                }
                Err(e) => Err(e),
            };
            match reached {
                Ok(()) => {}
                Err(e) if is_account_failure(&e) => {
                    tracing::warn!(error = %e, "a group member account cannot be reached");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads group `g`'s log from the relay (through `log`, a connection that does not say who
    /// reads) from the first position not read yet, page by page, and processes it.
    pub(super) async fn sync_group_log(
        &self,
        conn: &Arc<RelayConnection>,
        log: &Arc<RelayConnection>,
        g: &GroupId,
    ) -> Result<(), ClientError> {
        let Some(cursor) = self.lock()?.group_log_cursor(g) else {
            return Ok(());
        };
        // Every page up to the relay's head first, then one processing: whether this account is
        // a member (for a group being joined) is judged on the whole log, not on one page.
        let (mut head, mut entries) = log.group_log_read(cursor.slot, cursor.next).await?;
        while let Some(last) = entries.last().map(|(s, _)| *s)
            && last < head
        {
            let (h, more) = log
                .group_log_read(cursor.slot, last.saturating_add(1))
                .await?;
            if more.is_empty() {
                break;
            }
            head = h.max(head);
            entries.extend(more);
        }
        let update = self
            .lock()?
            .accept_group_log(g, head, &entries, &mut rng(), now_ms())?;
        self.after_group_log(conn, g, update).await;
        Ok(())
    }

    /// Reads the logs of `groups` (errors are logged: one group's log does not hold up others).
    pub(super) async fn sync_group_logs(&self, conn: &Arc<RelayConnection>, groups: Vec<GroupId>) {
        if groups.is_empty() {
            return;
        }
        let log = match self.anonymous().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "group logs not read");
                return;
            }
        };
        for g in groups {
            if let Err(e) = self.sync_group_log(conn, &log, &g).await {
                tracing::warn!(error = %e, "a group log was not read");
            }
        }
    }

    /// Reads the log of every group and invitation.
    pub(super) async fn sync_all_group_logs(
        &self,
        conn: &Arc<RelayConnection>,
    ) -> Result<(), ClientError> {
        let groups = self.lock()?.group_logs();
        self.sync_group_logs(conn, groups).await;
        Ok(())
    }

    /// Passes on what landing a change this app made itself did (no `GroupsChanged` for it).
    async fn own_change_landed(
        &self,
        conn: &Arc<RelayConnection>,
        g: &GroupId,
        update: GroupLogUpdate,
    ) {
        let update = GroupLogUpdate {
            changed: false,
            ..update
        };
        self.after_group_log(conn, g, update).await;
    }

    /// Passes on what reading a group log did: events, decrypted messages, notices to send.
    pub(super) async fn after_group_log(
        &self,
        conn: &Arc<RelayConnection>,
        g: &GroupId,
        update: GroupLogUpdate,
    ) {
        if update.changed {
            self.emit(Event::GroupsChanged);
        }
        match update.check {
            LogCheck::Consistent => {}
            LogCheck::Withheld { claimed, served } => {
                tracing::warn!(
                    claimed,
                    served,
                    "the relay serves a group log shorter than a member reached"
                );
                self.emit(Event::GroupLogWithheld {
                    group: *g,
                    claimed,
                    served,
                });
            }
            LogCheck::Forked { seq } => {
                tracing::warn!(
                    seq,
                    "a member reached another group log than the relay serves"
                );
                self.emit(Event::GroupLogForked { group: *g, seq });
            }
        }
        for r in update.received {
            self.emit(Event::message(r, false));
        }
        if !update.unreached.is_empty() {
            tracing::info!(
                devices = update.unreached.len(),
                "a group change waits for sessions to be announced to every member device"
            );
        }
        // The notices of this device's change are pending in the store (with those that wait
        // for a session): sent from there, and confirmed once the relay has taken them.
        if !update.outgoing.is_empty() || !update.unreached.is_empty() {
            self.pending_notices_pass(conn).await;
        }
    }

    /// Sends the pending group notices, one pass at a time: when a pass is under way it is
    /// asked for one more (which sees what was kept since) and this returns at once.
    pub(super) async fn pending_notices_pass(&self, conn: &Arc<RelayConnection>) {
        use std::sync::atomic::Ordering::AcqRel;
        self.notices_again
            .store(true, std::sync::atomic::Ordering::Release);
        loop {
            {
                let Ok(_one_pass) = self.notices_sending.try_lock() else {
                    return;
                };
                while self.notices_again.swap(false, AcqRel) {
                    if let Err(e) = self.send_pending_notices(conn).await {
                        tracing::warn!(error = %e, "pending group notices not sent; tried again later");
                    }
                }
            }
            // Asked for after the last pass and before the pass let go: run it here.
            if !self
                .notices_again
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return;
            }
        }
    }

    /// Sends the pending group notices on a task of their own, beside what the caller does,
    /// until the pass ends or the engine stops.
    /// First the group creations whose append went unconfirmed are settled (stored once found
    /// in their logs, or appended again): their notices are pending notices too.
    pub(super) fn spawn_pending_notices(inner: &Arc<Self>, conn: &Arc<RelayConnection>) {
        let nothing = inner.lock().map_or(true, |d| {
            d.pending_notice_count() == 0 && d.pending_creation_count().is_ok_and(|n| n == 0)
        });
        if nothing {
            return;
        }
        let (inner, conn) = (Arc::clone(inner), Arc::clone(conn));
        tokio::spawn(async move {
            let stop = inner.shutdown.clone();
            tokio::select! {
                () = stop.cancelled() => {}
                () = async {
                    if let Err(e) = inner.resolve_pending_creations(&conn).await {
                        tracing::warn!(error = %e, "pending group creations not resolved; tried again later");
                    }
                    inner.pending_notices_pass(&conn).await;
                } => {}
            }
        });
    }

    /// Hands the pending group notices (PROTOCOL.md §17.5) to the relay: fetches the device
    /// lists and starts the sessions they wait for (one account or device that cannot be
    /// reached does not hold back the others), lets client-core seal what it can, and sends each
    /// under its stored client id, so that a notice sent again after a lost answer is queued
    /// once. Each notice the relay took leaves the store. Runs after a change lands, on every
    /// connection and with the periodic upkeep, until every notice is taken or dropped.
    pub(super) async fn send_pending_notices(
        &self,
        conn: &Arc<RelayConnection>,
    ) -> Result<(), ClientError> {
        if self.lock()?.pending_notice_count() == 0 {
            return Ok(());
        }
        let targets = self.lock()?.pending_notice_targets(now_ms())?;
        if !targets.accounts.is_empty() {
            for a in &targets.accounts {
                if let Err(e) = self.refresh_list(conn, a).await {
                    if !is_account_failure(&e) {
                        return Err(e);
                    }
                    tracing::info!(error = %e, "a pending group notice waits for a device list");
                }
            }
        }
        let devices = if targets.accounts.is_empty() {
            targets.devices
        } else {
            self.lock()?.pending_notice_targets(now_ms())?.devices
        };
        for d in devices {
            if let Err(e) = self.ensure_sessions(conn, &[d]).await {
                if !is_account_failure(&e) {
                    return Err(e);
                }
                tracing::info!(error = %e, "a pending group notice waits for a session");
            }
        }
        let pending = self.lock()?.pending_notices(&mut rng(), now_ms());
        let pending = match pending {
            Ok(p) => p,
            Err(e) => {
                self.recover_store();
                return Err(e.into());
            }
        };
        // One send per recipient account and client id (one change), one envelope per device.
        let mut sends: BTreeMap<([u8; 32], [u8; 16]), Vec<PendingNotice>> = BTreeMap::new();
        for p in pending {
            sends
                .entry((*p.key.to.account.as_bytes(), p.client_id))
                .or_default()
                .push(p);
        }
        for ((account, client_id), notices) in sends {
            let mut envelopes = Vec::with_capacity(notices.len());
            let mut keys: Vec<NoticeKey> = Vec::with_capacity(notices.len());
            {
                let d = self.lock()?;
                for n in notices {
                    if keys.iter().any(|k| k.to == n.key.to) {
                        // Not two envelopes for one device in one send (never the case for
                        // notices of one change); the other goes next time.
                        continue;
                    }
                    // A device no longer listed: left out; client-core drops its notice.
                    if let Some(e) = super::sealed::envelope_if_listed(
                        &d,
                        &n.key.to,
                        sealed::Kind::Pairwise(n.bytes),
                    )? {
                        envelopes.push(e);
                        keys.push(n.key);
                    }
                }
            }
            if envelopes.is_empty() {
                continue;
            }
            let sent = match self
                .send_envelopes_as(conn, account, envelopes.clone(), true, client_id)
                .await
            {
                // A device left its account's list since: learn the list (its notice is
                // dropped at the next pass) and send the others (nothing was queued).
                Err(ClientError::Refused(r))
                    if r.code == ErrorCode::DeviceMismatch && !r.extra_devices.is_empty() =>
                {
                    let _ = self
                        .refresh_list(conn, &AccountId::from_bytes(&account)?)
                        .await;
                    envelopes.retain(|e| !r.extra_devices.contains(&e.device_id));
                    keys.retain(|k| !r.extra_devices.contains(&k.to.device_id));
                    if envelopes.is_empty() {
                        Ok(())
                    } else {
                        self.send_envelopes_as(conn, account, envelopes, true, client_id)
                            .await
                    }
                }
                r => r,
            };
            match sent {
                Ok(()) => {
                    let confirmed = self.lock()?.notices_sent(&keys);
                    if let Err(e) = confirmed {
                        // Sent again later under the same id: the relay queues it once.
                        self.recover_store();
                        return Err(e.into());
                    }
                }
                Err(e) if is_account_failure(&e) => {
                    tracing::info!(error = %e, "group notices to one account not sent yet");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
