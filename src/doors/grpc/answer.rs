//! A decision encoded as Envoy's `CheckResponse` protobuf straight from the `Decision`, with no prost message built in between: the one place decisions become gRPC answers (a denial's status, body and challenge as [`crate::doors::denial`] words them); never decides.
//!
//! Fields are written in tag order and proto3 defaults (zero, empty) are left out, as prost
//! writes them; the tests decode every kind of answer with Envoy's prost types.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::core::Decision;
use crate::doors::denial::Denial;

/// gRPC status codes used in `CheckResponse.status`.
const OK: u64 = 0;
const INVALID_ARGUMENT: u64 = 3;
const PERMISSION_DENIED: u64 = 7;
const UNAUTHENTICATED: u64 = 16;

/// Field numbers, from Envoy's and Google's protos.
mod tag {
    /// `CheckResponse`.
    pub const STATUS: u32 = 1;
    pub const DENIED_RESPONSE: u32 = 2;
    pub const OK_RESPONSE: u32 = 3;
    pub const DYNAMIC_METADATA: u32 = 4;
    /// `google.rpc.Status.code`, `envoy.type.v3.HttpStatus.code`.
    pub const CODE: u32 = 1;
    /// `OkHttpResponse` and `DeniedHttpResponse`.
    pub const HEADERS: u32 = 2;
    pub const HEADERS_TO_REMOVE: u32 = 5;
    pub const QUERY_PARAMETERS_TO_REMOVE: u32 = 8;
    pub const DENIED_STATUS: u32 = 1;
    pub const BODY: u32 = 3;
    /// `HeaderValueOption`, then `HeaderValue`.
    pub const HEADER: u32 = 1;
    pub const APPEND_ACTION: u32 = 3;
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
    /// `google.protobuf.Struct.fields` (its entries: `KEY`, `VALUE`); `Value.string_value`.
    pub const FIELDS: u32 = 1;
    pub const STRING_VALUE: u32 = 3;
}

/// The answer to one Check: the decision, and whether it is answered as an allow (false for a
/// deny that is enforced; the global dry run answers every deny with an allow).
#[derive(Debug)]
pub struct CheckAnswer {
    /// What the policies decided.
    pub decision: Decision,
    /// Whether it is answered as an allow.
    pub allow: bool,
}

impl CheckAnswer {
    /// The gRPC status code of the answer.
    pub fn code(&self) -> u64 {
        code_of(self.denial().as_ref())
    }

    /// How the answer refuses the request; `None` for an allow.
    fn denial(&self) -> Option<Denial> {
        (!self.allow).then(|| Denial::refusing(&self.decision))
    }

    /// Writes the `CheckResponse`: `status`, the OK or denied HTTP response, and `decision`,
    /// `reason` and `policy` as dynamic metadata for Envoy's access logs
    /// (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz)%`).
    pub fn encode(&self, buf: &mut impl BufMut) {
        let denial = self.denial();
        let code = code_of(denial.as_ref());
        put_message_header(tag::STATUS, varint_len(tag::CODE, code), buf);
        put_varint(tag::CODE, code, buf);
        match &denial {
            None => {
                put_message_header(tag::OK_RESPONSE, self.ok_response_len(), buf);
                self.put_ok_response(buf);
            }
            Some(denial) => {
                put_message_header(tag::DENIED_RESPONSE, denied_response_len(denial), buf);
                put_denied_response(denial, buf);
            }
        }
        let metadata = self.metadata();
        put_message_header(tag::DYNAMIC_METADATA, metadata.iter().flatten().map(MetadataEntry::field_len).sum(), buf);
        for entry in metadata.iter().flatten() {
            entry.put(buf);
        }
    }

