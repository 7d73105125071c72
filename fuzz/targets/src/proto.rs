//! Every prost message of `hush-proto`, one target per `.proto` file. The first input byte picks the
//! message type (modulo the number of types of that file), the rest is decoded as that type.
//!
//! For every type: decoding never panics, and a decoded message re-encodes to bytes that decode to
//! the same message and re-encode identically (what a device stores or forwards is what it read).
//! Where client-core or the relay has a validating parse on top of the raw type (device lists,
//! pre-keys, bundles, ratchet, initial and group messages, sender-key distributions, group
//! changes, stored sessions, sender keys and groups), that runs too, and a record that loads must
//! save and load again to the same record.

use std::fmt::Debug;
use std::sync::OnceLock;

use hush_core::device_list::VerifiedDeviceList;
use hush_core::group::{GroupLog, GroupSecret, SignedChange};
use hush_core::keys::{AccountId, DeviceIdentity};
use hush_core::pqxdh::InitialMessage;
use hush_core::prekeys::PreKeyBundle;
use hush_core::ratchet::{RatchetMessage, SessionState};
use hush_core::sender_key::{GroupId, GroupMessage, SenderKeyRecord, SenderKeyState};
use hush_core::session::SessionRecord;
use hush_proto::{Message, app, client, relay as prelay, relay_api as api, store as pstore, wire};
use hush_relay::verify;

use crate::fixture::{self, NOW};

/// Decodes `bytes` as `M`; when it decodes, checks the re-encoding round trip.
pub fn roundtrip<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = m.encode_to_vec();
    assert_eq!(again.len(), m.encoded_len(), "encoded_len disagrees");
    let m2 = M::decode(again.as_slice()).expect("a re-encoded message decodes");
    assert!(m2 == m, "re-encoding changed the message");
    assert!(m2.encode_to_vec() == again, "encoding is not stable");
    Some(m)
}

/// Defines a target over a list of message types, and the list of their names (for the seeds).
macro_rules! proto_target {
    ($(#[$doc:meta])* $name:ident, $names:ident, [$($ty:ty => $check:expr),* $(,)?]) => {
        /// The message types of this target, in selector order.
        pub const $names: &[&str] = &[$(stringify!($ty)),*];

        $(#[$doc])*
        pub fn $name(data: &[u8]) {
            let Some((&sel, body)) = data.split_first() else {
                return;
            };
            let bodies: &[fn(&[u8])] = &[$(|b: &[u8]| {
                if let Some(m) = roundtrip::<$ty>(b) {
                    ($check)(b, &m);
                }
            }),*];
            bodies[usize::from(sel) % bodies.len()](body);
        }
    };
}

/// The input for `proto_*` target `names` that decodes `body` as the type whose name ends with
/// `ty`.
pub fn select(names: &[&str], ty: &str, body: &[u8]) -> Vec<u8> {
    let i = names
        .iter()
        .position(|n| n.rsplit("::").next() == Some(ty))
        .unwrap_or_else(|| panic!("no message type {ty}"));
    let mut out = vec![u8::try_from(i).unwrap()];
    out.extend_from_slice(body);
    out
}

fn nothing<M>(_: &[u8], _: &M) {}

struct Known {
    alice_list: VerifiedDeviceList,
    bob_list: VerifiedDeviceList,
    /// The fixture group's log after its creation.
    log: GroupLog,
}

fn known() -> &'static Known {
    static KNOWN: OnceLock<Known> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let f = fixture::get();
        Known {
            alice_list: VerifiedDeviceList::verify(&f.alice_list, &f.alice.account).unwrap(),
            bob_list: VerifiedDeviceList::verify(&f.bob_list, &f.bob.account).unwrap(),
            log: GroupLog::create(
                f.group,
                GroupSecret::from_bytes(&f.group_secret).unwrap(),
                f.group_log.first().unwrap(),
            )
            .unwrap(),
        }
    })
}

fn device_list(bytes: &[u8], m: &wire::SignedDeviceList) {
    let k = known();
    let f = fixture::get();
    // As client-core reads it: for the account it names, and for a known account.
    if let Ok(list) = wire::DeviceList::decode(m.device_list.as_slice())
        && let Ok(account) = AccountId::from_bytes(&list.account_key)
        && let Ok(v) = VerifiedDeviceList::verify(bytes, &account)
    {
        for d in v.list().devices.keys() {
            v.identity_of(*d).unwrap();
        }
        let again = VerifiedDeviceList::verify(v.signed_bytes(), &account)
            .expect("an accepted list verifies again from the bytes it keeps");
        assert!(again.list() == v.list());
    }
    if let Ok(v) = VerifiedDeviceList::verify(bytes, &f.alice.account) {
        let _ = v.check_successor(Some(&k.alice_list));
    }
    // As the relay checks it.
    let _ = verify::CheckedList::check(bytes, None, 32);
    let _ = verify::CheckedList::check(bytes, Some(f.alice.account.as_bytes()), 32);
}

