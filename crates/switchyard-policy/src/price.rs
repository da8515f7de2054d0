//! Prices per token and the cost of one request's usage.
//!
//! Deployments carry their configured prices; a deployment that names none
//! gets the built-in price of a well-known upstream model, found by name.

use serde::{Deserialize, Serialize};

use crate::money::{Nanos, from_usd};

/// US dollars per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    /// Per uncached prompt token.
    pub input: f64,
    /// Per generated token.
    pub output: f64,
    /// Per prompt token read from the upstream's prompt cache (`None`: the input price).
    pub cache_read: Option<f64>,
    /// Per prompt token written to the upstream's prompt cache (`None`: the input price).
    pub cache_write: Option<f64>,
    /// Per prompt token written to the prompt cache for an hour (Anthropic's
    /// `ttl: "1h"`; `None`: the `cache_write` price).
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
    /// Per web search the upstream ran for the request (Anthropic's
    /// `server_tool_use.web_search_requests`); `None`: free.
    #[serde(default)]
    pub web_search: Option<f64>,
    /// Per image generated, whatever its size (`None`: `image_table`'s
    /// price at the request's size and quality, else free).
    #[serde(default)]
    pub image: Option<f64>,
    /// The list prices of a DALL·E model, by size and quality.
    #[serde(default)]
    pub image_table: Option<ImageTable>,
    /// Per character of text spoken (`/v1/audio/speech`); `None`: free.
    #[serde(default)]
    pub per_character: Option<f64>,
    /// Per second of audio transcribed or translated; `None`: free.
    #[serde(default)]
    pub per_second: Option<f64>,
    /// Per rerank search (a query over up to 100 documents); `None`: free.
    #[serde(default)]
    pub per_query: Option<f64>,
    /// Per image token in the prompt (the images a GPT image model edits);
    /// `None`: the input price.
    #[serde(default)]
    pub image_input: Option<f64>,
    /// Higher prices for a request whose prompt is long (`None`: none).
    #[serde(default)]
    pub long_context: Option<LongContext>,
}

/// Prices a request pays when its prompt (cache reads and writes included)
/// is over `above` tokens: every prompt price times `input`, the output
/// price times `output`, on the whole request (Anthropic's Claude Sonnet 4
/// and 4.5 with a 1M-token context above 200,000 tokens; Claude Haiku 5.5
/// above 100,000).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LongContext {
    /// Prompt tokens above which these prices apply.
    pub above: u64,
    /// What the prompt's prices are multiplied by.
    pub input: f64,
    /// What the output price is multiplied by.
    pub output: f64,
}

/// Token counts of one request, normalised across providers: `prompt`
/// counts every prompt token, cached or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// All prompt tokens (uncached, cache reads and cache writes).
    pub prompt: u64,
    /// Generated tokens.
    pub completion: u64,
    /// Prompt tokens read from the prompt cache.
    pub cache_read: u64,
    /// Prompt tokens written to the prompt cache.
    pub cache_write: u64,
    /// Of `cache_write`, the tokens written for an hour (priced apart).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h: u64,
    /// Web searches the upstream ran (billed per search, not per token).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub web_searches: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TokenUsage {
    /// Prompt plus completion tokens.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

impl Prices {
    /// Prices of `n` per-million-token amounts (how price lists are written).
    const fn per_million(input: f64, output: f64, cache_read: Option<f64>, cache_write: Option<f64>) -> Self {
        const M: f64 = 1_000_000.0;
        Self {
            input: input / M,
            output: output / M,
            cache_read: match cache_read {
                Some(v) => Some(v / M),
                None => None,
            },
            cache_write: match cache_write {
                Some(v) => Some(v / M),
                None => None,
            },
            web_search: None,
            cache_write_1h: None,
            image: None,
            image_table: None,
            per_character: None,
            per_second: None,
            per_query: None,
            image_input: None,
            long_context: None,
        }
    }

    /// These prices, with a request over `above` prompt tokens paying
    /// `input` times the prompt's and `output` times the output's.
    const fn long_above(self, above: u64, input: f64, output: f64) -> Self {
        Self {
            long_context: Some(LongContext { above, input, output }),
            ..self
        }
    }

