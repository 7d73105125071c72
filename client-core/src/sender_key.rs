//! Sender keys: one symmetric chain and one Ed25519 signing key per (group, sender device).
//!
//! The chain and its message-key expansion are the pairwise ratchet's ([`crate::chain`]), with
//! their own HKDF info:
//!
//! ```text
//! message key  mk_i   = HMAC-SHA256(ck_i, 0x01)
//! chain key    ck_i+1 = HMAC-SHA256(ck_i, 0x02)
//! AEAD key ‖ nonce    = HKDF-SHA256(salt = 32 zero bytes, ikm = mk_i, info = SENDER_KEY_MESSAGE_INFO)[0..44]
//! header              = version u32 ‖ group_id (32) ‖ sender account (32) ‖ sender device u32 ‖ key_id u32 ‖ iteration u32
//! ciphertext          = ChaCha20-Poly1305(key, nonce, plaintext, aad = header)
//! signature           = Ed25519(sender key, "Hush-GroupMessage-v1" ‖ header ‖ ciphertext)
//! ```
//!
//! A group message costs one AEAD encryption and one signature whatever the group's size. A
//! receiver verifies the signature before it derives anything, accepts a bounded forward jump
//! (storing skipped keys, bounded), and refuses a second use of any iteration.

use std::collections::{BTreeMap, VecDeque};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hush_proto::{labels, store as pstore, wire};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::chain::{self, Secret};
use crate::consts::{
    AEAD_TAG_LEN, GROUP_ID_LEN, KEY_LEN, MAX_PLAINTEXT_LEN, MAX_SENDER_KEY_JUMP,
    MAX_SENDER_KEY_SKIPPED, MAX_SENDER_KEY_STATES, PROTOCOL_VERSION, SENDER_KEY_MESSAGE_INFO,
    SENDER_KEY_SKIPPED_MAX_AGE_MS, SIGNATURE_LEN,
};
use crate::error::{Error, ProtocolError, Result};
use crate::keys::{
    AccountId, DeviceAddress, DeviceIdentity, array, ed25519_public, verify_signature,
};

/// A group's id: 32 random bytes chosen by its creator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub [u8; GROUP_ID_LEN]);

impl GroupId {
    /// A new random group id.
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut id = [0u8; GROUP_ID_LEN];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// Parses 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        Ok(Self(array(b, "group id", "must be 32 bytes")?))
    }
}

impl std::fmt::Debug for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupId(")?;
        for b in self.0.iter().take(6) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// `(message key, next chain key)` of a sender-key chain: the same chain as the pairwise
/// `KDF_CK`, [`chain::step`].
pub fn sender_chain_step(ck: &[u8; KEY_LEN]) -> (Secret, Secret) {
    chain::step(ck)
}

/// The authenticated header of a group message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupHeader {
    /// The group.
    pub group: GroupId,
    /// The sending device.
    pub sender: DeviceAddress,
    /// Which sender key.
    pub key_id: u32,
    /// Position in its chain.
    pub iteration: u32,
    /// The sender's group log position when it sent (PROTOCOL.md §17.8).
    pub log_seq: u64,
    /// The hash of the last valid change at or before `log_seq`.
    pub log_head: [u8; 32],
}

impl GroupHeader {
    /// The header bytes (AD of the AEAD, and signed with the ciphertext).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(4 + GROUP_ID_LEN + KEY_LEN + 12 + 8 + 32);
        h.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        h.extend_from_slice(&self.group.0);
        h.extend_from_slice(self.sender.account.as_bytes());
        h.extend_from_slice(&self.sender.device_id.to_be_bytes());
        h.extend_from_slice(&self.key_id.to_be_bytes());
        h.extend_from_slice(&self.iteration.to_be_bytes());
        h.extend_from_slice(&self.log_seq.to_be_bytes());
        h.extend_from_slice(&self.log_head);
        h
    }
}

