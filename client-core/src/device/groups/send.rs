//! Sending to a group: rotating the own sender key when due, distributing it to member devices
//! that lack it, and encrypting one message for all of them.

use hush_proto::{Message, wire};
use rand_core::CryptoRng;

use super::GroupSend;
use crate::consts::{MAX_PLAINTEXT_LEN, SENDER_KEY_MAX_ITERATIONS};
use crate::device::error::{DeviceError, Result};
use crate::device::{Device, Outgoing, Tx};
use crate::error::ProtocolError;
use crate::keys::AccountId;
use crate::sender_key::{GroupId, SenderKeyState};
use crate::store::kv::KvStore;

impl<S: KvStore> Device<S> {
    /// Encrypts one message for the group: one AEAD encryption and one signature, whatever the
    /// group's size. First rotates this device's sender key if a member was removed, and prepares
    /// sender-key distributions for member devices that do not have the key yet (they need
    /// sessions: see [`Device::missing_sessions`] over [`Device::group_devices`]).
    pub fn group_encrypt(
        &mut self,
        g: &GroupId,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupSend> {
        self.group_encrypt_except(g, plaintext, &[], rng, now)
    }

    /// As [`Self::group_encrypt`], leaving out the member accounts in `skip` (those that cannot
    /// be reached now: no verified device list, no session): they get neither the message nor a
    /// distribution, and their devices no entitlement, so a later send gives them the key.
    pub fn group_encrypt_except(
        &mut self,
        g: &GroupId,
        plaintext: &[u8],
        skip: &[AccountId],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupSend> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(ProtocolError::TooLarge(plaintext.len()).into());
        }
        let entry = self.groups.get(g).ok_or(ProtocolError::UnknownGroup)?;
        if !entry.log.state().is_member(&self.address.account) {
            return Err(ProtocolError::NotAMember.into());
        }
        let rotate = entry.needs_rotation;
        let log = (entry.log.seq(), entry.log.state().head);
        let recipients = self.devices_of(
            entry
                .log
                .state()
                .members
                .keys()
                .filter(|a| !skip.contains(a))
                .copied(),
        )?;
        let identities = recipients
            .iter()
            .map(|d| Ok((*d, self.known_identity(d)?)))
            .collect::<Result<Vec<_>>>()?;
        let me = self.address;
        let mut tx = Tx::default();
        let record = self.sender_key_record(*g, me)?;
        let must_rotate = rotate
            || record
                .current()
                .is_none_or(|s| s.iteration() >= SENDER_KEY_MAX_ITERATIONS);
        if must_rotate {
            let key_id = record.current().map_or(1, |s| s.key_id().wrapping_add(1));
            record.add(SenderKeyState::generate(rng, key_id, now));
        }
        tx.sender_keys.insert((*g, me));
        // Distributions for devices that do not have the current key yet.
        let mut dists = Vec::new();
        {
            let record = self.sender_key_record(*g, me)?;
            let state = record
                .current_mut()
                .ok_or(ProtocolError::Misuse("no sender key"))?;
            for (d, identity) in &identities {
                if state.entitlement(d, identity).is_none() {
                    dists.push((*d, state.distribution_to(*g, *d, Some(*identity), None)?));
                }
            }
        }
        let result = (|| {
            let mut distributions = Vec::with_capacity(dists.len());
            for (d, dist) in dists {
                let content = wire::Content {
                    body: Some(wire::content::Body::SenderKey(dist)),
                };
                distributions.push(Outgoing {
                    to: d,
                    bytes: self.seal(&d, &content, rng, now, &mut tx)?,
                });
            }
            let record = self.sender_key_record(*g, me)?;
            let state = record
                .current_mut()
                .ok_or(ProtocolError::Misuse("no sender key"))?;
            let msg = state.encrypt(*g, me, log, plaintext)?;
            Ok::<_, DeviceError>((distributions, msg.to_wire().encode_to_vec()))
        })();
        let (distributions, message) = match result {
            Ok(x) => x,
            Err(e) => {
                self.sender_keys.remove(&(*g, me));
                for a in &tx.sessions {
                    self.sessions.remove(a);
                }
                return Err(e);
            }
        };
        if must_rotate {
            if let Some(e) = self.groups.get_mut(g) {
                e.needs_rotation = false;
            }
            tx.groups.insert(*g);
        }
        self.finish(tx)?;
        Ok(GroupSend {
            message,
            recipients,
            distributions,
        })
    }
}
