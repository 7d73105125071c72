//! Contacts: usernames this profile knows, checked against the relay's directory.

use std::collections::BTreeMap;
use std::path::Path;

use hush_client::{ClientError, Messenger, MessengerEvent, private_fs};
use hush_core::keys::AccountId;
use hush_proto::relay_api::ErrorCode;

use crate::Ctx;
use crate::profile::fail;
use crate::show::explain;

pub(crate) fn contacts(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("contacts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, a)| (n.to_owned(), a.to_owned()))
        .collect()
}

pub(crate) fn save_contact(dir: &Path, name: &str, account: &AccountId) -> Result<(), String> {
    let mut c = contacts(dir);
    c.insert(name.to_owned(), hex::encode(account.as_bytes()));
    let text: String = c.iter().map(|(n, a)| format!("{n} {a}\n")).collect();
    private_fs::write_atomic(&dir.join("contacts"), text.as_bytes())
        .map_err(|e| format!("contacts: {e}"))
}

pub(crate) fn name_of(dir: &Path, account: &[u8]) -> String {
    let hexed = hex::encode(account);
    contacts(dir)
        .into_iter()
        .find(|(_, a)| *a == hexed)
        .map(|(n, _)| n)
        .unwrap_or_else(|| hexed.chars().take(12).collect())
}

/// The account of a contact by username: from the contacts file, or (first time) from the
/// relay's directory, which needs the relay.
pub(crate) async fn contact(c: &Ctx<'_>, name: &str) -> Result<AccountId, String> {
    let dir = c.p.dir.as_path();
    if let Some(a) = contacts(dir).get(name) {
        let bytes = hex::decode(a).map_err(|_| fail("contacts file is damaged"))?;
        return AccountId::from_bytes(&bytes).map_err(|_| fail("contacts file is damaged"));
    }
    c.online().await.map_err(|e| {
        format!("`{name}` is not a contact yet, and looking the name up needs the relay: {e}")
    })?;
    let account =
        c.m.engine()
            .lookup_username(name)
            .await
            .map_err(|e| match &e {
                ClientError::Refused(r) if r.code == ErrorCode::NotFound => {
                    format!("unknown user `{name}`")
                }
                _ => explain(&e),
            })?;
    save_contact(dir, name, &account)?;
    Ok(account)
}

/// Learns the name of an unknown sender from what it claims, if the relay's directory (signed
/// by the account key) confirms it.
pub(crate) async fn learn_sender(m: &Messenger, dir: &Path, ev: &MessengerEvent) {
    if let MessengerEvent::ContactsSynced { name, contacts } = ev {
        take_synced(dir, name, contacts);
        return;
    }
    if let MessengerEvent::HistoryImported(r) = ev {
        crate::backup::take_app_state(dir, &r.app);
        return;
    }
    let MessengerEvent::Message { message, .. } = ev else {
        return;
    };
    let claimed = message
        .message
        .as_ref()
        .map(|a| a.sender_name.clone())
        .unwrap_or_default();
    if claimed.is_empty() || message.outgoing {
        return;
    }
    let hexed = hex::encode(&message.sender_account);
    if contacts(dir).values().any(|a| *a == hexed) {
        return;
    }
    if let Ok(account) = m.engine().lookup_username(&claimed).await
        && account.as_bytes().as_slice() == message.sender_account.as_slice()
    {
        let _ = save_contact(dir, &claimed, &account);
    }
}

/// Keeps what another device of this account sent: its username (for a device that has none
/// yet, as a linked one) and the contacts this profile does not know yet.
fn take_synced(dir: &Path, name: &str, synced: &[(String, AccountId)]) {
    let known = contacts(dir);
    for (username, account) in synced {
        if !known.contains_key(username) {
            let _ = save_contact(dir, username, account);
        }
    }
    if !name.is_empty() {
        let _ = crate::profile::set_name_if_empty(dir, name);
    }
}

/// The contacts this profile knows, as accounts.
pub(crate) fn all_contacts(dir: &Path) -> Vec<(String, AccountId)> {
    contacts(dir)
        .into_iter()
        .filter_map(|(n, a)| {
            let bytes = hex::decode(a).ok()?;
            Some((n, AccountId::from_bytes(&bytes).ok()?))
        })
        .collect()
}
