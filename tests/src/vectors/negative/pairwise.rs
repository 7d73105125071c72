//! The pairwise cases of `negative.json`: pre-key bundles, ratchet messages, initial messages and
//! device lists, in that order.

use hush_core::consts::{KEY_LEN, MAX_SKIP};
use hush_core::error::Error;
use hush_core::keys::AccountKeyPair;
use hush_core::pqxdh::InitialMessage;
use hush_core::prekeys::{KemPreKeyPair, PreKeyBundle, SignedPreKeyPair};
use hush_core::ratchet::{RatchetMessage, SessionState};
use hush_proto::{Message, labels, wire};
use rand_chacha::ChaCha20Rng;

use crate::vectors::device_lists::{hand_signed_list, signed_list, verify_case};
use crate::vectors::pqxdh::Setup;
use crate::vectors::{
    DAY_MS, DeviceSecrets, GenResult, LOW_ORDER_X25519, NOW_MS, NegativeInput, check_err, draw,
    ed25519_public, ed25519_sign, ensure, flip, get, hx, pairwise_initial, wire_identity,
};

use super::Negatives;

impl Negatives {
    /// A bundle case: draws a [`Setup`] (one-time pre-key and one-time ML-KEM key), then whatever
    /// `tamper` draws.
    fn bundle(
        &mut self,
        name: &str,
        description: &str,
        expected: &str,
        tamper: impl FnOnce(&Setup, &mut ChaCha20Rng, &mut wire::PreKeyBundle) -> GenResult<()>,
    ) -> GenResult<()> {
        let (seed, mut rng) = self.next_rng()?;
        let s = Setup::draw(&mut rng, true, false, NOW_MS)?;
        let control = s.bundle();
        let mut bad = control.clone();
        tamper(&s, &mut rng, &mut bad)?;
        PreKeyBundle(control.clone()).verify(&s.bob_list)?;
        check_err(
            PreKeyBundle(bad.clone()).verify(&s.bob_list).map(|_| ()),
            expected,
        )?;
        let input = NegativeInput::Bundle {
            account: hx(s.bob.account.id().as_bytes()),
            device_list: hx(s.bob_list.signed_bytes()),
            bundle: hx(bad.encode_to_vec()),
            control_bundle: hx(control.encode_to_vec()),
        };
        self.push(seed, name, description.to_owned(), expected, input);
        Ok(())
    }

    /// A ratchet-message case: checks the rejection leaves `state` unchanged and that `control`
    /// decrypts afterwards.
    #[allow(clippy::too_many_arguments)]
    fn ratchet(
        &mut self,
        seed: [u8; 32],
        name: &str,
        description: String,
        expected: &str,
        state: &SessionState,
        bad: &wire::RatchetMessage,
        control: &RatchetMessage,
        control_plaintext: &[u8],
    ) -> GenResult<()> {
        let before = state.to_proto().encode_to_vec();
        let mut s =
            SessionState::from_proto(&hush_proto::store::SessionState::decode(before.as_slice())?)?;
        ensure(
            s.to_proto().encode_to_vec() == before,
            "session state round-trips",
        )?;
        check_err(
            RatchetMessage::try_from(bad).and_then(|m| s.decrypt(&m, NOW_MS)),
            expected,
        )?;
        ensure(
            s.to_proto().encode_to_vec() == before,
            "a rejected message leaves the session unchanged",
        )?;
        ensure(
            *s.decrypt(control, NOW_MS)?.plaintext == control_plaintext,
            "the control message decrypts",
        )?;
        let input = NegativeInput::RatchetMessage {
            state_before: hx(&before),
            message: hx(bad.encode_to_vec()),
            control_message: hx(control.to_wire().encode_to_vec()),
            control_plaintext: hx(control_plaintext),
        };
        self.push(seed, name, description, expected, input);
        Ok(())
    }

