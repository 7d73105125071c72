//! The checks the relay makes on public material before storing it: signed device lists, pre-key
//! signatures, connection authentication and username proofs. They are `hush_verify`'s, the ones
//! client-core makes too, so the relay and clients cannot disagree on what verifies. Clients
//! verify everything again; these checks keep garbage and forgeries out of the relay.

pub use hush_verify::{
    CheckedList, VerifyError, auth_signature, auth_transcript, ed25519_key, kem_pre_key,
    one_time_pre_key, signed_pre_key, username_proof,
};