    /// The encoding as a vector (benches and tests).
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode(&mut buf);
        buf
    }

    fn ok_response_len(&self) -> usize {
        let decision = &self.decision;
        header_options_len(&decision.headers_to_set)
            + decision.headers_to_remove.iter().map(|name| item_len(tag::HEADERS_TO_REMOVE, name)).sum::<usize>()
            + (decision.query_parameters_to_remove.iter())
                .map(|name| item_len(tag::QUERY_PARAMETERS_TO_REMOVE, name))
                .sum::<usize>()
    }

    fn put_ok_response(&self, buf: &mut impl BufMut) {
        let decision = &self.decision;
        put_header_options(&decision.headers_to_set, buf);
        for name in &decision.headers_to_remove {
            put_item(tag::HEADERS_TO_REMOVE, name, buf);
        }
        for name in &decision.query_parameters_to_remove {
            put_item(tag::QUERY_PARAMETERS_TO_REMOVE, name, buf);
        }
    }

    fn metadata(&self) -> [Option<MetadataEntry<'_>>; 3] {
        let decision = &self.decision;
        let verdict = if decision.is_allow() { "allow" } else { "deny" };
        let policy =
            decision.policy.as_ref().map(|policy| MetadataEntry { key: "policy", value: policy.to_string().into() });
        [
            Some(MetadataEntry::text("decision", verdict)),
            Some(MetadataEntry::text("reason", decision.reason.as_str())),
            policy,
        ]
    }
}

/// The gRPC status of an answer: OK for an allow, else by the HTTP status of its denial (a
/// login redirect is unauthenticated).
fn code_of(denial: Option<&Denial>) -> u64 {
    match denial.map(|denial| denial.status) {
        None => OK,
        Some(400) => INVALID_ARGUMENT,
        Some(401 | 302) => UNAUTHENTICATED,
        Some(_) => PERMISSION_DENIED,
    }
}

fn denied_response_len(denial: &Denial) -> usize {
    message_len(tag::DENIED_STATUS, varint_len(tag::CODE, u64::from(denial.status)))
        + header_options_len(denial.challenge.as_slice())
        + text_len(tag::BODY, denial.body)
}

fn put_denied_response(denial: &Denial, buf: &mut impl BufMut) {
    let code = u64::from(denial.status);
    put_message_header(tag::DENIED_STATUS, varint_len(tag::CODE, code), buf);
    put_varint(tag::CODE, code, buf);
    put_header_options(denial.challenge.as_slice(), buf);
    put_text(tag::BODY, denial.body, buf);
}

/// One entry of the dynamic metadata `Struct`: a name and a string `Value`.
struct MetadataEntry<'a> {
    key: &'static str,
    value: std::borrow::Cow<'a, str>,
}

impl<'a> MetadataEntry<'a> {
    fn text(key: &'static str, value: &'a str) -> Self {
        Self { key, value: value.into() }
    }

    fn value_len(&self) -> usize {
        text_len(tag::STRING_VALUE, &self.value)
    }

    fn entry_len(&self) -> usize {
        text_len(tag::KEY, self.key) + message_len(tag::VALUE, self.value_len())
    }

    fn field_len(&self) -> usize {
        message_len(tag::FIELDS, self.entry_len())
    }

    fn put(&self, buf: &mut impl BufMut) {
        put_message_header(tag::FIELDS, self.entry_len(), buf);
        put_text(tag::KEY, self.key, buf);
        put_message_header(tag::VALUE, self.value_len(), buf);
        put_text(tag::STRING_VALUE, &self.value, buf);
    }
}

/// The length of a `HeaderValue` and of the `HeaderValueOption` around it, which overwrites the
/// header or adds it.
fn header_option_lens(name: &str, value: &str) -> (usize, usize) {
    let header = text_len(tag::KEY, name) + text_len(tag::VALUE, value);
    (header, message_len(tag::HEADER, header) + varint_len(tag::APPEND_ACTION, APPEND_ACTION))
}

const APPEND_ACTION: u64 = HeaderAppendAction::OverwriteIfExistsOrAdd as u64;

fn header_options_len(headers: &[(impl AsRef<str>, String)]) -> usize {
    headers.iter().map(|(name, value)| message_len(tag::HEADERS, header_option_lens(name.as_ref(), value).1)).sum()
}

