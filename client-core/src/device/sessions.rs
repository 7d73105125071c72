//! Pairwise sessions: starting them, sealing and encrypting to one device, and retiring idle ones.

use hush_proto::{Message, wire};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{Device, Tx, decode, encode};
use crate::consts::MAX_PLAINTEXT_LEN;
use crate::device::error::Result;
use crate::error::{Error, ProtocolError};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity};
use crate::pqxdh::{self, InitialMessage, InitiatorSecrets};
use crate::prekeys::PreKeyBundle;
use crate::session::SessionRecord;
use crate::store::kv::{Batch, KvStore, Namespace};

impl<S: KvStore> Device<S> {
    pub(super) fn known_identity(&self, addr: &DeviceAddress) -> crate::Result<DeviceIdentity> {
        self.device_lists
            .get(&addr.account)
            .ok_or(ProtocolError::UnknownAccount)?
            .identity_of(addr.device_id)
    }

    pub(super) fn take_record(&mut self, addr: &DeviceAddress) -> Result<SessionRecord> {
        if let Some(r) = self.sessions.remove(addr) {
            return Ok(r);
        }
        match self.store.get(Namespace::Sessions, &addr.to_key())? {
            Some(v) => Ok(SessionRecord::from_proto(&decode(
                &v,
                "stored session record",
            )?)?),
            None => Ok(SessionRecord::new()),
        }
    }

    /// Whether a session usable for sending to `to` exists (otherwise fetch its bundle and call
    /// [`Device::start_session`]).
    pub fn has_session(&mut self, to: &DeviceAddress, now: u64) -> Result<bool> {
        let identity = self.known_identity(to)?;
        let mut record = self.take_record(to)?;
        let usable = record.sending_session(&identity, now).is_ok();
        self.sessions.insert(*to, record);
        Ok(usable)
    }

    /// The devices among `addrs` with no usable session: fetch their bundles and call
    /// [`Device::start_session`] before sending to them.
    pub fn missing_sessions(
        &mut self,
        addrs: &[DeviceAddress],
        now: u64,
    ) -> Result<Vec<DeviceAddress>> {
        let mut out = Vec::new();
        for a in addrs {
            if !self.has_session(a, now)? {
                out.push(*a);
            }
        }
        Ok(out)
    }

    /// Starts a session from a pre-key bundle (verified here against the known device list).
    pub fn start_session(
        &mut self,
        bundle: &PreKeyBundle,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<()> {
        let mut tx = Tx::default();
        self.start_session_in(bundle, rng, now, &mut tx)?;
        self.finish(tx)
    }

    /// Starts a session from a pre-key bundle within `tx`, and returns the remote address.
    pub(super) fn start_session_in(
        &mut self,
        bundle: &PreKeyBundle,
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
    ) -> Result<DeviceAddress> {
        let account = AccountId::from_bytes(&bundle.0.account_key)?;
        let list = self
            .device_lists
            .get(&account)
            .ok_or(ProtocolError::UnknownAccount)?;
        let verified = bundle.verify(list)?;
        let to = verified.address();
        if to == self.address {
            return Err(
                ProtocolError::Misuse("a device does not start a session with itself").into(),
            );
        }
        let init = pqxdh::initiate(
            self.address,
            &self.identity,
            &verified,
            InitiatorSecrets::random(rng),
            now,
        )?;
        let mut record = self.take_record(&to)?;
        record.promote_new(init.session);
        self.sessions.insert(to, record);
        tx.sessions.insert(to);
        Ok(to)
    }

    /// Encrypts `content` for `to` inside transaction `tx` (committed later by the caller).
    pub(super) fn seal(
        &mut self,
        to: &DeviceAddress,
        content: &wire::Content,
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
    ) -> Result<Vec<u8>> {
        let identity = self.known_identity(to)?;
        let local_identity = self.identity.public();
        let mut record = self.take_record(to)?;
        let plaintext = Zeroizing::new(content.encode_to_vec());
        let out = (|| {
            let session = record.sending_session(&identity, now)?;
            let enc = session.encrypt(&plaintext, rng, now)?;
            let body = match session.pending() {
                Some(p) => wire::pairwise_message::Body::Initial(InitialMessage::wire(
                    p,
                    local_identity,
                    &enc.message,
                )),
                None => wire::pairwise_message::Body::Ratchet(enc.message.to_wire()),
            };
            Ok::<_, Error>(wire::PairwiseMessage { body: Some(body) }.encode_to_vec())
        })();
        self.sessions.insert(*to, record);
        if let Ok(bytes) = &out {
            tx.sessions.insert(*to);
            // Sender keys and group secrets are not kept: a member that misses a sender key asks
            // for it (§18.3), and a group's notices are sent again by reading its log (§17.5).
            let secret = match &content.body {
                Some(wire::content::Body::SenderKey(_)) => true,
                Some(wire::content::Body::GroupLog(n)) => !n.secret.is_empty(),
                _ => false,
            };
            if !tx.unlogged && !secret {
                self.log_sent(to, &identity, bytes, &plaintext, now, 0, tx);
            }
        }
        Ok(out?)
    }

    /// Encrypts an application payload for device `to`. The advanced session is committed before
    /// the bytes (an encoded [`PairwiseMessage`](wire::PairwiseMessage)) are returned.
    pub fn encrypt(
        &mut self,
        to: &DeviceAddress,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Vec<u8>> {
        self.encrypt_app(to, plaintext, rng, now, false)
    }

    /// As [`Device::encrypt`], for a payload that is worth nothing later (typing, presence):
    /// it is not kept in the sent log, so a retry request never sends it again (PROTOCOL.md §20).
    pub fn encrypt_ephemeral(
        &mut self,
        to: &DeviceAddress,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Vec<u8>> {
        self.encrypt_app(to, plaintext, rng, now, true)
    }

    fn encrypt_app(
        &mut self,
        to: &DeviceAddress,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
        unlogged: bool,
    ) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_PLAINTEXT_LEN - 16 {
            return Err(ProtocolError::TooLarge(plaintext.len()).into());
        }
        let content = wire::Content {
            body: Some(wire::content::Body::App(plaintext.to_vec())),
        };
        let mut tx = Tx {
            unlogged,
            ..Tx::default()
        };
        let bytes = self.seal(to, &content, rng, now, &mut tx)?;
        self.finish(tx)?;
        Ok(bytes)
    }

    /// Deletes sessions unused for too long (see [`crate::consts::SESSION_MAX_IDLE_MS`]).
    pub fn retire_stale_sessions(&mut self, now: u64) -> Result<usize> {
        let mut batch = Batch::new();
        let mut changed = Vec::new();
        for (k, v) in self.store.scan(Namespace::Sessions)? {
            let mut record = SessionRecord::from_proto(&decode(&v, "stored session record")?)?;
            if record.retire_stale(now) {
                if record.is_empty() {
                    batch.delete(Namespace::Sessions, k.clone());
                } else {
                    batch.put(Namespace::Sessions, k.clone(), encode(&record.to_proto()));
                }
                changed.push(k);
            }
        }
        let n = changed.len();
        self.store.commit(batch)?;
        // Cached records are reloaded from the store on next use.
        self.sessions.clear();
        Ok(n)
    }
}