    /// An initial-message case.
    #[allow(clippy::too_many_arguments)]
    fn initial(
        &mut self,
        seed: [u8; 32],
        name: &str,
        description: String,
        expected: &str,
        s: &Setup,
        used: &[[u8; KEY_LEN]],
        bad: &wire::InitialMessage,
        control: &wire::InitialMessage,
        control_plaintext: &[u8],
    ) -> GenResult<()> {
        let run = |m: &wire::InitialMessage| -> Result<Vec<u8>, Error> {
            let im = InitialMessage::try_from(m)?;
            let mut init = s.respond(&im, used)?;
            Ok(init.session.decrypt(&im.message, s.now)?.plaintext.to_vec())
        };
        check_err(run(bad), expected)?;
        ensure(
            run(control)? == control_plaintext,
            "the control initial message is accepted",
        )?;
        let input = NegativeInput::InitialMessage {
            responder: s.bob.record(),
            signed_pre_key: s.signed_pre_key_record(),
            one_time_pre_key: s.one_time_pre_key_record(),
            kem_pre_key: s.kem_pre_key_record(),
            used_base_keys: used.iter().map(hx).collect(),
            message: hx(pairwise_initial(bad.clone())),
            control_message: hx(pairwise_initial(control.clone())),
            control_plaintext: hx(control_plaintext),
        };
        self.push(seed, name, description, expected, input);
        Ok(())
    }
}

/// Alice's messages with their plaintexts.
type Sent = Vec<(RatchetMessage, Vec<u8>)>;

/// Alice's and Bob's sessions after PQXDH, and Alice's first `n` messages (none delivered yet).
/// Draws a [`Setup`] (one-time pre-key, one-time ML-KEM key).
fn conversation(rng: &mut ChaCha20Rng, n: usize) -> GenResult<(SessionState, SessionState, Sent)> {
    let s = Setup::draw(rng, true, false, NOW_MS)?;
    let (mut alice, initial) = s.first_message(b"message 0 from alice", rng)?;
    let first = RatchetMessage::try_from(initial.message.as_ref().ok_or("no ratchet message")?)?;
    let bob = s
        .respond(&InitialMessage::try_from(&initial)?, &[])?
        .session;
    let mut msgs = vec![(first, b"message 0 from alice".to_vec())];
    for i in 1..n {
        let plaintext = format!("message {i} from alice").into_bytes();
        msgs.push((
            alice.session.encrypt(&plaintext, rng, NOW_MS)?.message,
            plaintext,
        ));
    }
    Ok((alice.session, bob, msgs))
}

