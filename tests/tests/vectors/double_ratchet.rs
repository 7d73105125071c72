//! Checks `double_ratchet.json`: every key re-derived by hand from SK and the recorded ratchet
//! secrets, then the whole conversation replayed through hush-core in the recorded order.

use hush_core::consts::PROTOCOL_VERSION;
use hush_core::pqxdh::InitialMessage;
use hush_core::ratchet::{self, Header, RatchetMessage};
use hush_proto::{Message, store, wire};
use hush_tests::vectors::{RatchetFile, RatchetVector};

use super::pqxdh::Pqxdh;
use super::{ScriptedRng, check_header, expected_ad, h, h32, x_dh, x_pub};

pub(super) fn check_ratchet_file(f: &RatchetFile) -> usize {
    check_header("double_ratchet", &f.file, f.format_version, &f.vectors);
    for v in &f.vectors {
        check_ratchet_derivations(v);
        check_ratchet_replay(v);
    }
    f.vectors.len()
}

/// Re-derives every chain and message key from SK and the recorded ratchet secrets, and opens every
/// ciphertext.
fn check_ratchet_derivations(v: &RatchetVector) {
    let p = Pqxdh::check(&v.setup, v.now_ms);
    let sk = h32(&v.shared_secret);
    assert_eq!(*p.initiate().shared_secret, sk, "SK of the setup");

    // The root chain.
    let mut root = sk;
    let mut privates = Vec::new();
    for (i, c) in v.chains.iter().enumerate() {
        assert_eq!(c.index as usize, i);
        assert_eq!(
            c.sender,
            if i % 2 == 0 { "alice" } else { "bob" },
            "chains alternate"
        );
        let private = h32(&c.ratchet_private);
        let public = x_pub(private);
        assert_eq!(public, h32(&c.ratchet_public), "chain {i}: ratchet public");
        // Chain 0 is Alice's first ratchet key against Bob's signed pre-key; then each chain's key
        // meets the other side's previous one.
        let (peer_private, peer_public) = match i {
            0 => {
                assert_eq!(
                    private, p.ratchet_secret,
                    "chain 0 uses the PQXDH ratchet key"
                );
                (p.spk_secret, p.spk_public)
            }
            _ => (privates[i - 1], x_pub(privates[i - 1])),
        };
        assert_eq!(
            h32(&c.peer_ratchet_public),
            peer_public,
            "chain {i}: peer key"
        );
        let dh = x_dh(private, peer_public);
        assert_eq!(
            dh,
            x_dh(peer_private, public),
            "chain {i}: DH from the receiver's side"
        );
        assert_eq!(dh, h32(&c.dh_output), "chain {i}: DH output");
        let (rk, ck) = ratchet::kdf_rk(&root, &dh);
        assert_eq!(*rk, h32(&c.root_key), "chain {i}: root key");
        assert_eq!(*ck, h32(&c.chain_key), "chain {i}: chain key");
        root = *rk;
        privates.push(private);
    }

    // Every message key from its chain key; every ciphertext opens.
    let mut per_chain = vec![0u32; v.chains.len()];
    for (i, m) in v.messages.iter().enumerate() {
        assert_eq!(m.index as usize, i);
        let c = &v.chains[m.chain as usize];
        assert_eq!(m.sender, c.sender, "message {i}: sender");
        assert_eq!(
            h32(&m.ratchet_key),
            h32(&c.ratchet_public),
            "message {i}: header ratchet key"
        );
        assert_eq!(m.counter, per_chain[m.chain as usize], "message {i}: N");
        per_chain[m.chain as usize] += 1;
        // PN is the length of the sender's previous sending chain.
        let pn = match m.chain {
            0 | 1 => 0,
            c => v.chains[c as usize - 2].message_count,
        };
        assert_eq!(m.previous_counter, pn, "message {i}: PN");
        let mut ck = h32(&c.chain_key);
        let mut mk = [0u8; 32];
        for _ in 0..=m.counter {
            let (k, next) = ratchet::kdf_ck(&ck);
            mk = *k;
            ck = *next;
        }
        assert_eq!(mk, h32(&m.message_key), "message {i}: message key");
        let header = Header {
            ratchet_key: h32(&m.ratchet_key),
            counter: m.counter,
            previous_counter: m.previous_counter,
        };
        let ad = ratchet::message_ad(&p.alice.party(), &p.bob.party(), &header);
        assert_eq!(ad, h(&m.ad), "message {i}: AD");
        assert_eq!(
            ad,
            expected_ad(
                &p.alice,
                &p.bob,
                &header.ratchet_key,
                m.counter,
                m.previous_counter
            )
        );
        let ct = h(&m.ciphertext);
        assert_eq!(
            *ratchet::open(&mk, &ad, &ct).unwrap(),
            h(&m.plaintext),
            "message {i}: decrypt"
        );
        let w = wire::RatchetMessage::decode(h(&m.ratchet_message).as_slice()).unwrap();
        assert_eq!(
            w,
            wire::RatchetMessage {
                version: PROTOCOL_VERSION,
                ratchet_key: header.ratchet_key.to_vec(),
                counter: m.counter,
                previous_counter: m.previous_counter,
                ciphertext: ct,
            },
            "message {i}: wire encoding"
        );
    }
    for (c, n) in v.chains.iter().zip(&per_chain) {
        assert_eq!(c.message_count, *n, "chain {}: message count", c.index);
    }

    // The script: each message sent once, then delivered once, at its recorded position.
    let mut sent = vec![false; v.messages.len()];
    let mut position = vec![None; v.messages.len()];
    let mut deliveries = 0u32;
    for e in &v.events {
        let i = e.message as usize;
        match e.action.as_str() {
            "send" => {
                assert!(!sent[i], "message {i} sent twice");
                assert!(
                    v.messages[..i].iter().enumerate().all(|(j, _)| sent[j]),
                    "sends in index order"
                );
                sent[i] = true;
            }
            "deliver" => {
                assert!(
                    sent[i] && position[i].is_none(),
                    "message {i}: deliver after send, once"
                );
                position[i] = Some(deliveries);
                deliveries += 1;
            }
            other => panic!("unknown action {other}"),
        }
    }
    for (i, m) in v.messages.iter().enumerate() {
        assert_eq!(
            position[i],
            Some(m.delivery_position),
            "message {i}: delivery position"
        );
    }

    // What the vector claims to cover.
    assert!(v.messages.len() >= 20, "at least 20 messages");
    assert!(
        v.chains.len() >= 4,
        "at least 3 DH ratchet steps after the first chain"
    );
    let out_of_order_in_chain = v.messages.iter().any(|a| {
        v.messages.iter().any(|b| {
            a.chain == b.chain && a.counter < b.counter && a.delivery_position > b.delivery_position
        })
    });
    assert!(
        out_of_order_in_chain,
        "out-of-order delivery within a chain"
    );
    let pn_skip = v
        .messages
        .iter()
        .any(|m| m.received_via == "new_ratchet_key" && m.skipped_keys_stored > m.counter);
    assert!(
        pn_skip,
        "a ratchet step that skips keys of the previous chain through PN"
    );
    let late_after_step = v.messages.iter().any(|m| {
        m.received_via == "skipped_key"
            && v.messages.iter().any(|n| {
                n.sender == m.sender
                    && n.chain > m.chain
                    && n.delivery_position < m.delivery_position
            })
    });
    assert!(
        late_after_step,
        "a message delivered after a later chain of its sender"
    );
}