/// A validated group message (fields checked, signature not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMessage {
    /// Header.
    pub header: GroupHeader,
    /// AEAD ciphertext.
    pub ciphertext: Vec<u8>,
    /// Ed25519 signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl TryFrom<&wire::GroupMessage> for GroupMessage {
    type Error = Error;
    fn try_from(m: &wire::GroupMessage) -> Result<Self> {
        if m.version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(m.version).into());
        }
        if m.ciphertext.len() < AEAD_TAG_LEN
            || m.ciphertext.len() > MAX_PLAINTEXT_LEN + AEAD_TAG_LEN
        {
            return Err(Error::malformed(
                "group message",
                "ciphertext length out of range",
            ));
        }
        Ok(Self {
            header: GroupHeader {
                group: GroupId::from_bytes(&m.group_id)?,
                sender: DeviceAddress {
                    account: AccountId::from_bytes(&m.sender_account_key)?,
                    device_id: m.sender_device_id,
                },
                key_id: m.key_id,
                iteration: m.iteration,
                log_seq: m.log_seq,
                log_head: array(&m.log_head, "group message", "log head must be 32 bytes")?,
            },
            ciphertext: m.ciphertext.clone(),
            signature: array(&m.signature, "group message", "signature must be 64 bytes")?,
        })
    }
}

impl GroupMessage {
    /// The wire form.
    pub fn to_wire(&self) -> wire::GroupMessage {
        wire::GroupMessage {
            version: PROTOCOL_VERSION,
            group_id: self.header.group.0.to_vec(),
            sender_account_key: self.header.sender.account.as_bytes().to_vec(),
            sender_device_id: self.header.sender.device_id,
            key_id: self.header.key_id,
            iteration: self.header.iteration,
            ciphertext: self.ciphertext.clone(),
            signature: self.signature.to_vec(),
            log_seq: self.header.log_seq,
            log_head: self.header.log_head.to_vec(),
        }
    }

    fn signed_bytes(header: &[u8], ciphertext: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(header.len() + ciphertext.len());
        v.extend_from_slice(header);
        v.extend_from_slice(ciphertext);
        v
    }
}

/// One sender key: a chain and a signing key. The owner's copy also holds the private signing key,
/// the iteration-0 chain key (to answer retry requests) and which devices may have it from where.
pub struct SenderKeyState {
    key_id: u32,
    chain_key: Secret,
    iteration: u32,
    signing_public: [u8; KEY_LEN],
    signing_private: Option<Box<SigningKey>>,
    initial_chain_key: Option<Secret>,
    skipped: BTreeMap<u32, (Secret, u64)>,
    entitled: BTreeMap<DeviceAddress, Entitlement>,
    created_at: u64,
}

/// From which iteration a device may read an own sender key, and which identity that device had
/// when it was given the key. An entitlement is only valid for that identity: a device that
/// re-registers at the same address starts over at the current iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entitlement {
    /// The first iteration it may read.
    pub from: u32,
    /// The device's identity (`None` only for entitlements made without one, see
    /// [`SenderKeyState::distribution_for`]).
    pub identity: Option<DeviceIdentity>,
}

impl SenderKeyState {
    /// A new own sender key.
    pub fn generate(rng: &mut impl CryptoRng, key_id: u32, now: u64) -> Self {
        let signing = SigningKey::generate(rng);
        let mut ck = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(ck.as_mut());
        Self {
            key_id,
            chain_key: ck.clone(),
            iteration: 0,
            signing_public: signing.verifying_key().to_bytes(),
            signing_private: Some(Box::new(signing)),
            initial_chain_key: Some(ck),
            skipped: BTreeMap::new(),
            entitled: BTreeMap::new(),
            created_at: now,
        }
    }

