//! The Double Ratchet (Signal's Double Ratchet specification, revision 4), with
//! ChaCha20-Poly1305 as the AEAD and HKDF/HMAC-SHA256 as the KDFs.
//!
//! - `KDF_RK(rk, dh)`: HKDF-SHA256(salt = rk, ikm = dh, info = [`ROOT_KDF_INFO`]) → 64 bytes: new root key ‖ chain key.
//! - `KDF_CK(ck)`: message key = HMAC-SHA256(ck, 0x01), next chain key = HMAC-SHA256(ck, 0x02).
//!   The chain, its message-key expansion and the skip limit check live in [`crate::chain`],
//!   shared with sender keys.
//! - message key → HKDF-SHA256(salt = 32 zero bytes, ikm = mk, info = [`MESSAGE_KEY_INFO`]) → 44 bytes:
//!   ChaCha20-Poly1305 key (32) ‖ nonce (12). Each message key is used exactly once.
//! - AD = session AD (initiator identity ‖ responder identity, 128 bytes) ‖ header (44 bytes:
//!   version u32 BE ‖ ratchet key ‖ N u32 BE ‖ PN u32 BE).
//!
//! The sending-side DH ratchet step is taken lazily: after receiving a new ratchet key the next
//! *encrypt* generates the new ratchet key pair. This is the same sequence of root-key steps as the
//! specification, and keeps decryption free of randomness.
//!
//! Decryption is transactional: all derivations happen on temporaries and the state is changed only
//! after the AEAD tag verified, so any failure leaves the session exactly as it was.

use std::collections::{BTreeMap, HashMap, VecDeque};

use hkdf::Hkdf;
use hush_proto::{store as pstore, wire};
use rand_core::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::chain;
use crate::consts::{
    KEY_LEN, MAX_OLD_RECEIVING_CHAINS, MAX_PLAINTEXT_LEN, MAX_SKIP, MAX_SKIPPED_KEYS,
    MAX_SKIPPED_KEYS_PER_CHAIN, MESSAGE_KEY_INFO, PROTOCOL_VERSION, ROOT_KDF_INFO,
    SESSION_STATE_VERSION, SKIPPED_KEY_MAX_AGE_MS,
};
use crate::error::{AuthError, Error, ProtocolError, Result};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity, array, dh, x25519_public};

use crate::chain::Secret;

/// Length of the header bytes authenticated as AD.
pub const HEADER_LEN: usize = 4 + KEY_LEN + 4 + 4;

/// `KDF_RK`: (new root key, new chain key).
pub fn kdf_rk(root_key: &[u8; KEY_LEN], dh_out: &[u8; KEY_LEN]) -> (Secret, Secret) {
    let hk = Hkdf::<Sha256>::new(Some(root_key), dh_out);
    let mut okm = Zeroizing::new([0u8; 2 * KEY_LEN]);
    // 64 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(ROOT_KDF_INFO, okm.as_mut());
    split_pair(&okm)
}

fn split_pair(okm: &[u8; 2 * KEY_LEN]) -> (Secret, Secret) {
    let mut a = Zeroizing::new([0u8; KEY_LEN]);
    let mut b = Zeroizing::new([0u8; KEY_LEN]);
    for (i, byte) in okm.iter().enumerate() {
        if let Some(slot) = a.get_mut(i) {
            *slot = *byte;
        } else if let Some(slot) = b.get_mut(i - KEY_LEN) {
            *slot = *byte;
        }
    }
    (a, b)
}

/// `KDF_CK`: (message key, next chain key). The chain is the one shared with sender keys,
/// [`chain::step`].
pub fn kdf_ck(chain_key: &[u8; KEY_LEN]) -> (Secret, Secret) {
    chain::step(chain_key)
}

/// One end of a session: the device's address and identity keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Party {
    /// Account and device id.
    pub address: DeviceAddress,
    /// Identity keys.
    pub identity: DeviceIdentity,
}

impl Party {
    /// account key (32) ‖ device id (u32 BE) ‖ identity (64).
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.address.account.as_bytes());
        out.extend_from_slice(&self.address.device_id.to_be_bytes());
        out.extend_from_slice(&self.identity.to_bytes());
    }
}