    /// The prices a request with `prompt` prompt tokens pays: these, or
    /// their long-context prices when the prompt is over the threshold.
    pub fn at_prompt(&self, prompt: u64) -> Prices {
        match self.long_context {
            Some(long) if prompt > long.above => {
                let scale = |p: Option<f64>| p.map(|p| p * long.input);
                Prices {
                    input: self.input * long.input,
                    output: self.output * long.output,
                    cache_read: scale(self.cache_read),
                    cache_write: scale(self.cache_write),
                    cache_write_1h: scale(self.cache_write_1h),
                    image_input: scale(self.image_input),
                    long_context: None,
                    ..*self
                }
            }
            _ => *self,
        }
    }

    /// USD per image at `size` and `quality`: the configured per-image
    /// price, else OpenAI's list price for DALL·E models, else 0 (GPT image
    /// models are billed by their tokens).
    pub fn per_image(&self, size: Option<&str>, quality: Option<&str>) -> f64 {
        self.image
            .or_else(|| self.image_table.map(|t| t.price(size, quality)))
            .unwrap_or(0.0)
    }

    /// What `image_tokens` prompt tokens that are images cost beyond the
    /// input price they are charged at with the rest of the prompt.
    pub fn image_input_surcharge(&self, image_tokens: u64) -> Nanos {
        let above = self.image_input.map_or(0.0, |p| (p - self.input).max(0.0));
        from_usd(above * image_tokens as f64)
    }

    /// Whether every price is zero (nothing is charged).
    pub fn is_free(&self) -> bool {
        self.input == 0.0 && self.output == 0.0 && self.cache_read.unwrap_or(0.0) == 0.0
    }

    /// The cost of `usage`, rounded to the nearest nano-dollar (at the
    /// long-context prices when its prompt is long).
    pub fn cost(&self, usage: &TokenUsage) -> Nanos {
        let prices = self.at_prompt(usage.prompt);
        prices.flat_cost(usage)
    }

    /// [`Prices::cost`] at these prices, whatever the prompt's length.
    fn flat_cost(&self, usage: &TokenUsage) -> Nanos {
        let cached = usage.cache_read.saturating_add(usage.cache_write).min(usage.prompt);
        let uncached = usage.prompt - cached;
        let read = usage.cache_read.min(cached);
        let write = cached - read;
        let write_1h = usage.cache_write_1h.min(write);
        let write_price = self.cache_write.unwrap_or(self.input);
        let usd = uncached as f64 * self.input
            + read as f64 * self.cache_read.unwrap_or(self.input)
            + (write - write_1h) as f64 * write_price
            + write_1h as f64 * self.cache_write_1h.unwrap_or(write_price)
            + usage.completion as f64 * self.output
            + usage.web_searches as f64 * self.web_search.unwrap_or(0.0);
        from_usd(usd)
    }

    /// The most a request can cost: every prompt token at the highest input
    /// price, and `max_output` generated tokens (at the long-context prices
    /// when `prompt`, a bound on its tokens, is long).
    pub fn ceiling(&self, prompt: u64, max_output: u64) -> Nanos {
        let prices = self.at_prompt(prompt);
        let input = prices
            .input
            .max(prices.cache_read.unwrap_or(0.0))
            .max(prices.cache_write.unwrap_or(0.0))
            .max(prices.cache_write_1h.unwrap_or(0.0));
        from_usd(prompt as f64 * input + max_output as f64 * prices.output)
    }
}

