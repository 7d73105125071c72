//! Files: `hush attach` sends one, `hush save` writes a received one to disk. Both show a
//! progress bar on stderr while the encrypted bytes travel, when stderr is a terminal.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::Path;

use hush_client::messenger::MAX_ATTACHMENT;
use hush_client::{ClientError, Conversation, Messenger, MessengerEvent};
use hush_proto::app::{Attachment, StoredMessage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::contacts::{contact, learn_sender, name_of};
use crate::show::explain;
use crate::{Ctx, report_send};

/// Files smaller than this travel without a progress bar: they are done before it would show.
const BAR_FROM: u64 = 1_000_000;
/// Fewest hex digits of a message id that `hush save` takes.
pub(crate) const MIN_ID_DIGITS: usize = 8;
/// Longest file name written (bytes), below every common file system's limit.
const MAX_NAME: usize = 200;
/// The name a file is saved under when its sender's name leaves nothing usable.
const FALLBACK_NAME: &str = "attachment";

/// `hush attach TO FILE`: encrypts the file, uploads it and sends it.
pub(crate) async fn attach(
    c: &mut Ctx<'_>,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<MessengerEvent>,
    to: &str,
    file: &Path,
) -> Result<(), String> {
    let m = c.m;
    let a = contact(c, to).await?;
    let len = std::fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    if len > MAX_ATTACHMENT as u64 {
        return Err(format!(
            "{} is {}; a file sent is at most {} MiB",
            file.display(),
            human_size(len),
            MAX_ATTACHMENT >> 20
        ));
    }
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    // The upload needs the relay; the message itself then waits in the outbox if it must.
    c.online().await?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = bar(len, &format!("sending {}", safe_name(&name)));
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let sent = m
        .send_attachment_with_progress(
            Conversation::Direct(a),
            &name,
            "application/octet-stream",
            &data,
            &progress,
        )
        .await;
    bar.finish_and_clear();
    let id = sent.map_err(|e| explain(&e))?;
    report_send(c, events, id).await
}

/// `hush save ID|last [--out PATH]`: downloads a file, checks its digest, decrypts it and
/// writes it to a new file (an existing one is never replaced).
pub(crate) async fn save(
    c: &mut Ctx<'_>,
    which: &str,
    out: Option<&Path>,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<MessengerEvent>,
) -> Result<(), String> {
    // First take in what arrived while away, so that `last` means the last file received.
    c.sync(events).await;
    let (m, p) = (c.m, c.p);
    let (conversation, msg, a) = pick(m, which)?;
    // The file asked for is not shown again as news.
    let picked = msg.message.as_ref().map(|x| x.message_id.clone());
    c.seen.retain(|ev| {
        !matches!(ev, MessengerEvent::Message { message, .. }
            if message.message.as_ref().map(|x| &x.message_id) == picked.as_ref())
    });
    let name = safe_name(&a.name);
    let path = match out {
        Some(o) if o.is_dir() => o.join(&name),
        Some(o) => o.to_path_buf(),
        None => Path::new(".").join(&name),
    };
    // Said before the download, and made sure of again when the file is created.
    if path.symlink_metadata().is_ok() {
        return Err(exists(&path));
    }
    // A sender not yet among the contacts is named if the relay's directory confirms the name
    // it claims.
    let ev = MessengerEvent::Message {
        conversation,
        message: Box::new(msg.clone()),
    };
    learn_sender(m, &p.dir, &ev).await;
    let from = if msg.outgoing {
        "me".to_owned()
    } else {
        name_of(&p.dir, &msg.sender_account)
    };
    let bar = bar(a.size, &format!("receiving {name}"));
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let got = m.download_with_progress(&a, &progress).await;
    bar.finish_and_clear();
    let data = got.map_err(|e| match e {
        ClientError::BlobGone => format!(
            "{name} is no longer on the relay (expired or deleted); ask {from} to send it again"
        ),
        ClientError::BlobAltered => format!(
            "{name} was altered on the relay or on its way: its digest does not match the one \
             {from} sent; nothing was saved"
        ),
        e => explain(&e),
    })?;
    write_new(&path, &data)?;
    say!(
        "saved {name} ({}) from {from} to {}",
        human_size(data.len() as u64),
        path.display()
    );
    Ok(())
}

/// The attachment message `which` names: `last` (the file received last), or the first hex
/// digits of its message id (at least [`MIN_ID_DIGITS`]).
fn pick(m: &Messenger, which: &str) -> Result<(Conversation, StoredMessage, Attachment), String> {
    if which == "last" {
        return m
            .last_received_attachment()
            .map_err(|e| explain(&e))?
            .ok_or_else(|| "no file has been received yet".to_owned());
    }
    let digits = which.len();
    if !(MIN_ID_DIGITS..=32).contains(&digits) || !which.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`{which}` is not a message id: give `last`, or the id shown with the file \
             ({MIN_ID_DIGITS} to 32 hex digits)"
        ));
    }
    let mut found = m.find_attachments(which).map_err(|e| explain(&e))?;
    // One file reached this device more than once (sent and synced, say): the same blob.
    let mut seen = HashSet::new();
    found.retain(|(_, _, a)| seen.insert(a.blob_id.clone()));
    if found.len() > 1 {
        return Err(format!(
            "{} files have message ids starting with {which}; give more digits",
            found.len()
        ));
    }
    found
        .pop()
        .ok_or_else(|| format!("no file has a message id starting with {which}"))
}

