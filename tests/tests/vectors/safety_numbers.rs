//! Checks `safety_numbers.json`: fingerprints, digits, display and QR payloads recomputed by hand
//! and through hush-core, and every recorded comparison result.

use std::collections::BTreeSet;

use hush_core::safety::{self, Comparison, SafetyNumber, SafetyNumberError};
use hush_tests::vectors::SafetyFile;

use super::{check_header, ed_pub, h, h32, hn};

fn digits_by_hand(fingerprint: &[u8]) -> String {
    fingerprint
        .chunks(5)
        .map(|c| {
            format!(
                "{:05}",
                c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)) % 100_000
            )
        })
        .collect()
}

pub(super) fn check_safety_file(f: &SafetyFile) -> (usize, usize) {
    check_header("safety_numbers", &f.file, f.format_version, &f.vectors);
    for v in &f.vectors {
        let (sa, sb) = (h32(&v.account_a_secret), h32(&v.account_b_secret));
        let (a, b) = (h32(&v.account_a_public), h32(&v.account_b_public));
        assert_eq!((ed_pub(sa), ed_pub(sb)), (a, b));
        let (fa, fb) = (hn::<30>(&v.fingerprint_a), hn::<30>(&v.fingerprint_b));
        assert_eq!(
            (safety::fingerprint(&a), safety::fingerprint(&b)),
            (fa, fb),
            "{}: fingerprints",
            v.name
        );
        assert_eq!(digits_by_hand(&fa), v.digits_a);
        assert_eq!(digits_by_hand(&fb), v.digits_b);
        assert_eq!(safety::fingerprint_digits(&fa), v.digits_a);
        let (lo, hi) = if v.digits_a <= v.digits_b {
            (&v.digits_a, &v.digits_b)
        } else {
            (&v.digits_b, &v.digits_a)
        };
        assert_eq!(format!("{lo}{hi}"), v.safety_number);
        let grouped: Vec<String> = v
            .safety_number
            .as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert_eq!(grouped.len(), 12);
        assert_eq!(grouped.join(" "), v.safety_number_display);
        assert_eq!(h(&v.qr_payload_a), [&[1u8][..], &fa, &fb].concat());
        assert_eq!(h(&v.qr_payload_b), [&[1u8][..], &fb, &fa].concat());

        let (na, nb) = (SafetyNumber::new(&a, &b), SafetyNumber::new(&b, &a));
        assert_eq!(
            (na.digits(), nb.digits()),
            (v.safety_number.clone(), v.safety_number.clone())
        );
        assert_eq!(
            (na.display_groups(), nb.to_string()),
            (
                v.safety_number_display.clone(),
                v.safety_number_display.clone()
            )
        );
        assert_eq!(
            (na.qr_payload(), nb.qr_payload()),
            (h(&v.qr_payload_a), h(&v.qr_payload_b))
        );
        assert_eq!(
            nb.compare_scanned(&h(&v.qr_payload_a)),
            Ok(Comparison::Match)
        );
        assert_eq!(
            na.compare_scanned(&h(&v.qr_payload_b)),
            Ok(Comparison::Match)
        );
    }
    let mut outcomes = BTreeSet::new();
    for c in &f.comparisons {
        let sn = SafetyNumber::new(&h32(&c.local_account), &h32(&c.remote_account));
        let got = match sn.compare_scanned(&h(&c.scanned_payload)) {
            Ok(Comparison::Match) => "Match",
            Ok(Comparison::Mismatch) => "Mismatch",
            Err(SafetyNumberError::Malformed) => "Malformed",
            Err(SafetyNumberError::UnsupportedVersion(_)) => "UnsupportedVersion",
        };
        assert_eq!(got, c.expected, "comparison {}", c.name);
        outcomes.insert(got);
    }
    assert_eq!(outcomes.len(), 4, "every comparison outcome is covered");
    (f.vectors.len(), f.comparisons.len())
}
