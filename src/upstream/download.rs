//! Fetching a file over HTTP, up to a size limit: what the Bitrix24 and Slack sides share
//! for a post's Disk file, an image a post shows and a file in a Slack reply.
//!
//! Download URLs carry credentials (a Disk `DOWNLOAD_URL` embeds an auth token), so nothing
//! here ever names the URL: transport errors are stripped of it, and failures say only what
//! was being fetched. An HTML page where a file was expected is an error, not the file: both
//! platforms answer a refused download with a sign-in or error page and a 200 or 404
//! (docs/platforms/slack.md §2.12, bitrix24.md §8).

use std::time::Duration;

use livefeed_core::model::{Failure, Fetched, FileContent};

/// The media type a file gets when nobody said.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Send `request` and read the file it answers with, up to `max_bytes`. `what` names the
/// file in failures ("Disk file 505").
pub async fn fetch(
    request: reqwest::RequestBuilder,
    name: &str,
    max_bytes: u64,
    what: &str,
) -> Result<Fetched, Failure> {
    let mut response = request
        .send()
        .await
        .map_err(|e| Failure::transient(format!("{what}: {}", e.without_url())))?;
    let status = response.status();
    if !status.is_success() {
        let reason = format!("{what}: HTTP {}", status.as_u16());
        return Err(match status.as_u16() {
            429 => Failure::retry_after(reason, retry_after(&response)),
            s if s >= 500 => Failure::transient(reason),
            _ => Failure::permanent(reason),
        });
    }
    let mime = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    if mime.as_deref() == Some("text/html") && !name.to_ascii_lowercase().ends_with(".html") {
        return Err(Failure::permanent(format!(
            "{what}: an HTML page came instead of the file (refused or missing)"
        )));
    }
    if let Some(len) = response.content_length()
        && len > max_bytes
    {
        return Ok(Fetched::TooLarge { size: len });
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::transient(format!("{what}: {}", e.without_url())))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > max_bytes {
            return Ok(Fetched::TooLarge {
                size: bytes.len() as u64,
            });
        }
    }
    Ok(Fetched::Content(FileContent {
        name: name.to_string(),
        mime: mime.unwrap_or_else(|| guess_mime(name).to_string()),
        bytes,
    }))
}

fn retry_after(response: &reqwest::Response) -> Duration {
    let secs = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs.clamp(1, 300))
}

/// A media type from a file name, for the common kinds of office files and pictures.
pub fn guess_mime(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "zip" => "application/zip",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => OCTET_STREAM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_from_names() {
        assert_eq!(guess_mime("Rules.PDF"), "application/pdf");
        assert_eq!(guess_mime("plan.png"), "image/png");
        assert_eq!(guess_mime("noext"), OCTET_STREAM);
        assert_eq!(guess_mime("a.tar.gz"), OCTET_STREAM);
    }
}