fn exists(path: &Path) -> String {
    format!(
        "{} already exists; it is not replaced (choose another name with --out PATH)",
        path.display()
    )
}

/// Writes `data` to a file that must not exist yet; a failed write leaves no file behind.
fn write_new(path: &Path, data: &[u8]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => exists(path),
            _ => format!("{}: {e}", path.display()),
        })?;
    if let Err(e) = f.write_all(data).and_then(|()| f.sync_all()) {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(format!("{}: {e}", path.display()));
    }
    Ok(())
}

/// A progress bar for `total` bytes on stderr, or a hidden one when stderr is not a terminal
/// or the file is small.
fn bar(total: u64, msg: &str) -> ProgressBar {
    if total < BAR_FROM || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(style);
    bar.set_message(msg.to_owned());
    bar
}

/// A file name chosen by a sender, made safe to show and to create in a directory: its last
/// path component only (no `/` or `\`), no control characters, no leading dots (so neither `..`
/// nor a hidden file), at most [`MAX_NAME`] bytes; `attachment` if nothing is left.
pub(crate) fn safe_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim_start();
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > MAX_NAME {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        FALLBACK_NAME.to_owned()
    } else {
        out
    }
}

/// A size in words: bytes below 0.95 kB, then kB, MB and GB (powers of 1000) with one
/// decimal.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1_000_000_000, "GB"), (1_000_000, "MB"), (1_000, "kB")];
    for (unit, word) in UNITS {
        // Tenths, rounded half up; exact in integers. The largest unit that shows at least 1.0.
        let tenths = (u128::from(bytes) * 10 + u128::from(unit) / 2) / u128::from(unit);
        if tenths >= 10 {
            return format!("{}.{} {word}", tenths / 10, tenths % 10);
        }
    }
    if bytes == 1 {
        "1 byte".to_owned()
    } else {
        format!("{bytes} bytes")
    }
}

/// The first hex digits of a message id, enough for `hush save`.
pub(crate) fn short_id(id: &[u8]) -> String {
    hex::encode(id).chars().take(MIN_ID_DIGITS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_chosen_names_are_made_safe() {
        assert_eq!(safe_name("photo.jpg"), "photo.jpg");
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name(".."), "attachment");
        assert_eq!(safe_name("dir/"), "attachment");
        assert_eq!(safe_name(""), "attachment");
        assert_eq!(safe_name("a\u{1b}[2Jb\n.txt"), "a_[2Jb_.txt");
        assert_eq!(safe_name("  . x.txt"), "x.txt");
        let long = "é".repeat(150);
        let cut = safe_name(&long);
        assert!(cut.len() <= MAX_NAME && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn sizes_are_said_in_words() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(949), "949 bytes");
        assert_eq!(human_size(999), "1.0 kB");
        assert_eq!(human_size(1_000), "1.0 kB");
        assert_eq!(human_size(3_000_000), "3.0 MB");
        assert_eq!(human_size(3_145_728), "3.1 MB");
        assert_eq!(human_size(999_960), "1.0 MB");
        assert_eq!(human_size(104_857_600), "104.9 MB");
        assert_eq!(human_size(2_500_000_000), "2.5 GB");
    }
}
