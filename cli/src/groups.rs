//! `hush group …`.

use hush_client::{Conversation, Messenger};

use crate::GroupCmd;
use crate::contacts::contact;
use crate::profile::Profile;
use crate::show::explain;

/// A group of this device by name.
pub(crate) fn group_by_name(
    m: &Messenger,
    name: &str,
) -> Result<hush_core::sender_key::GroupId, String> {
    let found: Vec<_> = m
        .engine()
        .groups()
        .map_err(|e| explain(&e))?
        .into_iter()
        .filter(|(_, n)| n == name)
        .collect();
    match found.as_slice() {
        [(g, _)] => Ok(*g),
        [] => Err(format!("no group named `{name}`")),
        _ => Err(format!("several groups are named `{name}`")),
    }
}

pub(crate) async fn group_command(m: &Messenger, p: &Profile, cmd: GroupCmd) -> Result<(), String> {
    match cmd {
        GroupCmd::Create { name, members } => {
            let mut accounts = Vec::new();
            for u in &members {
                accounts.push(contact(m, &p.dir, u).await?);
            }
            m.engine()
                .create_group(&name, &accounts)
                .await
                .map_err(|e| explain(&e))?;
            say!("created group `{name}` with {}", members.join(", "));
            Ok(())
        }
        GroupCmd::Send { name, text } => {
            let g = group_by_name(m, &name)?;
            let id = m
                .send_text(Conversation::Group(g), &text, None)
                .await
                .map_err(|e| explain(&e))?;
            say!("sent {}", hex::encode(id));
            Ok(())
        }
        GroupCmd::Add { name, user } => {
            let g = group_by_name(m, &name)?;
            let a = contact(m, &p.dir, &user).await?;
            m.engine()
                .update_group(&g, &[(a, false)], &[])
                .await
                .map_err(|e| explain(&e))?;
            say!("added {user} to `{name}`");
            Ok(())
        }
        GroupCmd::Remove { name, user } => {
            let g = group_by_name(m, &name)?;
            let a = contact(m, &p.dir, &user).await?;
            m.engine()
                .update_group(&g, &[], &[a])
                .await
                .map_err(|e| explain(&e))?;
            say!("removed {user} from `{name}`");
            Ok(())
        }
        GroupCmd::List => {
            for (_, n) in m.engine().groups().map_err(|e| explain(&e))? {
                say!("{n}");
            }
            Ok(())
        }
    }
}
