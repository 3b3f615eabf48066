//! The client-facing APIs Tollgate speaks and how each maps onto a provider.
//! Hot path: `Api::from_path` runs once per request (a match on a short string).

/// Wire family: decides error shapes, auth headers and usage field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
}

/// One proxied endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

impl Api {
    pub const ALL: [Api; 5] = [
        Api::ChatCompletions,
        Api::Completions,
        Api::Embeddings,
        Api::Responses,
        Api::Messages,
    ];

    pub fn from_path(path: &str) -> Option<Api> {
        match path {
            "/v1/chat/completions" => Some(Api::ChatCompletions),
            "/v1/completions" => Some(Api::Completions),
            "/v1/embeddings" => Some(Api::Embeddings),
            "/v1/responses" => Some(Api::Responses),
            "/v1/messages" => Some(Api::Messages),
            _ => None,
        }
    }

    /// Path on the provider, relative to its base URL's path (which usually ends in nothing or `/`).
    pub fn upstream_path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Embeddings => "/v1/embeddings",
            Api::Responses => "/v1/responses",
            Api::Messages => "/v1/messages",
        }
    }

    pub fn wire(self) -> Wire {
        match self {
            Api::Messages => Wire::Anthropic,
            _ => Wire::OpenAi,
        }
    }

    /// Label used in metrics and the ledger.
    pub fn label(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Responses => "responses",
            Api::Messages => "messages",
        }
    }

    /// The API whose [`Api::label`] this is.
    pub fn from_label(label: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.label() == label)
    }

    /// Whether streams of this API support `stream_options.include_usage`.
    pub fn supports_include_usage(self) -> bool {
        matches!(self, Api::ChatCompletions | Api::Completions)
    }
}

/// How a request on `api` reaches `provider`: natively (`Some(None)`), through a translation
/// (`Some(Some(direction))`: chat completions ⇄ Anthropic messages, Responses → chat for a
/// provider with `responses_api: chat`), or not at all.
pub fn reach(
    api: Api,
    provider: &crate::config::Provider,
) -> Option<Option<crate::translate::Direction>> {
    use crate::config::ProviderKind;
    use crate::translate::Direction;
    match (api, provider.kind) {
        (Api::Responses, ProviderKind::OpenAi) if provider.responses_via_chat => {
            Some(Some(Direction::ResponsesToChat))
        }
        (Api::Messages, ProviderKind::Anthropic) => Some(None),
        (Api::Messages, ProviderKind::OpenAi) => Some(Some(Direction::MessagesToChat)),
        (Api::ChatCompletions, ProviderKind::Anthropic) => Some(Some(Direction::ChatToMessages)),
        (_, ProviderKind::OpenAi) => Some(None),
        (_, ProviderKind::Anthropic) => None,
    }
}

impl crate::translate::Direction {
    /// The API the provider is spoken to in.
    pub fn upstream_api(self) -> Api {
        match self {
            crate::translate::Direction::ChatToMessages => Api::Messages,
            crate::translate::Direction::MessagesToChat
            | crate::translate::Direction::ResponsesToChat => Api::ChatCompletions,
        }
    }
}
