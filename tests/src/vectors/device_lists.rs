//! `device_lists.json`: an account's signed device list through successive versions, and lists a
//! verifier must reject (the file's `negative_vectors`, in the schema of `negative.json`). The list
//! builders here also serve the device-list cases of `negative.json`.

use hush_core::consts::{KEY_LEN, MAX_DEVICES_PER_ACCOUNT};
use hush_core::device_list::{DeviceEntry, DeviceList, VerifiedDeviceList};
use hush_core::keys::AccountKeyPair;
use hush_proto::{Message, labels, wire};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{
    DAY_MS, DeviceSecrets, FORMAT_VERSION, GenResult, NOW_MS, NegativeInput, NegativeVector,
    check_err, count, draw, ed25519_sign, ensure, flip, hx, seed, wire_identity,
};

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// One device on a list, with its identity secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListedDeviceRecord {
    /// Device id.
    pub device_id: u32,
    /// Ed25519 signing secret (32 bytes).
    pub identity_signing_secret: String,
    /// Ed25519 signing public key (32 bytes).
    pub identity_signing_public: String,
    /// X25519 secret (32 bytes).
    pub identity_dh_secret: String,
    /// X25519 public key (32 bytes).
    pub identity_dh_public: String,
    /// When it was added (ms).
    pub added_at: u64,
    /// The device's consent (64 bytes): Ed25519 by its signing key over
    /// `"Hush-DeviceConsent-v1" || account public key || u32be(device_id) || signing public ||
    /// DH public`.
    pub consent: String,
}

/// One signed version of a device list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceListVersionRecord {
    /// Version.
    pub version: u64,
    /// Issue time (ms).
    pub issued_at: u64,
    /// Devices, by ascending id.
    pub devices: Vec<ListedDeviceRecord>,
    /// The encoded `DeviceList` (the signed bytes, after the label).
    pub device_list: String,
    /// Ed25519 signature (64 bytes) by the account key over `"Hush-DeviceList-v1" || device_list`.
    pub signature: String,
    /// The encoded `SignedDeviceList`.
    pub signed_device_list: String,
}

/// An account's device list through successive versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceListVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// Ed25519 account secret (32 bytes).
    pub account_secret: String,
    /// Ed25519 account public key (32 bytes).
    pub account_public: String,
    /// Versions in increasing order; each is a valid successor of the one before.
    pub versions: Vec<DeviceListVersionRecord>,
}

/// `device_lists.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceListFile {
    /// `"device_lists"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// Valid lists.
    pub vectors: Vec<DeviceListVector>,
    /// Lists that must be rejected.
    pub negative_vectors: Vec<NegativeVector>,
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// Signs a device list of `devices` (id, secrets, added_at).
pub(super) fn signed_list(
    account: &AccountKeyPair,
    version: u64,
    issued_at: u64,
    devices: &[(u32, &DeviceSecrets, u64)],
) -> GenResult<VerifiedDeviceList> {
    let devices = devices
        .iter()
        .map(|(id, d, added_at)| {
            (
                *id,
                DeviceEntry {
                    device_id: *id,
                    identity: d.public(),
                    added_at: *added_at,
                    consent: d.pair().consent(&account.id(), *id),
                },
            )
        })
        .collect();
    Ok(DeviceList {
        account: account.id(),
        version,
        issued_at,
        devices,
    }
    .sign(account)?)
}

pub(super) fn version_record(
    list: &VerifiedDeviceList,
    devices: &[(u32, &DeviceSecrets, u64)],
) -> GenResult<DeviceListVersionRecord> {
    let signed = wire::SignedDeviceList::decode(list.signed_bytes())?;
    let mut sorted: Vec<&(u32, &DeviceSecrets, u64)> = devices.iter().collect();
    sorted.sort_by_key(|d| d.0);
    Ok(DeviceListVersionRecord {
        version: list.list().version,
        issued_at: list.list().issued_at,
        devices: sorted
            .into_iter()
            .map(|(id, d, added)| d.listed(&list.list().account, *id, *added))
            .collect(),
        device_list: hx(&signed.device_list),
        signature: hx(&signed.signature),
        signed_device_list: hx(list.signed_bytes()),
    })
}

