//! A profile directory: what the client keeps in it, whether it holds an account, and the
//! settings an app hands over, checked here so that every front end (the FFI, the CLI) refuses
//! the same things in the same words.
//!
//! Layout: `db/` (the device store) and `history/` (the messenger's history), each an encrypted
//! sled store under its own at-rest subkey, and three small files the engine keeps beside them
//! ([`ENTRIES`]). An app may keep files of its own in the directory too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::engine::EngineConfig;
use crate::error::ClientError;

/// The device store's directory inside a profile.
pub const DB_DIR: &str = "db";
/// The history store's directory inside a profile.
pub const HISTORY_DIR: &str = "history";
/// The highest one-time pre-key id uploaded to the relay.
pub(crate) const UPLOADED_FILE: &str = "uploaded-pre-keys";
/// The push endpoint this device registered (sent again on every connection).
pub(crate) const PUSH_FILE: &str = "push-endpoint";
/// Present in a linked device's profile until it has asked its siblings for the groups.
pub(crate) const GROUP_SYNC_FILE: &str = "group-sync-pending";
/// "1" when this device lets sealed envelopes in from anyone, not only from its contacts.
pub(crate) const ANYONE_FILE: &str = "sealed-from-anyone";

/// Everything the client writes in a profile directory.
pub const ENTRIES: [&str; 6] = [
    DB_DIR,
    HISTORY_DIR,
    UPLOADED_FILE,
    PUSH_FILE,
    GROUP_SYNC_FILE,
    ANYONE_FILE,
];

/// Whether the profile holds an account (its device store exists).
pub fn has_account(profile: &Path) -> bool {
    profile.join(DB_DIR).exists()
}

/// Removes what a failed account creation or link wrote into a profile that held no account.
pub(crate) fn discard_new(profile: &Path) {
    for entry in ENTRIES {
        let path = profile.join(entry);
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// The settings of a profile as an app hands them over (strings and bytes from a UI or a
/// binding), checked: the at-rest key must be 32 bytes, the directory named, the relay an
/// `IP:PORT` and the pin a SHA-256 in hex. Refusals are [`ClientError::Invalid`] with the reason.
pub fn settings(
    profile_dir: &str,
    at_rest_key: &[u8],
    relay_address: &str,
    relay_pin: &str,
) -> Result<EngineConfig, ClientError> {
    let key: [u8; 32] = at_rest_key.try_into().map_err(|_| {
        ClientError::Invalid(
            "the at-rest key must be exactly 32 bytes (keep it in the keystore)".into(),
        )
    })?;
    let at_rest_key = Zeroizing::new(key);
    if profile_dir.trim().is_empty() {
        return Err(ClientError::Invalid(
            "the profile directory is empty".into(),
        ));
    }
    let relay: SocketAddr = relay_address.trim().parse().map_err(|_| {
        ClientError::Invalid(format!("relay address `{relay_address}` is not IP:PORT"))
    })?;
    let pin = relay_pin.trim().to_ascii_lowercase();
    let mut raw = [0u8; 32];
    if pin.len() != 64 || hex::decode_to_slice(&pin, &mut raw).is_err() {
        return Err(ClientError::Invalid(
            "the relay pin must be the certificate's SHA-256 as 64 hex digits".into(),
        ));
    }
    Ok(EngineConfig {
        profile: PathBuf::from(profile_dir),
        at_rest_key,
        relay,
        pin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn settings_are_checked_with_the_reason() {
        let ok = settings("/tmp/p", &[7; 32], "127.0.0.1:4433", &PIN.to_uppercase()).unwrap();
        assert_eq!(ok.pin, PIN);
        let why = |r: Result<EngineConfig, ClientError>| match r {
            Err(ClientError::Invalid(w)) => w,
            Err(e) => panic!("not Invalid: {e}"),
            Ok(_) => panic!("accepted"),
        };
        assert!(why(settings("/tmp/p", &[7; 31], "127.0.0.1:1", PIN)).contains("32 bytes"));
        assert!(why(settings(" ", &[7; 32], "127.0.0.1:1", PIN)).contains("directory"));
        assert!(why(settings("/tmp/p", &[7; 32], "relay", PIN)).contains("IP:PORT"));
        assert!(why(settings("/tmp/p", &[7; 32], "127.0.0.1:1", "abc")).contains("64 hex"));
    }

    #[test]
    fn a_failed_start_leaves_no_entry_behind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(DB_DIR).join("x")).unwrap();
        std::fs::write(dir.path().join(UPLOADED_FILE), b"1").unwrap();
        std::fs::write(dir.path().join("app-file"), b"kept").unwrap();
        assert!(has_account(dir.path()));
        discard_new(dir.path());
        assert!(!has_account(dir.path()));
        assert!(!dir.path().join(UPLOADED_FILE).exists());
        assert!(dir.path().join("app-file").exists());
    }
}
