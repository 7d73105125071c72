//! Making a profile: a new account (`init`) or a new device of one (`link --code`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hush_client::{ClientError, Messenger, private_fs};
use hush_proto::relay_api::ErrorCode;

use crate::profile::{Profile, engine_config, make_profile_dir};
use crate::show::explain;

pub(crate) async fn init(
    dir: &Path,
    relay: SocketAddr,
    pin: String,
    name: String,
    connect_timeout: u64,
) -> Result<(), String> {
    make_profile_dir(dir)?;
    let profile = Profile {
        dir: dir.to_path_buf(),
        relay,
        pin,
        name: name.clone(),
        presence: true,
    };
    let (m, _events) = Messenger::create_account(engine_config(&profile)?)
        .await
        .map_err(|e| explain(&e))?;
    // The messenger is shut down whatever happens, so that a failure leaves its stores closed
    // (and the caller can remove them).
    let made = async {
        m.engine()
            .connected(Duration::from_secs(connect_timeout))
            .await
            .map_err(|e| explain(&e))?;
        m.engine()
            .claim_username(&name)
            .await
            .map_err(|e| match &e {
                ClientError::Refused(r) if r.code == ErrorCode::UsernameTaken => {
                    format!("the username `{name}` is taken")
                }
                _ => explain(&e),
            })?;
        // Written last: a profile without it is an unfinished one.
        private_fs::write_atomic(
            &dir.join("config"),
            format!(
                "relay = {}\npin = {}\nname = {}\n",
                profile.relay, profile.pin, profile.name
            )
            .as_bytes(),
        )
        .map_err(|e| format!("config: {e}"))?;
        say!(
            "created account {} as `{name}`",
            hex::encode(m.address().account.as_bytes())
        );
        Ok(())
    }
    .await;
    m.shutdown().await;
    made
}

pub(crate) async fn link(
    dir: &Path,
    relay: Option<SocketAddr>,
    pin: Option<String>,
    code: &str,
) -> Result<(), String> {
    let (Some(relay), Some(pin)) = (relay, pin) else {
        return Err("joining needs --relay and --pin".into());
    };
    make_profile_dir(dir)?;
    let profile = Profile {
        dir: dir.to_path_buf(),
        relay,
        pin,
        name: String::new(),
        presence: true,
    };
    let (m, _events) = Messenger::link(engine_config(&profile)?, code)
        .await
        .map_err(|e| explain(&e))?;
    say!("waiting for the other device to add this one");
    let made = async {
        m.engine()
            .connected(Duration::from_secs(300))
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
        say!(
            "linked as device {} of account {}",
            m.address().device_id,
            hex::encode(m.address().account.as_bytes())
        );
        Ok(())
    }
    .await;
    m.shutdown().await;
    made
}