fn identity(_: &[u8], m: &wire::DeviceIdentityKey) {
    if let Ok(id) = DeviceIdentity::new(&m.signing_key, &m.dh_key) {
        assert!(DeviceIdentity::from_bytes(&id.to_bytes()).unwrap() == id);
    }
}

fn bundle(_: &[u8], m: &wire::PreKeyBundle) {
    let k = known();
    let b = PreKeyBundle(m.clone());
    let _ = b.verify(&k.bob_list);
    let _ = b.verify(&k.alice_list);
}

fn signed_pre_key(bytes: &[u8], _: &wire::SignedPreKey) {
    let f = fixture::get();
    let _ = verify::signed_pre_key(bytes, f.alice_identity.signing_key());
}

fn one_time_pre_key(bytes: &[u8], _: &wire::OneTimePreKey) {
    let _ = verify::one_time_pre_key(bytes);
}

fn kem_pre_key(bytes: &[u8], _: &wire::KemPreKey) {
    let f = fixture::get();
    let _ = verify::kem_pre_key(bytes, f.alice_identity.signing_key(), false);
    let _ = verify::kem_pre_key(bytes, f.alice_identity.signing_key(), true);
}

fn ratchet(_: &[u8], m: &wire::RatchetMessage) {
    if let Ok(r) = RatchetMessage::try_from(m) {
        let w = r.to_wire();
        assert!(RatchetMessage::try_from(&w).is_ok());
    }
}

fn initial(_: &[u8], m: &wire::InitialMessage) {
    let _ = InitialMessage::try_from(m);
}

fn pairwise(_: &[u8], m: &wire::PairwiseMessage) {
    match &m.body {
        Some(wire::pairwise_message::Body::Initial(i)) => initial(&[], i),
        Some(wire::pairwise_message::Body::Ratchet(r)) => ratchet(&[], r),
        None => {}
    }
}

fn group_message(_: &[u8], m: &wire::GroupMessage) {
    if let Ok(g) = GroupMessage::try_from(m) {
        let w = g.to_wire();
        assert!(GroupMessage::try_from(&w).is_ok());
    }
}

fn distribution(_: &[u8], m: &wire::SenderKeyDistribution) {
    let _ = SenderKeyState::from_distribution(m, NOW);
}

fn signed_change(bytes: &[u8], _: &wire::SignedGroupChange) {
    let k = known();
    let Ok(c) = SignedChange::parse(bytes) else {
        return;
    };
    let again = SignedChange::parse(&c.signed).expect("a parsed change parses again");
    assert!(again == c);
    if let Ok(version) = c.verify() {
        // Applied to the fixture group after its creation, as a device would.
        let _ = k.log.state().apply(2, &c, version);
        let _ = GroupLog::from_creation(c.body.group, k.log.secret().clone(), c.clone());
    }
    // Sealed as the log's next entry and processed: a change that does not apply is skipped,
    // and the log then stands one position further with the same state.
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed([7; 32]);
    if let Ok(entry) = k.log.secret().seal_entry(2, bytes, &mut rng) {
        let mut log = k.log.clone();
        match log
            .process(2, &entry)
            .expect("the next position is processed")
        {
            hush_core::group::Processed::Applied { .. } => {}
            hush_core::group::Processed::Skipped(_) => {
                assert!(log.state() == k.log.state());
            }
        }
        assert_eq!(log.seq(), 2);
    }
}

fn group_log_notice(_: &[u8], n: &wire::GroupLogNotice) {
    let k = known();
    let _ = GroupId::from_bytes(&n.group_id);
    if let Ok(s) = GroupSecret::from_bytes(&n.secret) {
        // A secret offered for the fixture group's id: its slot's creation must be that id's.
        let _ = GroupLog::create(k.log.state().id, s, &n.head);
    }
    let mut log = k.log.clone();
    let _ = log.process(2, &n.head);
}

fn group_member(_: &[u8], m: &wire::GroupMember) {
    let _ = AccountId::from_bytes(&m.account_key);
}

