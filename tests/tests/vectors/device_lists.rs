//! Checks `device_lists.json`: each version's signed bytes rebuilt by hand and verified, each
//! version a valid successor of the one before; the file's negative vectors are checked like those
//! of `negative.json`.

use hush_core::device_list::{DeviceEntry, DeviceList, VerifiedDeviceList};
use hush_core::keys::{AccountId, AccountKeyPair, DeviceIdentityKeyPair};
use hush_proto::{Message, labels, wire};
use hush_tests::vectors::{DeviceListFile, error_name};

use super::negative::check_negative;
use super::{check_header, ed_pub, ed_verify, h, h32, x_pub};

pub(super) fn check_device_list_file(f: &DeviceListFile) -> (usize, usize) {
    check_header("device_lists", &f.file, f.format_version, &f.vectors);
    for v in &f.vectors {
        let secret = h32(&v.account_secret);
        assert_eq!(ed_pub(secret), h32(&v.account_public));
        let account_key = AccountKeyPair::from_secret_bytes(&secret);
        let account = AccountId::from_bytes(&h(&v.account_public)).unwrap();
        assert_eq!(account_key.id(), account);
        let mut previous: Option<VerifiedDeviceList> = None;
        assert!(v.versions.len() >= 2, "{}: at least two versions", v.name);
        for r in &v.versions {
            // The exact signed bytes, rebuilt by hand from the record.
            let mut entries = Vec::new();
            let mut devices = std::collections::BTreeMap::new();
            for d in &r.devices {
                let s = h32(&d.identity_signing_secret);
                let x = h32(&d.identity_dh_secret);
                assert_eq!(ed_pub(s), h32(&d.identity_signing_public));
                assert_eq!(x_pub(x), h32(&d.identity_dh_public));
                let keys = DeviceIdentityKeyPair::from_secret_bytes(&s, &x);
                let identity = keys.public();
                // The consent, checked by hand over the transcript of §3.1 ...
                let consent = h(&d.consent);
                let transcript = [
                    account.as_bytes().as_slice(),
                    &d.device_id.to_be_bytes(),
                    &h(&d.identity_signing_public),
                    &h(&d.identity_dh_public),
                ]
                .concat();
                assert!(ed_verify(
                    h32(&d.identity_signing_public),
                    labels::DEVICE_CONSENT,
                    &transcript,
                    &consent
                ));
                // ... is what the core signs (Ed25519 is deterministic).
                assert_eq!(
                    keys.consent(&account, d.device_id).as_slice(),
                    consent.as_slice()
                );
                entries.push(wire::DeviceEntry {
                    device_id: d.device_id,
                    identity: Some(wire::DeviceIdentityKey {
                        signing_key: h(&d.identity_signing_public),
                        dh_key: h(&d.identity_dh_public),
                    }),
                    added_at: d.added_at,
                    consent: consent.clone(),
                });
                devices.insert(
                    d.device_id,
                    DeviceEntry {
                        device_id: d.device_id,
                        identity,
                        added_at: d.added_at,
                        consent: consent.as_slice().try_into().unwrap(),
                    },
                );
            }
            let raw = wire::DeviceList {
                account_key: account.as_bytes().to_vec(),
                version: r.version,
                issued_at: r.issued_at,
                devices: entries,
            };
            assert_eq!(
                hex::encode(raw.encode_to_vec()),
                r.device_list,
                "{} v{}: device_list bytes",
                v.name,
                r.version
            );
            assert!(ed_verify(
                *account.as_bytes(),
                labels::DEVICE_LIST,
                &h(&r.device_list),
                &h(&r.signature)
            ));
            let signed = wire::SignedDeviceList {
                device_list: h(&r.device_list),
                signature: h(&r.signature),
            };
            assert_eq!(hex::encode(signed.encode_to_vec()), r.signed_device_list);

            // The library verifies it, reads the same content, and signs the same bytes.
            let list = VerifiedDeviceList::verify(&h(&r.signed_device_list), &account).unwrap();
            let content = DeviceList {
                account,
                version: r.version,
                issued_at: r.issued_at,
                devices,
            };
            assert_eq!(list.list(), &content);
            for (id, entry) in &content.devices {
                assert_eq!(list.identity_of(*id).unwrap(), entry.identity);
            }
            assert_eq!(
                hex::encode(content.sign(&account_key).unwrap().signed_bytes()),
                r.signed_device_list
            );

            assert!(
                !list.check_successor(Some(&list)).unwrap(),
                "the same list again is not new"
            );
            if let Some(prev) = &previous {
                assert!(
                    list.check_successor(Some(prev)).unwrap(),
                    "{} v{}: a valid successor",
                    v.name,
                    r.version
                );
                assert_eq!(
                    error_name(&prev.check_successor(Some(&list)).unwrap_err()),
                    "Protocol(DeviceListRollback)"
                );
            }
            previous = Some(list);
        }
    }
    assert!(!f.negative_vectors.is_empty());
    for n in &f.negative_vectors {
        check_negative(n);
    }
    // A listed device's consent is required, and must be for this account and id.
    for required in ["Auth(MissingDeviceConsent)", "Auth(BadDeviceConsent)"] {
        assert!(
            f.negative_vectors
                .iter()
                .any(|n| n.expected_error == required),
            "no device-list negative vector expects {required}"
        );
    }
    (f.vectors.len(), f.negative_vectors.len())
}
