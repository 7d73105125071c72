//! The seed inputs of every target: valid messages and records taken from the fixture, and a few
//! edge cases (empty, truncated, tampered, extreme counters and lengths).

use hush_core::store::kv::{KvStore, Namespace};
use hush_proto::{Message, app, client, relay as prelay, relay_api as api, store as pstore, wire};

use crate::fixture;
use crate::proto::{self, select};
use crate::store::records;

/// The first `n` bytes of `b` (all of it when shorter).
fn cut(b: &[u8], n: usize) -> Vec<u8> {
    b[..n.min(b.len())].to_vec()
}

fn bundle() -> wire::PreKeyBundle {
    wire::PreKeyBundle::decode(fixture::get().bob_bundle.as_slice()).unwrap()
}

fn pairwise(b: &[u8]) -> wire::PairwiseMessage {
    wire::PairwiseMessage::decode(b).unwrap()
}

fn ratchet_of(b: &[u8]) -> wire::RatchetMessage {
    match pairwise(b).body.unwrap() {
        wire::pairwise_message::Body::Ratchet(r) => r,
        wire::pairwise_message::Body::Initial(i) => i.message.unwrap(),
    }
}

fn initial_of(b: &[u8]) -> wire::InitialMessage {
    match pairwise(b).body.unwrap() {
        wire::pairwise_message::Body::Initial(i) => i,
        wire::pairwise_message::Body::Ratchet(_) => panic!("not an initial message"),
    }
}

fn ratchet_message(r: wire::RatchetMessage) -> Vec<u8> {
    wire::PairwiseMessage {
        body: Some(wire::pairwise_message::Body::Ratchet(r)),
    }
    .encode_to_vec()
}

fn group_message(b: &[u8]) -> wire::GroupMessage {
    wire::GroupMessage::decode(b).unwrap()
}

/// An empty input for every message type of a `proto_*` target.
fn empties(names: &[&str]) -> Vec<Vec<u8>> {
    (0..names.len())
        .map(|i| vec![u8::try_from(i).unwrap()])
        .collect()
}