pub(super) fn negative_bundles(n: &mut Negatives) -> GenResult<()> {
    n.bundle(
        "bundle-signed-pre-key-bad-signature",
        "The signed pre-key's signature has one bit flipped (0x01 of byte 0).",
        "Auth(BadSignature)",
        |_, _, b| {
            let spk = b.signed_pre_key.as_mut().ok_or("spk")?;
            flip(&mut spk.signature, 0, 0x01)
        },
    )?;
    n.bundle(
        "bundle-signed-pre-key-wrong-signer",
        "The signed pre-key is signed by another device's identity key (its signing and DH secrets are the next \
         2 × 32 bytes of the RNG), not Bob's.",
        "Auth(BadSignature)",
        |s, rng, b| {
            let other = DeviceSecrets::draw(rng).pair();
            let forged = SignedPreKeyPair::from_secret(&other, s.spk.id, &s.spk_secret, 0);
            b.signed_pre_key = Some(forged.to_wire());
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-kem-pre-key-bad-signature",
        "The ML-KEM pre-key's signature has one bit flipped (0x80 of byte 63).",
        "Auth(BadSignature)",
        |_, _, b| {
            let kem = b.kem_pre_key.as_mut().ok_or("kem")?;
            flip(&mut kem.signature, 63, 0x80)
        },
    )?;
    n.bundle(
        "bundle-kem-pre-key-wrong-signer",
        "The ML-KEM pre-key is signed by another device's identity key (next 2 × 32 bytes of the RNG).",
        "Auth(BadSignature)",
        |s, rng, b| {
            let other = DeviceSecrets::draw(rng).pair();
            let forged = KemPreKeyPair::from_seed(&other, s.kem.id, &s.kem_seed, s.kem.last_resort, 0);
            b.kem_pre_key = Some(forged.to_wire());
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-kem-pre-key-last-resort-flag-flipped",
        "The ML-KEM pre-key's last_resort flag is set on a one-time key; the flag is signed.",
        "Auth(BadSignature)",
        |_, _, b| {
            let kem = b.kem_pre_key.as_mut().ok_or("kem")?;
            kem.last_resort = !kem.last_resort;
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-low-order-one-time-pre-key",
        "The (unsigned) one-time pre-key is an X25519 point of order 8.",
        "Auth(InvalidKey)",
        |_, _, b| {
            let opk = b.one_time_pre_key.as_mut().ok_or("opk")?;
            opk.public_key = LOW_ORDER_X25519.to_vec();
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-low-order-signed-pre-key",
        "The signed pre-key is an X25519 point of order 8, validly signed by Bob's device key: the signature \
         verifies, the key check must still reject it.",
        "Auth(InvalidKey)",
        |s, _, b| {
            let spk = b.signed_pre_key.as_mut().ok_or("spk")?;
            let transcript = [&spk.id.to_be_bytes()[..], &LOW_ORDER_X25519[..]].concat();
            spk.public_key = LOW_ORDER_X25519.to_vec();
            spk.signature = ed25519_sign(&s.bob.secrets.signing, labels::SIGNED_PRE_KEY, &transcript).to_vec();
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-device-not-on-list",
        "The bundle names device 9, which is not on the account's device list (which lists device 2).",
        "Protocol(DeviceNotOnList)",
        |_, _, b| {
            b.device_id = 9;
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-identity-mismatch",
        "The bundle carries identity keys (next 2 × 32 bytes of the RNG) other than those on the device list.",
        "Auth(IdentityMismatch)",
        |_, rng, b| {
            b.identity = Some(wire_identity(&DeviceSecrets::draw(rng).public()));
            Ok(())
        },
    )?;
    Ok(())
}

pub(super) fn negative_ratchet(n: &mut Negatives) -> GenResult<()> {
    // Tampering: Bob has decrypted message 0; message 1 arrives modified. Control: message 1.
    type Tamper = fn(&mut wire::RatchetMessage) -> GenResult<()>;
    let tampers: [(&str, &str, Tamper); 5] = [
        (
            "ratchet-tampered-ciphertext",
            "One bit of the ciphertext flipped (0x01 of byte 0).",
            |w| flip(&mut w.ciphertext, 0, 0x01),
        ),
        (
            "ratchet-tampered-tag",
            "One bit of the authentication tag flipped (0x80 of the last byte).",
            |w| {
                let last = w
                    .ciphertext
                    .len()
                    .checked_sub(1)
                    .ok_or("empty ciphertext")?;
                flip(&mut w.ciphertext, last, 0x80)
            },
        ),
        (
            "ratchet-tampered-header-counter",
            "Header N changed from 1 to 2 (the header is authenticated).",
            |w| {
                w.counter = 2;
                Ok(())
            },
        ),
        (
            "ratchet-tampered-header-previous-counter",
            "Header PN changed from 0 to 1 (PN is unused on this chain, but authenticated).",
            |w| {
                w.previous_counter = 1;
                Ok(())
            },
        ),
        (
            "ratchet-tampered-header-ratchet-key",
            "One bit of the header ratchet key flipped (0x02 of byte 0): taken as a new ratchet step, which fails.",
            |w| flip(&mut w.ratchet_key, 0, 0x02),
        ),
    ];
    for (name, what, tamper) in tampers {
        let (seed, mut rng) = n.next_rng()?;
        let (_, mut bob, msgs) = conversation(&mut rng, 2)?;
        let (m0, _) = get(&msgs, 0)?;
        bob.decrypt(m0, NOW_MS)?;
        let (m1, p1) = get(&msgs, 1)?;
        let mut bad = m1.to_wire();
        tamper(&mut bad)?;
        let description =
            format!("Bob has decrypted Alice's message 0; message 1 arrives modified: {what}");
        n.ratchet(
            seed,
            name,
            description,
            "Auth(DecryptFailed)",
            &bob,
            &bad,
            m1,
            p1,
        )?;
    }

    // Replays.
    {
        let (seed, mut rng) = n.next_rng()?;
        let (_, mut bob, msgs) = conversation(&mut rng, 3)?;
        let ((m0, _), (m1, _), (m2, p2)) = (get(&msgs, 0)?, get(&msgs, 1)?, get(&msgs, 2)?);
        bob.decrypt(m0, NOW_MS)?;
        bob.decrypt(m1, NOW_MS)?;
        n.ratchet(
            seed,
            "ratchet-replay",
            "Bob has decrypted messages 0 and 1; message 1 is delivered again.".to_owned(),
            "Protocol(Duplicate)",
            &bob,
            &m1.to_wire(),
            m2,
            p2,
        )?;
    }
    {
        let (seed, mut rng) = n.next_rng()?;
        let (_, mut bob, msgs) = conversation(&mut rng, 3)?;
        let ((m0, _), (m1, _), (m2, p2)) = (get(&msgs, 0)?, get(&msgs, 1)?, get(&msgs, 2)?);
        bob.decrypt(m1, NOW_MS)?;
        bob.decrypt(m0, NOW_MS)?;
        n.ratchet(
            seed,
            "ratchet-replay-skipped-key",
            "Bob decrypted message 1, then message 0 with its stored skipped key (which was then deleted); message 0 \
             is delivered again."
                .to_owned(),
            "Protocol(Duplicate)",
            &bob,
            &m0.to_wire(),
            m2,
            p2,
        )?;
    }
    {
        let (seed, mut rng) = n.next_rng()?;
        let (mut alice, mut bob, msgs) = conversation(&mut rng, 1)?;
        let (m0, _) = get(&msgs, 0)?;
        bob.decrypt(m0, NOW_MS)?;
        // Bob replies (draws his ratchet key), Alice answers on a new chain (draws hers).
        let reply = bob
            .encrypt(b"message 0 from bob", &mut rng, NOW_MS)?
            .message;
        alice.decrypt(&reply, NOW_MS)?;
        let n0 = alice
            .encrypt(b"message 1 from alice", &mut rng, NOW_MS)?
            .message;
        let n1 = alice
            .encrypt(b"message 2 from alice", &mut rng, NOW_MS)?
            .message;
        bob.decrypt(&n0, NOW_MS)?;
        n.ratchet(
            seed,
            "ratchet-replay-old-chain",
            "Bob decrypted Alice's message 0, replied, and decrypted Alice's next message on her new ratchet key; \
             message 0 (from the previous receiving chain) is delivered again. After the setup the RNG yields Bob's \
             reply ratchet key, then Alice's second ratchet key."
                .to_owned(),
            "Protocol(Duplicate)",
            &bob,
            &m0.to_wire(),
            &n1,
            b"message 2 from alice",
        )?;
    }

    // Too far ahead: Alice sent MAX_SKIP + 3 messages; Bob has message 0 (next expected N = 1).
    {
        let (seed, mut rng) = n.next_rng()?;
        let total = usize::try_from(MAX_SKIP)? + 3;
        let (_, mut bob, msgs) = conversation(&mut rng, total)?;
        let (m0, _) = get(&msgs, 0)?;
        bob.decrypt(m0, NOW_MS)?;
        let (far, _) = get(&msgs, total - 1)?;
        let (edge, edge_plaintext) = get(&msgs, total - 2)?;
        n.ratchet(
            seed,
            "ratchet-too-far-ahead",
            format!(
                "Alice sent messages 0..={}; Bob has decrypted message 0 and receives message {} next: {} keys would \
                 have to be skipped, more than MAX_SKIP = {MAX_SKIP}. The control, message {}, skips exactly \
                 MAX_SKIP keys and is accepted.",
                total - 1,
                total - 1,
                total - 2,
                total - 2
            ),
            "Protocol(TooFarAhead)",
            &bob,
            &far.to_wire(),
            edge,
            edge_plaintext,
        )?;
    }

    // Low-order ratchet key in a message.
    {
        let (seed, mut rng) = n.next_rng()?;
        let (_, mut bob, msgs) = conversation(&mut rng, 2)?;
        let ((m0, _), (m1, p1)) = (get(&msgs, 0)?, get(&msgs, 1)?);
        bob.decrypt(m0, NOW_MS)?;
        let mut bad = m1.to_wire();
        bad.ratchet_key = LOW_ORDER_X25519.to_vec();
        n.ratchet(
            seed,
            "ratchet-low-order-ratchet-key",
            "Bob has decrypted message 0; message 1 arrives with its header ratchet key replaced by an X25519 point \
             of order 8 (rejected when the wire message is decoded)."
                .to_owned(),
            "Auth(InvalidKey)",
            &bob,
            &bad,
            m1,
            p1,
        )?;
    }
    Ok(())
}

pub(super) fn negative_initial(n: &mut Negatives) -> GenResult<()> {
    // Last-resort reuse.
    {
        let (seed, mut rng) = n.next_rng()?;
        let s = Setup::draw(&mut rng, false, true, NOW_MS)?;
        let p1 = b"first session".to_vec();
        let (_, first) = s.first_message(&p1, &mut rng)?;
        // Bob accepts it once (and would record the base key with the last-resort key).
        let im = InitialMessage::try_from(&first)?;
        let mut bob = s.respond(&im, &[])?;
        ensure(
            *bob.session.decrypt(&im.message, NOW_MS)?.plaintext == p1,
            "first use accepted",
        )?;
        // A second session from the same Alice device, with new secrets drawn after the setup:
        // base key, ratchet key, ML-KEM randomness.
        let (base2, ratchet2, m2) = (draw(&mut rng), draw(&mut rng), draw(&mut rng));
        let p2 = b"second session, new base key".to_vec();
        let (_, second) = s.first_message_with(base2, ratchet2, m2, &p2, &mut rng)?;
        n.initial(
            seed,
            "initial-last-resort-reuse",
            "Bob's last-resort ML-KEM pre-key was already used with this base key (listed in used_base_keys) and \
             the session it set up is gone; the same initial message arrives again. The control is a new initial \
             message to the same last-resort key with a fresh base key (base key, ratchet key and ML-KEM \
             randomness are the next 3 × 32 bytes of the RNG after the setup)."
                .to_owned(),
            "Protocol(LastResortReuse)",
            &s,
            &[im.base_key],
            &first,
            &second,
            &p2,
        )?;
    }
    // Low-order base key.
    {
        let (seed, mut rng) = n.next_rng()?;
        let s = Setup::draw(&mut rng, true, false, NOW_MS)?;
        let p = b"initial message".to_vec();
        let (_, good) = s.first_message(&p, &mut rng)?;
        let mut bad = good.clone();
        bad.base_key = LOW_ORDER_X25519.to_vec();
        n.initial(
            seed,
            "initial-low-order-base-key",
            "The initial message's base key EK_A is an X25519 point of order 8.".to_owned(),
            "Auth(InvalidKey)",
            &s,
            &[],
            &bad,
            &good,
            &p,
        )?;
    }
    // Tampered ML-KEM ciphertext: implicit rejection gives another shared secret, so another SK.
    {
        let (seed, mut rng) = n.next_rng()?;
        let s = Setup::draw(&mut rng, true, false, NOW_MS)?;
        let p = b"initial message".to_vec();
        let (_, good) = s.first_message(&p, &mut rng)?;
        let mut bad = good.clone();
        flip(&mut bad.kem_ciphertext, 0, 0x01)?;
        n.initial(
            seed,
            "initial-tampered-kem-ciphertext",
            "One bit of the ML-KEM ciphertext flipped (0x01 of byte 0): decapsulation implicitly rejects, Bob \
             derives a different SK, and the first message does not decrypt."
                .to_owned(),
            "Auth(DecryptFailed)",
            &s,
            &[],
            &bad,
            &good,
            &p,
        )?;
    }
    Ok(())
}

pub(super) fn negative_device_lists(n: &mut Negatives) -> GenResult<()> {
    // Rollback: draws the account secret, then the identity secrets of devices 1, 2 and 3.
    {
        let (seed, mut rng) = n.next_rng()?;
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let (d1, d2, d3) = (
            DeviceSecrets::draw(&mut rng),
            DeviceSecrets::draw(&mut rng),
            DeviceSecrets::draw(&mut rng),
        );
        let (t1, t2, t3) = (NOW_MS - 3 * DAY_MS, NOW_MS - 2 * DAY_MS, NOW_MS - DAY_MS);
        let v1 = signed_list(&account, 1, t1, &[(1, &d1, t1)])?;
        let v2 = signed_list(&account, 2, t2, &[(1, &d1, t1), (2, &d2, t2)])?;
        let v3 = signed_list(&account, 3, t3, &[(1, &d1, t1), (2, &d2, t2), (3, &d3, t3)])?;
        check_err(
            v1.check_successor(Some(&v2)),
            "Protocol(DeviceListRollback)",
        )?;
        ensure(v3.check_successor(Some(&v2))?, "v3 accepted after v2")?;
        n.push(
            seed,
            "device-list-rollback",
            "Version 2 of the account's list is known; the (validly signed) version 1 is offered again. The \
             control is version 3."
                .to_owned(),
            "Protocol(DeviceListRollback)",
            NegativeInput::DeviceListSuccessor {
                account: hx(account.id().as_bytes()),
                known_device_list: hx(v2.signed_bytes()),
                signed_device_list: hx(v1.signed_bytes()),
                control_signed_device_list: hx(v3.signed_bytes()),
            },
        );
    }
    // Wrong signing key: draws the account secret, device 1's identity secrets, Mallory's account
    // secret.
    {
        let (seed, mut rng) = n.next_rng()?;
        let account_secret = draw(&mut rng);
        let account = AccountKeyPair::from_secret_bytes(&account_secret);
        let d1 = DeviceSecrets::draw(&mut rng);
        let mallory: [u8; KEY_LEN] = draw(&mut rng);
        let bad = hand_signed_list(&account, &mallory, 1, &d1, 1..=1);
        let control = hand_signed_list(&account, &account_secret, 1, &d1, 1..=1);
        let d = verify_case(
            "device-list-wrong-signing-key",
            format!(
                "The list names the account (account_key is the expected account) but is signed by another Ed25519 \
                 key (secret drawn after device 1's identity secrets, public {}).",
                hx(ed25519_public(&mallory))
            ),
            seed,
            &account,
            bad,
            &control,
            "Auth(BadSignature)",
        )?;
        n.vectors.push(d);
    }
    // Device not on the list: draws the account secret, then devices 1 and 2.
    {
        let (seed, mut rng) = n.next_rng()?;
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let (d1, d2) = (DeviceSecrets::draw(&mut rng), DeviceSecrets::draw(&mut rng));
        let t = NOW_MS - DAY_MS;
        let list = signed_list(&account, 1, t, &[(1, &d1, t), (2, &d2, t)])?;
        check_err(list.identity_of(3), "Protocol(DeviceNotOnList)")?;
        list.identity_of(2)?;
        n.push(
            seed,
            "device-not-on-list",
            "The account's list has devices 1 and 2; device 3 is looked up (e.g. a message or bundle claiming to \
             come from it)."
                .to_owned(),
            "Protocol(DeviceNotOnList)",
            NegativeInput::DeviceListMember {
                account: hx(account.id().as_bytes()),
                signed_device_list: hx(list.signed_bytes()),
                device_id: 3,
                control_device_id: 2,
            },
        );
    }
    Ok(())
}
