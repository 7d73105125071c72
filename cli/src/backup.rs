//! Backups (`backup enable`, `backup now`), recovery (`restore`) and the history a linked
//! device gets (`link --history N`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hush_client::messenger::{AppState, Restored};
use hush_client::{ClientError, Messenger, private_fs};

use crate::Ctx;
use crate::contacts::{all_contacts, contacts, save_contact};
use crate::profile::{Profile, engine_config, make_profile_dir, read_profile, set_presence};
use crate::show::explain;

/// What backups and history transfers carry of this profile: its name, contacts and presence.
pub(crate) fn app_state(p: &Profile) -> AppState {
    AppState {
        name: p.name.clone(),
        contacts: all_contacts(&p.dir),
        settings: vec![(
            "presence".to_owned(),
            if p.presence { "on" } else { "off" }.to_owned(),
        )],
    }
}

/// Keeps what an archive brought: contacts this profile lacks, the name if it has none, the
/// presence setting.
pub(crate) fn take_app_state(dir: &Path, app: &AppState) {
    let known = contacts(dir);
    for (username, account) in &app.contacts {
        if !known.contains_key(username) {
            let _ = save_contact(dir, username, account);
        }
    }
    if !app.name.is_empty() {
        let _ = crate::profile::set_name_if_empty(dir, &app.name);
    }
    for (k, v) in &app.settings {
        if k == "presence" && (v == "on" || v == "off") {
            let _ = set_presence(dir, v == "on");
        }
    }
}

fn backup_words(e: &ClientError) -> String {
    match e {
        ClientError::NotPermitted(why) => (*why).to_owned(),
        ClientError::Invalid(why) => why.clone(),
        e => explain(e),
    }
}

/// `hush backup enable`: a new recovery key, shown once, and the first backup.
pub(crate) async fn enable(c: &Ctx<'_>) -> Result<(), String> {
    c.online().await?;
    let key = c.m.enable_backup().await.map_err(|e| backup_words(&e))?;
    say!(
        "backups are on; the first one is on the relay. Your recovery key (write it down and \
         keep it safe; it is shown only now, and it is all that is needed to restore this \
         account, its contacts, groups and history on a new device):\n\n  {}\n\nrestore with: \
         hush --profile DIR restore --relay {} --pin {} --recovery-key \"KEY\"",
        key.as_str(),
        c.p.relay,
        c.p.pin
    );
    Ok(())
}

/// `hush backup now`.
pub(crate) async fn now(c: &Ctx<'_>) -> Result<(), String> {
    c.online().await?;
    match c.m.backup_now().await.map_err(|e| backup_words(&e))? {
        Some(r) => {
            say!(
                "backed up {} message{} ({} bytes, slot {})",
                r.messages,
                if r.messages == 1 { "" } else { "s" },
                r.bytes,
                r.slot
            );
            Ok(())
        }
        None => Err("backups are off: turn them on with `hush backup enable`".into()),
    }
}

/// `hush link` on the existing device, after the contacts: the newest `last` messages of every
/// conversation go to the new device.
pub(crate) async fn send_history(c: &Ctx<'_>, device_id: u32, last: usize) {
    if last == 0 {
        return;
    }
    match c.m.transfer_history(device_id, last).await {
        Ok(n) => say!(
            "gave the new device {n} message{} of history (at most {last} per conversation)",
            if n == 1 { "" } else { "s" }
        ),
        Err(e) => say!("the new device did not get the history: {}", explain(&e)),
    }
}

/// `hush restore`: a new profile in `dir` for a new device of the account whose backup the
/// recovery key names.
pub(crate) async fn restore(
    dir: &Path,
    relay: Option<SocketAddr>,
    pin: Option<String>,
    recovery_key: &str,
    connect_timeout: u64,
) -> Result<(), String> {
    let (Some(relay), Some(pin)) = (relay, pin) else {
        return Err("restoring needs --relay and --pin".into());
    };
    make_profile_dir(dir)?;
    let profile = Profile {
        dir: dir.to_path_buf(),
        relay,
        pin,
        name: String::new(),
        presence: true,
    };
    let (m, _events, restored) = Messenger::restore(engine_config(&profile)?, recovery_key)
        .await
        .map_err(|e| match e {
            ClientError::NoBackup => {
                "the relay holds no backup for this recovery key (none was made there, or it \
                 expired); check the key and the relay"
                    .to_owned()
            }
            e => explain(&e),
        })?;
    let made = async {
        m.engine()
            .connected(Duration::from_secs(connect_timeout))
            .await
            .map_err(|e| explain(&e))?;
        private_fs::write_atomic(
            &dir.join("config"),
            format!(
                "relay = {}\npin = {}\nname = \n",
                profile.relay, profile.pin
            )
            .as_bytes(),
        )
        .map_err(|e| format!("config: {e}"))?;
        let Restored {
            messages,
            groups,
            app,
        } = &restored;
        take_app_state(dir, app);
        let p = read_profile(dir)?;
        m.set_name(&p.name);
        m.set_app_state(app_state(&p));
        // The backup goes on under the same key, with this device in it.
        if let Err(e) = m.backup_now().await {
            say!("the backup was not refreshed yet: {}", explain(&e));
        }
        say!(
            "restored account {} as device {}{}: {messages} message{}, {groups} group{}, {} \
             contact{}; the account's earlier devices were removed",
            hex::encode(m.address().account.as_bytes()),
            m.address().device_id,
            if p.name.is_empty() {
                String::new()
            } else {
                format!(" (`{}`)", p.name)
            },
            if *messages == 1 { "" } else { "s" },
            if *groups == 1 { "" } else { "s" },
            app.contacts.len(),
            if app.contacts.len() == 1 { "" } else { "s" },
        );
        Ok(())
    }
    .await;
    m.shutdown().await;
    made
}
