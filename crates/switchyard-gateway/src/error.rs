//! Every failure the gateway returns, rendered once as an OpenAI-style error.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchyard_api::ErrorBody;
use switchyard_policy::{Denied, PolicyError};
use switchyard_providers::ProviderError;
use switchyard_routing::RoutingError;

/// A request that failed, and why.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    /// A field is missing or has the wrong type or value.
    #[error("{message}")]
    InvalidField {
        /// The field's path, e.g. `messages[0].role`.
        param: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// No model group has this name.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// Behind a wildcard group, the upstream refuses the model asked for
    /// to the gateway's credentials (403): the model's access, not the key's.
    #[error("The upstream refuses the model `{0}` to the gateway's credentials.")]
    ModelForbidden(String),
    /// The body exceeds `server.max_body_bytes`.
    #[error("The request body is larger than the limit of {0} bytes.")]
    BodyTooLarge(usize),
    /// The body did not arrive within `server.body_read_timeout_ms`.
    #[error("The request body did not arrive within {0} ms.")]
    BodyTimeout(u64),
    /// `server.max_concurrent_requests` are being handled.
    #[error("The gateway is handling its limit of {0} requests at once; retry shortly.")]
    Overloaded(usize),
    /// No route has this path.
    #[error("Unknown request URL: {method} {path}.")]
    UnknownRoute {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The route exists but not for this method.
    #[error("Method {0} is not allowed for this URL.")]
    MethodNotAllowed(String),
    /// The upstream call failed.
    #[error("{deployment}: {source}")]
    Upstream {
        /// The deployment that failed (`group/index`).
        deployment: String,
        /// The typed upstream failure.
        source: Box<ProviderError>,
    },
    /// The request's deadline (`timeout`) passed before an answer started.
    #[error("The request did not complete within its timeout ({after:?} into attempt {attempts}).")]
    Deadline {
        /// How long the last attempt had run.
        after: std::time::Duration,
        /// Attempts made.
        attempts: u32,
        /// The deployment the last attempt went to (none when the time ran
        /// out before one was made).
        deployment: Option<String>,
    },
    /// The client left before an answer started, and no further attempt
    /// was made for it.
    #[error("The client closed the request before it was answered ({attempts} attempts made).")]
    ClientGone {
        /// Attempts made.
        attempts: u32,
    },
    /// A routing failure other than an unknown model.
    #[error("{0}")]
    Routing(RoutingError),
    /// The policy refused the request (key, limits, budget).
    #[error("{0}")]
    Denied(switchyard_policy::Denied),
    /// The caller may not use this route.
    #[error("{0}")]
    Forbidden(String),
    /// A fallback the request names is a model its key may not call.
    #[error("This API key is not allowed to call model `{model}`, named in `{param}`.")]
    FallbackNotAllowed {
        /// The field, `fallbacks[i]`.
        param: String,
        /// The model named there.
        model: String,
    },
    /// No stored response has this id (for this key).
    #[error("Response with id '{id}' not found.")]
    ResponseNotFound {
        /// The id asked for.
        id: String,
        /// The field that named it (`previous_response_id`), if any.
        param: Option<String>,
    },
    /// The store of kept responses could not be reached.
    #[error("The store of kept responses is unavailable; retry shortly.")]
    ResponseStore(String),
    /// An admin operation failed.
    #[error("{0}")]
    Policy(switchyard_policy::PolicyError),
    /// Something the gateway needs did not answer now (a configuration in
    /// S3, an artifact store): the same call may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug: the gateway caught a panic or reached an impossible state.
    #[error("The gateway failed to handle the request: {0}")]
    Internal(String),
}

impl From<RoutingError> for ApiError {
    fn from(err: RoutingError) -> Self {
        match err {
            RoutingError::UnknownModel(model) => ApiError::ModelNotFound(model),
            other => ApiError::Routing(other),
        }
    }
}

impl ApiError {
    /// An upstream failure at `deployment`.
    pub fn upstream(deployment: &str, source: ProviderError) -> Self {
        ApiError::Upstream {
            deployment: deployment.to_owned(),
            source: Box::new(source),
        }
    }

    /// HTTP status, error type, param and code.
    pub fn parts(&self) -> (StatusCode, &str, Option<String>, Option<String>) {
        use StatusCode as S;
        let invalid = "invalid_request_error";
        match self {
            ApiError::InvalidJson(_) => (S::BAD_REQUEST, invalid, None, Some("invalid_json".into())),
            ApiError::InvalidField { param, .. } => (S::BAD_REQUEST, invalid, param.clone(), None),
            ApiError::ModelNotFound(_) => (
                S::NOT_FOUND,
                invalid,
                Some("model".into()),
                Some("model_not_found".into()),
            ),
            ApiError::ModelForbidden(_) => (
                S::FORBIDDEN,
                "permission_error",
                Some("model".into()),
                Some("model_not_allowed".into()),
            ),
            ApiError::BodyTooLarge(_) => (S::PAYLOAD_TOO_LARGE, invalid, None, Some("request_too_large".into())),
            ApiError::BodyTimeout(_) => (S::REQUEST_TIMEOUT, invalid, None, Some("request_timeout".into())),
            ApiError::Overloaded(_) => (
                S::TOO_MANY_REQUESTS,
                "rate_limit_error",
                None,
                Some("gateway_overloaded".into()),
            ),
            ApiError::ResponseStore(_) => (
                S::SERVICE_UNAVAILABLE,
                "service_unavailable",
                None,
                Some("response_store_unavailable".into()),
            ),
            // As OpenAI answers: a 400 for a continuation of an unknown
            // response, a 404 for reading or deleting one.
            ApiError::ResponseNotFound { param, .. } => (
                if param.is_some() { S::BAD_REQUEST } else { S::NOT_FOUND },
                invalid,
                param.clone(),
                Some(
                    if param.is_some() {
                        "previous_response_not_found"
                    } else {
                        "not_found"
                    }
                    .into(),
                ),
            ),
            ApiError::UnknownRoute { .. } => (S::NOT_FOUND, invalid, None, Some("unknown_url".into())),
            ApiError::MethodNotAllowed(_) => (S::METHOD_NOT_ALLOWED, invalid, None, Some("method_not_allowed".into())),
            ApiError::FallbackNotAllowed { param, .. } => (
                S::FORBIDDEN,
                "permission_error",
                Some(param.clone()),
                Some("model_not_allowed".into()),
            ),
            ApiError::Routing(RoutingError::NoDeployment(_)) => (
                S::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("model".into()),
                Some("no_deployment".into()),
            ),
            ApiError::Deadline { .. } => (
                S::GATEWAY_TIMEOUT,
                "timeout_error",
                None,
                Some("request_timeout".into()),
            ),
            // nginx's 499: never sent (nobody is there), logged as such.
            ApiError::ClientGone { .. } => (
                S::from_u16(499).unwrap_or(S::BAD_REQUEST),
                invalid,
                None,
                Some("client_closed".into()),
            ),
            ApiError::Routing(_) | ApiError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal_error", None, None),
            ApiError::Denied(denied) => denied_parts(denied),
            ApiError::Forbidden(_) => (S::FORBIDDEN, "permission_error", None, Some("forbidden".into())),
            ApiError::Unavailable(_) => (
                S::SERVICE_UNAVAILABLE,
                "service_unavailable",
                None,
                Some("unavailable".into()),
            ),
            ApiError::Policy(err) => policy_parts(err),
            ApiError::Upstream { source, .. } => upstream_parts(source),
        }
    }

    /// The client-facing message. Upstream 4xx keep the upstream's own words,
    /// except a rejection of the gateway's own credentials (401, 403): that
    /// is the gateway's configuration, not the client's request, and the
    /// upstream's text may name the account or part of the key; and a 429,
    /// the gateway's account's limit, whose text names the organisation and
    /// its limits (the gateway's log keeps it).
    pub fn message(&self) -> String {
        if let ApiError::Upstream { source, deployment } = self {
            match source.as_ref() {
                ProviderError::Status { status, .. } if source.rejects_credentials() => {
                    return format!(
                        "The upstream of deployment {deployment} rejected the gateway's credentials (HTTP {status}); \
                         the gateway's operator must fix its configuration."
                    );
                }
                // OpenAI's 429 for a request larger than the account's whole
                // minute: waiting does not help, making it smaller does.
                ProviderError::Status {
                    status: 429, message, ..
                } if message.contains("Request too large") || message.contains("must be reduced") => {
                    return format!(
                        "The request is larger than the per-minute token limit of deployment {deployment}'s \
                         upstream (HTTP 429); its input or output tokens must be reduced."
                    );
                }
                ProviderError::Status {
                    status: 429,
                    code,
                    retry_after,
                    ..
                } => {
                    let after = retry_after.map_or_else(String::new, |after| {
                        format!(" Try again in {}s.", after.as_secs_f64().ceil().max(1.0))
                    });
                    return if code.as_deref() == Some("insufficient_quota") {
                        format!(
                            "The upstream of deployment {deployment} has no quota left on the gateway's account \
                             (HTTP 429); the gateway's operator must see to its billing."
                        )
                    } else {
                        format!("The upstream of deployment {deployment} is over its rate limit (HTTP 429).{after}")
                    };
                }
                // The gateway's own account, not the client's request.
                ProviderError::Status { status: 402, .. } => {
                    return format!(
                        "The upstream of deployment {deployment} asks for payment on the gateway's account \
                         (HTTP 402); the gateway's operator must see to its billing."
                    );
                }
                ProviderError::Status { status, message, .. }
                    if (400..500).contains(status) && !matches!(status, 404 | 408) =>
                {
                    return message.clone();
                }
                ProviderError::InvalidRequest { message, .. } => return message.clone(),
                // The details (a credential chain's, an endpoint's) are the
                // operator's: they are in the gateway's log.
                ProviderError::InvalidConfig(_) => {
                    return format!(
                        "Deployment {deployment} cannot be called as it is configured; \
                         the gateway's operator must fix its configuration."
                    );
                }
                _ => {}
            }
        }
        self.to_string()
    }

    /// The OpenAI-style body.
    pub fn body(&self) -> ErrorBody {
        let (status, kind, param, code) = self.parts();
        let mut body = ErrorBody::new(self.message(), kind, param, code);
        // An upstream's refusal passed on as the client's error keeps its
        // details (Azure's content filter results); its other members never
        // replace the four above.
        if let ApiError::Upstream { source, .. } = self
            && let ProviderError::Status {
                details: Some(details), ..
            } = source.as_ref()
            && status.is_client_error()
        {
            body.error.extra = details
                .iter()
                .filter(|(name, _)| !matches!(name.as_str(), "message" | "type" | "param" | "code"))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
        }
        body
    }
}

fn denied_parts(denied: &Denied) -> (StatusCode, &'static str, Option<String>, Option<String>) {
    use StatusCode as S;
    let auth = "authentication_error";
    match denied {
        Denied::MissingKey => (S::UNAUTHORIZED, auth, None, Some("missing_api_key".into())),
        Denied::InvalidKey => (S::UNAUTHORIZED, auth, None, Some("invalid_api_key".into())),
        Denied::Expired => (S::UNAUTHORIZED, auth, None, Some("key_expired".into())),
        Denied::Blocked { .. } => (S::FORBIDDEN, "permission_error", None, Some("key_blocked".into())),
        Denied::EndUserBlocked { .. } => (
            S::FORBIDDEN,
            "permission_error",
            Some("user".into()),
            Some("end_user_blocked".into()),
        ),
        Denied::Unpriced { .. } => (S::BAD_REQUEST, "invalid_request_error", Some("model".into()), None),
        Denied::TeamMissing { .. } => (S::FORBIDDEN, "permission_error", None, Some("team_not_found".into())),
        Denied::ModelNotAllowed { .. } => (
            S::FORBIDDEN,
            "permission_error",
            Some("model".into()),
            Some("model_not_allowed".into()),
        ),
        Denied::RateLimited { .. } => (
            S::TOO_MANY_REQUESTS,
            "rate_limit_error",
            None,
            Some("rate_limit_exceeded".into()),
        ),
        Denied::TooManyParallel { .. } => (
            S::TOO_MANY_REQUESTS,
            "rate_limit_error",
            None,
            Some("too_many_parallel_requests".into()),
        ),
        Denied::BudgetExceeded { .. } => (S::BAD_REQUEST, "budget_exceeded", None, Some("budget_exceeded".into())),
        Denied::Unavailable => (
            S::SERVICE_UNAVAILABLE,
            "service_unavailable",
            None,
            Some("policy_store_unavailable".into()),
        ),
    }
}

fn policy_parts(err: &PolicyError) -> (StatusCode, &'static str, Option<String>, Option<String>) {
    use StatusCode as S;
    match err {
        PolicyError::Field(f) => (S::BAD_REQUEST, "invalid_request_error", Some(f.param.clone()), None),
        PolicyError::NotFound { .. } => (S::NOT_FOUND, "invalid_request_error", None, Some("not_found".into())),
        PolicyError::Conflict(_) => (S::CONFLICT, "invalid_request_error", None, Some("conflict".into())),
        PolicyError::FromConfig(_) => (
            S::BAD_REQUEST,
            "invalid_request_error",
            None,
            Some("declared_in_config".into()),
        ),
        PolicyError::Store(_) => (
            S::INTERNAL_SERVER_ERROR,
            "internal_error",
            None,
            Some("store_error".into()),
        ),
        PolicyError::Unavailable(_) => (
            S::SERVICE_UNAVAILABLE,
            "service_unavailable",
            None,
            Some("policy_store_unavailable".into()),
        ),
    }
}

/// The code (else the type) a client is told for an upstream failure, as
/// the request log and alerts name it (`upstream_error`, `upstream_timeout`…).
pub(crate) fn upstream_code(err: &ProviderError) -> String {
    let (_, kind, _, code) = upstream_parts(err);
    code.unwrap_or_else(|| kind.to_owned())
}

fn upstream_parts(err: &ProviderError) -> (StatusCode, &str, Option<String>, Option<String>) {
    use StatusCode as S;
    match err {
        // The upstream gave up waiting on the gateway's request: a timeout
        // of the upstream, not the client's error.
        ProviderError::Status { status: 408, .. } => (
            S::GATEWAY_TIMEOUT,
            "upstream_error",
            None,
            Some("upstream_timeout".into()),
        ),
        // The client named a model the gateway serves; the upstream not
        // knowing the deployment's is the gateway's configuration.
        ProviderError::Status { status: 404, .. } => (
            S::BAD_GATEWAY,
            "upstream_error",
            None,
            Some("upstream_not_found".into()),
        ),
        ProviderError::Status { .. } if err.rejects_credentials() => (
            S::BAD_GATEWAY,
            "upstream_error",
            None,
            Some("upstream_auth_error".into()),
        ),
        ProviderError::Status { status: 402, .. } => (
            S::BAD_GATEWAY,
            "upstream_error",
            None,
            Some("upstream_payment_required".into()),
        ),
        ProviderError::Status {
            status,
            kind,
            code,
            param,
            ..
        } if (400..500).contains(status) => (
            S::from_u16(*status).unwrap_or(S::BAD_REQUEST),
            // An upstream that names no type (Azure's 429, a proxy's text):
            // a rate limit is one, anything else the request's fault.
            kind.as_deref().unwrap_or(if *status == 429 {
                "rate_limit_error"
            } else {
                "invalid_request_error"
            }),
            param.clone(),
            code.clone(),
        ),
        ProviderError::Status { .. } => (S::BAD_GATEWAY, "upstream_error", None, Some("upstream_error".into())),
        ProviderError::Timeout(_) => (
            S::GATEWAY_TIMEOUT,
            "upstream_error",
            None,
            Some("upstream_timeout".into()),
        ),
        ProviderError::Connect(_) => (
            S::BAD_GATEWAY,
            "upstream_error",
            None,
            Some("upstream_unreachable".into()),
        ),
        ProviderError::InvalidResponse(_) | ProviderError::Stream(_) | ProviderError::Transport(_) => (
            S::BAD_GATEWAY,
            "upstream_error",
            None,
            Some("upstream_invalid_response".into()),
        ),
        ProviderError::Unsupported { .. } => (
            S::BAD_REQUEST,
            "invalid_request_error",
            None,
            Some("unsupported".into()),
        ),
        ProviderError::InvalidRequest { param, .. } => (
            S::BAD_REQUEST,
            "invalid_request_error",
            param.clone(),
            Some("unsupported_parameter".into()),
        ),
        ProviderError::InvalidConfig(_) => (
            S::BAD_GATEWAY,
            "upstream_error",
            None,
            Some("deployment_misconfigured".into()),
        ),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, param, code) = self.parts();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        } else {
            // Not the message: a refusal of the client's input may quote it
            // (a parse error names the value it could not read), and
            // prompts are never logged.
            tracing::debug!(
                status = status.as_u16(),
                kind,
                param = param.as_deref().unwrap_or_default(),
                code = code.as_deref().unwrap_or_default(),
                "request rejected"
            );
        }
        let retry_after = match &self {
            ApiError::Upstream { source, .. } => match source.as_ref() {
                ProviderError::Status {
                    retry_after: Some(after),
                    ..
                } => retry_after_header(*after),
                _ => None,
            },
            ApiError::Denied(Denied::RateLimited {
                retry_after: Some(after),
                ..
            }) => retry_after_header(*after),
            ApiError::Denied(Denied::TooManyParallel { .. }) | ApiError::Overloaded(_) => {
                Some(HeaderValue::from_static("1"))
            }
            _ => None,
        };
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if let ApiError::Denied(Denied::RateLimited {
            kind,
            limit,
            retry_after,
            ..
        }) = &self
        {
            let k = kind.as_str();
            let reset = switchyard_policy::policy::format_reset(retry_after.unwrap_or_default());
            for (name, value) in [
                (format!("x-ratelimit-limit-{k}"), limit.to_string()),
                (format!("x-ratelimit-remaining-{k}"), "0".to_owned()),
                (format!("x-ratelimit-reset-{k}"), reset),
            ] {
                if let (Ok(n), Ok(v)) = (axum::http::HeaderName::try_from(name), HeaderValue::from_str(&value)) {
                    response.headers_mut().insert(n, v);
                }
            }
        }
        response
    }
}

