//! Audio: text to speech and speech to text, whose requests and answers are
//! not always JSON (an audio file up, audio or subtitles down).

use bytes::Bytes;

/// An uploaded audio file.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioFile {
    /// The file's name as the client sent it (upstreams read its extension).
    pub filename: String,
    /// Its media type, when the client gave one.
    pub content_type: Option<String>,
    /// Its bytes.
    pub bytes: Bytes,
}

/// `POST /v1/audio/transcriptions` or `/v1/audio/translations`, read from
/// the client's multipart form.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptionRequest {
    /// The model (the public name, then the deployment's upstream model).
    pub model: String,
    /// A translation into English rather than a transcription.
    pub translate: bool,
    /// The audio.
    pub file: AudioFile,
    /// Every other form field, in the client's order (`language`, `prompt`,
    /// `response_format`, `timestamp_granularities[]`, …).
    pub fields: Vec<(String, String)>,
    /// The client asked for `response_format: text`, which reports no
    /// usage: the upstream is asked for `json` instead (`fields` say so),
    /// and the gateway hands back its `text`.
    pub plain_text: bool,
}

impl TranscriptionRequest {
    /// The first value of the form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The form as sent upstream: `model`, the other fields, then the file.
    pub fn form(&self) -> crate::Result<reqwest::multipart::Form> {
        let mut form = reqwest::multipart::Form::new().text("model", self.model.clone());
        for (name, value) in &self.fields {
            form = form.text(name.clone(), value.clone());
        }
        let mut file = reqwest::multipart::Part::stream(reqwest::Body::from(self.file.bytes.clone()))
            .file_name(self.file.filename.clone());
        if let Some(kind) = &self.file.content_type {
            file = file.mime_str(kind).map_err(|_| crate::ProviderError::InvalidRequest {
                message: format!("The file's content type `{kind}` is not a media type."),
                param: Some("file".into()),
            })?;
        }
        Ok(form.part("file", file))
    }
}

/// An answer that is not necessarily JSON: audio, or a transcript in the
/// format asked for (JSON, text, SRT, WebVTT).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaResponse {
    /// The body, as the upstream sent it.
    pub body: Bytes,
    /// Its `Content-Type`.
    pub content_type: String,
}
