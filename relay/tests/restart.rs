//! The relay binary killed abruptly (SIGKILL) and restarted on the same data directory keeps
//! every envelope it acknowledged; what it writes to disk holds no plaintext. Its clients connect
//! over QUIC, or over TLS on TCP with `HUSH_TEST_TRANSPORT=tcp`.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use common::*;
use hush_proto::relay_api::server_frame;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_envelopes_survive_sigkill_and_disk_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(2);
    let key = Key::from(random::<32>());
    let cipher = ChaCha20Poly1305::new(&key);
    let plaintext = |i: u32| format!("the quick brown fox, message number {i:05}").into_bytes();
    let seal = |i: u32| {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&i.to_be_bytes());
        let mut out = i.to_be_bytes().to_vec();
        out.extend(
            cipher
                .encrypt(&Nonce::from(n), plaintext(i).as_slice())
                .unwrap(),
        );
        out
    };
    let mut acked = Vec::new();
    let mut pin_before = String::new();
    for round in 0..3u32 {
        let relay = spawn_relay(dir.path());
        if round == 0 {
            pin_before.clone_from(&relay.pin);
        } else {
            // The certificate persists across restarts, so the pin stays valid.
            assert_eq!(relay.pin, pin_before);
        }
        let a = Client::connect_to_process(test_transport(), &relay).await;
        if round == 0 {
            a.create(&alice, 1).await;
            let b = Client::connect_to_process(test_transport(), &relay).await;
            b.create(&bob, 1).await;
        } else {
            a.authenticate(&alice, 1).await;
        }
        for k in 0..40u32 {
            let i = round * 40 + k;
            match a.send(random(), bob.id(), &[1, 2], &seal(i)).await {
                server_frame::Kind::Sent(_) => acked.push(i),
                other => panic!("send refused: {other:?}"),
            }
        }
        // Abruptly, with sends possibly still in flight on another connection.
        let extra = Client::connect_to_process(test_transport(), &relay).await;
        extra.authenticate(&alice, 1).await;
        for k in 0..5u32 {
            extra.send_raw(hush_relay::frame::encode(
                &hush_proto::relay_api::ClientFrame {
                    request_id: 1000 + u64::from(k),
                    kind: Some(hush_proto::relay_api::client_frame::Kind::Send(
                        hush_proto::relay_api::Send {
                            client_id: random::<16>().to_vec(),
                            targeted: false,
                            recipient_account: bob.id().to_vec(),
                            envelopes: vec![1, 2]
                                .into_iter()
                                .map(|d| hush_proto::relay_api::OutEnvelope {
                                    device_id: d,
                                    body: seal(900_000 + k),
                                    delivery_token: Vec::new(),
                                })
                                .collect(),
                        },
                    )),
                },
            ));
        }
        drop(relay); // SIGKILL
    }
    let relay = spawn_relay(dir.path());
    for device in [1u32, 2] {
        let b = Client::connect_to_process(test_transport(), &relay).await;
        b.authenticate(&bob, device).await;
        let got: Vec<u32> = b
            .catch_up()
            .await
            .iter()
            .map(|d| u32::from_be_bytes(d.body[..4].try_into().unwrap()))
            .filter(|i| *i < 900_000)
            .collect();
        // Every acknowledged envelope, exactly once, in send order.
        assert_eq!(got, acked, "device {device}");
    }
    drop(relay);
    // The database holds the ciphertexts (so the scan works) and none of the plaintexts.
    assert!(
        dir_contains(dir.path(), &seal(7)[4..]),
        "scan found no ciphertext"
    );
    for i in [0u32, 7, 41, 119] {
        assert!(
            !dir_contains(dir.path(), &plaintext(i)),
            "plaintext {i} on disk"
        );
    }
    assert!(!dir_contains(dir.path(), b"the quick brown fox"));
}