    /// A received sender key (from a distribution message).
    pub fn from_distribution(d: &wire::SenderKeyDistribution, now: u64) -> Result<Self> {
        ed25519_public(&d.signing_key, "sender signing key")?;
        Ok(Self {
            key_id: d.key_id,
            chain_key: Zeroizing::new(array(
                &d.chain_key,
                "sender key",
                "chain key must be 32 bytes",
            )?),
            iteration: d.iteration,
            signing_public: array(&d.signing_key, "sender key", "signing key must be 32 bytes")?,
            signing_private: None,
            initial_chain_key: None,
            skipped: BTreeMap::new(),
            entitled: BTreeMap::new(),
            created_at: now,
        })
    }

    /// The key id.
    pub const fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The next iteration.
    pub const fn iteration(&self) -> u32 {
        self.iteration
    }

    /// Whether this is the local device's own key.
    pub const fn is_own(&self) -> bool {
        self.signing_private.is_some()
    }

    /// Number of stored skipped message keys.
    pub fn skipped_len(&self) -> usize {
        self.skipped.len()
    }

    /// Devices this own key was given to, from which iteration and with which identity.
    pub const fn entitled(&self) -> &BTreeMap<DeviceAddress, Entitlement> {
        &self.entitled
    }

    /// The iteration from which `device`, with `identity`, may read this key; `None` if it was
    /// never given the key, or was given it under another identity.
    pub fn entitlement(&self, device: &DeviceAddress, identity: &DeviceIdentity) -> Option<u32> {
        self.entitled
            .get(device)
            .filter(|e| e.identity.as_ref() == Some(identity))
            .map(|e| e.from)
    }

    /// [`Self::distribution_to`] without binding the entitlement to an identity (for a single
    /// key outside a device, as in test vectors and benchmarks).
    pub fn distribution_for(
        &mut self,
        group: GroupId,
        device: DeviceAddress,
        from: Option<u32>,
    ) -> Result<wire::SenderKeyDistribution> {
        self.distribution_to(group, device, None, from)
    }

    /// The distribution for a device: the chain key at the iteration it is entitled from (its
    /// entitlement starts at the current iteration if it had none, or had one for another
    /// identity, so a device never receives keys to messages sent before it was given the key).
    /// Records the entitlement.
    pub fn distribution_to(
        &mut self,
        group: GroupId,
        device: DeviceAddress,
        identity: Option<DeviceIdentity>,
        from: Option<u32>,
    ) -> Result<wire::SenderKeyDistribution> {
        let initial = self
            .initial_chain_key
            .as_ref()
            .ok_or(ProtocolError::Misuse("not an own sender key"))?;
        let fresh = Entitlement {
            from: self.iteration,
            identity,
        };
        let e = self.entitled.entry(device).or_insert(fresh);
        if e.identity != identity {
            *e = fresh;
        }
        let entitled = e.from;
        let at = from.unwrap_or(entitled).max(entitled).min(self.iteration);
        let ck = chain::skip(initial, at);
        Ok(wire::SenderKeyDistribution {
            group_id: group.0.to_vec(),
            key_id: self.key_id,
            iteration: at,
            chain_key: ck.to_vec(),
            signing_key: self.signing_public.to_vec(),
        })
    }

