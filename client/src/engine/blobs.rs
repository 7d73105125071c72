//! Attachment blobs: encrypted uploads and downloads over the relay's blob streams.

use crate::conn::Progress;
use crate::error::ClientError;

use super::{CONNECT_WAIT, Engine};

impl Engine {
    /// Uploads an (already encrypted) blob; returns its id and capability.
    pub async fn upload_blob(&self, data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        self.upload_blob_with_progress(data, &crate::conn::no_progress)
            .await
    }

    /// [`Self::upload_blob`], telling `progress` the bytes sent so far and the total.
    pub async fn upload_blob_with_progress(
        &self,
        data: &[u8],
        progress: Progress<'_>,
    ) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        conn.upload_blob(data, progress).await
    }

    /// Downloads a blob of at most `max` bytes (on the anonymous connection); one the relay no
    /// longer has is
    /// [`ClientError::BlobGone`].
    pub async fn download_blob(
        &self,
        id: &[u8],
        capability: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        self.download_blob_with_progress(id, capability, max, &crate::conn::no_progress)
            .await
    }

    /// [`Self::download_blob`], telling `progress` the bytes received so far and the total.
    pub async fn download_blob_with_progress(
        &self,
        id: &[u8],
        capability: &[u8],
        max: usize,
        progress: Progress<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        // On the anonymous connection: the capability is all the relay asks for, and it does
        // not learn which device fetched the attachment.
        let conn = self.inner.anonymous().await?;
        conn.download_blob(id, capability, max, progress).await
    }
}
