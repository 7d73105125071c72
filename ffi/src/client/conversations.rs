//! Conversations: texts, reactions, attachments and files, read receipts, typing, presence and
//! the history, each call checked here and handed to the messenger.

use crate::error::HushError;
use crate::types::{Conversation, HushMessage, message, parse_accounts, parse_message_id};
use hush_client::Messenger;
use hush_client::messenger::{MAX_ATTACHMENT, MAX_TEXT};
use hush_proto::app::{Attachment, app_message};
use std::path::PathBuf;

use super::{HushClient, MAX_HISTORY_PAGE};

/// Finds an attachment of a conversation in history.
pub(super) fn find_attachment(
    m: &Messenger,
    conv: hush_client::Conversation,
    id: &[u8; 16],
) -> Result<Attachment, HushError> {
    match m.message(id)? {
        Some((c, s)) if c == conv => match s.message.as_ref().and_then(|a| a.kind.clone()) {
            Some(app_message::Kind::Attachment(att)) => Ok(att),
            _ => Err(HushError::invalid("that message is not an attachment")),
        },
        _ => Err(HushError::NotFound(
            "no such message in this conversation".into(),
        )),
    }
}

pub(super) fn check_text(text: &str) -> Result<(), HushError> {
    if text.is_empty() {
        return Err(HushError::invalid("the text is empty"));
    }
    if text.len() > MAX_TEXT {
        return Err(HushError::TooLarge(format!(
            "a text is at most {MAX_TEXT} bytes, this one has {}",
            text.len()
        )));
    }
    Ok(())
}

pub(super) fn check_attachment(len: usize) -> Result<(), HushError> {
    if len > MAX_ATTACHMENT {
        return Err(HushError::TooLarge(format!(
            "an attachment is at most {MAX_ATTACHMENT} bytes, this one has {len}"
        )));
    }
    Ok(())
}

#[uniffi::export]
impl HushClient {
    /// Sends a text, optionally as a reply to message `reply_to`: stores it and returns its id
    /// at once, status `Waiting`, online or not. The client sends it, after the conversation's
    /// earlier messages, as soon as the relay can be reached (a `Status` event with `Sent`);
    /// refused for good, it becomes `Failed` (a `SendFailed` event).
    pub async fn send_text(
        &self,
        conversation: Conversation,
        text: String,
        reply_to: Option<String>,
    ) -> Result<String, HushError> {
        let conv = conversation.parse()?;
        let reply = reply_to.as_deref().map(parse_message_id).transpose()?;
        check_text(&text)?;
        self.with(move |m| async move { Ok(hex::encode(m.send_text(conv, &text, reply).await?)) })
            .await
    }

    /// Puts back in the outbox a message of this device that is `Failed` (after the user fixed
    /// the cause, or to try once more); returns at once, the message `Waiting`. Nothing
    /// happens for a message already sent or still waiting.
    pub async fn retry_send(&self, message_id: String) -> Result<(), HushError> {
        let id = parse_message_id(&message_id)?;
        self.with(move |m| async move { Ok(m.retry(&id).await?) })
            .await
    }

    /// The stored message with id `message_id`, or none.
    pub fn message(&self, message_id: String) -> Result<Option<HushMessage>, HushError> {
        let id = parse_message_id(&message_id)?;
        let m = self.inner.messenger()?;
        Ok(m.message(&id)?.map(|(c, s)| message(c.into(), &s)))
    }

    /// Reacts to message `target` (an empty `emoji` removes the reaction); returns the
    /// reaction's id.
    pub async fn send_reaction(
        &self,
        conversation: Conversation,
        target: String,
        emoji: String,
    ) -> Result<String, HushError> {
        let conv = conversation.parse()?;
        let target = parse_message_id(&target)?;
        if emoji.len() > 64 {
            return Err(HushError::invalid("an emoji is at most 64 bytes"));
        }
        self.with(move |m| async move { Ok(hex::encode(m.react(conv, target, &emoji).await?)) })
            .await
    }

    /// Encrypts `data`, uploads it and sends it as an attachment; returns the message id.
    pub async fn send_attachment(
        &self,
        conversation: Conversation,
        name: String,
        mime: String,
        data: Vec<u8>,
    ) -> Result<String, HushError> {
        let conv = conversation.parse()?;
        check_attachment(data.len())?;
        self.with(move |m| async move {
            Ok(hex::encode(
                m.send_attachment(conv, &name, &mime, &data).await?,
            ))
        })
        .await
    }