fn put_header_options(headers: &[(impl AsRef<str>, String)], buf: &mut impl BufMut) {
    for (name, value) in headers {
        let name = name.as_ref();
        let (header, option) = header_option_lens(name, value);
        put_message_header(tag::HEADERS, option, buf);
        put_message_header(tag::HEADER, header, buf);
        put_text(tag::KEY, name, buf);
        put_text(tag::VALUE, value, buf);
        put_varint(tag::APPEND_ACTION, APPEND_ACTION, buf);
    }
}

/// A string field's length on the wire; proto3 leaves an empty one out.
fn text_len(tag: u32, text: &str) -> usize {
    if text.is_empty() { 0 } else { item_len(tag, text) }
}

fn put_text(tag: u32, text: &str, buf: &mut impl BufMut) {
    if !text.is_empty() {
        put_item(tag, text, buf);
    }
}

/// An element of a repeated string field's length on the wire: written even when empty.
fn item_len(tag: u32, text: &str) -> usize {
    key_len(tag) + encoded_len_varint(text.len() as u64) + text.len()
}

fn put_item(tag: u32, text: &str, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(text.len() as u64, buf);
    buf.put_slice(text.as_bytes());
}

/// A varint field's length on the wire; proto3 leaves a zero out.
fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + encoded_len_varint(value) }
}

fn put_varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A message field's length on the wire; a present message is written even when empty.
fn message_len(tag: u32, content: usize) -> usize {
    key_len(tag) + encoded_len_varint(content as u64) + content
}

