//! Media types of the files and images clients send inline.

use base64::Engine as _;

/// The type of an image from its first bytes: PNG, JPEG, GIF or WebP.
fn sniffed(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP".as_slice()) {
        Some("image/webp")
    } else {
        None
    }
}

/// A media type without its parameters (`image/png;name=a.png` is
/// `image/png`), trimmed.
pub(crate) fn essence(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or_default().trim()
}

/// The media type of an image sent as base64 `data` declared as
/// `declared`: the one its bytes show when they are PNG, JPEG, GIF or WebP
/// (OpenAI goes by the bytes, Anthropic refuses a declared type they
/// contradict), else the declared one, lowercased and without parameters
/// (`image/jpg`, as browsers write it, is `image/jpeg`).
pub(crate) fn image_type(declared: &str, data: &str) -> String {
    // 16 base64 characters are the first 12 bytes, enough for every magic.
    let head = data.trim_start().get(..16).unwrap_or_default();
    if let Some(known) = base64::engine::general_purpose::STANDARD
        .decode(head)
        .ok()
        .and_then(|bytes| sniffed(&bytes))
    {
        return known.to_owned();
    }
    let declared = essence(declared).to_ascii_lowercase();
    if declared == "image/jpg" {
        "image/jpeg".to_owned()
    } else {
        declared
    }
}

/// Decodes base64 as clients write it: the standard or the URL-safe
/// alphabet, padded or not, wrapped over lines or not.
pub(crate) fn decode_base64(data: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);
    let compact: std::borrow::Cow<'_, str> = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        data.chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect::<String>()
            .into()
    } else {
        data.into()
    };
    STANDARD
        .decode(compact.as_bytes())
        .or_else(|e| URL_SAFE.decode(compact.as_bytes()).map_err(|_| e))
}

/// Base64 as Anthropic takes it (the standard alphabet, padded, on one
/// line): `data` itself when it is so already, else decoded as
/// [`decode_base64`] reads it and encoded again.
pub(crate) fn standard_base64(data: &str) -> Result<std::borrow::Cow<'_, str>, base64::DecodeError> {
    use base64::Engine as _;
    let standard = data.len().is_multiple_of(4)
        && data
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && data.len() - data.trim_end_matches('=').len() <= 2;
    if standard {
        return Ok(data.into());
    }
    let bytes = decode_base64(data)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_sent_standard() {
        assert!(matches!(
            standard_base64("aGk="),
            Ok(std::borrow::Cow::Borrowed("aGk="))
        ));
        for written in ["aGk", "aG\nk=", "-_8", "aGk=\n"] {
            let sent = standard_base64(written).unwrap();
            assert_eq!(
                decode_base64(&sent).unwrap(),
                decode_base64(written).unwrap(),
                "{written}"
            );
            assert!(
                !sent.contains(['\n', '-', '_']) && sent.len().is_multiple_of(4),
                "{sent}"
            );
        }
        assert!(standard_base64("not base64!").is_err());
    }

    #[test]
    fn base64_is_read_as_clients_write_it() {
        let bytes = b"%PDF-1.4\n\xfb\xff";
        for written in [
            "JVBERi0xLjQK+/8=",
            "JVBERi0xLjQK+/8",
            "JVBERi0xLjQK-_8=",
            "JVBERi0x\r\nLjQK+/8=\n",
        ] {
            assert_eq!(decode_base64(written).unwrap(), bytes, "{written:?}");
        }
        assert!(decode_base64("not base64!").is_err());
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn an_images_bytes_name_its_type() {
        let jpeg = b64(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00");
        assert_eq!(image_type("image/png", &jpeg), "image/jpeg");
        let png = b64(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR");
        assert_eq!(image_type("image/jpeg", &png), "image/png");
        let gif = b64(b"GIF89a\x01\x00\x01\x00\x80\x00\x00");
        assert_eq!(image_type("image/webp", &gif), "image/gif");
        let webp = b64(b"RIFF\x24\x00\x00\x00WEBPVP8 ");
        assert_eq!(image_type("image/png", &webp), "image/webp");
    }

    #[test]
    fn unknown_bytes_keep_the_declared_type_cleaned() {
        let other = b64(b"not an image at all");
        assert_eq!(image_type("image/JPG", &other), "image/jpeg");
        assert_eq!(image_type("image/PNG;name=a.png", &other), "image/png");
        assert_eq!(image_type("image/heic", "%%%"), "image/heic");
        assert_eq!(image_type("image/png", ""), "image/png");
    }
}
