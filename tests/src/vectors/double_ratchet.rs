//! `double_ratchet.json`: one conversation between Alice and Bob after PQXDH, sent and delivered
//! in the order of [`SCRIPT`], with every root, chain and message key recorded.

use hush_core::consts::KEY_LEN;
use hush_core::pqxdh::InitialMessage;
use hush_core::ratchet::{self, Header, RatchetMessage, SessionState};
use hush_proto::Message;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use super::pqxdh::Setup;
use super::{
    ALICE, BOB, FORMAT_VERSION, GenResult, NOW_MS, PqxdhInputs, count, ensure, hx, key32, seed,
    x25519, x25519_public,
};

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// One sending chain of the conversation (one DH ratchet step on the root chain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetChainRecord {
    /// Position on the root chain (0 = Alice's first chain from PQXDH).
    pub index: u32,
    /// `"alice"` or `"bob"`.
    pub sender: String,
    /// The sender's ratchet secret for this chain (32 bytes).
    pub ratchet_private: String,
    /// Its public key (32 bytes), the header ratchet key of the chain's messages.
    pub ratchet_public: String,
    /// The receiver's ratchet public key it was combined with (32 bytes): the previous chain's
    /// `ratchet_public`, or Bob's signed pre-key for chain 0.
    pub peer_ratchet_public: String,
    /// DH(ratchet_private, peer_ratchet_public) (32 bytes).
    pub dh_output: String,
    /// Root key after this step (32 bytes).
    pub root_key: String,
    /// Chain key for N = 0 (32 bytes).
    pub chain_key: String,
    /// Number of messages sent on this chain.
    pub message_count: u32,
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetMessageRecord {
    /// Index in send order.
    pub index: u32,
    /// `"alice"` or `"bob"`.
    pub sender: String,
    /// Index of the sending chain in `chains`.
    pub chain: u32,
    /// Plaintext.
    pub plaintext: String,
    /// Header: ratchet key (32 bytes).
    pub ratchet_key: String,
    /// Header: N.
    pub counter: u32,
    /// Header: PN.
    pub previous_counter: u32,
    /// Message key (32 bytes).
    pub message_key: String,
    /// Associated data (244 bytes).
    pub ad: String,
    /// Ciphertext with tag.
    pub ciphertext: String,
    /// The encoded wire `RatchetMessage`.
    pub ratchet_message: String,
    /// Position in delivery order (0-based).
    pub delivery_position: u32,
    /// How the receiver found the key: `"current_chain"`, `"new_ratchet_key"` or `"skipped_key"`.
    pub received_via: String,
    /// Message keys the receiver stored as skipped while decrypting this message.
    pub skipped_keys_stored: u32,
}

/// One step of the conversation script.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetEvent {
    /// `"send"` (the sender encrypts it) or `"deliver"` (the receiver decrypts it).
    pub action: String,
    /// Message index.
    pub message: u32,
}

/// The double-ratchet conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The time used for every operation.
    pub now_ms: u64,
    /// The PQXDH run that set up the session.
    pub setup: PqxdhInputs,
    /// SK from that run (32 bytes): the first root key.
    pub shared_secret: String,
    /// The sending chains in root-chain order.
    pub chains: Vec<RatchetChainRecord>,
    /// The messages in send order.
    pub messages: Vec<RatchetMessageRecord>,
    /// Sends and deliveries, in the order they happened.
    pub events: Vec<RatchetEvent>,
}

/// `double_ratchet.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetFile {
    /// `"double_ratchet"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// The vectors.
    pub vectors: Vec<RatchetVector>,
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Alice,
    Bob,
}

enum Step {
    Send(Who),
    Deliver(usize),
}