fn content(_: &[u8], m: &wire::Content) {
    match &m.body {
        Some(wire::content::Body::SenderKey(d)) => distribution(&[], d),
        Some(wire::content::Body::GroupLog(n)) => group_log_notice(&[], n),
        Some(wire::content::Body::SenderKeyRequest(r)) => {
            let _ = GroupId::from_bytes(&r.group_id);
        }
        _ => {}
    }
}

proto_target!(
    /// `wire.proto`: what devices send each other, with client-core's (and the relay's) validation.
    wire,
    WIRE,
    [
        wire::DeviceIdentityKey => identity,
        wire::DeviceEntry => nothing,
        wire::DeviceList => nothing,
        wire::SignedDeviceList => device_list,
        wire::SignedPreKey => signed_pre_key,
        wire::OneTimePreKey => one_time_pre_key,
        wire::KemPreKey => kem_pre_key,
        wire::PreKeyBundle => bundle,
        wire::RatchetMessage => ratchet,
        wire::InitialMessage => initial,
        wire::PairwiseMessage => pairwise,
        wire::GroupMessage => group_message,
        wire::SenderKeyDistribution => distribution,
        wire::SenderKeyRequest => nothing,
        wire::GroupMember => group_member,
        wire::GroupChange => nothing,
        wire::SignedGroupChange => signed_change,
        wire::GroupLogNotice => group_log_notice,
        wire::GroupSyncRequest => nothing,
        wire::Content => content,
    ]
);

fn session_state(_: &[u8], m: &pstore::SessionState) {
    if let Ok(s) = SessionState::from_proto(m) {
        let p = s.to_proto();
        let again = SessionState::from_proto(&p).expect("a saved session state loads again");
        assert!(
            again.to_proto() == p,
            "session state changed on save and load"
        );
    }
}

fn session_record(_: &[u8], m: &pstore::SessionRecord) {
    if let Ok(r) = SessionRecord::from_proto(m) {
        let p = r.to_proto();
        let again = SessionRecord::from_proto(&p).expect("a saved session record loads again");
        assert!(
            again.to_proto() == p,
            "session record changed on save and load"
        );
    }
}

fn sender_key_state(_: &[u8], m: &pstore::SenderKeyState) {
    if let Ok(s) = SenderKeyState::from_proto(m) {
        let p = s.to_proto();
        let again = SenderKeyState::from_proto(&p).expect("a saved sender key loads again");
        assert!(again.to_proto() == p, "sender key changed on save and load");
    }
}

fn sender_key_record(_: &[u8], m: &pstore::SenderKeyRecord) {
    if let Ok(r) = SenderKeyRecord::from_proto(m) {
        let p = r.to_proto();
        let again = SenderKeyRecord::from_proto(&p).expect("a saved sender-key record loads again");
        assert!(
            again.to_proto() == p,
            "sender-key record changed on save and load"
        );
    }
}

fn group_record(_: &[u8], m: &pstore::GroupRecord) {
    // What client-core does when it loads a stored group.
    let entries = m
        .entries
        .iter()
        .map(|e| Ok((e.seq, SignedChange::parse(&e.change)?)))
        .collect::<Result<Vec<_>, hush_core::Error>>();
    if let (Ok(entries), Ok(secret)) = (entries, GroupSecret::from_bytes(&m.secret)) {
        let id = entries
            .first()
            .map_or(known().log.state().id, |(_, c)| c.body.group);
        let _ = GroupLog::restore(id, secret, entries, m.seq);
    }
}

fn buffered(_: &[u8], m: &pstore::BufferedGroupMessage) {
    if let Some(g) = roundtrip::<wire::GroupMessage>(&m.message) {
        group_message(&[], &g);
    }
}

fn known_list(_: &[u8], m: &pstore::KnownDeviceList) {
    if let Some(s) = roundtrip::<wire::SignedDeviceList>(&m.signed) {
        device_list(&m.signed, &s);
    }
}

proto_target!(
    /// `store.proto`: the records a device keeps, with client-core's loading of each.
    store,
    STORE,
    [
        pstore::ChainState => nothing,
        pstore::SkippedKey => nothing,
        pstore::PendingInitial => nothing,
        pstore::SessionState => session_state,
        pstore::SessionRecord => session_record,
        pstore::DeviceKeys => nothing,
        pstore::SignedPreKeySecret => nothing,
        pstore::OneTimePreKeySecret => nothing,
        pstore::KemPreKeySecret => nothing,
        pstore::KnownDeviceList => known_list,
        pstore::StoredMessage => nothing,
        pstore::SenderKeySkipped => nothing,
        pstore::SenderKeyEntitlement => nothing,
        pstore::SenderKeyState => sender_key_state,
        pstore::SenderKeyRecord => sender_key_record,
        pstore::GroupRecord => group_record,
        pstore::BufferedGroupMessage => buffered,
    ]
);

