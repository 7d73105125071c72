//! Attachments: encrypted here with a fresh key, stored as blobs at the relay, their digest
//! checked on download.

use crate::error::ClientError;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hush_core::sealed::padme;
use hush_proto::app::{self, StoredMessage, app_message};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::history::{conv_part, order_key};
use super::{Conversation, MessageId, Messenger, conversation_of, random};

/// Largest attachment: padded to its Padmé length (98 MiB stays 98 MiB) and sealed (16 bytes
/// of tag), it fits the relay's default blob cap of 100 MiB.
pub const MAX_ATTACHMENT: usize = 98 << 20;

/// The attachment a stored message carries, if it is one.
pub(super) fn attachment_of(m: &StoredMessage) -> Option<app::Attachment> {
    match m.message.as_ref()?.kind.as_ref()? {
        app_message::Kind::Attachment(a) => Some(a.clone()),
        _ => None,
    }
}

impl Messenger {
    /// Encrypts `data`, uploads it and sends it as an attachment.
    pub async fn send_attachment(
        &self,
        to: Conversation,
        name: &str,
        mime: &str,
        data: &[u8],
    ) -> Result<MessageId, ClientError> {
        self.send_attachment_with_progress(to, name, mime, data, &crate::conn::no_progress)
            .await
    }

    /// Downloads and decrypts an attachment, checking its digest: one the relay no longer has
    /// is [`ClientError::BlobGone`], one whose bytes do not match is [`ClientError::BlobAltered`].
    pub async fn download(&self, a: &app::Attachment) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        self.download_with_progress(a, &crate::conn::no_progress)
            .await
    }

    /// [`Self::send_attachment`], telling `progress` the encrypted bytes uploaded so far and
    /// their total (the file's size and 16 bytes of authentication tag).
    pub async fn send_attachment_with_progress(
        &self,
        to: Conversation,
        name: &str,
        mime: &str,
        data: &[u8],
        progress: crate::conn::Progress<'_>,
    ) -> Result<MessageId, ClientError> {
        self.shared.check_conversation(&to)?;
        if data.len() > MAX_ATTACHMENT {
            return Err(ClientError::Invalid(format!(
                "the file is too large: {} bytes, at most {MAX_ATTACHMENT}",
                data.len()
            )));
        }
        let key = Zeroizing::new(random::<32>());
        let cipher = ChaCha20Poly1305::new(&Key::from(*key));
        // Padded with zeros to its Padmé length (PROTOCOL.md §21.3) before it is encrypted, so
        // the relay sees a size bucket, not the file's size; `size` below is the true one.
        let mut padded = Zeroizing::new(Vec::with_capacity(padme(data.len())));
        padded.extend_from_slice(data);
        padded.resize(padme(data.len()), 0);
        // A fresh key per attachment, so the all-zero nonce is used once.
        let sealed = cipher
            .encrypt(&Nonce::from([0u8; 12]), padded.as_slice())
            .map_err(|_| ClientError::Protocol("attachment encryption failed"))?;
        let digest = Sha256::digest(&sealed).to_vec();
        let (blob_id, capability) = self
            .shared
            .engine
            .upload_blob_with_progress(&sealed, progress)
            .await?;
        self.shared.send_stored(
            to,
            app_message::Kind::Attachment(app::Attachment {
                blob_id,
                capability,
                key: key.to_vec(),
                digest,
                size: data.len() as u64,
                name: name.to_owned(),
                mime: mime.to_owned(),
                caption: String::new(),
            }),
        )
    }

    /// [`Self::download`], telling `progress` the encrypted bytes received so far and their
    /// total.
    pub async fn download_with_progress(
        &self,
        a: &app::Attachment,
        progress: crate::conn::Progress<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let size = usize::try_from(a.size).unwrap_or(usize::MAX);
        let max = padme(size).saturating_add(16);
        let sealed = self
            .shared
            .engine
            .download_blob_with_progress(&a.blob_id, &a.capability, max, progress)
            .await?;
        let digest = Sha256::digest(&sealed);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            digest.as_slice(),
            a.digest.as_slice(),
        )) {
            return Err(ClientError::BlobAltered);
        }
        let key: [u8; 32] = a
            .key
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Protocol("attachment key of the wrong length"))?;
        let cipher = ChaCha20Poly1305::new(&Key::from(key));
        let mut plain = cipher
            .decrypt(&Nonce::from([0u8; 12]), sealed.as_slice())
            .map(Zeroizing::new)
            .map_err(|_| ClientError::Protocol("attachment does not decrypt"))?;
        // The padding: zeros after the declared size (none in attachments sent unpadded).
        match plain.get(size..) {
            Some(pad) if pad.iter().all(|b| *b == 0) => plain.truncate(size),
            _ => {
                return Err(ClientError::Protocol(
                    "attachment shorter than its size or badly padded",
                ));
            }
        }
        Ok(plain)
    }

    /// The attachment messages whose id, in hex, starts with `id_prefix` (any case; all 32
    /// digits name one message), sent or received, with their conversations, newest first.
    /// Several senders may pick one id, and a short prefix may fit several messages: the caller
    /// decides what a prefix must be and what several matches mean.
    pub fn find_attachments(
        &self,
        id_prefix: &str,
    ) -> Result<Vec<(Conversation, StoredMessage, app::Attachment)>, ClientError> {
        let prefix = id_prefix.to_ascii_lowercase();
        let h = self.shared.lock_history()?;
        let mut found: Vec<(Vec<u8>, Conversation, StoredMessage, app::Attachment)> = h
            .by_id
            .iter()
            .filter(|(id, _)| hex::encode(id).starts_with(&prefix))
            .flat_map(|(_, keys)| keys.iter())
            .filter_map(|key| {
                let m = h.by_key.get(key)?;
                let conv = conversation_of(key)?;
                let a = attachment_of(m)?;
                Some((order_key(conv_part(key), m), conv, m.clone(), a))
            })
            .collect();
        found.sort_by(|x, y| y.0.cmp(&x.0));
        Ok(found.into_iter().map(|(_, c, m, a)| (c, m, a)).collect())
    }

    /// The attachment received last (by this device, in any conversation), with its
    /// conversation; `None` if none has been received.
    pub fn last_received_attachment(
        &self,
    ) -> Result<Option<(Conversation, StoredMessage, app::Attachment)>, ClientError> {
        let h = self.shared.lock_history()?;
        Ok(h.by_key
            .iter()
            .filter(|(_, m)| !m.outgoing)
            .filter_map(|(key, m)| Some((key, m, attachment_of(m)?)))
            .max_by_key(|(key, m, _)| (m.received_at, order_key(conv_part(key), m)))
            .and_then(|(key, m, a)| Some((conversation_of(key)?, m.clone(), a))))
    }
}
