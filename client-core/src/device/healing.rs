//! Session healing (PROTOCOL.md §20): a device that cannot decrypt a pairwise message because its
//! session with the sender is lost or stale (a store restored from an old backup, a session
//! retired on one side only, pre-keys lost) asks the sender device to send it again.
//!
//! * Every pairwise message a device seals is kept in its **sent log** (the encoded `Content`,
//!   under the recipient and the message's id) for [`SENT_LOG_MAX_AGE_MS`], bounded by
//!   [`SENT_LOG_MAX_ENTRIES`] and [`SENT_LOG_MAX_BYTES`] (oldest dropped first).
//! * A receiver records the id of each pairwise message it could not decrypt
//!   ([`Device::note_undecryptable`]), and once per [`RETRY_REQUEST_INTERVAL_MS`] per sender
//!   device starts a **fresh session** with that device from its bundle and sends a
//!   `RetryRequest` with the recorded ids as the first message of that session
//!   ([`Device::seal_retry_request`]). The fresh session is started by the requester because its
//!   own keys (the session, its pre-keys) are what may have been lost.
//! * The sender device decrypts the request (the fresh session becomes its current one) and seals
//!   every listed message it still has again, on that session ([`Device::decrypt`] returns them in
//!   [`Incoming::outgoing`](super::Incoming)).

use std::collections::{BTreeMap, HashMap};

use hush_proto::{store as pstore, wire};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Device, Outgoing, Tx, decode, encode};
use crate::consts::{
    KEY_LEN, MAX_RESENDS_PER_MESSAGE, MAX_RETRY_IDS, MAX_RETRY_PENDING_DEVICES,
    PAIRWISE_MESSAGE_ID_LABEL, RECENT_IDS_KEPT, RETRY_GATHER_MS, RETRY_REQUEST_INTERVAL_MS,
    SENT_LOG_MAX_AGE_MS, SENT_LOG_MAX_BYTES, SENT_LOG_MAX_ENTRIES,
};
use crate::device::error::{DeviceError, Result};
use crate::error::{AuthError, Error, ProtocolError};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity, array};
use crate::prekeys::PreKeyBundle;
use crate::store::kv::{Batch, KvStore, Namespace};

/// A pairwise message id: `SHA-256(PAIRWISE_MESSAGE_ID_LABEL ‖ bytes)` over the encoded
/// `PairwiseMessage` exactly as sent and delivered.
pub type MessageId = [u8; 32];

/// Meta key prefix of a sender device's pending retry ids (`"retry/" ‖ address`).
const RETRY_PENDING_PREFIX: &[u8] = b"retry/";

/// Meta key prefix of a sender device's recently decrypted ids (`"recent/" ‖ address`).
const RECENT_PREFIX: &[u8] = b"recent/";

/// The id of an encoded pairwise message.
#[must_use]
pub fn pairwise_message_id(bytes: &[u8]) -> MessageId {
    let mut h = Sha256::new();
    h.update(PAIRWISE_MESSAGE_ID_LABEL);
    h.update(bytes);
    h.finalize().into()
}

impl Error {
    /// Whether a pairwise message that failed with this error may be healed by asking its sender
    /// to send it again on a fresh session: the message could not be decrypted with the session
    /// state this device holds (no session, an AEAD failure, a message key already used or too far
    /// ahead, an unknown pre-key). A replayed initial message (`LastResortReuse`) is not. Not for malformed input, an identity that does not match the
    /// device list (learn the list first), or a local failure.
    #[must_use]
    pub const fn calls_for_retry(&self) -> bool {
        matches!(
            self,
            Self::Auth(AuthError::DecryptFailed)
                | Self::Protocol(
                    ProtocolError::NoSession
                        | ProtocolError::Duplicate
                        | ProtocolError::TooFarAhead { .. }
                        | ProtocolError::UnknownPreKey { .. }
                )
        )
    }
}

/// One sent message in the in-memory index of the sent log.
#[derive(Clone, Copy)]
struct SentEntry {
    to: DeviceAddress,
    id: MessageId,
    sent_at: u64,
    size: usize,
}