/// The conversation: sends and deliveries in the order they happen. Chains (sending chains on the
/// root chain): A0 = messages 0–3, B0 = 4–6, A1 = 7–8, B1 = 9–10, A2 = 11–13, B2 = 14–15,
/// A3 = 16–17, B3 = 18–21, A4 = 22.
const SCRIPT: &[Step] = {
    use Step::{Deliver as D, Send as S};
    use Who::{Alice as A, Bob as B};
    &[
        S(A),
        S(A),
        S(A),
        S(A),
        D(1), // Bob: first ratchet step; 0 stored as skipped
        D(0), // Bob: skipped key
        S(B),
        S(B),
        S(B),
        D(5), // Alice: ratchet step; 4 stored as skipped
        D(4), // Alice: skipped key
        S(A),
        S(A),
        D(8), // Bob: new ratchet key with PN = 4: 2 and 3 skipped through PN, 7 within the chain
        D(3), // Bob: PN-skipped key of the old chain
        S(B),
        S(B),
        D(10), // Alice: new ratchet key with PN = 3: 6 skipped through PN, 9 within the chain
        D(9),
        D(7),
        D(2), // Bob: the other PN-skipped key, two ratchet steps later
        S(A),
        S(A),
        S(A),
        D(13), // Bob: ratchet step, 11 and 12 skipped
        D(6),  // Alice: PN-skipped key
        D(11),
        S(B),
        S(B),
        D(14),
        D(12),
        D(15),
        S(A),
        S(A),
        D(17),
        D(16),
        S(B),
        S(B),
        S(B),
        S(B),
        D(18),
        D(19),
        D(21),
        D(20),
        S(A),
        D(22),
    ]
};

pub(super) fn ratchet_file() -> GenResult<RatchetFile> {
    Ok(RatchetFile {
        file: "double_ratchet".to_owned(),
        format_version: FORMAT_VERSION,
        description: "A Double Ratchet conversation between Alice (initiator) and Bob after PQXDH, with every \
                      key derived, out-of-order delivery within chains and across ratchet steps (PN skipping)."
            .to_owned(),
        vectors: vec![ratchet_vector()?],
    })
}

fn classify(before: &hush_proto::store::SessionState, header: &Header) -> &'static str {
    if before
        .skipped
        .iter()
        .any(|k| k.ratchet_key == header.ratchet_key && k.counter == header.counter)
    {
        "skipped_key"
    } else if before.remote_ratchet_key == header.ratchet_key {
        "current_chain"
    } else {
        "new_ratchet_key"
    }
}

struct ChainState {
    record: RatchetChainRecord,
    public: [u8; KEY_LEN],
    next_chain_key: [u8; KEY_LEN],
}

