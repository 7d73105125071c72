//! Usernames in the relay's directory: the account key signs the binding of a name to its
//! account ([`crate::device::Device::sign_username`]), and anyone who looks the name up checks
//! that signature ([`verify_username`]) instead of trusting the relay's answer.
//!
//! The name must already be normalized (`hush_net::username::normalize`: ASCII lowercase, 3–32
//! characters of `a-z0-9_.-`, starting with a letter); the signature covers exactly its bytes.

use crate::consts::SIGNATURE_LEN;
use crate::error::Result;
use crate::keys::{AccountId, verify_signature};

/// Label and body of the signed transcript
/// `"Hush-Username-v1" || name length (u8) || name || account (32)`.
pub(crate) fn transcript(name: &str, account: &AccountId) -> (Vec<u8>, Vec<u8>) {
    let mut t = hush_proto::transcripts::username(name.as_bytes(), account.as_bytes());
    let body = t.split_off(hush_proto::labels::USERNAME.len());
    (t, body)
}

/// Checks that `proof` is `account`'s account-key signature binding the (normalized) `name` to
/// it. An error means the relay's answer must not be used.
pub fn verify_username(name: &str, account: &AccountId, proof: &[u8]) -> Result<()> {
    if proof.len() != SIGNATURE_LEN {
        return Err(crate::Error::malformed(
            "username proof",
            "must be 64 bytes",
        ));
    }
    let (label, body) = transcript(name, account);
    verify_signature(&account.verifying_key()?, &label, &body, proof, "username")
}

#[cfg(test)]
mod tests {

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::verify_username;
    use crate::device::Device;
    use crate::error::{AuthError, Error, ProtocolError};
    use crate::store::memory::MemoryKv;

    #[test]
    fn the_account_key_binds_a_name_and_only_that_name() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let alice = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
        let bob = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
        let a = alice.address().account;
        let proof = alice.sign_username("alice").unwrap();
        verify_username("alice", &a, &proof).unwrap();
        // Another name, another account, a flipped bit, a short proof: all refused.
        let bad = |r: crate::Result<()>| {
            assert!(
                matches!(r, Err(Error::Auth(AuthError::BadSignature("username")))),
                "{r:?}"
            );
        };
        bad(verify_username("alicf", &a, &proof));
        bad(verify_username("alice", &bob.address().account, &proof));
        let mut flipped = proof;
        flipped[10] ^= 1;
        bad(verify_username("alice", &a, &flipped));
        assert!(matches!(
            verify_username("alice", &a, &proof[..63]),
            Err(Error::Malformed { .. })
        ));
        // Another account's key signing the same name does not bind it to this account.
        let by_bob = bob.sign_username("alice").unwrap();
        bad(verify_username("alice", &a, &by_bob));
    }

    #[test]
    fn a_device_without_the_account_key_cannot_sign_a_name() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let first = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
        let account = first.address().account;
        let linked = Device::create_linked(MemoryKv::new(), &mut rng, account, 2, 1).unwrap();
        assert!(!linked.holds_account_key());
        assert!(matches!(
            linked.sign_username("alice"),
            Err(crate::DeviceError::Protocol(Error::Protocol(
                ProtocolError::Misuse(_)
            )))
        ));
    }
}