/// Seeds of `proto_wire`.
pub fn proto_wire() -> Vec<Vec<u8>> {
    let f = fixture::get();
    let w = proto::WIRE;
    let b = bundle();
    let signed = wire::SignedDeviceList::decode(f.alice_list.as_slice()).unwrap();
    let change = wire::SignedGroupChange::decode(f.group_changes[0].as_slice()).unwrap();
    let mut out = vec![
        select(w, "SignedDeviceList", &f.alice_list),
        select(w, "SignedDeviceList", &f.bob_list),
        select(w, "DeviceList", &signed.device_list),
        select(w, "PreKeyBundle", &f.bob_bundle),
        select(
            w,
            "DeviceIdentityKey",
            &b.identity.clone().unwrap().encode_to_vec(),
        ),
        select(
            w,
            "SignedPreKey",
            &b.signed_pre_key.clone().unwrap().encode_to_vec(),
        ),
        select(
            w,
            "OneTimePreKey",
            &b.one_time_pre_key.clone().unwrap().encode_to_vec(),
        ),
        select(
            w,
            "KemPreKey",
            &b.kem_pre_key.clone().unwrap().encode_to_vec(),
        ),
        select(w, "PairwiseMessage", &f.initial),
        select(w, "PairwiseMessage", &f.pairwise[0]),
        select(
            w,
            "RatchetMessage",
            &ratchet_of(&f.pairwise[0]).encode_to_vec(),
        ),
        select(w, "InitialMessage", &initial_of(&f.initial).encode_to_vec()),
        select(w, "GroupMessage", &f.group_messages[0]),
        select(w, "SenderKeyDistribution", &f.distribution),
        select(w, "SignedGroupChange", &f.group_changes[0]),
        select(w, "GroupChange", &change.change),
        select(
            w,
            "GroupLogNotice",
            &wire::GroupLogNotice {
                group_id: f.group.0.to_vec(),
                secret: f.group_secret.clone(),
                seq: 1,
                head: f.group_log[0].clone(),
            }
            .encode_to_vec(),
        ),
        select(
            w,
            "Content",
            &wire::Content {
                body: Some(wire::content::Body::SenderKey(
                    wire::SenderKeyDistribution::decode(f.distribution.as_slice()).unwrap(),
                )),
            }
            .encode_to_vec(),
        ),
        // Edge cases: a bundle cut inside the ML-KEM key, a device list with a bit flipped in
        // its signature, a field number 0, an over-long varint.
        select(
            w,
            "PreKeyBundle",
            &cut(&f.bob_bundle, f.bob_bundle.len() / 2),
        ),
        select(w, "SignedDeviceList", &{
            let mut l = f.alice_list.clone();
            *l.last_mut().unwrap() ^= 1;
            l
        }),
        select(w, "RatchetMessage", &[0x00, 0x01]),
        select(
            w,
            "RatchetMessage",
            &[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
    ];
    out.extend(empties(w));
    out
}

/// Seeds of `proto_store`: every record of the fixture's store as its type.
pub fn proto_store() -> Vec<Vec<u8>> {
    let f = fixture::get();
    let s = proto::STORE;
    let mut out = Vec::new();
    for (ns, key) in records() {
        let v = f.bob_store.get(ns, &key).unwrap().unwrap();
        let ty = match ns {
            Namespace::Identity => "DeviceKeys",
            Namespace::SignedPreKeys => "SignedPreKeySecret",
            Namespace::OneTimePreKeys => "OneTimePreKeySecret",
            Namespace::KemPreKeys if key.len() == 4 => "KemPreKeySecret",
            Namespace::Sessions => "SessionRecord",
            Namespace::Messages => "StoredMessage",
            Namespace::SenderKeys => "SenderKeyRecord",
            Namespace::Groups if key.len() == 32 => "GroupRecord",
            Namespace::Groups => "BufferedGroupMessage",
            Namespace::DeviceLists => {
                let k = pstore::KnownDeviceList {
                    signed: v.to_vec(),
                    version: 1,
                };
                out.push(select(s, "KnownDeviceList", &k.encode_to_vec()));
                continue;
            }
            _ => continue,
        };
        out.push(select(s, ty, &v));
        if ns == Namespace::Sessions {
            let r = pstore::SessionRecord::decode(v.as_slice()).unwrap();
            let cur = r.current.clone().unwrap();
            out.push(select(s, "SessionState", &cur.encode_to_vec()));
            if let Some(c) = &cur.receiving_chain {
                out.push(select(s, "ChainState", &c.encode_to_vec()));
            }
        }
        if ns == Namespace::SenderKeys {
            let r = pstore::SenderKeyRecord::decode(v.as_slice()).unwrap();
            for st in &r.states {
                out.push(select(s, "SenderKeyState", &st.encode_to_vec()));
            }
        }
    }
    out.extend(empties(s));
    out
}

/// Seeds of `proto_relay`.
pub fn proto_relay() -> Vec<Vec<u8>> {
    let f = fixture::get();
    let b = bundle();
    let r = proto::RELAY;
    let mut out = vec![
        select(
            r,
            "StoredPreKeys",
            &prelay::StoredPreKeys {
                signed_pre_key: b.signed_pre_key.unwrap().encode_to_vec(),
                last_resort_kem_pre_key: b.kem_pre_key.unwrap().encode_to_vec(),
            }
            .encode_to_vec(),
        ),
        select(
            r,
            "StoredEnvelope",
            &prelay::StoredEnvelope {
                sender_account: f.alice.account.as_bytes().to_vec(),
                sender_device: f.alice.device_id,
                client_id: vec![7; 16],
                body: f.pairwise[0].clone(),
                received_at: fixture::T0,
            }
            .encode_to_vec(),
        ),
    ];
    out.extend(empties(r));
    out
}

fn client_frames() -> Vec<api::ClientFrame> {
    use api::client_frame::Kind;
    let f = fixture::get();
    let b = bundle();
    let kinds = vec![
        Kind::Hello(api::Hello {}),
        Kind::Authenticate(api::Authenticate {
            account: f.alice.account.as_bytes().to_vec(),
            device_id: f.alice.device_id,
            signature: vec![9; 64],
        }),
        Kind::CreateAccount(api::CreateAccount {
            signed_device_list: f.alice_list.clone(),
        }),
        Kind::PublishDeviceList(api::PublishDeviceList {
            signed_device_list: f.alice_list.clone(),
        }),
        Kind::UploadPreKeys(api::UploadPreKeys {
            signed_pre_key: b.signed_pre_key.clone().unwrap().encode_to_vec(),
            last_resort_kem_pre_key: b.kem_pre_key.clone().unwrap().encode_to_vec(),
            one_time_pre_keys: vec![b.one_time_pre_key.clone().unwrap().encode_to_vec()],
            kem_pre_keys: vec![b.kem_pre_key.clone().unwrap().encode_to_vec()],
        }),
        Kind::Send(api::Send {
            client_id: vec![1; 16],
            recipient_account: f.bob.account.as_bytes().to_vec(),
            envelopes: vec![api::OutEnvelope {
                device_id: f.bob.device_id,
                body: f.pairwise[0].clone(),
                delivery_token: Vec::new(),
            }],
            targeted: false,
        }),
        Kind::Ack(api::Ack {
            seqs: vec![1, 2, 3],
        }),
        Kind::ClaimUsername(api::ClaimUsername {
            name: "Alice".into(),
            proof: vec![0; 64],
        }),
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, k)| api::ClientFrame {
            request_id: u64::try_from(i).unwrap() + 1,
            kind: Some(k),
        })
        .collect()
}

fn server_frames() -> Vec<api::ServerFrame> {
    use api::server_frame::Kind;
    let f = fixture::get();
    let kinds = vec![
        Kind::Challenge(api::Challenge { nonce: vec![3; 32] }),
        Kind::Bundle(api::BundleResult {
            bundle: f.bob_bundle.clone(),
        }),
        Kind::DeviceList(api::DeviceListResult {
            signed_device_list: f.alice_list.clone(),
        }),
        Kind::Deliver(api::Deliver {
            seq: 1,
            client_id: vec![1; 16],
            body: client::Sealed {
                kind: Some(client::sealed::Kind::Pairwise(f.pairwise[0].clone())),
            }
            .encode_to_vec(),
            received_at: fixture::T0,
        }),
        Kind::Error(api::Error {
            code: 3,
            message: "no".into(),
            retry_after_ms: 100,
            missing_devices: vec![2],
            extra_devices: vec![],
            log_head: 0,
        }),
        Kind::Username(api::UsernameResult {
            account: f.alice.account.as_bytes().to_vec(),
            proof: vec![0; 64],
        }),
    ];
    kinds
        .into_iter()
        .map(|k| api::ServerFrame {
            request_id: 1,
            kind: Some(k),
        })
        .collect()
}

/// Seeds of `proto_relay_api`.
pub fn proto_relay_api() -> Vec<Vec<u8>> {
    let r = proto::RELAY_API;
    let mut out: Vec<Vec<u8>> = client_frames()
        .iter()
        .map(|c| select(r, "ClientFrame", &c.encode_to_vec()))
        .chain(
            server_frames()
                .iter()
                .map(|s| select(r, "ServerFrame", &s.encode_to_vec())),
        )
        .collect();
    out.push(select(
        r,
        "BlobRequest",
        &api::BlobRequest {
            kind: Some(api::blob_request::Kind::Download(api::BlobDownload {
                id: vec![1; 16],
                capability: vec![2; 32],
            })),
        }
        .encode_to_vec(),
    ));
    out.extend(empties(r));
    out
}

/// Seeds of `proto_client`.
pub fn proto_client() -> Vec<Vec<u8>> {
    let f = fixture::get();
    let c = proto::CLIENT;
    let mut out = vec![
        select(
            c,
            "Sealed",
            &client::Sealed {
                kind: Some(client::sealed::Kind::Pairwise(f.pairwise[0].clone())),
            }
            .encode_to_vec(),
        ),
        select(
            c,
            "Sealed",
            &client::Sealed {
                kind: Some(client::sealed::Kind::Group(f.group_messages[0].clone())),
            }
            .encode_to_vec(),
        ),
    ];
    out.extend(empties(c));
    out
}

/// Seeds of `proto_app`.
pub fn proto_app() -> Vec<Vec<u8>> {
    let a = proto::APP;
    let text = app::AppMessage {
        message_id: vec![5; 16],
        group: vec![],
        sent_at: fixture::T0,
        counter: 1,
        sender_name: "alice".into(),
        kind: Some(app::app_message::Kind::Text(app::Text {
            body: "hi ✓".into(),
            reply_to: vec![],
        })),
    };
    // (App records wipe themselves when dropped: no struct update syntax.)
    let mut receipt = text.clone();
    receipt.kind = Some(app::app_message::Kind::Receipt(app::Receipt {
        kind: 1,
        message_ids: vec![vec![5; 16]],
    }));
    let mut sync = text.clone();
    sync.kind = Some(app::app_message::Kind::SyncSent(Box::new(app::SyncSent {
        peer: vec![1; 32],
        message: Some(Box::new(text.clone())),
    })));
    let stored = app::StoredMessage {
        message: Some(text.clone()),
        sender_account: vec![1; 32],
        sender_device: 1,
        peer: vec![2; 32],
        outgoing: true,
        received_at: fixture::T0,
        delivered_to: vec![vec![2; 32]],
        read_by: vec![],
        read: false,
        gap_before: true,
        sent: true,
        failed: String::new(),
        recipients: vec![vec![2; 32]],
        undelivered: vec![app::Undelivered {
            account: vec![3; 32],
            reason: "queue full".into(),
            permanent: false,
        }],
        read_untold: false,
    };
    let mut out = vec![
        select(a, "AppMessage", &text.encode_to_vec()),
        select(a, "AppMessage", &receipt.encode_to_vec()),
        select(a, "AppMessage", &sync.encode_to_vec()),
        select(a, "StoredMessage", &stored.encode_to_vec()),
        // A string field that is not UTF-8.
        select(a, "AppMessage", &[0x2a, 0x02, 0xc3, 0x28]),
    ];
    out.extend(empties(a));
    out
}

fn frames_input(sel: u8, piece: u8, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![sel, piece];
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

/// Seeds of `frame`.
pub fn frame() -> Vec<Vec<u8>> {
    use hush_net::frame::encode;
    let c: Vec<Vec<u8>> = client_frames().iter().map(encode).collect();
    let s: Vec<Vec<u8>> = server_frames().iter().map(encode).collect();
    let blob = encode(&api::BlobRequest {
        kind: Some(api::blob_request::Kind::Upload(api::BlobUpload {
            size: 1000,
            ..Default::default()
        })),
    });
    let mut over = vec![0xff, 0xff, 0xff, 0xff];
    over.extend_from_slice(&c[0]);
    vec![
        frames_input(0x00, 15, &c),
        frames_input(0x00, 0, &c[..2]),
        frames_input(0x01, 3, &s),
        frames_input(0x22, 1, &[blob]),
        frames_input(0x14, 7, &c[2..4]),
        frames_input(0x00, 15, &[over]),
        frames_input(0x00, 2, &[cut(&c[1], 6)]),
        frames_input(0x00, 2, &[vec![0, 0]]),
        frames_input(0x00, 0, &[vec![0, 0, 0, 3, 0xff, 0xff, 0xff]]),
        vec![0x00, 0x00],
    ]
}

/// Seeds of `session_decrypt`.
pub fn session_decrypt() -> Vec<Vec<u8>> {
    let f = fixture::get();
    let r = ratchet_of(&f.pairwise[1]);
    let mut tampered = r.clone();
    tampered.ciphertext[0] ^= 0x40;
    let mut far = r.clone();
    far.counter = 999;
    let mut too_far = r.clone();
    too_far.counter = u32::MAX;
    let mut new_chain = r.clone();
    new_chain.ratchet_key = vec![9; 32];
    new_chain.previous_counter = 1000;
    let mut wrong_version = r;
    wrong_version.version = 2;
    let mut initial = initial_of(&f.initial);
    initial.base_key = vec![9; 32];
    vec![
        f.pairwise[0].clone(),
        f.pairwise[2].clone(),
        f.initial.clone(),
        ratchet_message(tampered),
        ratchet_message(far),
        ratchet_message(too_far),
        ratchet_message(new_chain),
        ratchet_message(wrong_version),
        wire::PairwiseMessage {
            body: Some(wire::pairwise_message::Body::Initial(initial)),
        }
        .encode_to_vec(),
        cut(&f.pairwise[1], 20),
        Vec::new(),
    ]
}

/// Seeds of `group_decrypt`.
pub fn group_decrypt() -> Vec<Vec<u8>> {
    let f = fixture::get();
    let g = group_message(&f.group_messages[1]);
    let mut tampered = g.clone();
    tampered.ciphertext[0] ^= 1;
    let mut far = g.clone();
    far.iteration = 1999;
    let mut too_far = g.clone();
    too_far.iteration = u32::MAX;
    let mut unknown_key = g.clone();
    unknown_key.key_id ^= 1;
    let mut own = g;
    own.sender_account_key = f.bob.account.as_bytes().to_vec();
    vec![
        f.group_messages[0].clone(),
        f.group_messages[2].clone(),
        f.unknown_group_message.clone(),
        tampered.encode_to_vec(),
        far.encode_to_vec(),
        too_far.encode_to_vec(),
        unknown_key.encode_to_vec(),
        own.encode_to_vec(),
        cut(&f.group_messages[1], 40),
        Vec::new(),
    ]
}

/// Seeds of `store_open`: every record as it is, a few cut short, and added records.
pub fn store_open() -> Vec<Vec<u8>> {
    let f = fixture::get();
    let records = records();
    let mut out = Vec::new();
    for (i, (ns, key)) in records.iter().enumerate() {
        let v = f.bob_store.get(*ns, key).unwrap().unwrap();
        let mut s = vec![u8::try_from(i).unwrap()];
        s.extend_from_slice(&v);
        out.push(s.clone());
        if v.len() > 8 {
            out.push(cut(&s, 1 + v.len() / 2));
        }
    }
    // Added: a session under a short key, an ML-KEM "used base key" marker for a missing pre-key,
    // a second device list under a key that is not an account.
    let n = u8::try_from(records.len()).unwrap();
    let at = |ns: Namespace| {
        let k = usize::from(n).div_ceil(10) * 10 + usize::from(ns.as_byte());
        u8::try_from(k).unwrap()
    };
    out.push(vec![at(Namespace::Sessions), 3, 1, 2, 3, 0x0a, 0x00]);
    let mut used = vec![at(Namespace::KemPreKeys), 36, 0, 0, 0, 99];
    used.extend_from_slice(&[7; 32]);
    out.push(used);
    let mut list = vec![at(Namespace::DeviceLists), 4, 1, 2, 3, 4];
    list.extend_from_slice(&f.alice_list);
    out.push(list);
    out
}