/// Well-known models and their list prices (USD per million tokens: input,
/// output, cache read, cache write).
const BUILTIN: &[(&str, Prices)] = &[
    ("gpt-4o", Prices::per_million(2.5, 10.0, Some(1.25), None)),
    // The first GPT-4o snapshot kept its launch price.
    ("gpt-4o-2024-05-13", Prices::per_million(5.0, 15.0, None, None)),
    ("gpt-4o-mini", Prices::per_million(0.15, 0.6, Some(0.075), None)),
    ("gpt-4.1", Prices::per_million(2.0, 8.0, Some(0.5), None)),
    ("gpt-4.1-mini", Prices::per_million(0.4, 1.6, Some(0.1), None)),
    ("gpt-4.1-nano", Prices::per_million(0.1, 0.4, Some(0.025), None)),
    ("gpt-4-turbo", Prices::per_million(10.0, 30.0, None, None)),
    ("gpt-4-turbo-preview", Prices::per_million(10.0, 30.0, None, None)),
    ("gpt-4-1106-preview", Prices::per_million(10.0, 30.0, None, None)),
    ("gpt-4-0125-preview", Prices::per_million(10.0, 30.0, None, None)),
    ("gpt-4-vision-preview", Prices::per_million(10.0, 30.0, None, None)),
    ("gpt-4-1106-vision-preview", Prices::per_million(10.0, 30.0, None, None)),
    ("gpt-4", Prices::per_million(30.0, 60.0, None, None)),
    ("gpt-4-32k", Prices::per_million(60.0, 120.0, None, None)),
    ("gpt-5", Prices::per_million(1.25, 10.0, Some(0.125), None)),
    ("gpt-5-mini", Prices::per_million(0.25, 2.0, Some(0.025), None)),
    ("gpt-5-nano", Prices::per_million(0.05, 0.4, Some(0.005), None)),
    // Audio models: speech billed per character, whisper per second (see
    // `builtin`), the GPT-4o ones by tokens (audio in, text out).
    ("tts-1", Prices::per_million(0.0, 0.0, None, None)),
    ("tts-1-hd", Prices::per_million(0.0, 0.0, None, None)),
    ("whisper-1", Prices::per_million(0.0, 0.0, None, None)),
    ("gpt-4o-mini-tts", Prices::per_million(0.6, 12.0, None, None)),
    ("gpt-4o-transcribe", Prices::per_million(6.0, 10.0, None, None)),
    ("gpt-4o-mini-transcribe", Prices::per_million(3.0, 5.0, None, None)),
    // Cohere's rerank models: billed per search (see `builtin`).
    ("rerank-v3.5", Prices::per_million(0.0, 0.0, None, None)),
    ("rerank-english-v3.0", Prices::per_million(0.0, 0.0, None, None)),
    ("rerank-multilingual-v3.0", Prices::per_million(0.0, 0.0, None, None)),
    // DALL·E: billed per image (see `builtin`).
    ("dall-e-2", Prices::per_million(0.0, 0.0, None, None)),
    ("dall-e-3", Prices::per_million(0.0, 0.0, None, None)),
    // Image models billed by tokens: text in, image out.
    ("gpt-image-1", Prices::per_million(5.0, 40.0, Some(1.25), None)),
    ("gpt-image-1-mini", Prices::per_million(2.0, 8.0, Some(0.2), None)),
    ("gpt-3.5-turbo", Prices::per_million(0.5, 1.5, None, None)),
    ("gpt-3.5-turbo-0301", Prices::per_million(1.5, 2.0, None, None)),
    ("gpt-3.5-turbo-0613", Prices::per_million(1.5, 2.0, None, None)),
    ("gpt-3.5-turbo-1106", Prices::per_million(1.0, 2.0, None, None)),
    ("gpt-3.5-turbo-16k", Prices::per_million(3.0, 4.0, None, None)),
    ("gpt-3.5-turbo-instruct", Prices::per_million(1.5, 2.0, None, None)),
    ("o1", Prices::per_million(15.0, 60.0, Some(7.5), None)),
    ("o1-mini", Prices::per_million(1.1, 4.4, Some(0.55), None)),
    ("o1-preview", Prices::per_million(15.0, 60.0, Some(7.5), None)),
    ("o1-pro", Prices::per_million(150.0, 600.0, None, None)),
    ("o3", Prices::per_million(2.0, 8.0, Some(0.5), None)),
    ("o3-pro", Prices::per_million(20.0, 80.0, None, None)),
    ("o3-mini", Prices::per_million(1.1, 4.4, Some(0.55), None)),
    ("o4-mini", Prices::per_million(1.1, 4.4, Some(0.275), None)),
    ("text-embedding-3-small", Prices::per_million(0.02, 0.0, None, None)),
    ("text-embedding-3-large", Prices::per_million(0.13, 0.0, None, None)),
    ("text-embedding-ada-002", Prices::per_million(0.1, 0.0, None, None)),
    ("claude-3-haiku", Prices::per_million(0.25, 1.25, Some(0.03), Some(0.3))),
    ("claude-3-5-haiku", Prices::per_million(0.8, 4.0, Some(0.08), Some(1.0))),
    (
        "claude-3-5-sonnet",
        Prices::per_million(3.0, 15.0, Some(0.3), Some(3.75)),
    ),
    (
        "claude-3-7-sonnet",
        Prices::per_million(3.0, 15.0, Some(0.3), Some(3.75)),
    ),
    // With the 1M-token context, a prompt over 200,000 tokens costs twice
    // as much to read and half as much again to answer.
    (
        "claude-sonnet-4",
        Prices::per_million(3.0, 15.0, Some(0.3), Some(3.75)).long_above(200_000, 2.0, 1.5),
    ),
    // Anthropic's `-0` aliases of the first Claude 4 models.
    (
        "claude-sonnet-4-0",
        Prices::per_million(3.0, 15.0, Some(0.3), Some(3.75)).long_above(200_000, 2.0, 1.5),
    ),
    (
        "claude-sonnet-4-5",
        Prices::per_million(3.0, 15.0, Some(0.3), Some(3.75)).long_above(200_000, 2.0, 1.5),
    ),
    // From Sonnet 4.6 on, the whole 1M-token context at one price.
    (
        "claude-sonnet-4-6",
        Prices::per_million(3.0, 15.0, Some(0.3), Some(3.75)),
    ),
    ("claude-sonnet-5", Prices::per_million(2.0, 10.0, Some(0.2), Some(2.5))),
    (
        "claude-sonnet-5-5",
        Prices::per_million(2.0, 10.0, Some(0.1), Some(2.5)),
    ),
    // Haiku 5.5: five times each price for a prompt over 100,000 tokens.
    (
        "claude-haiku-5-5",
        Prices::per_million(0.1, 0.5, Some(0.01), Some(0.125)).long_above(100_000, 5.0, 5.0),
    ),
    ("claude-opus-4-6", Prices::per_million(5.0, 25.0, Some(0.5), Some(6.25))),
    ("claude-opus-4-7", Prices::per_million(5.0, 25.0, Some(0.5), Some(6.25))),
    ("claude-opus-4-8", Prices::per_million(5.0, 25.0, Some(0.5), Some(6.25))),
    ("claude-opus-5", Prices::per_million(5.0, 25.0, Some(0.5), Some(6.25))),
    ("claude-opus-5-5", Prices::per_million(4.0, 20.0, Some(0.2), Some(5.0))),
    ("claude-fable-5", Prices::per_million(10.0, 50.0, Some(1.0), Some(12.5))),
    (
        "claude-fable-5-1",
        Prices::per_million(10.0, 50.0, Some(0.25), Some(12.5)),
    ),
    (
        "claude-mythos-5",
        Prices::per_million(10.0, 50.0, Some(1.0), Some(12.5)),
    ),
    (
        "claude-mythos-5-1",
        Prices::per_million(10.0, 50.0, Some(0.25), Some(12.5)),
    ),
    ("claude-haiku-4-5", Prices::per_million(1.0, 5.0, Some(0.1), Some(1.25))),
    ("claude-3-opus", Prices::per_million(15.0, 75.0, Some(1.5), Some(18.75))),
    ("claude-opus-4", Prices::per_million(15.0, 75.0, Some(1.5), Some(18.75))),
    (
        "claude-opus-4-0",
        Prices::per_million(15.0, 75.0, Some(1.5), Some(18.75)),
    ),
    (
        "claude-opus-4-1",
        Prices::per_million(15.0, 75.0, Some(1.5), Some(18.75)),
    ),
    ("claude-opus-4-5", Prices::per_million(5.0, 25.0, Some(0.5), Some(6.25))),
];