/// Length of the encoded session AD (both parties) before the header.
pub const SESSION_AD_LEN: usize = 2 * (KEY_LEN + 4 + 2 * KEY_LEN);

/// The associated data of a message: initiator ‖ responder (each account key ‖ device id u32 BE ‖
/// identity `signing ‖ dh`, 100 bytes) ‖ the 44 header bytes. Binding the account and device id,
/// not only the identity keys, stops a relay from relabelling a message as coming from another
/// account that lists the same device identity.
pub fn message_ad(initiator: &Party, responder: &Party, header: &Header) -> Vec<u8> {
    let mut ad = Vec::with_capacity(SESSION_AD_LEN + HEADER_LEN);
    initiator.encode(&mut ad);
    responder.encode(&mut ad);
    ad.extend_from_slice(&header.to_bytes());
    ad
}

/// Seals `plaintext` under message key `mk` with associated data `ad`.
pub fn seal(mk: &[u8; KEY_LEN], ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    chain::seal(mk, MESSAGE_KEY_INFO, ad, plaintext)
}

/// Opens `ciphertext` under message key `mk` with associated data `ad`.
pub fn open(mk: &[u8; KEY_LEN], ad: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    chain::open(mk, MESSAGE_KEY_INFO, ad, ciphertext)
}

/// A validated ratchet message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Sender's ratchet public key.
    pub ratchet_key: [u8; KEY_LEN],
    /// N.
    pub counter: u32,
    /// PN.
    pub previous_counter: u32,
}

impl Header {
    /// The 44 header bytes authenticated in the AD.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let parts: [&[u8]; 4] = [
            &PROTOCOL_VERSION.to_be_bytes(),
            &self.ratchet_key,
            &self.counter.to_be_bytes(),
            &self.previous_counter.to_be_bytes(),
        ];
        let mut at = 0;
        for p in parts {
            if let Some(dst) = out.get_mut(at..at + p.len()) {
                dst.copy_from_slice(p);
            }
            at += p.len();
        }
        out
    }
}

/// A ratchet message validated at the edge: version, key and length checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatchetMessage {
    /// Header.
    pub header: Header,
    /// AEAD ciphertext.
    pub ciphertext: Vec<u8>,
}

impl TryFrom<&wire::RatchetMessage> for RatchetMessage {
    type Error = Error;
    fn try_from(m: &wire::RatchetMessage) -> Result<Self> {
        if m.version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(m.version).into());
        }
        let ratchet_key = x25519_public(&m.ratchet_key)?.to_bytes();
        if m.ciphertext.len() < crate::consts::AEAD_TAG_LEN
            || m.ciphertext.len() > MAX_PLAINTEXT_LEN + crate::consts::AEAD_TAG_LEN
        {
            return Err(Error::malformed(
                "ratchet message",
                "ciphertext length out of range",
            ));
        }
        Ok(Self {
            header: Header {
                ratchet_key,
                counter: m.counter,
                previous_counter: m.previous_counter,
            },
            ciphertext: m.ciphertext.clone(),
        })
    }
}

impl RatchetMessage {
    /// The wire form.
    pub fn to_wire(&self) -> wire::RatchetMessage {
        wire::RatchetMessage {
            version: PROTOCOL_VERSION,
            ratchet_key: self.header.ratchet_key.to_vec(),
            counter: self.header.counter,
            previous_counter: self.header.previous_counter,
            ciphertext: self.ciphertext.clone(),
        }
    }
}

struct Chain {
    key: Secret,
    index: u32,
}

struct SkippedEntry {
    key: Secret,
    stored_at: u64,
    order: u64,
}

/// Skipped message keys: O(1) lookup by (ratchet key, counter), bounded per chain and in total,
/// oldest evicted first, expired by age.
#[derive(Default)]
struct SkippedKeys {
    map: HashMap<([u8; KEY_LEN], u32), SkippedEntry>,
    by_order: BTreeMap<u64, ([u8; KEY_LEN], u32)>,
    per_chain: HashMap<[u8; KEY_LEN], BTreeMap<u64, u32>>,
    next_order: u64,
}

