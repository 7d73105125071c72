//! Negative vectors of the sealed layer: envelopes `sealed::open` refuses, and envelopes whose
//! inner sender is not the device its account lists.

use hush_core::consts::KEY_LEN;
use hush_core::device_list::VerifiedDeviceList;
use hush_core::error::{AuthError, Error, ProtocolError};
use hush_core::keys::{DeviceAddress, DeviceIdentityKeyPair};
use hush_core::sealed::{self, DeliveryKey, Opened};
use rand_chacha::ChaCha20Rng;

use super::{NegativeInput, Negatives};
use crate::vectors::sealed::{pad_by_hand, seal_by_hand, sealed_parties};
use crate::vectors::{
    GenResult, LOW_ORDER_X25519, NOW_MS, Party, check_err, draw, ensure, flip, hx,
};

/// The content of every envelope here.
const CONTENT: &[u8] = b"sealed negative vector";

/// What `Device::open_sealed` does with the list of the sender's account.
fn open_from_listed(
    recipient: &DeviceIdentityKeyPair,
    list: &VerifiedDeviceList,
    bytes: &[u8],
) -> Result<Opened, Error> {
    let opened = sealed::open(recipient, bytes)?;
    if opened.from.account != list.list().account {
        return Err(ProtocolError::UnknownAccount.into());
    }
    if list.identity_of(opened.from.device_id)? != opened.identity {
        return Err(AuthError::SealedSenderMismatch.into());
    }
    Ok(opened)
}

fn seal_with(
    sender: &DeviceIdentityKeyPair,
    from: &DeviceAddress,
    to: &Party,
    ephemeral: &[u8; KEY_LEN],
) -> GenResult<Vec<u8>> {
    let dk = DeliveryKey::derive(sender, 0);
    Ok(sealed::seal_with_ephemeral(
        sender,
        from,
        &dk,
        &to.public(),
        CONTENT,
        ephemeral,
    )?)
}

/// One `SealedOpen` case: Alice's three secrets, Bob's three, the ephemeral secret of the bad
/// envelope, that of the control, then whatever `make` draws.
fn open_case(
    n: &mut Negatives,
    name: &str,
    description: &str,
    expected: &str,
    make: impl FnOnce(&Party, &Party, &[u8; KEY_LEN], &mut ChaCha20Rng) -> GenResult<Vec<u8>>,
) -> GenResult<()> {
    let (seed, mut rng) = n.next_rng()?;
    let (alice, bob) = sealed_parties(&mut rng);
    let e_bad: [u8; KEY_LEN] = draw(&mut rng);
    let e_control: [u8; KEY_LEN] = draw(&mut rng);
    let bad = make(&alice, &bob, &e_bad, &mut rng)?;
    let control = seal_with(&alice.identity, &alice.address(), &bob, &e_control)?;
    check_err(sealed::open(&bob.identity, &bad), expected)?;
    let opened = sealed::open(&bob.identity, &control)?;
    ensure(opened.content.as_slice() == CONTENT, "control opens")?;
    n.push(
        seed,
        name,
        format!("{description} The content of both envelopes is \"sealed negative vector\"."),
        expected,
        NegativeInput::SealedOpen {
            recipient: bob.record(),
            envelope: hx(&bad),
            control_envelope: hx(&control),
            control_content: hx(CONTENT),
        },
    );
    Ok(())
}

/// One `SealedSender` case: as [`open_case`], with Alice's device list (version 1, only her
/// device 1) as the list of the sender's account.
fn sender_case(
    n: &mut Negatives,
    name: &str,
    description: &str,
    expected: &str,
    make: impl FnOnce(&Party, &Party, &[u8; KEY_LEN], &mut ChaCha20Rng) -> GenResult<Vec<u8>>,
) -> GenResult<()> {
    let (seed, mut rng) = n.next_rng()?;
    let (alice, bob) = sealed_parties(&mut rng);
    let e_bad: [u8; KEY_LEN] = draw(&mut rng);
    let e_control: [u8; KEY_LEN] = draw(&mut rng);
    let bad = make(&alice, &bob, &e_bad, &mut rng)?;
    let control = seal_with(&alice.identity, &alice.address(), &bob, &e_control)?;
    let list = alice.own_device_list(NOW_MS)?;
    check_err(open_from_listed(&bob.identity, &list, &bad), expected)?;
    let opened = open_from_listed(&bob.identity, &list, &control)?;
    ensure(opened.content.as_slice() == CONTENT, "control opens")?;
    n.push(
        seed,
        name,
        format!("{description} The content of both envelopes is \"sealed negative vector\"."),
        expected,
        NegativeInput::SealedSender {
            recipient: bob.record(),
            account: hx(alice.account.id().as_bytes()),
            signed_device_list: hx(list.signed_bytes()),
            envelope: hx(&bad),
            control_envelope: hx(&control),
            control_content: hx(CONTENT),
        },
    );
    Ok(())
}

fn flipped(
    alice: &Party,
    bob: &Party,
    e: &[u8; KEY_LEN],
    index: usize,
    mask: u8,
) -> GenResult<Vec<u8>> {
    let mut env = seal_with(&alice.identity, &alice.address(), bob, e)?;
    flip(&mut env, index, mask)?;
    Ok(env)
}