    /// Encrypts and signs one group message (own key only).
    pub fn encrypt(
        &mut self,
        group: GroupId,
        sender: DeviceAddress,
        log: (u64, [u8; 32]),
        plaintext: &[u8],
    ) -> Result<GroupMessage> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(ProtocolError::TooLarge(plaintext.len()).into());
        }
        let signing = self
            .signing_private
            .as_ref()
            .ok_or(ProtocolError::Misuse("not an own sender key"))?;
        if self.iteration == u32::MAX {
            return Err(ProtocolError::Misuse("sender key exhausted").into());
        }
        let header = GroupHeader {
            group,
            sender,
            key_id: self.key_id,
            iteration: self.iteration,
            log_seq: log.0,
            log_head: log.1,
        };
        let hb = header.to_bytes();
        let (mk, next) = chain::step(&self.chain_key);
        let ciphertext = chain::seal(&mk, SENDER_KEY_MESSAGE_INFO, &hb, plaintext)?;
        let mut signed =
            Vec::with_capacity(labels::GROUP_MESSAGE.len() + hb.len() + ciphertext.len());
        signed.extend_from_slice(labels::GROUP_MESSAGE);
        signed.extend_from_slice(&GroupMessage::signed_bytes(&hb, &ciphertext));
        let signature = signing.sign(&signed).to_bytes();
        self.chain_key = next;
        self.iteration += 1;
        Ok(GroupMessage {
            header,
            ciphertext,
            signature,
        })
    }

    /// Verifies the signature, then decrypts. On any error the state is unchanged.
    pub fn decrypt(&mut self, msg: &GroupMessage, now: u64) -> Result<Zeroizing<Vec<u8>>> {
        let hb = msg.header.to_bytes();
        let key: VerifyingKey = ed25519_public(&self.signing_public, "sender signing key")?;
        verify_signature(
            &key,
            labels::GROUP_MESSAGE,
            &GroupMessage::signed_bytes(&hb, &msg.ciphertext),
            &msg.signature,
            "group message",
        )?;
        let i = msg.header.iteration;
        let open =
            |mk: &[u8; KEY_LEN]| chain::open(mk, SENDER_KEY_MESSAGE_INFO, &hb, &msg.ciphertext);
        let fresh = |stored_at: u64| stored_at.saturating_add(SENDER_KEY_SKIPPED_MAX_AGE_MS) >= now;
        if i < self.iteration {
            // An expired key counts as deleted (it is purged at the next successful decryption).
            let (mk, _) = self
                .skipped
                .get(&i)
                .filter(|(_, t)| fresh(*t))
                .ok_or(ProtocolError::Duplicate)?;
            let pt = open(mk)?;
            self.skipped.remove(&i);
            self.skipped.retain(|_, (_, t)| fresh(*t));
            return Ok(pt);
        }
        let (new_skipped, mk, next) =
            chain::advance(&self.chain_key, self.iteration, i, MAX_SENDER_KEY_JUMP)?;
        let pt = open(&mk)?;
        self.skipped.retain(|_, (_, t)| fresh(*t));
        for (j, k) in new_skipped {
            self.skipped.insert(j, (k, now));
        }
        while self.skipped.len() > MAX_SENDER_KEY_SKIPPED {
            self.skipped.pop_first();
        }
        self.chain_key = next;
        self.iteration = i.saturating_add(1);
        Ok(pt)
    }

    /// Serializes for the encrypted store.
    pub fn to_proto(&self) -> pstore::SenderKeyState {
        pstore::SenderKeyState {
            key_id: self.key_id,
            chain_key: self.chain_key.to_vec(),
            iteration: self.iteration,
            signing_public: self.signing_public.to_vec(),
            signing_private: self
                .signing_private
                .as_ref()
                .map(|k| k.to_bytes().to_vec())
                .unwrap_or_default(),
            initial_chain_key: self
                .initial_chain_key
                .as_ref()
                .map(|k| k.to_vec())
                .unwrap_or_default(),
            skipped: self
                .skipped
                .iter()
                .map(|(i, (k, t))| pstore::SenderKeySkipped {
                    iteration: *i,
                    message_key: k.to_vec(),
                    stored_at: *t,
                })
                .collect(),
            entitled: self
                .entitled
                .iter()
                .map(|(a, e)| pstore::SenderKeyEntitlement {
                    account_key: a.account.as_bytes().to_vec(),
                    device_id: a.device_id,
                    from_iteration: e.from,
                    identity: e
                        .identity
                        .map(|i| i.to_bytes().to_vec())
                        .unwrap_or_default(),
                })
                .collect(),
            created_at: self.created_at,
        }
    }

    /// Restores from the store.
    pub fn from_proto(p: &pstore::SenderKeyState) -> Result<Self> {
        const W: &str = "stored sender key";
        let secret = |b: &[u8]| -> Result<Secret> {
            Ok(Zeroizing::new(array(b, W, "key must be 32 bytes")?))
        };
        let signing_private = if p.signing_private.is_empty() {
            None
        } else {
            let s = secret(&p.signing_private)?;
            Some(Box::new(SigningKey::from_bytes(&s)))
        };
        let mut skipped = BTreeMap::new();
        for s in &p.skipped {
            skipped.insert(s.iteration, (secret(&s.message_key)?, s.stored_at));
        }
        let mut entitled = BTreeMap::new();
        for e in &p.entitled {
            entitled.insert(
                DeviceAddress {
                    account: AccountId::from_bytes(&e.account_key)?,
                    device_id: e.device_id,
                },
                Entitlement {
                    from: e.from_iteration,
                    identity: if e.identity.is_empty() {
                        None
                    } else {
                        Some(DeviceIdentity::from_bytes(&e.identity)?)
                    },
                },
            );
        }
        Ok(Self {
            key_id: p.key_id,
            chain_key: secret(&p.chain_key)?,
            iteration: p.iteration,
            signing_public: array(&p.signing_public, W, "key must be 32 bytes")?,
            signing_private,
            initial_chain_key: if p.initial_chain_key.is_empty() {
                None
            } else {
                Some(secret(&p.initial_chain_key)?)
            },
            skipped,
            entitled,
            created_at: p.created_at,
        })
    }
}