impl SkippedKeys {
    /// The key for (ratchet key, counter) unless it has expired at `now`.
    fn get(&self, ratchet_key: &[u8; KEY_LEN], counter: u32, now: u64) -> Option<&Secret> {
        self.map
            .get(&(*ratchet_key, counter))
            .filter(|e| e.stored_at.saturating_add(SKIPPED_KEY_MAX_AGE_MS) >= now)
            .map(|e| &e.key)
    }

    fn remove(&mut self, ratchet_key: &[u8; KEY_LEN], counter: u32) {
        if let Some(e) = self.map.remove(&(*ratchet_key, counter)) {
            self.by_order.remove(&e.order);
            if let Some(c) = self.per_chain.get_mut(ratchet_key) {
                c.remove(&e.order);
                if c.is_empty() {
                    self.per_chain.remove(ratchet_key);
                }
            }
        }
    }

    fn insert(
        &mut self,
        ratchet_key: [u8; KEY_LEN],
        counter: u32,
        key: Secret,
        stored_at: u64,
        order: u64,
    ) {
        self.next_order = self.next_order.max(order + 1);
        if let Some(old) = self.map.insert(
            (ratchet_key, counter),
            SkippedEntry {
                key,
                stored_at,
                order,
            },
        ) {
            self.by_order.remove(&old.order);
        }
        self.by_order.insert(order, (ratchet_key, counter));
        let chain = self.per_chain.entry(ratchet_key).or_default();
        chain.insert(order, counter);
        let oldest_in_chain = if chain.len() > MAX_SKIPPED_KEYS_PER_CHAIN {
            chain.first_key_value()
        } else {
            None
        };
        if let Some((_, &c)) = oldest_in_chain {
            self.remove(&ratchet_key, c);
        }
        while self.map.len() > MAX_SKIPPED_KEYS {
            let Some((_, (k, c))) = self.by_order.first_key_value().map(|(o, v)| (*o, *v)) else {
                break;
            };
            self.remove(&k, c);
        }
    }

    fn push(&mut self, ratchet_key: [u8; KEY_LEN], counter: u32, key: Secret, now: u64) {
        let order = self.next_order;
        self.insert(ratchet_key, counter, key, now, order);
    }