pub(super) fn device_list_file() -> GenResult<DeviceListFile> {
    Ok(DeviceListFile {
        file: "device_lists".to_owned(),
        format_version: FORMAT_VERSION,
        description: "Signed, versioned device lists: valid successive versions, and lists a verifier must reject."
            .to_owned(),
        vectors: vec![device_list_add()?, device_list_replace()?],
        negative_vectors: device_list_negatives()?,
    })
}

/// Draws the account secret, then device 1's identity secrets, then device 2's.
fn device_list_add() -> GenResult<DeviceListVector> {
    let seed = seed("device_lists", 0)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let account_secret = draw(&mut rng);
    let account = AccountKeyPair::from_secret_bytes(&account_secret);
    let d1 = DeviceSecrets::draw(&mut rng);
    let d2 = DeviceSecrets::draw(&mut rng);
    let t1 = NOW_MS - 30 * DAY_MS;
    let t2 = NOW_MS - DAY_MS;
    let v1_devices = [(1, &d1, t1)];
    let v2_devices = [(1, &d1, t1), (2, &d2, t2)];
    let v1 = signed_list(&account, 1, t1, &v1_devices)?;
    let v2 = signed_list(&account, 2, t2, &v2_devices)?;
    ensure(v2.check_successor(Some(&v1))?, "v2 succeeds v1")?;
    Ok(DeviceListVector {
        name: "add-device".to_owned(),
        description: "Version 1 lists the account's first device; version 2 adds a second device."
            .to_owned(),
        seed: hx(seed),
        account_secret: hx(account_secret),
        account_public: hx(account.id().as_bytes()),
        versions: vec![
            version_record(&v1, &v1_devices)?,
            version_record(&v2, &v2_devices)?,
        ],
    })
}

/// Draws the account secret, then the identity secrets of devices 1, 2, 3 and of device 1's new
/// identity.
fn device_list_replace() -> GenResult<DeviceListVector> {
    let seed = seed("device_lists", 1)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let account_secret = draw(&mut rng);
    let account = AccountKeyPair::from_secret_bytes(&account_secret);
    let d1 = DeviceSecrets::draw(&mut rng);
    let d2 = DeviceSecrets::draw(&mut rng);
    let d3 = DeviceSecrets::draw(&mut rng);
    let d1_new = DeviceSecrets::draw(&mut rng);
    let (t1, t2, t3) = (NOW_MS - 60 * DAY_MS, NOW_MS - 10 * DAY_MS, NOW_MS - DAY_MS);
    let v1_devices = [(1, &d1, t1), (2, &d2, t1)];
    let v2_devices = [(1, &d1, t1), (3, &d3, t2)];
    let v3_devices = [(1, &d1_new, t3), (3, &d3, t2)];
    let v1 = signed_list(&account, 1, t1, &v1_devices)?;
    let v2 = signed_list(&account, 2, t2, &v2_devices)?;
    let v3 = signed_list(&account, 3, t3, &v3_devices)?;
    ensure(
        v2.check_successor(Some(&v1))? && v3.check_successor(Some(&v2))?,
        "versions succeed",
    )?;
    Ok(DeviceListVector {
        name: "remove-add-rekey".to_owned(),
        description: "Version 1 lists devices 1 and 2; version 2 removes device 2 and adds device 3; version 3 \
                      replaces device 1's identity keys (the device re-registered)."
            .to_owned(),
        seed: hx(seed),
        account_secret: hx(account_secret),
        account_public: hx(account.id().as_bytes()),
        versions: vec![
            version_record(&v1, &v1_devices)?,
            version_record(&v2, &v2_devices)?,
            version_record(&v3, &v3_devices)?,
        ],
    })
}

/// Builds a `SignedDeviceList` by hand: `devices` entries (all with identity `d`) signed by
/// `signer` (32-byte Ed25519 secret) over the label and the encoded list.
pub(super) fn hand_signed_list(
    account: &AccountKeyPair,
    signer: &[u8; KEY_LEN],
    version: u64,
    d: &DeviceSecrets,
    device_ids: impl Iterator<Item = u32>,
) -> Vec<u8> {
    let identity = d.public();
    let devices = device_ids
        .map(|device_id| wire::DeviceEntry {
            device_id,
            identity: Some(wire_identity(&identity)),
            added_at: NOW_MS - DAY_MS,
            consent: d.consent(&account.id(), device_id).to_vec(),
        })
        .collect();
    hand_signed_entries(account, signer, version, devices)
}