/// Replays the conversation through the library, from the recorded inputs: the scripted RNGs hand
/// each side exactly its recorded ratchet secrets, in chain order.
fn check_ratchet_replay(v: &RatchetVector) {
    let p = Pqxdh::check(&v.setup, v.now_ms);
    let init = p.initiate();
    let mut alice = init.session;
    let pending = alice.pending().unwrap().clone();
    let first = RatchetMessage::try_from(
        &wire::RatchetMessage::decode(h(&v.messages[0].ratchet_message).as_slice()).unwrap(),
    )
    .unwrap();
    let im = InitialMessage::try_from(&InitialMessage::wire(&pending, p.alice.identity, &first))
        .unwrap();
    let mut bob = p.respond(&im).session;
    let chain_secrets = |who: &str| {
        v.chains
            .iter()
            .skip(1)
            .filter(|c| c.sender == who)
            .map(|c| h32(&c.ratchet_private))
            .collect::<Vec<_>>()
    };
    let mut alice_rng = ScriptedRng::new(chain_secrets("alice"));
    let mut bob_rng = ScriptedRng::new(chain_secrets("bob"));

    for e in &v.events {
        let m = &v.messages[e.message as usize];
        let from_alice = m.sender == "alice";
        match e.action.as_str() {
            "send" => {
                let (session, rng) = if from_alice {
                    (&mut alice, &mut alice_rng)
                } else {
                    (&mut bob, &mut bob_rng)
                };
                let enc = session.encrypt(&h(&m.plaintext), rng, v.now_ms).unwrap();
                assert_eq!(
                    hex::encode(enc.message.to_wire().encode_to_vec()),
                    m.ratchet_message,
                    "message {}: sent",
                    m.index
                );
                assert_eq!(*enc.message_key, h32(&m.message_key));
            }
            "deliver" => {
                let session = if from_alice { &mut bob } else { &mut alice };
                let before: store::SessionState = session.to_proto();
                let key = h32(&m.ratchet_key);
                let via = if before
                    .skipped
                    .iter()
                    .any(|s| s.ratchet_key == key && s.counter == m.counter)
                {
                    "skipped_key"
                } else if before.remote_ratchet_key == key {
                    "current_chain"
                } else {
                    "new_ratchet_key"
                };
                assert_eq!(
                    via, m.received_via,
                    "message {}: how the key is found",
                    m.index
                );
                let msg = RatchetMessage::try_from(
                    &wire::RatchetMessage::decode(h(&m.ratchet_message).as_slice()).unwrap(),
                )
                .unwrap();
                let opened = session.decrypt(&msg, v.now_ms).unwrap();
                assert_eq!(
                    *opened.plaintext,
                    h(&m.plaintext),
                    "message {}: delivered",
                    m.index
                );
                assert_eq!(*opened.message_key, h32(&m.message_key));
                let consumed = usize::from(via == "skipped_key");
                assert_eq!(
                    session.skipped_len() + consumed - before.skipped.len(),
                    m.skipped_keys_stored as usize,
                    "message {}: skipped keys stored",
                    m.index
                );
            }
            other => panic!("unknown action {other}"),
        }
    }
    alice_rng.assert_exhausted("Alice's ratchet secrets");
    bob_rng.assert_exhausted("Bob's ratchet secrets");
    assert_eq!(alice.skipped_len() + bob.skipped_len(), 0);
}