/// The built-in price of a well-known upstream model, matched by name: an
/// exact name, or one followed by a version suffix — a date
/// (`gpt-4o-2024-08-06`, `claude-3-5-sonnet-20241022`, `gpt-4-0613`),
/// `latest`, a Bedrock version (`-v1:0`, `:0`) or a Vertex `@date`. Any other
/// suffix names another model (`claude-opus-4-5` is not `claude-opus-4`,
/// `o3-pro` is not `o3`), which has no built-in price unless listed. Bedrock
/// ids (`us.anthropic.claude-…-v2:0`) are matched from their model part; a
/// provider prefix (`azure/gpt-4o`) is dropped. The longest matching name wins.
pub fn builtin(model: &str) -> Option<Prices> {
    let name = match model.find("claude-") {
        Some(at) => &model[at..],
        None => model.rsplit('/').next().unwrap_or(model),
    };
    BUILTIN
        .iter()
        .filter(|(known, _)| name.strip_prefix(known).is_some_and(is_version_suffix))
        .max_by_key(|(known, _)| known.len())
        .map(|(known, prices)| {
            let claude = known.starts_with("claude-");
            Prices {
                // Anthropic bills its web search tool at $10 per 1,000 searches…
                web_search: claude.then_some(CLAUDE_WEB_SEARCH),
                // …and an hour-long cache write at twice the input price.
                cache_write_1h: claude.then_some(prices.input * 2.0),
                per_character: match *known {
                    "tts-1" => Some(15.0 / 1_000_000.0),
                    "tts-1-hd" => Some(30.0 / 1_000_000.0),
                    _ => None,
                },
                per_second: (*known == "whisper-1").then_some(0.006 / 60.0),
                per_query: known.starts_with("rerank-").then_some(2.0 / 1_000.0),
                // GPT image models bill the images they edit above text.
                image_input: match *known {
                    "gpt-image-1" => Some(10.0 / 1_000_000.0),
                    "gpt-image-1-mini" => Some(2.5 / 1_000_000.0),
                    _ => None,
                },
                image_table: match *known {
                    "dall-e-2" => Some(ImageTable::DallE2),
                    "dall-e-3" => Some(ImageTable::DallE3),
                    _ => None,
                },
                ..*prices
            }
        })
}