pub(super) fn negative_sealed(n: &mut Negatives) -> GenResult<()> {
    open_case(
        n,
        "sealed-wrong-recipient",
        "An envelope Alice sealed for Carol (secrets drawn after the two ephemeral secrets: account, signing, DH), \
         given to Bob.",
        "Auth(SealedDecryptFailed)",
        |alice, _, e, rng| {
            let carol = Party::draw(rng, 3);
            seal_with(&alice.identity, &alice.address(), &carol, e)
        },
    )?;
    open_case(
        n,
        "sealed-flipped-ephemeral-key",
        "Bit 0 of byte 1 (the first byte of e.pub) flipped: still a valid X25519 key, but another one.",
        "Auth(SealedDecryptFailed)",
        |a, b, e, _| flipped(a, b, e, 1, 0x01),
    )?;
    open_case(
        n,
        "sealed-flipped-sender-block",
        "Bit 0 of byte 83 (inside c1) flipped.",
        "Auth(SealedDecryptFailed)",
        |a, b, e, _| flipped(a, b, e, 83, 0x01),
    )?;
    open_case(
        n,
        "sealed-flipped-content",
        "Bit 0 of byte 200 (inside c2) flipped.",
        "Auth(SealedDecryptFailed)",
        |a, b, e, _| flipped(a, b, e, 200, 0x01),
    )?;
    open_case(
        n,
        "sealed-flipped-tag",
        "Bit 7 of the last byte (the tag of c2) flipped.",
        "Auth(SealedDecryptFailed)",
        |a, b, e, _| flipped(a, b, e, 319, 0x80),
    )?;
    open_case(
        n,
        "sealed-truncated",
        "The 320-byte envelope without its last 16 bytes (304 is not a bucket).",
        "Malformed",
        |a, b, e, _| {
            let mut env = seal_with(&a.identity, &a.address(), b, e)?;
            env.truncate(304);
            Ok(env)
        },
    )?;
    open_case(
        n,
        "sealed-not-a-bucket",
        "The 320-byte envelope with one zero byte appended (321 is not a bucket).",
        "Malformed",
        |a, b, e, _| {
            let mut env = seal_with(&a.identity, &a.address(), b, e)?;
            env.push(0);
            Ok(env)
        },
    )?;
    open_case(
        n,
        "sealed-bad-version",
        "The version byte is 0x02.",
        "Protocol(UnsupportedVersion)",
        |a, b, e, _| {
            let mut env = seal_with(&a.identity, &a.address(), b, e)?;
            flip(&mut env, 0, 0x03)?;
            Ok(env)
        },
    )?;
    open_case(
        n,
        "sealed-low-order-ephemeral-key",
        "e.pub replaced by a canonical point of order 8 (e0eb7a7c…b800).",
        "Auth(InvalidKey)",
        |a, b, e, _| {
            let mut env = seal_with(&a.identity, &a.address(), b, e)?;
            env.splice(1..1 + KEY_LEN, LOW_ORDER_X25519);
            Ok(env)
        },
    )?;
    open_case(
        n,
        "sealed-no-padding-marker",
        "A correctly encrypted envelope whose c2 plaintext is DK ‖ content ‖ 0x00… with no 0x80 marker \
         (built by hand with the ephemeral secret of the bad envelope).",
        "Malformed",
        |a, b, e, _| {
            let dk = DeliveryKey::derive(&a.identity, 0);
            let mut padded = pad_by_hand(dk.as_bytes(), CONTENT);
            let marker = padded.get_mut(32 + CONTENT.len()).ok_or("padding")?;
            *marker = 0;
            Ok(seal_by_hand(a, b.public().dh_key(), e, &padded)?.envelope)
        },
    )?;
    open_case(
        n,
        "sealed-over-padded",
        "A correctly encrypted envelope whose c2 plaintext is padded into the 480-byte bucket although its \
         content fits in 320 bytes: padding must be the shortest.",
        "Malformed",
        |a, b, e, _| {
            let dk = DeliveryKey::derive(&a.identity, 0);
            let mut padded = [dk.as_bytes(), CONTENT, &[0x80]].concat();
            padded.resize(480 - 1 - 32 - 116 - 16, 0);
            let env = seal_by_hand(a, b.public().dh_key(), e, &padded)?.envelope;
            ensure(env.len() == 480, "over-padded envelope is 480 bytes")?;
            Ok(env)
        },
    )?;
    sender_case(
        n,
        "sealed-forged-sender",
        "Mallory (secrets drawn after the two ephemeral secrets: account, signing, DH) seals with her own \
         identity keys but names Alice's address (account, device 1) as the sender: the envelope opens, but \
         the identity inside is not the one Alice's list names.",
        "Auth(SealedSenderMismatch)",
        |alice, bob, e, rng| {
            let mallory = Party::draw(rng, 1);
            seal_with(&mallory.identity, &alice.address(), bob, e)
        },
    )?;
    sender_case(
        n,
        "sealed-sender-not-on-list",
        "Alice's device seals with her own identity keys but names device 9 of her account, which her list \
         does not have.",
        "Protocol(DeviceNotOnList)",
        |alice, bob, e, _| {
            let from = DeviceAddress {
                account: alice.account.id(),
                device_id: 9,
            };
            seal_with(&alice.identity, &from, bob, e)
        },
    )?;
    sender_case(
        n,
        "sealed-sender-other-account",
        "Mallory (secrets drawn after the two ephemeral secrets: account, signing, DH) seals as her own \
         device 1; the only list held is Alice's, so the sender's account is unknown.",
        "Protocol(UnknownAccount)",
        |_, bob, e, rng| {
            let mallory = Party::draw(rng, 1);
            seal_with(&mallory.identity, &mallory.address(), bob, e)
        },
    )?;
    Ok(())
}
