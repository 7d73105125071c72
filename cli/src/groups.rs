//! `hush group …`, and how groups are named on the command line: by name, or by the short id
//! `group list` shows when names are shared.

use hush_client::{Conversation, MessengerEvent};
use hush_core::sender_key::GroupId;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::contacts::{contact, name_of};
use crate::show::explain;
use crate::{Ctx, GroupCmd, report_send};

/// Hex digits of a group id shown to tell groups of one name apart.
const SHORT_ID: usize = 8;

fn short_id(g: &GroupId) -> String {
    hex::encode(g.0).chars().take(SHORT_ID).collect()
}

/// The groups this device is in, with their names.
fn all_groups(m: &hush_client::Messenger) -> Vec<(GroupId, String)> {
    m.engine().groups().unwrap_or_default()
}

/// A group's name as shown: its name, with its short id when another group has the same name.
pub(crate) fn group_label(m: &hush_client::Messenger, g: &GroupId) -> String {
    let groups = all_groups(m);
    let Some(name) = groups
        .iter()
        .find(|(id, _)| id == g)
        .map(|(_, n)| n.clone())
    else {
        return short_id(g);
    };
    if groups.iter().filter(|(_, n)| *n == name).count() > 1 {
        format!("{name} ({})", short_id(g))
    } else {
        name
    }
}

/// How to name a group on the command line: its name, or its short id when the name is shared.
pub(crate) fn group_ref(m: &hush_client::Messenger, g: &GroupId) -> String {
    let groups = all_groups(m);
    match groups.iter().find(|(id, _)| id == g) {
        Some((_, n)) if groups.iter().filter(|(_, o)| o == n).count() == 1 => n.clone(),
        _ => short_id(g),
    }
}

/// A group of this device by name, or by id (a prefix of at least 4 hex digits will do).
pub(crate) fn find_group(m: &hush_client::Messenger, wanted: &str) -> Result<GroupId, String> {
    let groups = all_groups(m);
    let lower = wanted.to_ascii_lowercase();
    if lower.len() >= 4 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
        let by_id: Vec<_> = groups
            .iter()
            .filter(|(g, _)| hex::encode(g.0).starts_with(&lower))
            .collect();
        if let [(g, _)] = by_id.as_slice() {
            return Ok(*g);
        }
    }
    let named: Vec<_> = groups.iter().filter(|(_, n)| n == wanted).collect();
    match named.as_slice() {
        [(g, _)] => Ok(*g),
        [] => Err(format!(
            "no group `{wanted}` on this device (`hush group list` shows yours)"
        )),
        several => Err(format!(
            "several groups are named `{wanted}`: name one by its id ({})",
            several
                .iter()
                .map(|(g, _)| short_id(g))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A group by name or id, after taking in what waits at the relay: a group just created with
/// this account may be there, and a command that changes or sends to a group acts on its
/// current state (a message a member sent before being removed is read as theirs, not refused).
pub(crate) async fn find_group_synced(
    c: &mut Ctx<'_>,
    events: &mut UnboundedReceiver<MessengerEvent>,
    wanted: &str,
) -> Result<GroupId, String> {
    c.sync(events).await;
    find_group(c.m, wanted)
}

pub(crate) async fn group_command(
    c: &mut Ctx<'_>,
    cmd: GroupCmd,
    events: &mut UnboundedReceiver<MessengerEvent>,
) -> Result<(), String> {
    let m = c.m;
    match cmd {
        GroupCmd::Create { name, members } => {
            let mut accounts = Vec::new();
            for u in &members {
                accounts.push(contact(c, u).await?);
            }
            c.online().await?;
            let g = m
                .engine()
                .create_group(&name, &accounts)
                .await
                .map_err(|e| explain(&e))?;
            say!(
                "created group `{}` with {}",
                group_label(m, &g),
                members.join(", ")
            );
            Ok(())
        }
        GroupCmd::Send { group, text } => {
            let g = find_group_synced(c, events, &group).await?;
            let id = m
                .send_text(Conversation::Group(g), &text, None)
                .await
                .map_err(|e| explain(&e))?;
            report_send(c, events, id).await
        }
        GroupCmd::Add { group, user } => {
            let g = find_group_synced(c, events, &group).await?;
            let a = contact(c, &user).await?;
            c.online().await?;
            m.engine()
                .update_group(&g, &[(a, false)], &[])
                .await
                .map_err(|e| explain(&e))?;
            say!("added {user} to group {}", group_label(m, &g));
            Ok(())
        }
        GroupCmd::Remove { group, user } => {
            let g = find_group_synced(c, events, &group).await?;
            let a = contact(c, &user).await?;
            c.online().await?;
            m.engine()
                .update_group(&g, &[], &[a])
                .await
                .map_err(|e| explain(&e))?;
            say!("removed {user} from group {}", group_label(m, &g));
            Ok(())
        }
        GroupCmd::List => {
            c.sync(events).await;
            // The list below is what changed.
            c.seen
                .retain(|e| !matches!(e, MessengerEvent::GroupsChanged));
            let groups = all_groups(m);
            if groups.is_empty() {
                say!("no groups yet");
            }
            let me = m.address().account;
            for (g, _) in groups {
                let members: Vec<String> = m
                    .engine()
                    .group_members(&g)
                    .unwrap_or_default()
                    .iter()
                    .map(|a| {
                        if *a == me {
                            "me".to_owned()
                        } else {
                            name_of(&c.p.dir, a.as_bytes())
                        }
                    })
                    .collect();
                say!(
                    "{} [id {}]: {}",
                    group_label(m, &g),
                    short_id(&g),
                    members.join(", ")
                );
            }
            Ok(())
        }
    }
}