/// The index of the sent log (the contents stay in the store).
#[derive(Default)]
pub(crate) struct SentLog {
    /// By sequence number (the order of sending).
    entries: BTreeMap<u64, SentEntry>,
    by_id: HashMap<(DeviceAddress, MessageId), u64>,
    bytes: usize,
    next_seq: u64,
}

/// A sent message to be added to the log when its transaction commits.
pub(crate) struct PendingSent {
    seq: u64,
    entry: SentEntry,
}

fn sent_key(to: &DeviceAddress, seq: u64) -> Vec<u8> {
    let mut k = to.to_key().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn recent_key(from: &DeviceAddress) -> Vec<u8> {
    let mut k = RECENT_PREFIX.to_vec();
    k.extend_from_slice(&from.to_key());
    k
}

fn pending_key(from: &DeviceAddress) -> Vec<u8> {
    let mut k = RETRY_PENDING_PREFIX.to_vec();
    k.extend_from_slice(&from.to_key());
    k
}

fn address_from_key(k: &[u8], what: &'static str) -> Result<DeviceAddress> {
    let (account, device) = k
        .split_at_checked(KEY_LEN)
        .ok_or(DeviceError::malformed(what, "bad key"))?;
    Ok(DeviceAddress {
        account: AccountId::from_bytes(account)?,
        device_id: u32::from_be_bytes(array(device, what, "bad key")?),
    })
}

/// The receiver's side: undecryptable messages waiting to be asked for (durable), when each
/// sender device was last asked (in memory only: after a restart a request may come sooner than
/// the interval, as for sender-key requests), and the ids last decrypted from each (durable).
#[derive(Default)]
pub(crate) struct RetryState {
    pending: BTreeMap<DeviceAddress, Vec<MessageId>>,
    pending_since: HashMap<DeviceAddress, u64>,
    last_request: HashMap<DeviceAddress, u64>,
    /// Ids of the last pairwise messages decrypted per sender device (durable).
    recent: HashMap<DeviceAddress, std::collections::VecDeque<MessageId>>,
}

/// Loads the sent log's index and the pending retry ids from a store.
pub(crate) fn load<S: KvStore>(store: &S) -> Result<(SentLog, RetryState)> {
    let mut log = SentLog::default();
    for (k, v) in store.scan(Namespace::SentLog)? {
        let (addr, seq) = k
            .split_at_checked(KEY_LEN + 4)
            .ok_or(DeviceError::malformed("stored sent message", "bad key"))?;
        let to = address_from_key(addr, "stored sent message")?;
        let seq = u64::from_be_bytes(array(seq, "stored sent message", "bad key")?);
        let mut m: pstore::SentMessage = decode(&v, "stored sent message")?;
        let entry = SentEntry {
            to,
            id: array(&m.message_id, "stored sent message", "bad id")?,
            sent_at: m.sent_at,
            size: m.content.len(),
        };
        zeroize::Zeroize::zeroize(&mut m.content);
        log.insert(seq, entry);
        log.next_seq = log.next_seq.max(seq.saturating_add(1));
    }
    let mut retry = RetryState::default();
    for (k, v) in store.scan(Namespace::Meta)? {
        if let Some(addr) = k.strip_prefix(RECENT_PREFIX) {
            let from = address_from_key(addr, "stored recent ids")?;
            let r: pstore::RecentIds = decode(&v, "stored recent ids")?;
            let ids = r
                .message_ids
                .iter()
                .map(|i| array(i, "stored recent ids", "bad id"))
                .collect::<crate::Result<std::collections::VecDeque<MessageId>>>()?;
            retry.recent.insert(from, ids);
            continue;
        }
        let Some(addr) = k.strip_prefix(RETRY_PENDING_PREFIX) else {
            continue;
        };
        let from = address_from_key(addr, "stored retry ids")?;
        let p: pstore::RetryPending = decode(&v, "stored retry ids")?;
        let ids = p
            .message_ids
            .iter()
            .map(|i| array(i, "stored retry ids", "bad id"))
            .collect::<crate::Result<Vec<MessageId>>>()?;
        if !ids.is_empty() {
            retry.pending.insert(from, ids);
        }
    }
    Ok((log, retry))
}

impl RetryState {
    /// Takes the pending ids of `loaded` (as reloaded from the store), keeping the times.
    pub(crate) fn replace_pending(&mut self, loaded: Self) {
        self.pending = loaded.pending;
        self.recent = loaded.recent;
        self.pending_since
            .retain(|a, _| self.pending.contains_key(a));
    }
}

impl SentLog {
    fn insert(&mut self, seq: u64, e: SentEntry) {
        self.bytes = self.bytes.saturating_add(e.size);
        self.by_id.insert((e.to, e.id), seq);
        self.entries.insert(seq, e);
    }

    fn remove(&mut self, seq: u64) {
        if let Some(e) = self.entries.remove(&seq) {
            self.bytes = self.bytes.saturating_sub(e.size);
            if self.by_id.get(&(e.to, e.id)) == Some(&seq) {
                self.by_id.remove(&(e.to, e.id));
            }
        }
    }

    /// The number of messages kept.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl<S: KvStore> Device<S> {
    /// Adds a sealed message to the sent log within `tx` (applied in memory on commit):
    /// `sent_at` is when it was first sent, `resends` how often it has been sent again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn log_sent(
        &self,
        to: &DeviceAddress,
        identity: &DeviceIdentity,
        bytes: &[u8],
        content: &[u8],
        sent_at: u64,
        resends: u32,
        tx: &mut Tx,
    ) {
        let seq = self
            .sent_log
            .next_seq
            .saturating_add(u64::try_from(tx.sent.len()).unwrap_or(u64::MAX));
        let id = pairwise_message_id(bytes);
        let mut record = pstore::SentMessage {
            message_id: id.to_vec(),
            sent_at,
            content: content.to_vec(),
            recipient_identity: identity.to_bytes().to_vec(),
            resends,
        };
        tx.batch
            .put(Namespace::SentLog, sent_key(to, seq), encode(&record));
        zeroize::Zeroize::zeroize(&mut record.content);
        tx.sent.push(PendingSent {
            seq,
            entry: SentEntry {
                to: *to,
                id,
                sent_at,
                size: content.len(),
            },
        });
    }

    /// Before a commit: drops the oldest logged messages while the log with `tx`'s additions
    /// would exceed its bounds.
    pub(crate) fn bound_sent_log(&self, tx: &mut Tx) {
        if tx.sent.is_empty() {
            return;
        }
        let added_bytes: usize = tx.sent.iter().map(|p| p.entry.size).sum();
        let mut entries = self.sent_log.len().saturating_add(tx.sent.len());
        let mut bytes = self.sent_log.bytes.saturating_add(added_bytes);
        // What the transaction already drops does not count.
        for seq in &tx.sent_removed {
            if let Some(e) = self.sent_log.entries.get(seq) {
                entries = entries.saturating_sub(1);
                bytes = bytes.saturating_sub(e.size);
            }
        }
        for (seq, e) in &self.sent_log.entries {
            if entries <= SENT_LOG_MAX_ENTRIES && bytes <= SENT_LOG_MAX_BYTES {
                break;
            }
            if tx.sent_removed.contains(seq) {
                continue;
            }
            tx.batch.delete(Namespace::SentLog, sent_key(&e.to, *seq));
            tx.sent_removed.push(*seq);
            entries = entries.saturating_sub(1);
            bytes = bytes.saturating_sub(e.size);
        }
    }

    /// Records within `tx` that the pairwise message `bytes` from `from` was decrypted, so that
    /// a redelivery of it is not asked for again (the last [`RECENT_IDS_KEPT`] per device).
    pub(crate) fn note_decrypted(&self, from: &DeviceAddress, bytes: &[u8], tx: &mut Tx) {
        let id = pairwise_message_id(bytes);
        let mut ids = self.retry.recent.get(from).cloned().unwrap_or_default();
        ids.push_back(id);
        while ids.len() > RECENT_IDS_KEPT {
            ids.pop_front();
        }
        let r = pstore::RecentIds {
            message_ids: ids.iter().map(|i| i.to_vec()).collect(),
        };
        tx.batch.put(Namespace::Meta, recent_key(from), encode(&r));
        tx.recent = Some((*from, ids));
    }

    /// After a commit: applies `tx`'s sent-log changes to the index, and its record of a
    /// decrypted message to the retry state.
    pub(crate) fn apply_sent_log(&mut self, tx: &mut Tx) {
        if let Some((from, ids)) = tx.recent.take() {
            self.retry.recent.insert(from, ids);
        }
        for seq in tx.sent_removed.drain(..) {
            self.sent_log.remove(seq);
        }
        for p in tx.sent.drain(..) {
            self.sent_log.insert(p.seq, p.entry);
            self.sent_log.next_seq = self.sent_log.next_seq.max(p.seq.saturating_add(1));
        }
    }

    /// Deletes logged messages older than [`SENT_LOG_MAX_AGE_MS`] (run by
    /// [`Device::upkeep`]). Returns how many were deleted.
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the commit fails (nothing changes).
    pub fn prune_sent_log(&mut self, now: u64) -> Result<usize> {
        let cutoff = now.saturating_sub(SENT_LOG_MAX_AGE_MS);
        let mut tx = Tx::default();
        for (seq, e) in &self.sent_log.entries {
            if e.sent_at < cutoff {
                tx.batch.delete(Namespace::SentLog, sent_key(&e.to, *seq));
                tx.sent_removed.push(*seq);
            }
        }
        let n = tx.sent_removed.len();
        if n > 0 {
            self.finish(tx)?;
        }
        Ok(n)
    }

    /// The number of sent messages kept for retry requests.
    #[must_use]
    pub fn sent_log_len(&self) -> usize {
        self.sent_log.len()
    }

    /// Records that the pairwise message `bytes` from `from` could not be decrypted (it failed
    /// with `error`), so that the sender is asked to send it again. Returns whether it was
    /// recorded: only for errors that [`Error::calls_for_retry`] (a store failure never does), from a device on a known list,
    /// and while fewer than [`MAX_RETRY_PENDING_DEVICES`] other devices wait. Past
    /// [`MAX_RETRY_IDS`] ids for one device, the oldest is forgotten.
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the commit fails (nothing is recorded).
    pub fn note_undecryptable(
        &mut self,
        from: &DeviceAddress,
        bytes: &[u8],
        error: &Error,
        now: u64,
    ) -> Result<bool> {
        if !error.calls_for_retry() || *from == self.address || self.known_identity(from).is_err() {
            return Ok(false);
        }
        let id = pairwise_message_id(bytes);
        if self.retry.recent.get(from).is_some_and(|r| r.contains(&id)) {
            // A redelivery of a message this device did decrypt (an ack lost on the way).
            return Ok(false);
        }
        let mut ids = self.retry.pending.get(from).cloned().unwrap_or_default();
        if ids.contains(&id) {
            return Ok(true);
        }
        if ids.is_empty() && self.retry.pending.len() >= MAX_RETRY_PENDING_DEVICES {
            return Ok(false);
        }
        ids.push(id);
        if ids.len() > MAX_RETRY_IDS {
            ids.remove(0);
        }
        let p = pstore::RetryPending {
            message_ids: ids.iter().map(|i| i.to_vec()).collect(),
        };
        let mut batch = Batch::new();
        batch.put(Namespace::Meta, pending_key(from), encode(&p));
        self.store.commit(batch)?;
        self.retry.pending.insert(*from, ids);
        self.retry.pending_since.entry(*from).or_insert(now);
        Ok(true)
    }

    /// When a retry request to `from` may go out, if any waits.
    fn retry_due_at(&self, from: &DeviceAddress) -> Option<u64> {
        self.retry.pending.get(from).filter(|i| !i.is_empty())?;
        // After a restart neither time is known: at once.
        let gathered = self
            .retry
            .pending_since
            .get(from)
            .map_or(0, |t| t.saturating_add(RETRY_GATHER_MS));
        let spaced = self
            .retry
            .last_request
            .get(from)
            .map_or(0, |t| t.saturating_add(RETRY_REQUEST_INTERVAL_MS));
        Some(gathered.max(spaced))
    }

    /// The sender devices to send a retry request to now: fetch each one's pre-key bundle and
    /// call [`Device::seal_retry_request`]. Each returned device counts as asked at `now`, so if
    /// the request cannot be made (the bundle does not come), the next try waits
    /// [`RETRY_REQUEST_INTERVAL_MS`].
    ///
    /// At most `max` devices are returned (the others stay due). Devices no longer on a known
    /// list are forgotten here: nothing can be asked of them.
    pub fn retry_requests_due(&mut self, now: u64, max: usize) -> Vec<DeviceAddress> {
        let gone: Vec<DeviceAddress> = self
            .retry
            .pending
            .keys()
            .filter(|a| self.known_identity(a).is_err())
            .copied()
            .collect();
        if !gone.is_empty() {
            let mut batch = Batch::new();
            for a in &gone {
                batch.delete(Namespace::Meta, pending_key(a));
            }
            if self.store.commit(batch).is_ok() {
                for a in &gone {
                    self.retry.pending.remove(a);
                    self.retry.pending_since.remove(a);
                }
            }
        }
        let due: Vec<DeviceAddress> = self
            .retry
            .pending
            .keys()
            .filter(|a| !gone.contains(a) && self.retry_due_at(a).is_some_and(|t| t <= now))
            .take(max)
            .copied()
            .collect();
        for a in &due {
            self.retry.last_request.insert(*a, now);
        }
        due
    }

    /// When the next retry request falls due (ms), if any waits.
    #[must_use]
    pub fn next_retry_request_at(&self) -> Option<u64> {
        self.retry
            .pending
            .keys()
            .filter_map(|a| self.retry_due_at(a))
            .min()
    }

    /// Starts a fresh session with the device of `bundle` (verified against its known list) and
    /// seals a retry request for the messages from it that could not be decrypted, in one commit.
    /// Returns the message and the ids it asks for: once the relay has taken the message, call
    /// [`Device::retry_request_sent`] with them (until then they stay pending and are asked for
    /// again after [`RETRY_REQUEST_INTERVAL_MS`]).
    ///
    /// # Errors
    /// `Protocol(Misuse)` if nothing waits for that device; the errors of
    /// [`Device::start_session`]; [`DeviceError::Store`] if the commit fails (nothing changes).
    pub fn seal_retry_request(
        &mut self,
        bundle: &PreKeyBundle,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<(Outgoing, Vec<MessageId>)> {
        let to = DeviceAddress {
            account: AccountId::from_bytes(&bundle.0.account_key)?,
            device_id: bundle.0.device_id,
        };
        let ids = self
            .retry
            .pending
            .get(&to)
            .filter(|i| !i.is_empty())
            .cloned()
            .ok_or(ProtocolError::Misuse(
                "no retry request waits for this device",
            ))?;
        let mut tx = Tx::default();
        if self.start_session_in(bundle, rng, now, &mut tx)? != to {
            self.sessions.remove(&to);
            return Err(DeviceError::malformed(
                "pre-key bundle",
                "address does not match",
            ));
        }
        let content = wire::Content {
            body: Some(wire::content::Body::RetryRequest(wire::RetryRequest {
                message_ids: ids.iter().map(|i| i.to_vec()).collect(),
            })),
        };
        let sealed = self.seal(&to, &content, rng, now, &mut tx);
        let bytes = match sealed {
            Ok(b) => b,
            Err(e) => {
                self.sessions.remove(&to);
                return Err(e);
            }
        };
        self.finish(tx)?;
        self.retry.last_request.insert(to, now);
        Ok((Outgoing { to, bytes }, ids))
    }

    /// The retry request for `ids` reached the relay: they no longer wait (ids recorded since
    /// stay pending).
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the commit fails (the ids stay pending).
    pub fn retry_request_sent(&mut self, to: &DeviceAddress, ids: &[MessageId]) -> Result<()> {
        let Some(pending) = self.retry.pending.get(to) else {
            return Ok(());
        };
        let rest: Vec<MessageId> = pending
            .iter()
            .filter(|i| !ids.contains(i))
            .copied()
            .collect();
        let mut batch = Batch::new();
        if rest.is_empty() {
            batch.delete(Namespace::Meta, pending_key(to));
        } else {
            let p = pstore::RetryPending {
                message_ids: rest.iter().map(|i| i.to_vec()).collect(),
            };
            batch.put(Namespace::Meta, pending_key(to), encode(&p));
        }
        self.store.commit(batch)?;
        if rest.is_empty() {
            self.retry.pending.remove(to);
            self.retry.pending_since.remove(to);
        } else {
            self.retry.pending.insert(*to, rest);
        }
        Ok(())
    }

    /// Answers a retry request from `from` (already decrypted; its session is current) by sealing
    /// every listed message still in the sent log again, oldest first, within `tx`. Each is
    /// logged anew under its new id (keeping its first sending time, one more resend counted) and
    /// the old entry is dropped. Ids not in the log under `from`, entries sealed to another
    /// identity at that address, entries that do not decode and entries sent again
    /// [`MAX_RESENDS_PER_MESSAGE`] times already are skipped.
    pub(super) fn answer_retry_request(
        &mut self,
        from: &DeviceAddress,
        r: &wire::RetryRequest,
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
    ) -> Result<Vec<Outgoing>> {
        if r.message_ids.len() > MAX_RETRY_IDS {
            return Err(DeviceError::malformed("retry request", "too many ids"));
        }
        let ids = r
            .message_ids
            .iter()
            .map(|i| array(i, "retry request", "id must be 32 bytes"))
            .collect::<crate::Result<Vec<MessageId>>>()?;
        let identity = self.known_identity(from)?;
        let mut seqs: Vec<u64> = ids
            .iter()
            .filter_map(|id| self.sent_log.by_id.get(&(*from, *id)).copied())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let key = sent_key(from, seq);
            let Some(raw) = self.store.get(Namespace::SentLog, &key)? else {
                continue;
            };
            // A record that does not decode, was sealed to another identity at this address (a
            // device re-registered there must not get what its predecessor was sent), or was
            // sent again often enough already, is skipped.
            let Ok(mut record) = decode::<pstore::SentMessage>(&raw, "stored sent message") else {
                continue;
            };
            let content_bytes = Zeroizing::new(std::mem::take(&mut record.content));
            if record.recipient_identity.as_slice() != identity.to_bytes().as_slice()
                || record.resends >= MAX_RESENDS_PER_MESSAGE
            {
                continue;
            }
            let Ok(mut content) = decode::<wire::Content>(&content_bytes, "stored sent message")
            else {
                continue;
            };
            let was = tx.unlogged;
            tx.unlogged = true;
            let sealed = self.seal(from, &content, rng, now, tx);
            tx.unlogged = was;
            let bytes = sealed?;
            self.log_sent(
                from,
                &identity,
                &bytes,
                &content_bytes,
                record.sent_at,
                record.resends.saturating_add(1),
                tx,
            );
            if let Some(wire::content::Body::App(a)) = &mut content.body {
                zeroize::Zeroize::zeroize(a);
            }
            tx.batch.delete(Namespace::SentLog, key);
            tx.sent_removed.push(seq);
            out.push(Outgoing { to: *from, bytes });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn pair(rng: &mut ChaCha20Rng) -> (Device<MemoryKv>, Device<MemoryKv>) {
        let mut a = Device::create_account(MemoryKv::new(), rng, 1).unwrap();
        let mut b = Device::create_account(MemoryKv::new(), rng, 1).unwrap();
        let list_of = |d: &Device<MemoryKv>| {
            let acct = d.address().account;
            (acct, d.device_list(&acct).unwrap().signed_bytes().to_vec())
        };
        let (aa, al) = list_of(&a);
        let (ba, bl) = list_of(&b);
        a.accept_device_list(&bl, &ba, 1).unwrap();
        b.accept_device_list(&al, &aa, 1).unwrap();
        let p = b.published_pre_keys().unwrap();
        a.start_session(&p.bundle(None, None), rng, 1).unwrap();
        (a, b)
    }

    fn seal_request(
        a: &mut Device<MemoryKv>,
        to: &DeviceAddress,
        ids: Vec<Vec<u8>>,
        rng: &mut ChaCha20Rng,
    ) -> Vec<u8> {
        let content = wire::Content {
            body: Some(wire::content::Body::RetryRequest(wire::RetryRequest {
                message_ids: ids,
            })),
        };
        let mut tx = Tx::default();
        let bytes = a.seal(to, &content, rng, 2, &mut tx).unwrap();
        a.finish(tx).unwrap();
        bytes
    }

    #[test]
    fn message_id_is_domain_separated_sha256() {
        let plain: [u8; 32] = Sha256::digest(b"abc").into();
        assert_ne!(pairwise_message_id(b"abc"), plain);
        assert_eq!(pairwise_message_id(b"abc"), pairwise_message_id(b"abc"));
        assert_ne!(pairwise_message_id(b"abc"), pairwise_message_id(b"abd"));
    }

    #[test]
    fn only_session_failures_call_for_retry() {
        assert!(Error::Auth(AuthError::DecryptFailed).calls_for_retry());
        assert!(Error::Protocol(ProtocolError::NoSession).calls_for_retry());
        assert!(Error::Protocol(ProtocolError::Duplicate).calls_for_retry());
        assert!(!Error::Auth(AuthError::IdentityMismatch).calls_for_retry());
        assert!(!DeviceError::malformed("pairwise message", "empty").calls_for_retry());
        assert!(!Error::Protocol(ProtocolError::UnknownAccount).calls_for_retry());
    }

    #[test]
    fn a_malformed_retry_request_is_rejected_and_changes_nothing() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let (mut a, mut b) = pair(&mut rng);
        let (aa, ba) = (a.address(), b.address());
        for ids in [vec![vec![0u8; 31]], vec![vec![0u8; 32]; MAX_RETRY_IDS + 1]] {
            let bytes = seal_request(&mut a, &ba, ids, &mut rng);
            assert!(matches!(
                b.decrypt(&aa, &bytes, &mut rng, 2),
                Err(DeviceError::Protocol(Error::Malformed {
                    what: "retry request",
                    ..
                }))
            ));
        }
        // Nothing was committed: the session still takes the next message.
        let ok = a.encrypt(&ba, b"after", &mut rng, 3).unwrap();
        let got = b.decrypt(&aa, &ok, &mut rng, 3).unwrap();
        assert_eq!(got.received[0].plaintext.as_slice(), b"after");
    }

    #[test]
    fn ids_not_in_the_log_or_sent_to_another_device_get_nothing() {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        let (mut a, mut b) = pair(&mut rng);
        let (aa, ba) = (a.address(), b.address());
        // b sent a message to a; a asks b for it under an id b never sent to a.
        let first = a.encrypt(&ba, b"open", &mut rng, 2).unwrap();
        b.decrypt(&aa, &first, &mut rng, 2).unwrap();
        let sent = b.encrypt(&aa, b"to a", &mut rng, 2).unwrap();
        let unknown = pairwise_message_id(b"never sent");
        let bytes = seal_request(&mut a, &ba, vec![unknown.to_vec()], &mut rng);
        assert!(
            b.decrypt(&aa, &bytes, &mut rng, 2)
                .unwrap()
                .outgoing
                .is_empty()
        );
        // The id of b's message is known, but under a's address only.
        assert!(
            b.sent_log
                .by_id
                .contains_key(&(aa, pairwise_message_id(&sent)))
        );
        assert!(
            !b.sent_log
                .by_id
                .contains_key(&(ba, pairwise_message_id(&sent)))
        );
    }

    #[test]
    fn the_sent_log_keeps_the_newest_within_its_bounds() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let (mut a, b) = pair(&mut rng);
        let ba = b.address();
        // Large payloads fill the byte bound first.
        let big = vec![7u8; 200_000];
        let n = SENT_LOG_MAX_BYTES / big.len() + 5;
        let mut last = Vec::new();
        for i in 0..n {
            last = a.encrypt(&ba, &big, &mut rng, 10 + i as u64).unwrap();
        }
        assert!(a.sent_log.bytes <= SENT_LOG_MAX_BYTES);
        assert!(a.sent_log.len() < n);
        assert!(
            a.sent_log
                .by_id
                .contains_key(&(ba, pairwise_message_id(&last)))
        );
        // The index matches the store, entry for entry.
        let stored = a.store.scan(Namespace::SentLog).unwrap();
        assert_eq!(stored.len(), a.sent_log.len());
        let (reloaded, _) = load(&a.store).unwrap();
        assert_eq!(reloaded.bytes, a.sent_log.bytes);
        assert_eq!(reloaded.next_seq, a.sent_log.next_seq);
    }
}