    /// Deletes keys older than [`SKIPPED_KEY_MAX_AGE_MS`], oldest first (insertion order follows time).
    fn expire(&mut self, now: u64) {
        while let Some((order, (k, c))) = self.by_order.first_key_value().map(|(o, v)| (*o, *v)) {
            match self.map.get(&(k, c)) {
                Some(e) if e.stored_at.saturating_add(SKIPPED_KEY_MAX_AGE_MS) >= now => break,
                Some(_) => self.remove(&k, c),
                None => {
                    self.by_order.remove(&order);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The Alice-side data repeated in every message until the first reply (PQXDH initial message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingInitial {
    /// EK_A (public).
    pub base_key: [u8; KEY_LEN],
    /// Responder's signed pre-key id.
    pub signed_pre_key_id: u32,
    /// Responder's one-time pre-key id, if one was used.
    pub one_time_pre_key_id: Option<u32>,
    /// Responder's ML-KEM pre-key id.
    pub kem_pre_key_id: u32,
    /// ML-KEM ciphertext.
    pub kem_ciphertext: Vec<u8>,
    /// Sender's account key.
    pub local_account: [u8; KEY_LEN],
    /// Sender's device id.
    pub local_device_id: u32,
}

/// One Double Ratchet session with one remote device.
pub struct SessionState {
    local: Party,
    remote: Party,
    initiator: bool,
    root_key: Secret,
    /// The private half of the current sending ratchet key; `None` once it is spent (after a
    /// receiving ratchet step, until the next encrypt generates a new one), so it is never kept
    /// longer than needed.
    sending_ratchet: Option<Box<StaticSecret>>,
    sending_ratchet_public: [u8; KEY_LEN],
    sending_chain: Option<Chain>,
    remote_ratchet: Option<[u8; KEY_LEN]>,
    receiving_chain: Option<Chain>,
    previous_sending_counter: u32,
    old_receiving: VecDeque<[u8; KEY_LEN]>,
    skipped: SkippedKeys,
    pending: Option<PendingInitial>,
    base_key: [u8; KEY_LEN],
    created_at: u64,
    last_used_at: u64,
}

/// What a successful decryption changed, for inspection by tests and vectors.
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The message key that opened it (exposed for test vectors).
    pub message_key: Secret,
}

/// What a successful encryption produced.
pub struct Encrypted {
    /// The message.
    pub message: RatchetMessage,
    /// The message key used (exposed for test vectors).
    pub message_key: Secret,
}

impl SessionState {
    /// Alice's state after PQXDH: `sk` is the PQXDH secret, `ratchet` her first ratchet key pair,
    /// `remote_ratchet` Bob's signed pre-key.
    pub(crate) fn new_initiator(
        local: Party,
        remote: Party,
        sk: &[u8; KEY_LEN],
        ratchet: StaticSecret,
        remote_ratchet: &PublicKey,
        pending: PendingInitial,
        now: u64,
    ) -> Result<Self> {
        let dh_out = dh(&ratchet, remote_ratchet)?;
        let (root_key, ck) = kdf_rk(sk, &dh_out);
        let sending_ratchet_public = PublicKey::from(&ratchet).to_bytes();
        Ok(Self {
            local,
            remote,
            initiator: true,
            root_key,
            sending_ratchet: Some(Box::new(ratchet)),
            sending_ratchet_public,
            sending_chain: Some(Chain { key: ck, index: 0 }),
            remote_ratchet: Some(remote_ratchet.to_bytes()),
            receiving_chain: None,
            previous_sending_counter: 0,
            old_receiving: VecDeque::new(),
            skipped: SkippedKeys::default(),
            base_key: pending.base_key,
            pending: Some(pending),
            created_at: now,
            last_used_at: now,
        })
    }

    /// Bob's state after PQXDH: his signed pre-key pair is his first ratchet key pair.
    pub(crate) fn new_responder(
        local: Party,
        remote: Party,
        sk: &[u8; KEY_LEN],
        signed_pre_key: StaticSecret,
        base_key: [u8; KEY_LEN],
        now: u64,
    ) -> Self {
        let sending_ratchet_public = PublicKey::from(&signed_pre_key).to_bytes();
        Self {
            local,
            remote,
            initiator: false,
            root_key: Zeroizing::new(*sk),
            sending_ratchet: Some(Box::new(signed_pre_key)),
            sending_ratchet_public,
            sending_chain: None,
            remote_ratchet: None,
            receiving_chain: None,
            previous_sending_counter: 0,
            old_receiving: VecDeque::new(),
            skipped: SkippedKeys::default(),
            pending: None,
            base_key,
            created_at: now,
            last_used_at: now,
        }
    }

    fn associated_data(&self, header: &Header) -> Vec<u8> {
        if self.initiator {
            message_ad(&self.local, &self.remote, header)
        } else {
            message_ad(&self.remote, &self.local, header)
        }
    }

    /// Whether this side initiated the session.
    pub const fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Current receiving chain key, if any (exposed for test vectors).
    pub fn receiving_chain_key(&self) -> Option<&[u8; KEY_LEN]> {
        self.receiving_chain.as_ref().map(|c| &*c.key)
    }

    /// The remote device's identity.
    pub const fn remote_identity(&self) -> DeviceIdentity {
        self.remote.identity
    }

    /// The remote device's address.
    pub const fn remote_address(&self) -> DeviceAddress {
        self.remote.address
    }

    /// The initiator's base key EK_A, which names the session on both sides.
    pub const fn base_key(&self) -> &[u8; KEY_LEN] {
        &self.base_key
    }

    /// Whether the initiator has not heard back yet (its messages still carry the PQXDH header).
    pub const fn pending(&self) -> Option<&PendingInitial> {
        self.pending.as_ref()
    }

    /// Last time the session was used to encrypt or decrypt (ms).
    pub const fn last_used_at(&self) -> u64 {
        self.last_used_at
    }

    /// Creation time (ms).
    pub const fn created_at(&self) -> u64 {
        self.created_at
    }

    /// Current root key (exposed for test vectors).
    pub fn root_key(&self) -> &[u8; KEY_LEN] {
        &self.root_key
    }

    /// Current sending chain key, if any (exposed for test vectors).
    pub fn sending_chain_key(&self) -> Option<&[u8; KEY_LEN]> {
        self.sending_chain.as_ref().map(|c| &*c.key)
    }

    /// Number of skipped message keys held.
    pub fn skipped_len(&self) -> usize {
        self.skipped.len()
    }

    /// True when `ratchet_key` belongs to this session's receiving side (current, old or skipped chains).
    pub(crate) fn knows_ratchet_key(&self, ratchet_key: &[u8; KEY_LEN]) -> bool {
        self.remote_ratchet.as_ref() == Some(ratchet_key)
            || self.old_receiving.contains(ratchet_key)
            || self.skipped.per_chain.contains_key(ratchet_key)
    }

    /// Encrypts one message. Takes the sending DH ratchet step first if one is due (needs `rng`).
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Encrypted> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(ProtocolError::TooLarge(plaintext.len()).into());
        }
        if self.sending_chain.is_none() {
            let remote = self.remote_ratchet.ok_or(ProtocolError::NoSession)?;
            let fresh = StaticSecret::random_from_rng(rng);
            let dh_out = dh(&fresh, &PublicKey::from(remote))?;
            let (rk, ck) = kdf_rk(&self.root_key, &dh_out);
            self.root_key = rk;
            self.sending_ratchet_public = PublicKey::from(&fresh).to_bytes();
            self.sending_ratchet = Some(Box::new(fresh));
            self.sending_chain = Some(Chain { key: ck, index: 0 });
        }
        let chain = self
            .sending_chain
            .as_mut()
            .ok_or(ProtocolError::NoSession)?;
        if chain.index == u32::MAX {
            return Err(ProtocolError::Misuse("sending chain exhausted").into());
        }
        let header = Header {
            ratchet_key: self.sending_ratchet_public,
            counter: chain.index,
            previous_counter: self.previous_sending_counter,
        };
        let (mk, next) = kdf_ck(&chain.key);
        chain.key = next;
        chain.index += 1;
        let ad = self.associated_data(&header);
        let ciphertext = seal(&mk, &ad, plaintext)?;
        self.last_used_at = self.last_used_at.max(now);
        Ok(Encrypted {
            message: RatchetMessage { header, ciphertext },
            message_key: mk,
        })
    }

    /// Decrypts one message. On any error the state is unchanged.
    pub fn decrypt(&mut self, msg: &RatchetMessage, now: u64) -> Result<Decrypted> {
        let h = msg.header;
        let ad = self.associated_data(&h);

        // 1. A key skipped earlier.
        if let Some(mk) = self.skipped.get(&h.ratchet_key, h.counter, now) {
            let plaintext = open(mk, &ad, &msg.ciphertext)?;
            let message_key = Zeroizing::new(**mk);
            self.skipped.remove(&h.ratchet_key, h.counter);
            return Ok(self.finish(plaintext, message_key, now));
        }

        // 2. The current receiving chain.
        if self.remote_ratchet == Some(h.ratchet_key) {
            let chain = self
                .receiving_chain
                .as_ref()
                .ok_or(AuthError::DecryptFailed)?;
            if h.counter < chain.index {
                return Err(ProtocolError::Duplicate.into());
            }
            let (skipped, mk, next) = chain::advance(&chain.key, chain.index, h.counter, MAX_SKIP)?;
            let plaintext = open(&mk, &ad, &msg.ciphertext)?;
            for (i, k) in skipped {
                self.skipped.push(h.ratchet_key, i, k, now);
            }
            self.receiving_chain = Some(Chain {
                key: next,
                index: h.counter.saturating_add(1),
            });
            return Ok(self.finish(plaintext, mk, now));
        }

        // 3. An older chain whose key is gone: already decrypted or evicted.
        if self.old_receiving.contains(&h.ratchet_key) {
            return Err(ProtocolError::Duplicate.into());
        }

        // 4. A new ratchet key: skip the rest of the current chain up to PN, then step the root chain.
        let old_skipped = match (&self.receiving_chain, &self.remote_ratchet) {
            (Some(chain), Some(_)) if h.previous_counter > chain.index => {
                let gap = h.previous_counter - chain.index;
                if gap > MAX_SKIP {
                    return Err(ProtocolError::TooFarAhead {
                        skip: u64::from(gap),
                        limit: MAX_SKIP,
                    }
                    .into());
                }
                let (keys, last, _) =
                    chain::advance(&chain.key, chain.index, h.previous_counter - 1, MAX_SKIP)?;
                let mut keys = keys;
                keys.push((h.previous_counter - 1, last));
                keys
            }
            _ => Vec::new(),
        };
        let own = self
            .sending_ratchet
            .as_deref()
            .ok_or(AuthError::DecryptFailed)?;
        let dh_out = dh(own, &PublicKey::from(h.ratchet_key))?;
        let (rk, ck) = kdf_rk(&self.root_key, &dh_out);
        let (new_skipped, mk, next) = chain::advance(&ck, 0, h.counter, MAX_SKIP)?;
        let plaintext = open(&mk, &ad, &msg.ciphertext)?;

        if let Some(old) = self.remote_ratchet {
            for (i, k) in old_skipped {
                self.skipped.push(old, i, k, now);
            }
            self.old_receiving.push_back(old);
            while self.old_receiving.len() > MAX_OLD_RECEIVING_CHAINS {
                self.old_receiving.pop_front();
            }
        }
        for (i, k) in new_skipped {
            self.skipped.push(h.ratchet_key, i, k, now);
        }
        self.root_key = rk;
        self.remote_ratchet = Some(h.ratchet_key);
        self.receiving_chain = Some(Chain {
            key: next,
            index: h.counter.saturating_add(1),
        });
        if let Some(c) = self.sending_chain.take() {
            self.previous_sending_counter = c.index;
        }
        // Spent: the next encrypt generates a new ratchet key pair; an honest peer cannot start
        // another chain against this one before it receives that new key.
        self.sending_ratchet = None;
        Ok(self.finish(plaintext, mk, now))
    }

    fn finish(
        &mut self,
        plaintext: Zeroizing<Vec<u8>>,
        message_key: Secret,
        now: u64,
    ) -> Decrypted {
        // Any authentic reply proves the responder has the session: stop sending the PQXDH header.
        self.pending = None;
        self.last_used_at = self.last_used_at.max(now);
        self.skipped.expire(now);
        Decrypted {
            plaintext,
            message_key,
        }
    }

    /// Serializes the state for the encrypted store.
    pub fn to_proto(&self) -> pstore::SessionState {
        let chain = |c: &Option<Chain>| {
            c.as_ref().map(|c| pstore::ChainState {
                chain_key: c.key.to_vec(),
                index: c.index,
            })
        };
        let mut skipped: Vec<_> = self
            .skipped
            .map
            .iter()
            .map(|((k, c), e)| pstore::SkippedKey {
                ratchet_key: k.to_vec(),
                counter: *c,
                message_key: e.key.to_vec(),
                stored_at: e.stored_at,
                order: e.order,
            })
            .collect();
        skipped.sort_by_key(|s| s.order);
        pstore::SessionState {
            version: SESSION_STATE_VERSION,
            local_identity: self.local.identity.to_bytes().to_vec(),
            remote_identity: self.remote.identity.to_bytes().to_vec(),
            root_key: self.root_key.to_vec(),
            sending_ratchet_private: self
                .sending_ratchet
                .as_ref()
                .map(|k| k.to_bytes().to_vec())
                .unwrap_or_default(),
            sending_chain: chain(&self.sending_chain),
            remote_ratchet_key: self.remote_ratchet.map(|k| k.to_vec()).unwrap_or_default(),
            receiving_chain: chain(&self.receiving_chain),
            previous_sending_counter: self.previous_sending_counter,
            old_receiving_ratchet_keys: self.old_receiving.iter().map(|k| k.to_vec()).collect(),
            skipped,
            pending: self.pending.as_ref().map(|p| pstore::PendingInitial {
                base_key: p.base_key.to_vec(),
                signed_pre_key_id: p.signed_pre_key_id,
                one_time_pre_key_id: p.one_time_pre_key_id,
                kem_pre_key_id: p.kem_pre_key_id,
                kem_ciphertext: p.kem_ciphertext.clone(),
                local_account_key: p.local_account.to_vec(),
                local_device_id: p.local_device_id,
            }),
            base_key: self.base_key.to_vec(),
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            skipped_order: self.skipped.next_order,
            initiator: self.initiator,
            local_account: self.local.address.account.as_bytes().to_vec(),
            local_device_id: self.local.address.device_id,
            remote_account: self.remote.address.account.as_bytes().to_vec(),
            remote_device_id: self.remote.address.device_id,
        }
    }

    /// Restores a state from the store, validating every field.
    pub fn from_proto(p: &pstore::SessionState) -> Result<Self> {
        const W: &str = "stored session";
        if p.version != SESSION_STATE_VERSION {
            return Err(ProtocolError::UnsupportedVersion(p.version).into());
        }
        let secret =
            |b: &[u8], reason| -> Result<Secret> { Ok(Zeroizing::new(array(b, W, reason)?)) };
        let chain = |c: &Option<pstore::ChainState>| -> Result<Option<Chain>> {
            c.as_ref()
                .map(|c| {
                    Ok(Chain {
                        key: secret(&c.chain_key, "chain key")?,
                        index: c.index,
                    })
                })
                .transpose()
        };
        let key32 = |b: &[u8]| -> Result<[u8; KEY_LEN]> { array(b, W, "key must be 32 bytes") };
        let mut skipped = SkippedKeys::default();
        for s in &p.skipped {
            skipped.insert(
                key32(&s.ratchet_key)?,
                s.counter,
                secret(&s.message_key, "message key")?,
                s.stored_at,
                s.order,
            );
        }
        skipped.next_order = skipped.next_order.max(p.skipped_order);
        let pending = p
            .pending
            .as_ref()
            .map(|q| -> Result<PendingInitial> {
                Ok(PendingInitial {
                    base_key: key32(&q.base_key)?,
                    signed_pre_key_id: q.signed_pre_key_id,
                    one_time_pre_key_id: q.one_time_pre_key_id,
                    kem_pre_key_id: q.kem_pre_key_id,
                    kem_ciphertext: q.kem_ciphertext.clone(),
                    local_account: key32(&q.local_account_key)?,
                    local_device_id: q.local_device_id,
                })
            })
            .transpose()?;
        let sending = if p.sending_ratchet_private.is_empty() {
            None
        } else {
            let k: Secret = secret(&p.sending_ratchet_private, "ratchet key")?;
            Some(Box::new(StaticSecret::from(*k)))
        };
        let sending_ratchet_public: [u8; KEY_LEN] = match (&sending, &p.sending_chain) {
            (Some(k), _) => PublicKey::from(k.as_ref()).to_bytes(),
            (None, Some(_)) => {
                return Err(Error::malformed(W, "sending chain without its ratchet key"));
            }
            (None, None) => [0; KEY_LEN],
        };
        Ok(Self {
            local: Party {
                address: DeviceAddress {
                    account: AccountId::from_bytes(&p.local_account)?,
                    device_id: p.local_device_id,
                },
                identity: DeviceIdentity::from_bytes(&p.local_identity)?,
            },
            remote: Party {
                address: DeviceAddress {
                    account: AccountId::from_bytes(&p.remote_account)?,
                    device_id: p.remote_device_id,
                },
                identity: DeviceIdentity::from_bytes(&p.remote_identity)?,
            },
            initiator: p.initiator,
            root_key: secret(&p.root_key, "root key")?,
            sending_ratchet: sending,
            sending_ratchet_public,
            sending_chain: chain(&p.sending_chain)?,
            remote_ratchet: if p.remote_ratchet_key.is_empty() {
                None
            } else {
                Some(key32(&p.remote_ratchet_key)?)
            },
            receiving_chain: chain(&p.receiving_chain)?,
            previous_sending_counter: p.previous_sending_counter,
            old_receiving: p
                .old_receiving_ratchet_keys
                .iter()
                .map(|k| key32(k))
                .collect::<Result<_>>()?,
            skipped,
            pending,
            base_key: key32(&p.base_key)?,
            created_at: p.created_at,
            last_used_at: p.last_used_at,
        })
    }
}