/// Builds a `SignedDeviceList` of the given entries by hand, signed by `signer`.
fn hand_signed_entries(
    account: &AccountKeyPair,
    signer: &[u8; KEY_LEN],
    version: u64,
    devices: Vec<wire::DeviceEntry>,
) -> Vec<u8> {
    let list = wire::DeviceList {
        account_key: account.id().as_bytes().to_vec(),
        version,
        issued_at: NOW_MS - DAY_MS,
        devices,
    }
    .encode_to_vec();
    let signature = ed25519_sign(signer, labels::DEVICE_LIST, &list).to_vec();
    wire::SignedDeviceList {
        device_list: list,
        signature,
    }
    .encode_to_vec()
}

pub(super) fn verify_case(
    name: &str,
    description: String,
    seed: [u8; 32],
    account: &AccountKeyPair,
    bad: Vec<u8>,
    control: &[u8],
    expected: &str,
) -> GenResult<NegativeVector> {
    VerifiedDeviceList::verify(control, &account.id())?;
    check_err(VerifiedDeviceList::verify(&bad, &account.id()), expected)?;
    Ok(NegativeVector {
        name: name.to_owned(),
        description,
        seed: hx(seed),
        now_ms: NOW_MS,
        expected_error: expected.to_owned(),
        input: NegativeInput::DeviceListVerify {
            account: hx(account.id().as_bytes()),
            signed_device_list: hx(bad),
            control_signed_device_list: hx(control),
        },
    })
}