fn put_message_header(tag: u32, content: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(content as u64, buf);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, OkHttpResponse};
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    use envoy_types::pb::google::rpc;
    use prost::Message;

    use std::sync::Arc;

    use super::*;
    use crate::core::Reason;
    use crate::core::decision::{Challenge, PolicyMatch};
    use crate::core::jwt::JwtError;
    use crate::core::policy::PolicyId;

    fn option(name: &str, value: &str) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue { key: name.into(), value: value.into(), raw_value: Vec::new() }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..HeaderValueOption::default()
        }
    }

    fn metadata(pairs: &[(&str, &str)]) -> Option<Struct> {
        let text = |value: &str| Value { kind: Some(Kind::StringValue(value.into())) };
        Some(Struct {
            fields: pairs.iter().map(|&(key, value)| (key.to_string(), text(value))).collect::<HashMap<_, _>>(),
        })
    }

    fn status(code: i32) -> Option<rpc::Status> {
        Some(rpc::Status { code, message: String::new(), details: Vec::new() })
    }

    fn decided_by(reason: Reason, rule: usize) -> Decision {
        let policy = Arc::new(PolicyId { namespace: "jobs".into(), name: "allow-read".into() });
        Decision::new(reason, Some(PolicyMatch { policy, rule }))
    }

    fn cases() -> Vec<(&'static str, CheckAnswer, CheckResponse)> {
        let mut allowed = decided_by(Reason::AllowedByPolicy, 12);
        allowed.headers_to_set = vec![("x-user".into(), "alice".into()), ("x-empty".into(), String::new())];
        allowed.headers_to_remove = vec!["authorization".into(), "x-user".into()];
        allowed.query_parameters_to_remove = vec!["access_token".into(), "".into()];
        let refused = Decision::refused_token(JwtError::Expired, Challenge::bearer("https", "jobs", "/"));
        let login_url = "https://auth.example/oauth2/start?rd=https%3A%2F%2Fjobs%2F";
        let login = |navigation: bool| {
            let mut decision = Decision::new(Reason::NoAllowMatch, None);
            decision.challenge = Some(Challenge::Login { url: login_url.into(), navigation });
            decision
        };
        let denied = |status: i32, body: &str, headers: Vec<HeaderValueOption>| {
            let status = Some(HttpStatus { code: status });
            Some(HttpResponse::DeniedResponse(DeniedHttpResponse { status, headers, body: body.into() }))
        };
        vec![
            (
                "an allow by policy, with headers to set and to strip",
                CheckAnswer { decision: allowed, allow: true },
                CheckResponse {
                    status: status(0),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                        headers: vec![option("x-user", "alice"), option("x-empty", "")],
                        headers_to_remove: vec!["authorization".into(), "x-user".into()],
                        query_parameters_to_remove: vec!["access_token".into(), String::new()],
                        ..OkHttpResponse::default()
                    })),
                    dynamic_metadata: metadata(&[
                        ("decision", "allow"),
                        ("reason", "allowed_by_policy"),
                        ("policy", "ns[jobs]-policy[allow-read]-rule[12]"),
                    ]),
                },
            ),
            (
                "an allow with no policies and nothing to change",
                CheckAnswer { decision: Decision::new(Reason::NoPolicies, None), allow: true },
                CheckResponse {
                    status: status(0),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
                    dynamic_metadata: metadata(&[("decision", "allow"), ("reason", "no_policies")]),
                },
            ),
            (
                "a deny by policy",
                CheckAnswer { decision: decided_by(Reason::DeniedByPolicy, 0), allow: false },
                CheckResponse {
                    status: status(7),
                    http_response: denied(403, "RBAC: access denied", Vec::new()),
                    dynamic_metadata: metadata(&[
                        ("decision", "deny"),
                        ("reason", "denied_by_policy"),
                        ("policy", "ns[jobs]-policy[allow-read]-rule[0]"),
                    ]),
                },
            ),
            (
                "a refused token, with its challenge",
                CheckAnswer { decision: refused, allow: false },
                CheckResponse {
                    status: status(16),
                    http_response: denied(
                        401,
                        "Jwt is expired",
                        vec![option("www-authenticate", "Bearer realm=\"https://jobs/\", error=\"invalid_token\"")],
                    ),
                    dynamic_metadata: metadata(&[("decision", "deny"), ("reason", "invalid_token")]),
                },
            ),
            (
                "a browser navigation sent to log in",
                CheckAnswer { decision: login(true), allow: false },
                CheckResponse {
                    status: status(16),
                    http_response: denied(302, "", vec![option("location", login_url)]),
                    dynamic_metadata: metadata(&[("decision", "deny"), ("reason", "no_allow_match")]),
                },
            ),
            (
                "a script told where to log in",
                CheckAnswer { decision: login(false), allow: false },
                CheckResponse {
                    status: status(16),
                    http_response: denied(401, "login required", vec![option("x-portcullis-login-url", login_url)]),
                    dynamic_metadata: metadata(&[("decision", "deny"), ("reason", "no_allow_match")]),
                },
            ),
            (
                "a path that cannot be normalized",
                CheckAnswer { decision: Decision::new(Reason::InvalidPath, None), allow: false },
                CheckResponse {
                    status: status(3),
                    http_response: denied(400, "Bad Request", Vec::new()),
                    dynamic_metadata: metadata(&[("decision", "deny"), ("reason", "invalid_path")]),
                },
            ),
            (
                "a deny answered with an allow under the global dry run",
                CheckAnswer { decision: Decision::new(Reason::NoAllowMatch, None), allow: true },
                CheckResponse {
                    status: status(0),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
                    dynamic_metadata: metadata(&[("decision", "deny"), ("reason", "no_allow_match")]),
                },
            ),
        ]
    }

    #[test]
    fn every_kind_of_answer_decodes_as_the_check_response_envoy_reads() {
        for (name, answer, expected) in cases() {
            let bytes = answer.encode_to_vec();
            let decoded = CheckResponse::decode(&bytes[..]).unwrap_or_else(|error| panic!("{name}: {error}"));
            assert_eq!(decoded, expected, "{name}");
            assert_eq!(
                answer.code(),
                u64::try_from(expected.status.map_or(0, |status| status.code)).expect("a gRPC code"),
                "{name}"
            );
        }
    }

    #[test]
    fn an_answer_is_as_long_as_prost_would_write_it() {
        for (name, answer, expected) in cases() {
            assert_eq!(answer.encode_to_vec().len(), expected.encoded_len(), "{name}");
        }
    }
}
