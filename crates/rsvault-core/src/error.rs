//! The one domain error type of rsvault.
//!
//! Every library crate returns [`Error`]; each variant carries the words Azure uses (its `Display` is the
//! ARM `message`) and knows its ARM `code` and its [`ErrorKind`]. The API crate turns a kind into an HTTP
//! status in exactly one function — no other place chooses a status or an error code.

use std::fmt;

/// What class of failure an error is; the API crate maps each kind to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PreconditionFailed,
    PayloadTooLarge,
    /// The server cannot store what the request asks (its file system is full): 507.
    InsufficientStorage,
    /// The request's body did not arrive in time.
    RequestTimeout,
    /// The server is out of a resource for now (the client should retry later).
    ServiceUnavailable,
    /// The caller asked for more than a limit allows right now: 429 with `Retry-After`.
    TooManyRequests,
    Internal,
}

/// A domain error, worded as Azure words it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("The subscription '{0}' could not be found.")]
    SubscriptionNotFound(String),
    #[error("Resource group '{0}' could not be found.")]
    ResourceGroupNotFound(String),
    #[error("The Resource '{resource_type}/{name}' under resource group '{group}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix")]
    ResourceNotFound {
        resource_type: String,
        name: String,
        group: String,
    },
    /// A not-found with a code of its own (operations, jobs, role assignments …).
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("The api-version query parameter (?api-version=) is required for all requests.")]
    MissingApiVersion,
    #[error("The api-version '{version}' is invalid. The supported versions are '{supported}'.")]
    InvalidApiVersion { version: String, supported: String },
    #[error("No registered resource provider found for location 'global' and API version '{version}' for type '{resource_type}'. The supported api-versions are '{supported}'.")]
    NoRegisteredProviderFound {
        resource_type: String,
        version: String,
        supported: String,
    },
    #[error("The resource namespace '{0}' is invalid.")]
    InvalidResourceNamespace(String),
    #[error("The resource type '{resource_type}' could not be found in the namespace '{namespace}' for api version '{version}'.")]
    InvalidResourceType {
        resource_type: String,
        namespace: String,
        version: String,
    },
    #[error("The requested resource does not support http method '{0}'.")]
    HttpMethodNotSupported(String),
    #[error("Resource name '{name}' is invalid. {rule}")]
    InvalidResourceName { name: String, rule: String },
    #[error("The request content was invalid and could not be deserialized: '{0}'.")]
    InvalidRequestContent(String),
    /// A validation failure with Azure's own code (`BadRequest`, `InvalidParameter`, `UserErrorXxx` …).
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        target: Option<String>,
    },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("The condition specified using HTTP conditional header(s) is not met.")]
    PreconditionFailed,
    #[error("The request content size exceeds the maximum size of {limit} bytes.")]
    PayloadTooLarge { limit: usize },
    #[error("The request body was not received within {seconds} seconds.")]
    RequestTimeout { seconds: u64 },
    #[error("The server is busy. Please retry the request after {retry_after_secs} seconds.")]
    ServerBusy { retry_after_secs: u64 },
    #[error("{message}")]
    Throttled { message: String, retry_after_secs: u64 },
    #[error("{0}")]
    AuthenticationFailed(String),
    #[error("{0}")]
    InvalidAuthenticationToken(String),
    #[error("{0}")]
    InvalidAuthenticationTokenAudience(String),
    #[error("The access token expiry UTC time '{expiry}' is earlier than current UTC time '{now}'.")]
    ExpiredAuthenticationToken { expiry: String, now: String },
    #[error("The client '{client}' with object id '{object_id}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.")]
    AuthorizationFailed {
        client: String,
        object_id: String,
        action: String,
        scope: String,
    },
    /// ARM's linked access refusal; the message names the caller, the action and the linked ones.
    #[error("{0}")]
    LinkedAuthorizationFailed(String),
    #[error("The server cannot write its metadata store: the file system holding its data directory is full ({0}). Nothing was changed; free space there and retry the request.")]
    InsufficientStorage(String),
    /// Something the request needs outside rsvault (a vault's object store) did not answer.
    #[error("{0}")]
    StorageUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// Result with the domain error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The ARM error code (PascalCase).
    pub fn code(&self) -> &str {
        use Error::*;
        match self {
            SubscriptionNotFound(_) => "SubscriptionNotFound",
            ResourceGroupNotFound(_) => "ResourceGroupNotFound",
            ResourceNotFound { .. } => "ResourceNotFound",
            NotFound { code, .. } | Invalid { code, .. } | Conflict { code, .. } => code,
            MissingApiVersion => "MissingApiVersionParameter",
            InvalidApiVersion { .. } => "InvalidApiVersionParameter",
            NoRegisteredProviderFound { .. } => "NoRegisteredProviderFound",
            InvalidResourceNamespace(_) => "InvalidResourceNamespace",
            InvalidResourceType { .. } => "InvalidResourceType",
            HttpMethodNotSupported(_) => "HttpMethodNotSupported",
            InvalidResourceName { .. } => "InvalidResourceName",
            InvalidRequestContent(_) => "InvalidRequestContent",
            PreconditionFailed => "PreconditionFailed",
            PayloadTooLarge { .. } => "RequestEntityTooLarge",
            RequestTimeout { .. } => "RequestTimeout",
            ServerBusy { .. } => "ServerBusy",
            Throttled { .. } => "TooManyRequests",
            AuthenticationFailed(_) => "AuthenticationFailed",
            InvalidAuthenticationToken(_) => "InvalidAuthenticationToken",
            InvalidAuthenticationTokenAudience(_) => "InvalidAuthenticationTokenAudience",
            ExpiredAuthenticationToken { .. } => "ExpiredAuthenticationToken",
            AuthorizationFailed { .. } => "AuthorizationFailed",
            LinkedAuthorizationFailed(_) => "LinkedAuthorizationFailed",
            InsufficientStorage(_) => "InsufficientStorage",
            StorageUnavailable(_) => "ServiceUnavailable",
            Internal(_) => "InternalServerError",
        }
    }

    /// The class of the failure.
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            SubscriptionNotFound(_)
            | ResourceGroupNotFound(_)
            | ResourceNotFound { .. }
            | NotFound { .. }
            | NoRegisteredProviderFound { .. }
            | InvalidResourceNamespace(_)
            | InvalidResourceType { .. } => ErrorKind::NotFound,
            MissingApiVersion
            | InvalidApiVersion { .. }
            | InvalidResourceName { .. }
            | InvalidRequestContent(_)
            | Invalid { .. } => ErrorKind::BadRequest,
            HttpMethodNotSupported(_) => ErrorKind::MethodNotAllowed,
            Conflict { .. } => ErrorKind::Conflict,
            PreconditionFailed => ErrorKind::PreconditionFailed,
            PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
            RequestTimeout { .. } => ErrorKind::RequestTimeout,
            ServerBusy { .. } => ErrorKind::ServiceUnavailable,
            Throttled { .. } => ErrorKind::TooManyRequests,
            AuthenticationFailed(_)
            | InvalidAuthenticationToken(_)
            | InvalidAuthenticationTokenAudience(_)
            | ExpiredAuthenticationToken { .. } => ErrorKind::Unauthorized,
            AuthorizationFailed { .. } | LinkedAuthorizationFailed(_) => ErrorKind::Forbidden,
            InsufficientStorage(_) => ErrorKind::InsufficientStorage,
            StorageUnavailable(_) => ErrorKind::ServiceUnavailable,
            Internal(_) => ErrorKind::Internal,
        }
    }

    /// The `target` of the ARM error, when Azure names one.
    pub fn target(&self) -> Option<&str> {
        match self {
            Error::Invalid { target, .. } => target.as_deref(),
            _ => None,
        }
    }

    /// A validation error with Azure's generic `BadRequest` code.
    pub fn bad_request(message: impl fmt::Display) -> Self {
        Error::Invalid {
            code: "BadRequest",
            message: message.to_string(),
            target: None,
        }
    }

    /// An internal failure; the message is logged, never shown in detail to clients.
    pub fn internal(message: impl fmt::Display) -> Self {
        Error::Internal(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_pascal_case() {
        let errors = [
            Error::SubscriptionNotFound("s".into()),
            Error::MissingApiVersion,
            Error::PreconditionFailed,
            Error::PayloadTooLarge { limit: 1 },
            Error::RequestTimeout { seconds: 1 },
            Error::ServerBusy { retry_after_secs: 1 },
            Error::internal("x"),
        ];
        for e in errors {
            let c = e.code();
            assert!(c.chars().next().unwrap().is_ascii_uppercase(), "{c}");
            assert!(c.chars().all(|c| c.is_ascii_alphanumeric()), "{c}");
        }
    }

    #[test]
    fn messages_use_azure_wording() {
        let e = Error::ResourceGroupNotFound("rg1".into());
        assert_eq!(e.to_string(), "Resource group 'rg1' could not be found.");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