fn ratchet_vector() -> GenResult<RatchetVector> {
    let seed = seed("double_ratchet", 0)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let s = Setup::draw(&mut rng, true, false, NOW_MS)?;
    let init = s.initiate()?;
    let sk = *init.shared_secret;
    let mut alice = init.session;
    let pending = alice
        .pending()
        .ok_or("initiator session is not pending")?
        .clone();
    let mut bob: Option<SessionState> = None;
    let alice_id = s.alice.public();
    let (alice_party, bob_party) = (s.alice.party(), s.bob.party());

    let mut root = sk;
    let mut chains: Vec<ChainState> = Vec::new();
    let mut current: [Option<usize>; 2] = [None, None];
    let mut sent: Vec<RatchetMessage> = Vec::new();
    let mut records: Vec<RatchetMessageRecord> = Vec::new();
    let mut events = Vec::new();
    let mut delivered = 0u32;

    for step in SCRIPT {
        match step {
            Step::Send(who) => {
                let index = count(records.len())?;
                let (sender, session) = match who {
                    Who::Alice => (ALICE, &mut alice),
                    Who::Bob => (
                        BOB,
                        bob.as_mut().ok_or("Bob sends before he has a session")?,
                    ),
                };
                let plaintext = format!("message {index} from {sender}").into_bytes();
                // Draws 32 bytes from `rng` when this send starts a new sending chain.
                let enc = session.encrypt(&plaintext, &mut rng, s.now)?;
                let header = enc.message.header;
                let slot = current
                    .get_mut(usize::from(*who == Who::Bob))
                    .ok_or("slot")?;
                let chain_index = match *slot {
                    Some(c)
                        if chains
                            .get(c)
                            .is_some_and(|ch| ch.public == header.ratchet_key) =>
                    {
                        c
                    }
                    _ => {
                        let state = session.to_proto();
                        let private = key32(&state.sending_ratchet_private)?;
                        let peer = key32(&state.remote_ratchet_key)?;
                        ensure(
                            x25519_public(&private) == header.ratchet_key,
                            "ratchet private matches header",
                        )?;
                        let expected_peer =
                            chains.last().map_or(s.spk.public.to_bytes(), |c| c.public);
                        ensure(peer == expected_peer, "chains alternate on the root chain")?;
                        let dh = x25519(&private, &peer);
                        let (rk, ck) = ratchet::kdf_rk(&root, &dh);
                        ensure(
                            *rk == *session.root_key(),
                            "root key after the ratchet step",
                        )?;
                        root = *rk;
                        let c = chains.len();
                        chains.push(ChainState {
                            record: RatchetChainRecord {
                                index: count(c)?,
                                sender: sender.to_owned(),
                                ratchet_private: hx(private),
                                ratchet_public: hx(header.ratchet_key),
                                peer_ratchet_public: hx(peer),
                                dh_output: hx(dh),
                                root_key: hx(*rk),
                                chain_key: hx(*ck),
                                message_count: 0,
                            },
                            public: header.ratchet_key,
                            next_chain_key: *ck,
                        });
                        *slot = Some(c);
                        c
                    }
                };
                let chain = chains.get_mut(chain_index).ok_or("chain")?;
                ensure(
                    header.counter == chain.record.message_count,
                    "N counts the chain's messages",
                )?;
                let (mk, next) = ratchet::kdf_ck(&chain.next_chain_key);
                ensure(*mk == *enc.message_key, "message key from the chain key")?;
                chain.next_chain_key = *next;
                chain.record.message_count += 1;
                let ad = ratchet::message_ad(&alice_party, &bob_party, &header);
                records.push(RatchetMessageRecord {
                    index,
                    sender: sender.to_owned(),
                    chain: count(chain_index)?,
                    plaintext: hx(&plaintext),
                    ratchet_key: hx(header.ratchet_key),
                    counter: header.counter,
                    previous_counter: header.previous_counter,
                    message_key: hx(*mk),
                    ad: hx(&ad),
                    ciphertext: hx(&enc.message.ciphertext),
                    ratchet_message: hx(enc.message.to_wire().encode_to_vec()),
                    delivery_position: u32::MAX,
                    received_via: String::new(),
                    skipped_keys_stored: 0,
                });
                sent.push(enc.message);
                events.push(RatchetEvent {
                    action: "send".to_owned(),
                    message: index,
                });
            }
            Step::Deliver(i) => {
                let msg = sent.get(*i).ok_or("delivery of an unsent message")?;
                let rec = records.get_mut(*i).ok_or("record")?;
                let receiver = if rec.sender == ALICE {
                    if bob.is_none() {
                        // Bob's session comes from the initial message (its PQXDH header is the
                        // same on every message of chain A0; `respond` does not decrypt).
                        let first = sent.first().ok_or("no first message")?;
                        let im = InitialMessage::try_from(&InitialMessage::wire(
                            &pending, alice_id, first,
                        ))?;
                        bob = Some(s.respond(&im, &[])?.session);
                    }
                    bob.as_mut().ok_or("Bob's session")?
                } else {
                    &mut alice
                };
                let before = receiver.to_proto();
                let via = classify(&before, &msg.header);
                let opened = receiver.decrypt(msg, s.now)?;
                ensure(
                    hx(&*opened.plaintext) == rec.plaintext,
                    "receiver decrypts the plaintext",
                )?;
                ensure(
                    hx(*opened.message_key) == rec.message_key,
                    "receiver derives the same key",
                )?;
                let consumed = usize::from(via == "skipped_key");
                let stored = (receiver.skipped_len() + consumed)
                    .checked_sub(before.skipped.len())
                    .ok_or("skipped keys were evicted")?;
                ensure(
                    rec.delivery_position == u32::MAX,
                    "each message is delivered once",
                )?;
                rec.delivery_position = delivered;
                rec.received_via = via.to_owned();
                rec.skipped_keys_stored = count(stored)?;
                delivered += 1;
                events.push(RatchetEvent {
                    action: "deliver".to_owned(),
                    message: rec.index,
                });
            }
        }
    }
    ensure(
        records.iter().all(|r| r.delivery_position != u32::MAX),
        "every message is delivered",
    )?;
    ensure(
        alice.skipped_len() == 0,
        "Alice holds no skipped keys at the end",
    )?;
    ensure(
        bob.as_ref().is_some_and(|b| b.skipped_len() == 0),
        "Bob holds no skipped keys at the end",
    )?;

    Ok(RatchetVector {
        name: "conversation".to_owned(),
        description: format!(
            "{} messages on {} sending chains ({} DH ratchet steps after PQXDH), delivered out of order within \
             chains and across ratchet steps; see `events` for when each was sent and delivered.",
            records.len(),
            chains.len(),
            chains.len().saturating_sub(1)
        ),
        seed: hx(seed),
        now_ms: s.now,
        setup: s.inputs(),
        shared_secret: hx(sk),
        chains: chains.into_iter().map(|c| c.record).collect(),
        messages: records,
        events,
    })
}