/// The sender-key states of one (group, sender device), newest first, at most
/// [`MAX_SENDER_KEY_STATES`]. A record of received keys is bound to the identity of the sender
/// device whose pairwise session delivered them.
#[derive(Default)]
pub struct SenderKeyRecord {
    states: VecDeque<SenderKeyState>,
    sender_identity: Option<DeviceIdentity>,
}

impl SenderKeyRecord {
    /// All states, newest first.
    pub fn states(&self) -> impl Iterator<Item = &SenderKeyState> {
        self.states.iter()
    }

    /// The newest state.
    pub fn current(&self) -> Option<&SenderKeyState> {
        self.states.front()
    }

    /// The newest state, mutably.
    pub fn current_mut(&mut self) -> Option<&mut SenderKeyState> {
        self.states.front_mut()
    }

    /// The state with `key_id`.
    pub fn get_mut(&mut self, key_id: u32) -> Option<&mut SenderKeyState> {
        self.states.iter_mut().find(|s| s.key_id == key_id)
    }

    /// The identity of the sender device the received keys came from (`None` for an own record
    /// or an empty one).
    pub const fn sender_identity(&self) -> Option<&DeviceIdentity> {
        self.sender_identity.as_ref()
    }

    /// Binds the record to the sender device's current `identity`. If it held keys of another
    /// identity (the device was replaced at the same address), or keys bound to none, they are
    /// dropped: they must not be used for the new device, nor for the old one any more. Returns
    /// whether the record changed.
    pub fn bind_sender(&mut self, identity: DeviceIdentity) -> bool {
        if self.sender_identity == Some(identity) {
            return false;
        }
        self.states.clear();
        self.sender_identity = Some(identity);
        true
    }

    /// Whether a state with `key_id` is held.
    pub fn has(&self, key_id: u32) -> bool {
        self.states.iter().any(|s| s.key_id == key_id)
    }

    /// Adds a state as the newest and drops the oldest beyond the cap. A distribution for a key
    /// already held is ignored: it must never rewind a chain (that would re-open used iterations).
    /// Returns whether the state was added.
    pub fn add(&mut self, state: SenderKeyState) -> bool {
        if self.has(state.key_id) {
            return false;
        }
        self.states.push_front(state);
        self.states.truncate(MAX_SENDER_KEY_STATES);
        true
    }