/// OpenAI's DALL·E models, priced per image by size and quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageTable {
    /// `dall-e-2`.
    DallE2,
    /// `dall-e-3`.
    DallE3,
}

impl ImageTable {
    /// The list price of one image (USD) at a size (default `1024x1024`)
    /// and quality (default `standard`).
    pub fn price(self, size: Option<&str>, quality: Option<&str>) -> f64 {
        let size = size.unwrap_or("1024x1024");
        match self {
            ImageTable::DallE3 => {
                let wide = matches!(size, "1792x1024" | "1024x1792");
                match (quality == Some("hd"), wide) {
                    (false, false) => 0.04,
                    (false, true) | (true, false) => 0.08,
                    (true, true) => 0.12,
                }
            }
            ImageTable::DallE2 => match size {
                "256x256" => 0.016,
                "512x512" => 0.018,
                _ => 0.02,
            },
        }
    }
}

/// USD per web search on Claude models.
const CLAUDE_WEB_SEARCH: f64 = 0.01;

/// Whether what follows a known model name only dates or versions it.
fn is_version_suffix(rest: &str) -> bool {
    let Some(sep) = rest.chars().next() else {
        return true;
    };
    if sep == ':' || sep == '@' {
        return true;
    }
    if sep != '-' {
        return false;
    }
    let first = rest[1..].split(['-', ':', '@']).next().unwrap_or("");
    let bedrock_version = first
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    first == "latest" || bedrock_version || first.len() >= 4 && first.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claude's current models are priced by name, and a long prompt pays
    /// the long-context prices on the whole request.
    #[test]
    fn claude_5_models_and_long_prompts_are_priced() {
        let usage = |prompt: u64, completion: u64| TokenUsage {
            prompt,
            completion,
            ..TokenUsage::default()
        };
        let opus = builtin("claude-opus-5-5").unwrap();
        assert_eq!(opus.cost(&usage(1_000_000, 1_000_000)), 24_000_000_000);
        assert_ne!(builtin("claude-opus-5"), builtin("claude-opus-5-5"));
        assert_eq!(
            builtin("us.anthropic.claude-sonnet-5-5-v1:0"),
            builtin("claude-sonnet-5-5")
        );
        assert_eq!(opus.cache_write_1h, Some(8.0 / 1_000_000.0));
        // Sonnet 4.5 over 200,000 prompt tokens: $6 in, $22.50 out a million.
        let sonnet = builtin("claude-sonnet-4-5-20250929").unwrap();
        assert_eq!(sonnet.cost(&usage(200_000, 1_000)), 615_000_000);
        assert_eq!(sonnet.cost(&usage(300_000, 1_000)), 1_822_500_000);
        // Cache reads and writes count toward the threshold and scale too.
        let cached = TokenUsage {
            prompt: 300_000,
            cache_read: 250_000,
            ..TokenUsage::default()
        };
        assert_eq!(sonnet.cost(&cached), 50_000 * 6_000 + 250_000 * 600);
        // Sonnet 4.6 has no long-context price.
        let flat = builtin("claude-sonnet-4-6").unwrap();
        assert_eq!(flat.cost(&usage(300_000, 0)), 900_000_000);
        // Haiku 5.5: five times each price over 100,000 prompt tokens.
        let haiku = builtin("claude-haiku-5-5").unwrap();
        assert_eq!(haiku.cost(&usage(100_000, 1_000)), 10_500_000);
        assert_eq!(haiku.cost(&usage(100_001, 1_000)), 52_500_500);
        // A reservation of a long prompt counts the long prices (every
        // prompt token at the highest, an hour's cache write: $12, or $6).
        assert_eq!(sonnet.ceiling(300_000, 1_000), 3_622_500_000);
        assert_eq!(sonnet.ceiling(100_000, 1_000), 615_000_000);
    }

    #[test]
    fn images_are_priced_by_model_size_and_quality() {
        let image = |model: &str, size, quality| builtin(model).unwrap_or_default().per_image(size, quality);
        assert_eq!(image("dall-e-3", None, None), 0.04);
        assert_eq!(image("dall-e-3", Some("1792x1024"), Some("standard")), 0.08);
        assert_eq!(image("dall-e-3", Some("1024x1024"), Some("hd")), 0.08);
        assert_eq!(image("azure/dall-e-3", Some("1024x1792"), Some("hd")), 0.12);
        assert_eq!(image("dall-e-2", Some("256x256"), None), 0.016);
        assert_eq!(image("dall-e-2", Some("512x512"), None), 0.018);
        assert_eq!(image("dall-e-2", None, None), 0.02);
        assert_eq!(image("gpt-image-1", None, Some("high")), 0.0);
        assert_eq!(image("dall-e-30", None, None), 0.0);
        let configured = Prices {
            image: Some(0.5),
            ..builtin("dall-e-3").unwrap_or_default()
        };
        assert_eq!(configured.per_image(Some("1792x1024"), Some("hd")), 0.5);
    }

    #[test]
    fn well_known_models_are_priced_by_name() {
        assert_eq!(
            builtin("gpt-4o"),
            Some(Prices::per_million(2.5, 10.0, Some(1.25), None))
        );
        assert_eq!(builtin("gpt-4o-2024-08-06"), builtin("gpt-4o"));
        assert_eq!(builtin("gpt-4o-mini-2024-07-18"), builtin("gpt-4o-mini"));
        assert_ne!(builtin("gpt-4o-mini"), builtin("gpt-4o"));
        assert_eq!(builtin("claude-3-5-sonnet-20241022"), builtin("claude-3-5-sonnet"));
        assert_eq!(
            builtin("us.anthropic.claude-3-5-haiku-20241022-v1:0"),
            builtin("claude-3-5-haiku")
        );
        assert_eq!(builtin("gpt-4-turbo-2024-04-09"), builtin("gpt-4-turbo"));
        assert_ne!(builtin("gpt-4-turbo"), builtin("gpt-4"));
        assert_eq!(builtin("my-finetune"), None);
        // A minor version or a suffix word names another model.
        assert_eq!(
            builtin("claude-opus-4-5-20251101"),
            Some(Prices {
                web_search: Some(CLAUDE_WEB_SEARCH),
                cache_write_1h: Some(10.0 / 1_000_000.0),
                ..Prices::per_million(5.0, 25.0, Some(0.5), Some(6.25))
            })
        );
        assert_eq!(builtin("claude-opus-4-20250514"), builtin("claude-opus-4"));
        assert_eq!(builtin("gpt-image-1").map(|p| p.output), Some(40.0 / 1_000_000.0));
        assert_eq!(
            builtin("tts-1-hd").and_then(|p| p.per_character),
            Some(30.0 / 1_000_000.0)
        );
        assert_eq!(builtin("tts-1").and_then(|p| p.per_character), Some(15.0 / 1_000_000.0));
        assert_eq!(builtin("whisper-1").and_then(|p| p.per_second), Some(0.0001));
        assert_eq!(builtin("gpt-4o-transcribe").and_then(|p| p.per_second), None);
        assert_eq!(builtin("rerank-v3.5").and_then(|p| p.per_query), Some(0.002));
        assert_ne!(builtin("claude-opus-4-5"), builtin("claude-opus-4"));
        assert_eq!(
            builtin("us.anthropic.claude-haiku-4-5-20251001-v1:0"),
            builtin("claude-haiku-4-5")
        );
        assert!(builtin("claude-haiku-4-5").is_some());
        assert_eq!(builtin("claude-sonnet-4-9"), None);
        assert!(builtin("claude-sonnet-4-6").is_some());
        assert_eq!(builtin("o3-pro"), Some(Prices::per_million(20.0, 80.0, None, None)));
        assert_eq!(builtin("o3-deep-research"), None);
        assert_eq!(builtin("gpt-5-chat-latest"), None);
        assert_eq!(builtin("gpt-5.1"), None);
        assert_eq!(builtin("gpt-5-2025-08-07"), builtin("gpt-5"));
        assert_eq!(builtin("gpt-4-0613"), builtin("gpt-4"));
        assert_eq!(builtin("gpt-4-1106-preview"), builtin("gpt-4-turbo"));
        assert_eq!(builtin("gpt-4o-latest"), builtin("gpt-4o"));
        assert_eq!(builtin("azure/gpt-4o-mini"), builtin("gpt-4o-mini"));
        assert_eq!(builtin("claude-3-5-sonnet@20240620"), builtin("claude-3-5-sonnet"));
        assert_eq!(
            builtin("anthropic.claude-3-haiku-20240307-v1:0"),
            builtin("claude-3-haiku")
        );
        assert_eq!(builtin("gpt-4o-mini-realtime-preview"), None);
        // Snapshots priced apart from their family, and aliases.
        assert_eq!(
            builtin("gpt-4o-2024-05-13"),
            Some(Prices::per_million(5.0, 15.0, None, None))
        );
        assert_eq!(
            builtin("gpt-3.5-turbo-0613"),
            Some(Prices::per_million(1.5, 2.0, None, None))
        );
        assert_eq!(builtin("gpt-3.5-turbo-0125"), builtin("gpt-3.5-turbo"));
        assert_eq!(builtin("gpt-3.5-turbo-16k-0613"), builtin("gpt-3.5-turbo-16k"));
        assert_eq!(builtin("gpt-4-1106-vision-preview"), builtin("gpt-4-turbo"));
        assert_eq!(builtin("o1-preview-2024-09-12"), builtin("o1"));
        assert_eq!(builtin("claude-sonnet-4-0"), builtin("claude-sonnet-4"));
        assert_eq!(builtin("claude-opus-4-0"), builtin("claude-opus-4"));
        assert_eq!(builtin("mock-gpt-1"), None);
    }

    #[test]
    fn cost_counts_cached_tokens_at_their_price() {
        let p = Prices::per_million(3.0, 15.0, Some(0.3), Some(3.75));
        let usage = TokenUsage {
            prompt: 1_000_000,
            completion: 1_000_000,
            ..TokenUsage::default()
        };
        assert_eq!(p.cost(&usage), 18_000_000_000);
        let cached = TokenUsage {
            prompt: 3_000_000,
            completion: 0,
            cache_read: 1_000_000,
            cache_write: 1_000_000,
            cache_write_1h: 0,
            web_searches: 0,
        };
        // 1M uncached at $3, 1M read at $0.30, 1M written at $3.75.
        assert_eq!(p.cost(&cached), 7_050_000_000);
        // Writes kept for an hour cost twice the input price on Claude
        // ($6 for Sonnet's), the rest of the writes $3.75 (Sonnet 4.6: no
        // long-context price for this 3M-token prompt).
        let sonnet = builtin("claude-sonnet-4-6").unwrap();
        let hour = TokenUsage {
            cache_write_1h: 400_000,
            ..cached
        };
        assert_eq!(
            sonnet.cost(&hour),
            3_000_000_000 + 300_000_000 + 2_250_000_000 + 2_400_000_000
        );
        // Without an hour price, hour-long writes cost what other writes do.
        assert_eq!(p.cost(&hour), p.cost(&cached));
        // Claude's web searches cost $0.01 each, on top of the tokens.
        let claude = builtin("claude-sonnet-4-5-20250929").unwrap();
        let searched = TokenUsage {
            prompt: 1_000,
            completion: 100,
            web_searches: 3,
            ..TokenUsage::default()
        };
        assert_eq!(
            claude.cost(&searched)
                - claude.cost(&TokenUsage {
                    web_searches: 0,
                    ..searched
                }),
            30_000_000
        );
        assert_eq!(builtin("gpt-4o").unwrap().web_search, None);
        assert!(
            p.ceiling(10, 100)
                >= p.cost(&TokenUsage {
                    prompt: 10,
                    completion: 100,
                    ..Default::default()
                })
        );
    }
}