    /// Sends the file at `path` as an attachment (named after the file).
    pub async fn send_file(
        &self,
        conversation: Conversation,
        path: String,
        mime: String,
    ) -> Result<String, HushError> {
        let conv = conversation.parse()?;
        let path = PathBuf::from(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| HushError::invalid("the path names no file"))?;
        self.with(move |m| async move {
            let data = tokio::task::spawn_blocking(move || {
                let len = std::fs::metadata(&path)
                    .map_err(|e| HushError::invalid(format!("{}: {e}", path.display())))?
                    .len();
                check_attachment(usize::try_from(len).unwrap_or(usize::MAX))?;
                std::fs::read(&path)
                    .map_err(|e| HushError::invalid(format!("{}: {e}", path.display())))
            })
            .await
            .map_err(|_| HushError::Internal("file read failed".into()))??;
            Ok(hex::encode(
                m.send_attachment(conv, &name, &mime, &data).await?,
            ))
        })
        .await
    }

    /// Downloads the attachment of message `message_id`, checks its digest and decrypts it.
    pub async fn download_attachment(
        &self,
        conversation: Conversation,
        message_id: String,
    ) -> Result<Vec<u8>, HushError> {
        let conv = conversation.parse()?;
        let id = parse_message_id(&message_id)?;
        self.with(move |m| async move {
            let a = find_attachment(&m, conv, &id)?;
            Ok(m.download(&a).await?.to_vec())
        })
        .await
    }

    /// Downloads the attachment of message `message_id` into the file `path` (replaced).
    pub async fn save_attachment(
        &self,
        conversation: Conversation,
        message_id: String,
        path: String,
    ) -> Result<(), HushError> {
        let conv = conversation.parse()?;
        let id = parse_message_id(&message_id)?;
        if path.is_empty() {
            return Err(HushError::invalid("the path is empty"));
        }
        self.with(move |m| async move {
            let a = find_attachment(&m, conv, &id)?;
            let data = m.download(&a).await?;
            tokio::task::spawn_blocking(move || {
                std::fs::write(&path, data.as_slice())
                    .map_err(|e| HushError::Storage(format!("{path}: {e}")))
            })
            .await
            .map_err(|_| HushError::Internal("file write failed".into()))?
        })
        .await
    }

    /// Marks every unread incoming message of the conversation read and tells the senders.
    pub async fn mark_read(&self, conversation: Conversation) -> Result<(), HushError> {
        let conv = conversation.parse()?;
        self.with(move |m| async move { Ok(m.mark_read(conv).await?) })
            .await
    }

    /// Tells the conversation this user started (or stopped) typing; only connected devices
    /// see it.
    pub async fn set_typing(
        &self,
        conversation: Conversation,
        typing: bool,
    ) -> Result<(), HushError> {
        let conv = conversation.parse()?;
        self.with(move |m| async move { Ok(m.typing(conv, typing).await?) })
            .await
    }

    /// Switches sharing presence on or off (off also hides others' presence); tells `contacts`.
    pub async fn set_presence(&self, online: bool, contacts: Vec<String>) -> Result<(), HushError> {
        let contacts = parse_accounts(&contacts)?;
        self.with(move |m| async move { Ok(m.set_presence(online, &contacts).await?) })
            .await
    }

    /// Up to `limit` messages of the conversation, oldest first: the newest ones, or those
    /// before message `before` (page backwards with the first id of the previous page).
    pub fn history(
        &self,
        conversation: Conversation,
        before: Option<String>,
        limit: u32,
    ) -> Result<Vec<HushMessage>, HushError> {
        let conv = conversation.parse()?;
        let before = before.as_deref().map(parse_message_id).transpose()?;
        if limit == 0 || limit > MAX_HISTORY_PAGE {
            return Err(HushError::invalid(format!(
                "limit must be 1 to {MAX_HISTORY_PAGE}"
            )));
        }
        let m = self.inner.messenger()?;
        let page = m.history(conv, before, limit as usize)?;
        Ok(page
            .iter()
            .map(|s| message(conversation.clone(), s))
            .collect())
    }
}