fn stored_pre_keys(_: &[u8], m: &prelay::StoredPreKeys) {
    let f = fixture::get();
    let key = f.alice_identity.signing_key();
    let _ = verify::signed_pre_key(&m.signed_pre_key, key);
    let _ = verify::kem_pre_key(&m.last_resort_kem_pre_key, key, true);
}

proto_target!(
    /// `relay.proto`: the relay's own records.
    relay,
    RELAY,
    [
        prelay::StoredPreKeys => stored_pre_keys,
        prelay::StoredEnvelope => nothing,
    ]
);

fn client_frame(_: &[u8], m: &api::ClientFrame) {
    use api::client_frame::Kind;
    let f = fixture::get();
    let key = f.alice_identity.signing_key();
    match &m.kind {
        Some(Kind::CreateAccount(c)) => {
            let _ = verify::CheckedList::check(&c.signed_device_list, None, 32);
        }
        Some(Kind::PublishDeviceList(p)) => {
            let _ = verify::CheckedList::check(
                &p.signed_device_list,
                Some(f.alice.account.as_bytes()),
                32,
            );
        }
        Some(Kind::UploadPreKeys(u)) => {
            let _ = verify::signed_pre_key(&u.signed_pre_key, key);
            let _ = verify::kem_pre_key(&u.last_resort_kem_pre_key, key, true);
            for k in &u.one_time_pre_keys {
                let _ = verify::one_time_pre_key(k);
            }
            for k in &u.kem_pre_keys {
                let _ = verify::kem_pre_key(k, key, false);
            }
        }
        Some(Kind::Authenticate(a)) => {
            let t = verify::auth_transcript(&[1; 32], &[2; 32], f.alice.account.as_bytes(), 1);
            let _ = verify::auth_signature(key, &t, &a.signature);
        }
        Some(Kind::ClaimUsername(c)) => {
            if let Ok(n) = hush_net::username::normalize(&c.name) {
                let _ = verify::username_proof(&n, f.alice.account.as_bytes(), &c.proof);
            }
        }
        Some(Kind::LookupUsername(l)) => {
            let _ = hush_net::username::normalize(&l.name);
        }
        _ => {}
    }
}

fn server_frame(_: &[u8], m: &api::ServerFrame) {
    use api::server_frame::Kind;
    let f = fixture::get();
    match &m.kind {
        Some(Kind::DeviceList(d)) => {
            if let Some(s) = roundtrip::<wire::SignedDeviceList>(&d.signed_device_list) {
                device_list(&d.signed_device_list, &s);
            }
        }
        Some(Kind::Bundle(b)) => {
            if let Some(p) = roundtrip::<wire::PreKeyBundle>(&b.bundle) {
                bundle(&b.bundle, &p);
            }
        }
        Some(Kind::Deliver(d)) => {
            let _ = roundtrip::<client::Sealed>(&d.body);
        }
        Some(Kind::Username(u)) => {
            if let Ok(a) = AccountId::from_bytes(&u.account) {
                let _ = hush_core::username::verify_username("alice", &a, &u.proof);
            }
            let _ = hush_core::username::verify_username("alice", &f.alice.account, &u.proof);
        }
        _ => {}
    }
}

proto_target!(
    /// `relay_api.proto`: the frames of the client–relay protocol, with the relay's checks of what
    /// clients upload and the client's checks of what the relay serves.
    relay_api,
    RELAY_API,
    [
        api::ClientFrame => client_frame,
        api::ServerFrame => server_frame,
        api::BlobRequest => nothing,
        api::BlobResponse => nothing,
        api::Error => nothing,
        api::Deliver => nothing,
        api::UploadPreKeys => nothing,
        api::Send => nothing,
    ]
);

proto_target!(
    /// `client.proto`: what the client engine puts in an envelope body.
    client,
    CLIENT,
    [client::Sealed => nothing]
);

proto_target!(
    /// `app.proto`: the messenger's application messages and stored history.
    app,
    APP,
    [
        app::AppMessage => nothing,
        app::StoredMessage => nothing,
        app::SyncSent => nothing,
        app::Attachment => nothing,
        app::Receipt => nothing,
    ]
);
