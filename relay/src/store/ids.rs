//! The recent-send index: which (recipient device, share, client id) the relay has
//! queued lately, so that a retried send is answered with its first sequence number instead of
//! being queued twice.
//!
//! It lives in memory (rebuilt from the queued envelopes when a store opens), so a send costs no
//! index write. An entry stays after its envelope is acknowledged, for at least
//! [`limits::SEND_ID_RETENTION_MS`] of received time or until [`limits::SEND_IDS_MAX`] newer
//! entries push it out, whichever comes first; after a restart only the ids of envelopes still
//! queued are known. A retry outside that window is queued again and the recipient drops the copy
//! by the message id inside the ciphertext (PROTOCOL.md: clients deduplicate).
//!
//! The share is the sender's class ([`super::Share::label`]), never the sender (the relay does
//! not know it): any sender of one class may send under a client id first, so clients draw their
//! ids at random or derive them with a secret of their own (PROTOCOL.md §17.5).
//!
//! Keys are the first 128 bits of SHA-256 over recipient ‖ share ‖ client id (36 + 36 + 16
//! bytes): 32 bytes per entry instead of ~100, and a collision needs ~2^64 work.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

use super::{DeviceId, Envelope};
use crate::limits;

/// An envelope's key in the index.
pub(crate) fn send_key(e: &Envelope) -> u128 {
    key_of(&e.recipient, &e.share, &e.client_id)
}

/// The key of the envelope from `sender` to `recipient` with `client_id`.
pub(crate) fn key_of(recipient: &DeviceId, sender: &DeviceId, client_id: &[u8; 16]) -> u128 {
    let mut h = Sha256::new();
    h.update(recipient.key());
    h.update(sender.key());
    h.update(client_id);
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(d.get(..16).unwrap_or(&[0u8; 16]));
    u128::from_be_bytes(k)
}

/// Recent sends: key → (sequence number, first received at).
#[derive(Default)]
pub(crate) struct SendIds {
    map: HashMap<u128, (u64, u64)>,
    /// Insertion order with the received time, for eviction.
    order: VecDeque<(u64, u128)>,
    /// Newest received time seen (the clock of eviction).
    newest: u64,
}

impl SendIds {
    /// The first (sequence number, received at) of a send, if it is still remembered.
    pub(crate) fn get(&self, key: u128) -> Option<(u64, u64)> {
        self.map.get(&key).copied()
    }

    /// Remembers a send; forgets the oldest entries beyond the window.
    pub(crate) fn insert(&mut self, key: u128, seq: u64, received_at: u64) {
        self.map.insert(key, (seq, received_at));
        self.order.push_back((received_at, key));
        self.newest = self.newest.max(received_at);
        let horizon = self.newest.saturating_sub(limits::SEND_ID_RETENTION_MS);
        while let Some(&(at, k)) = self.order.front() {
            if self.order.len() <= limits::SEND_IDS_MAX && at >= horizon {
                break;
            }
            self.order.pop_front();
            // Only if it is still this entry (a key is never inserted twice while remembered).
            if self.map.get(&k).is_some_and(|&(_, a)| a == at) {
                self.map.remove(&k);
            }
        }
    }

    /// Entries remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_are_forgotten_after_the_retention_window() {
        let mut ids = SendIds::default();
        ids.insert(1, 10, 1_000);
        ids.insert(2, 11, 2_000);
        assert_eq!(ids.get(1), Some((10, 1_000)));
        ids.insert(3, 12, 1_000 + limits::SEND_ID_RETENTION_MS + 1);
        assert_eq!(ids.get(1), None);
        assert_eq!(ids.get(2), Some((11, 2_000)));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn different_senders_and_recipients_get_different_keys() {
        use crate::store::DeviceId;
        let d = |a: u8, n: u32| DeviceId {
            account: [a; 32],
            device: n,
        };
        let e = |to, from, id: u8| Envelope {
            recipient: to,
            share: from,
            client_id: [id; 16],
            body: vec![1],
            received_at: 1,
        };
        let base = send_key(&e(d(1, 1), d(2, 1), 7));
        assert_ne!(base, send_key(&e(d(1, 2), d(2, 1), 7)));
        assert_ne!(base, send_key(&e(d(1, 1), d(2, 2), 7)));
        assert_ne!(base, send_key(&e(d(1, 1), d(2, 1), 8)));
        assert_eq!(base, send_key(&e(d(1, 1), d(2, 1), 7)));
    }
}
