//! Per-device session records (Sesame).
//!
//! For every remote device a [`SessionRecord`] holds the current session plus up to
//! [`MAX_ARCHIVED_SESSIONS`] archived ones. Encryption always uses the current session.
//! Decryption first asks the sessions that already know the message's ratchet key; if none does
//! (a new ratchet step) it tries the current session, then the archived ones in order. The session
//! that decrypts becomes current. This is how simultaneous initiation heals: both sides end up
//! sending on whichever session last decrypted successfully, and the other is kept archived until it
//! is no longer needed.

use std::collections::VecDeque;

use hush_proto::store as pstore;

use crate::consts::{MAX_ARCHIVED_SESSIONS, SESSION_MAX_IDLE_MS};
use crate::error::{ProtocolError, Result};
use crate::keys::DeviceIdentity;
use crate::ratchet::{Decrypted, RatchetMessage, SessionState};

/// All sessions with one remote device.
#[derive(Default)]
pub struct SessionRecord {
    current: Option<SessionState>,
    archived: VecDeque<SessionState>,
}

impl SessionRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current session, if any.
    pub const fn current(&self) -> Option<&SessionState> {
        self.current.as_ref()
    }

    /// Number of archived sessions.
    pub fn archived_len(&self) -> usize {
        self.archived.len()
    }

    /// True when there is no session at all.
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.archived.is_empty()
    }

    /// The current session if it is usable for sending to a device with `identity` at `now`.
    pub fn sending_session(
        &mut self,
        identity: &DeviceIdentity,
        now: u64,
    ) -> Result<&mut SessionState> {
        match self.current.as_mut() {
            Some(s)
                if s.remote_identity() == *identity
                    && s.last_used_at().saturating_add(SESSION_MAX_IDLE_MS) >= now =>
            {
                Ok(s)
            }
            _ => Err(ProtocolError::NoSession.into()),
        }
    }

    /// Makes `session` current, archiving the previous current session. Sessions with a different
    /// remote identity (the device re-registered) are dropped.
    pub fn promote_new(&mut self, session: SessionState) {
        let identity = session.remote_identity();
        if let Some(old) = self.current.replace(session) {
            self.archived.push_front(old);
        }
        self.archived.retain(|s| s.remote_identity() == identity);
        self.archived.truncate(MAX_ARCHIVED_SESSIONS);
    }

    /// Drops every session (the remote device left its account's list or changed identity).
    pub fn clear(&mut self) {
        self.current = None;
        self.archived.clear();
    }

    /// Retires sessions unused for [`SESSION_MAX_IDLE_MS`]: they are deleted, so the next message to
    /// that device starts a new session. Returns whether anything changed.
    pub fn retire_stale(&mut self, now: u64) -> bool {
        let fresh = |s: &SessionState| s.last_used_at().saturating_add(SESSION_MAX_IDLE_MS) >= now;
        let before = self.archived.len();
        self.archived.retain(fresh);
        let mut changed = before != self.archived.len();
        if self.current.as_ref().is_some_and(|s| !fresh(s)) {
            self.current = None;
            changed = true;
        }
        changed
    }

    /// Whether some session was set up with initiator base key `base_key`.
    pub fn has_base_key(&self, base_key: &[u8; 32]) -> bool {
        self.sessions().any(|s| s.base_key() == base_key)
    }

    fn sessions(&self) -> impl Iterator<Item = &SessionState> {
        self.current.iter().chain(self.archived.iter())
    }

    /// Makes archived session `i` current.
    fn promote_archived(&mut self, i: usize) {
        if let Some(old) = self
            .archived
            .remove(i)
            .and_then(|s| self.current.replace(s))
        {
            self.archived.push_front(old);
        }
    }

    fn session_mut(&mut self, slot: Option<usize>) -> Option<&mut SessionState> {
        match slot {
            None => self.current.as_mut(),
            Some(i) => self.archived.get_mut(i),
        }
    }

    fn try_slot(
        &mut self,
        slot: Option<usize>,
        msg: &RatchetMessage,
        now: u64,
    ) -> Option<Result<Decrypted>> {
        let s = self.session_mut(slot)?;
        let r = s.decrypt(msg, now);
        if let (true, Some(i)) = (r.is_ok(), slot) {
            self.promote_archived(i);
        }
        Some(r)
    }

    /// Decrypts a ratchet message with the session it belongs to (see the module docs).
    /// On error no session changed.
    pub fn decrypt(&mut self, msg: &RatchetMessage, now: u64) -> Result<Decrypted> {
        let key = &msg.header.ratchet_key;
        let slots: Vec<Option<usize>> = std::iter::once(None)
            .chain((0..self.archived.len()).map(Some))
            .collect();
        let owner = slots.iter().copied().find(|slot| {
            match slot {
                None => self.current.as_ref(),
                Some(i) => self.archived.get(*i),
            }
            .is_some_and(|s| s.knows_ratchet_key(key))
        });
        if let Some(slot) = owner {
            return self
                .try_slot(slot, msg, now)
                .unwrap_or(Err(ProtocolError::NoSession.into()));
        }
        let mut first_err = None;
        for slot in slots {
            match self.try_slot(slot, msg, now) {
                Some(Ok(d)) => return Ok(d),
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                None => {}
            }
        }
        Err(first_err.unwrap_or(ProtocolError::NoSession.into()))
    }

    /// Decrypts with the session set up by initiator base key `base_key` (a repeated initial message).
    pub fn decrypt_with_base_key(
        &mut self,
        base_key: &[u8; 32],
        msg: &RatchetMessage,
        now: u64,
    ) -> Result<Decrypted> {
        let slot = if self
            .current
            .as_ref()
            .is_some_and(|s| s.base_key() == base_key)
        {
            None
        } else {
            Some(
                self.archived
                    .iter()
                    .position(|s| s.base_key() == base_key)
                    .ok_or(ProtocolError::NoSession)?,
            )
        };
        self.try_slot(slot, msg, now)
            .unwrap_or(Err(ProtocolError::NoSession.into()))
    }

    /// Serializes for the encrypted store.
    pub fn to_proto(&self) -> pstore::SessionRecord {
        pstore::SessionRecord {
            current: self.current.as_ref().map(SessionState::to_proto),
            archived: self.archived.iter().map(SessionState::to_proto).collect(),
        }
    }

    /// Restores from the store.
    pub fn from_proto(p: &pstore::SessionRecord) -> Result<Self> {
        Ok(Self {
            current: p
                .current
                .as_ref()
                .map(SessionState::from_proto)
                .transpose()?,
            archived: p
                .archived
                .iter()
                .map(SessionState::from_proto)
                .collect::<Result<_>>()?,
        })
    }
}