    /// Serializes.
    pub fn to_proto(&self) -> pstore::SenderKeyRecord {
        pstore::SenderKeyRecord {
            states: self.states.iter().map(SenderKeyState::to_proto).collect(),
            sender_identity: self
                .sender_identity
                .map(|i| i.to_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    /// Restores.
    pub fn from_proto(p: &pstore::SenderKeyRecord) -> Result<Self> {
        Ok(Self {
            states: p
                .states
                .iter()
                .map(SenderKeyState::from_proto)
                .collect::<Result<_>>()?,
            sender_identity: if p.sender_identity.is_empty() {
                None
            } else {
                Some(DeviceIdentity::from_bytes(&p.sender_identity)?)
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AccountKeyPair;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn setup() -> (ChaCha20Rng, GroupId, DeviceAddress, DeviceAddress) {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let g = GroupId::random(&mut rng);
        let a = DeviceAddress {
            account: AccountKeyPair::generate(&mut rng).id(),
            device_id: 1,
        };
        let b = DeviceAddress {
            account: AccountKeyPair::generate(&mut rng).id(),
            device_id: 1,
        };
        (rng, g, a, b)
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let (mut rng, g, a, b) = setup();
        let mut own = SenderKeyState::generate(&mut rng, 1, 0);
        let d = own.distribution_for(g, b, None).unwrap();
        assert_eq!(d.iteration, 0);
        let mut theirs = SenderKeyState::from_distribution(&d, 0).unwrap();
        let msgs: Vec<_> = (0..5)
            .map(|i| own.encrypt(g, a, (1, [0; 32]), format!("m{i}").as_bytes()).unwrap())
            .collect();
        assert_eq!(&*theirs.decrypt(&msgs[1], 1).unwrap(), b"m1");
        assert_eq!(theirs.skipped_len(), 1);
        assert_eq!(&*theirs.decrypt(&msgs[4], 1).unwrap(), b"m4");
        assert_eq!(&*theirs.decrypt(&msgs[0], 1).unwrap(), b"m0");
        assert!(matches!(
            theirs.decrypt(&msgs[0], 1),
            Err(Error::Protocol(ProtocolError::Duplicate))
        ));
        assert_eq!(&*theirs.decrypt(&msgs[2], 1).unwrap(), b"m2");
        assert_eq!(&*theirs.decrypt(&msgs[3], 1).unwrap(), b"m3");
        assert_eq!(theirs.skipped_len(), 0);
    }
    #[test]
    fn skipped_keys_expire_by_age() {
        let (mut rng, g, a, b) = setup();
        let mut own = SenderKeyState::generate(&mut rng, 1, 0);
        let d = own.distribution_for(g, b, None).unwrap();
        let mut theirs = SenderKeyState::from_distribution(&d, 0).unwrap();
        let msgs: Vec<_> = (0..6)
            .map(|i| own.encrypt(g, a, (1, [0; 32]), format!("m{i}").as_bytes()).unwrap())
            .collect();
        // Message 3 at time 10 stores the keys of 0, 1 and 2 as skipped.
        assert_eq!(&*theirs.decrypt(&msgs[3], 10).unwrap(), b"m3");
        assert_eq!(theirs.skipped_len(), 3);
        // Within the age limit a skipped key still works.
        let limit = 10 + SENDER_KEY_SKIPPED_MAX_AGE_MS;
        assert_eq!(&*theirs.decrypt(&msgs[0], limit).unwrap(), b"m0");
        // Beyond it the others are gone, and the failure leaves the state unchanged.
        assert!(matches!(
            theirs.decrypt(&msgs[1], limit + 1),
            Err(Error::Protocol(ProtocolError::Duplicate))
        ));
        assert_eq!(theirs.skipped_len(), 2);
        // The next successful decryption purges them.
        assert_eq!(&*theirs.decrypt(&msgs[4], limit + 1).unwrap(), b"m4");
        assert_eq!(theirs.skipped_len(), 0);
        assert!(matches!(
            theirs.decrypt(&msgs[2], limit + 1),
            Err(Error::Protocol(ProtocolError::Duplicate))
        ));
    }
}