/// Negative vectors of `device_lists.json`. Each draws an account secret, then device identity
/// secrets, then any further key it names, in that order.
fn device_list_negatives() -> GenResult<Vec<NegativeVector>> {
    let mut out = Vec::new();
    let file = "device_lists";

    // 0: one bit flipped inside the signed bytes.
    {
        let seed = seed(file, 10)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let d1 = DeviceSecrets::draw(&mut rng);
        let good = signed_list(&account, 1, NOW_MS - DAY_MS, &[(1, &d1, NOW_MS - DAY_MS)])?;
        let mut signed = wire::SignedDeviceList::decode(good.signed_bytes())?;
        let dh = d1.public().dh_key().to_vec();
        let at = signed
            .device_list
            .windows(dh.len())
            .position(|w| w == dh.as_slice())
            .ok_or("device key not found in the list")?;
        flip(&mut signed.device_list, at, 0x01)?;
        out.push(verify_case(
            "tampered-device-key",
            format!(
                "One bit (0x01 of byte {at} of device_list, inside device 1's X25519 identity key) flipped after \
                 signing: the account signature no longer verifies."
            ),
            seed,
            &account,
            signed.encode_to_vec(),
            good.signed_bytes(),
            "Auth(BadSignature)",
        )?);
    }

    // 1: verified against another account than the one that signed it.
    {
        let seed = seed(file, 11)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let d1 = DeviceSecrets::draw(&mut rng);
        let other = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let others = signed_list(&other, 1, NOW_MS - DAY_MS, &[(1, &d1, NOW_MS - DAY_MS)])?;
        let own = signed_list(&account, 1, NOW_MS - DAY_MS, &[(1, &d1, NOW_MS - DAY_MS)])?;
        out.push(verify_case(
            "wrong-account",
            "A correctly signed list of another account, offered as this account's list (its account_key is not \
             the expected account)."
                .to_owned(),
            seed,
            &account,
            others.signed_bytes().to_vec(),
            own.signed_bytes(),
            "Auth(BadSignature)",
        )?);
    }

    // 2: truncated signature.
    {
        let seed = seed(file, 12)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let d1 = DeviceSecrets::draw(&mut rng);
        let good = signed_list(&account, 1, NOW_MS - DAY_MS, &[(1, &d1, NOW_MS - DAY_MS)])?;
        let mut signed = wire::SignedDeviceList::decode(good.signed_bytes())?;
        signed.signature.pop();
        out.push(verify_case(
            "truncated-signature",
            "The signature is 63 bytes (its last byte removed).".to_owned(),
            seed,
            &account,
            signed.encode_to_vec(),
            good.signed_bytes(),
            "Malformed",
        )?);
    }

    // 3: more devices than allowed, correctly signed.
    {
        let seed = seed(file, 13)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account_secret = draw(&mut rng);
        let account = AccountKeyPair::from_secret_bytes(&account_secret);
        let d = DeviceSecrets::draw(&mut rng);
        let max = count(MAX_DEVICES_PER_ACCOUNT)?;
        let bad = hand_signed_list(&account, &account_secret, 1, &d, 1..=max + 1);
        let control = hand_signed_list(&account, &account_secret, 1, &d, 1..=max);
        out.push(verify_case(
            "too-many-devices",
            format!(
                "A correctly signed list of {} devices (ids 1..={}, all with the same identity keys); the limit is \
                 {MAX_DEVICES_PER_ACCOUNT}. The control lists exactly {MAX_DEVICES_PER_ACCOUNT}.",
                max + 1,
                max + 1
            ),
            seed,
            &account,
            bad,
            &control,
            "Protocol(TooManyDevices)",
        )?);
    }

    // 4: equivocation: two different lists with the same version.
    {
        let seed = seed(file, 14)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let d1 = DeviceSecrets::draw(&mut rng);
        let d2 = DeviceSecrets::draw(&mut rng);
        let t = NOW_MS - DAY_MS;
        let known = signed_list(&account, 2, t, &[(1, &d1, t)])?;
        let other = signed_list(&account, 2, t, &[(1, &d1, t), (2, &d2, t)])?;
        check_err(
            other.check_successor(Some(&known)),
            "Protocol(DeviceListConflict)",
        )?;
        ensure(
            !known.check_successor(Some(&known))?,
            "the same list again is accepted as not new",
        )?;
        out.push(NegativeVector {
            name: "equivocation".to_owned(),
            description: "Two different, validly signed lists with the same version 2: the second is a conflict. \
                          The control is the known list itself (accepted, not new)."
                .to_owned(),
            seed: hx(seed),
            now_ms: NOW_MS,
            expected_error: "Protocol(DeviceListConflict)".to_owned(),
            input: NegativeInput::DeviceListSuccessor {
                account: hx(account.id().as_bytes()),
                known_device_list: hx(known.signed_bytes()),
                signed_device_list: hx(other.signed_bytes()),
                control_signed_device_list: hx(known.signed_bytes()),
            },
        });
    }

    // 5, 6: a listed device without its consent, and with the consent it gave to another id.
    for (n, name) in [
        (15, "missing-device-consent"),
        (16, "device-consent-for-another-id"),
    ] {
        let seed = seed(file, n)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account_secret = draw(&mut rng);
        let account = AccountKeyPair::from_secret_bytes(&account_secret);
        let d1 = DeviceSecrets::draw(&mut rng);
        let d2 = DeviceSecrets::draw(&mut rng);
        let entry = |id: u32, d: &DeviceSecrets, consent: Vec<u8>| wire::DeviceEntry {
            device_id: id,
            identity: Some(wire_identity(&d.public())),
            added_at: NOW_MS - DAY_MS,
            consent,
        };
        let good = |d: &DeviceSecrets, id: u32| d.consent(&account.id(), id).to_vec();
        let (bad_consent, description, expected) = if n == 15 {
            (
                Vec::new(),
                "Device 2 is listed without a consent (field 4 absent), in a list the account key signed \
                 correctly. The control is the same list with device 2's consent.",
                "Auth(MissingDeviceConsent)",
            )
        } else {
            (
                good(&d2, 3),
                "Device 2 is listed with the consent its keys gave to being device 3 of the account, in a list \
                 the account key signed correctly. The control is the same list with the consent for device 2.",
                "Auth(BadDeviceConsent)",
            )
        };
        let bad = hand_signed_entries(
            &account,
            &account_secret,
            2,
            vec![entry(1, &d1, good(&d1, 1)), entry(2, &d2, bad_consent)],
        );
        let control = hand_signed_entries(
            &account,
            &account_secret,
            2,
            vec![entry(1, &d1, good(&d1, 1)), entry(2, &d2, good(&d2, 2))],
        );
        out.push(verify_case(
            name,
            description.to_owned(),
            seed,
            &account,
            bad,
            &control,
            expected,
        )?);
    }
    Ok(out)
}
