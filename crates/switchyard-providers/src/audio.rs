//! Uploads and media: text to speech, speech to text and image edits, whose
//! requests and answers are not always JSON (a file up, audio or subtitles
//! down).

use bytes::Bytes;

/// An uploaded file (audio to transcribe, an image to edit).
#[derive(Debug, Clone, PartialEq)]
pub struct UploadedFile {
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
    pub file: UploadedFile,
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
        Ok(form.part("file", self.file.part("file")?))
    }
}

/// `POST /v1/images/edits`, read from the client's multipart form.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEditRequest {
    /// The model (the public name, then the deployment's upstream model).
    pub model: String,
    /// The files, in the client's order, each under its form field's name
    /// (`image`, `image[]`, `mask`).
    pub files: Vec<(String, UploadedFile)>,
    /// Every other form field, in the client's order (`prompt`, `n`,
    /// `size`, `quality`, …).
    pub fields: Vec<(String, String)>,
}

impl ImageEditRequest {
    /// The first value of the form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// How many images are asked for (`n`, 1 when absent).
    pub fn count(&self) -> u64 {
        self.field("n").and_then(|n| n.trim().parse().ok()).unwrap_or(1)
    }

    /// The images to edit (not the mask).
    pub fn images(&self) -> impl Iterator<Item = &UploadedFile> {
        self.files
            .iter()
            .filter(|(name, _)| name == "image" || name == "image[]")
            .map(|(_, file)| file)
    }

    /// The form as sent upstream: `model`, the other fields, then the files.
    pub fn form(&self) -> crate::Result<reqwest::multipart::Form> {
        let mut form = reqwest::multipart::Form::new().text("model", self.model.clone());
        for (name, value) in &self.fields {
            form = form.text(name.clone(), value.clone());
        }
        for (name, file) in &self.files {
            form = form.part(name.clone(), file.part(name)?);
        }
        Ok(form)
    }
}

impl UploadedFile {
    /// The file as a form part; `field` names it in errors.
    fn part(&self, field: &str) -> crate::Result<reqwest::multipart::Part> {
        let part =
            reqwest::multipart::Part::stream(reqwest::Body::from(self.bytes.clone())).file_name(self.filename.clone());
        match &self.content_type {
            Some(kind) => part.mime_str(kind).map_err(|_| crate::ProviderError::InvalidRequest {
                message: format!("The file's content type `{kind}` is not a media type."),
                param: Some(field.to_owned()),
            }),
            None => Ok(part),
        }
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

/// Audio passed on as the upstream sends it, piece by piece
/// (`/v1/audio/speech`: a client can play it before it has all arrived).
pub struct AudioStream {
    /// The audio's `Content-Type`.
    pub content_type: String,
    /// The audio's bytes, as they arrive.
    pub body: std::pin::Pin<Box<dyn futures_util::Stream<Item = crate::Result<Bytes>> + Send>>,
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream")
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

impl AudioStream {
    /// A stream of one piece: audio made whole (the built-in mock).
    pub fn whole(content_type: String, body: Bytes) -> Self {
        AudioStream {
            content_type,
            body: Box::pin(futures_util::stream::once(async move { Ok(body) })),
        }
    }
}