/// `Retry-After` in whole seconds, rounded up (a client that waits what it
/// is told must not come back early), at least 1 and at most a day (an
/// upstream's endless wait is passed on as that).
fn retry_after_header(after: std::time::Duration) -> Option<HeaderValue> {
    HeaderValue::from_str(&after.as_secs_f64().ceil().clamp(1.0, 86_400.0).to_string()).ok()
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;

    /// An upstream client error without a type keeps its status; a 429 is
    /// a `rate_limit_error` (Azure's 429 names no type), others the
    /// request's fault.
    #[test]
    fn an_untyped_upstream_429_is_a_rate_limit_error() {
        let status = |status: u16| ProviderError::Status {
            status,
            message: "slow down".into(),
            kind: None,
            code: Some(status.to_string()),
            param: None,
            retry_after: None,
            details: None,
        };
        let (limited, unprocessable) = (status(429), status(422));
        let (code, kind, _, _) = upstream_parts(&limited);
        assert_eq!((code, kind), (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"));
        let (code, kind, _, _) = upstream_parts(&unprocessable);
        assert_eq!(
            (code, kind),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error")
        );
    }

    /// A 429's words are the gateway's: the upstream's name its
    /// organisation and limits. One for a request too large for the whole
    /// minute says to make it smaller, not to wait.
    #[test]
    fn an_upstream_429_is_worded_by_the_gateway() {
        let limited =
            |message: &str, code: Option<&str>, retry_after: Option<std::time::Duration>| ApiError::Upstream {
                deployment: "gpt/0".into(),
                source: Box::new(ProviderError::Status {
                    status: 429,
                    message: message.into(),
                    kind: Some("tokens".into()),
                    code: code.map(str::to_owned),
                    param: None,
                    retry_after,
                    details: None,
                }),
            };
        let busy = limited(
            "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000.",
            Some("rate_limit_exceeded"),
            Some(std::time::Duration::from_millis(1_400)),
        );
        assert_eq!(
            busy.message(),
            "The upstream of deployment gpt/0 is over its rate limit (HTTP 429). Try again in 2s."
        );
        let large = limited(
            "Request too large for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Requested 45000. \
             The input or output tokens must be reduced in order to run successfully.",
            Some("rate_limit_exceeded"),
            None,
        );
        assert!(large.message().contains("must be reduced"), "{}", large.message());
        assert!(!large.message().contains("org-abc"), "{}", large.message());
        let quota = limited(
            "You exceeded your current quota, org-abc.",
            Some("insufficient_quota"),
            None,
        );
        assert!(quota.message().contains("no quota left"), "{}", quota.message());
        for e in [busy, large, quota] {
            assert_eq!(e.parts().0, StatusCode::TOO_MANY_REQUESTS);
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        for (ms, header) in [(100, "1"), (1_200, "2"), (1_900, "2"), (7_000, "7")] {
            let value = retry_after_header(std::time::Duration::from_millis(ms));
            assert_eq!(value, Some(HeaderValue::from_static(header)), "{ms} ms");
        }
        assert_eq!(
            retry_after_header(std::time::Duration::MAX),
            Some(HeaderValue::from_static("86400"))
        );
    }
}

/// An error as the log shows it: its first [`Clipped::MAX_CHARS`]
/// characters. An upstream's message may quote the request it refused (a
/// validation error's `input`), which the log keeps only with
/// `log_payloads`.
pub(crate) struct Clipped<'a, T: std::fmt::Display>(pub(crate) &'a T);

impl<T: std::fmt::Display> Clipped<'_, T> {
    /// The most characters shown.
    pub(crate) const MAX_CHARS: usize = 300;
}

impl<T: std::fmt::Display> std::fmt::Display for Clipped<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.to_string();
        match text.char_indices().nth(Self::MAX_CHARS) {
            Some((cut, _)) => write!(f, "{}… ({} bytes in all)", &text[..cut], text.len()),
            None => f.write_str(&text),
        }
    }
}

#[cfg(test)]
mod clipped_tests {
    use super::Clipped;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let short = "upstream error 400: bad";
        assert_eq!(Clipped(&short).to_string(), short);
        let long = "é".repeat(400);
        let shown = Clipped(&long).to_string();
        assert!(shown.starts_with(&"é".repeat(300)), "{shown}");
        assert!(shown.ends_with("… (800 bytes in all)"), "{shown}");
        assert!(!shown.contains(&"é".repeat(301)));
    }
}
