//! A zero-copy view of Envoy's `CheckRequest`: a protobuf reader that finds, in one pass over the received buffer, the fields the core reads, and the view → core `Request` conversion, which borrows their strings from the buffer; never copies a string.

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use prost::Message;
use prost::bytes::Bytes;

use super::with_pseudo_header_fallbacks;
use crate::core::{HttpRequest as CoreHttpRequest, Peer as CorePeer, Request, StrMap};

/// `envoy.service.auth.v3.CheckRequest` as received: its bytes, and where in them lie the
/// fields the core reads.
///
/// [`CheckView::from_wire`] reads the fields by the tags and wire types of Envoy's protos
/// (`attribute_context.proto`, `config/core/v3/address.proto` and `base.proto`) and applies
/// protobuf's rules as prost does for Envoy's own types: unknown fields are skipped, the last
/// value of a scalar wins, repeated occurrences of a message merge, the last member of a oneof
/// wins. [`CheckView::request`] borrows the strings and validates UTF-8 of what the core reads.
/// A `map<string, string>` is read as the repeated entry messages it is on the wire, and handed
/// to the core last entry first, so that a repeated key keeps its last value.
#[derive(Debug, Clone)]
pub struct CheckView {
    bytes: Bytes,
    /// `None` when the request has no attributes.
    attributes: Option<AttributeContext>,
}

/// Why received bytes are not a `CheckRequest` prost would decode, as far as the fields the
/// core reads go; the Check is answered with a gRPC error, as tonic-prost answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A varint is cut off or too long.
    #[error("invalid protobuf: a varint is cut off or longer than 64 bits")]
    InvalidVarint,
    /// A field key is too long.
    #[error("invalid protobuf: a key is longer than 32 bits")]
    InvalidKey,
    /// A wire type protobuf does not have.
    #[error("invalid protobuf: wire type `{0}`")]
    InvalidWireType(u32),
    /// A field number 0.
    #[error("invalid protobuf: field number 0")]
    InvalidTag,
    /// A length runs past its message.
    #[error("invalid protobuf: a value runs past the end of its message")]
    PastEnd,
    /// A field the view reads, with another wire type than its proto's.
    #[error("invalid protobuf: field {0} has the wrong wire type")]
    WrongWireType(u32),
    /// An end-group tag with no group open.
    #[error("invalid protobuf: an end-group tag that closes no group")]
    UnexpectedEndGroup,
    /// Groups nested too deep.
    #[error("invalid protobuf: groups nested past the recursion limit of 100")]
    RecursionLimit,
}

/// Why a decoded view is not a request the core can judge; either way it is denied as malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The request has no `attributes`.
    #[error("the check request has no attributes")]
    NoAttributes,
    /// Envoy's proto declares the field a `string`; prost rejects the whole message for it.
    #[error("check request field `{0}` is not UTF-8")]
    NotUtf8(&'static str),
}

impl CheckView {
    /// Reads a Check's protobuf bytes, refusing them where prost would: malformed, or a field
    /// the core reads with a wire type other than its proto's. No string is copied.
    pub fn from_wire(bytes: Bytes) -> Result<Self, WireError> {
        let mut attributes: Option<AttributeContext> = None;
        Fields::of(&bytes).each(|fields, key| match key.tag {
            1 => attributes.get_or_insert_default().merge(fields.message(key)?),
            _ => fields.skip(key),
        })?;
        Ok(Self { bytes, attributes })
    }

    /// The view of a prost `CheckRequest`, through its encoding (tests, benches and the
    /// fuzzer; not the serving path).
    pub fn from_check(check: &CheckRequest) -> Result<Self, WireError> {
        Self::from_wire(Bytes::from(check.encode_to_vec()))
    }

    /// Borrows the attributes the core reads. Envoy puts pseudo-headers in the header map and
    /// the query inside `path`; with `encode_raw_headers` the headers come in `header_map`.
    pub fn request(&self) -> Result<Request<'_>, ViewError> {
        let AttributeContext { source, destination, http, context_extensions, sni } =
            self.attributes.as_ref().ok_or(ViewError::NoAttributes)?;
        Ok(Request {
            source: self.peer(source)?,
            destination: self.peer(destination)?,
            http: http.as_ref().map(|http| self.http_request(http)).transpose()?,
            sni: self.text(*sni, "TLSSession.sni")?,
            context_extensions: StrMap::from_entries(
                self.entries(context_extensions, "AttributeContext.context_extensions")?,
            ),
        })
    }

    fn peer(&self, peer: &Peer) -> Result<CorePeer<'_>, ViewError> {
        let &Peer { socket, ref labels, principal } = peer;
        let port = socket.and_then(|socket| socket.port_value).and_then(|port| u16::try_from(port).ok());
        let address = socket.map(|socket| self.text(socket.address, "SocketAddress.address")).transpose()?;
        Ok(CorePeer {
            address: address.and_then(|address| address.parse().ok()),
            port,
            principal: self.text(principal, "Peer.principal")?,
            labels: StrMap::from_entries(self.entries(labels, "Peer.labels")?),
        })
    }

    fn http_request(&self, http: &HttpRequest) -> Result<CoreHttpRequest<'_>, ViewError> {
        let HttpRequest { method, headers, path, host, scheme, header_map } = http;
        let mut header_list = self.entries(headers, "HttpRequest.headers")?;
        // Envoy fills `headers` unless `encode_raw_headers`: a repeated header's values joined.
        let joined_headers = !header_list.is_empty();
        if header_list.is_empty() {
            header_list.reserve(header_map.len());
            for header in header_map {
                let name = self.text(header.key, "HeaderValue.key")?;
                // A raw value that is not UTF-8 cannot match any pattern; it is left out.
                let value = if header.raw_value.is_empty() {
                    Some(self.text(header.value, "HeaderValue.value")?)
                } else {
                    std::str::from_utf8(self.slice(header.raw_value)).ok()
                };
                header_list.extend(value.map(|value| (name, value)));
            }
        }
        Ok(with_pseudo_header_fallbacks(CoreHttpRequest {
            method: self.text(*method, "HttpRequest.method")?,
            scheme: self.text(*scheme, "HttpRequest.scheme")?,
            host: self.text(*host, "HttpRequest.host")?,
            path: self.text(*path, "HttpRequest.path")?,
            headers: header_list,
            joined_headers,
        }))
    }

    /// A map's entries, the last sent first: the core reads a repeated name's first entry, and
    /// in protobuf a map's repeated key has its last value.
    ///
    /// Entries as Envoy packs them are checked to be UTF-8 a run at a time: when an entry's
    /// value starts two bytes after its name ends, and the next entry's name four bytes after
    /// the value ends, those bytes can only be tags and one-byte lengths, all ASCII, so the run
    /// from the first name to the last value is UTF-8 exactly when all its names and values
    /// are. One pass over a run is much faster than one per short string.
    fn entries(&self, entries: &[(Span, Span)], field: &'static str) -> Result<Vec<(&str, &str)>, ViewError> {
        let is_packed = |&(name, value): &(Span, Span)| name.end + 2 == value.start;
        let mut pairs = Vec::with_capacity(entries.len());
        let mut rest = entries;
        while let Some((first, after_first)) = rest.split_first() {
            if !is_packed(first) {
                pairs.push((self.text(first.0, field)?, self.text(first.1, field)?));
                rest = after_first;
                continue;
            }
            let follows = |pair: &[(Span, Span)]| matches!(pair, [earlier, later] if is_packed(later) && earlier.1.end + 4 == later.0.start);
            let (run, later) = rest.split_at(1 + rest.windows(2).take_while(|pair| follows(pair)).count());
            let start = first.0.start;
            let end = run.last().map_or(start, |(_, value)| value.end);
            let text = self.text(Span { start, end }, field)?;
            // Names and values start and end next to ASCII bytes, so each is a slice of the run.
            let slice =
                |span: Span| text.get(span.start - start..span.end - start).map_or_else(|| self.text(span, field), Ok);
            for &(name, value) in run {
                pairs.push((slice(name)?, slice(value)?));
            }
            rest = later;
        }
        pairs.reverse();
        Ok(pairs)
    }

    fn text(&self, span: Span, field: &'static str) -> Result<&str, ViewError> {
        std::str::from_utf8(self.slice(span)).map_err(|_| ViewError::NotUtf8(field))
    }

    #[expect(clippy::indexing_slicing, reason = "every span was read from `bytes` and lies within it")]
    fn slice(&self, span: Span) -> &[u8] {
        &self.bytes[span.start..span.end]
    }
}

/// Where a string or bytes value lies in the received buffer; empty when the field is absent.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// `AttributeContext`, as far as the core reads it: the fields of every occurrence, merged as
/// prost merges them into one message.
#[derive(Debug, Clone, Default)]
struct AttributeContext {
    source: Peer,
    destination: Peer,
    /// `request.http`.
    http: Option<HttpRequest>,
    context_extensions: Vec<(Span, Span)>,
    /// `tls_session.sni`.
    sni: Span,
}

impl AttributeContext {
    fn merge(&mut self, fields: Fields<'_>) -> Result<(), WireError> {
        fields.each(|fields, key| {
            match key.tag {
                1 => self.source.merge(fields.message(key)?)?,
                2 => self.destination.merge(fields.message(key)?)?,
                // `request`: of `AttributeContext.Request`, only `http`.
                4 => fields.message(key)?.each(|request, key| match key.tag {
                    2 => self.http.get_or_insert_default().merge(request.message(key)?),
                    _ => request.skip(key),
                })?,
                10 => self.context_extensions.push(map_entry(fields.message(key)?)?),
                // `tls_session`: of `AttributeContext.TLSSession`, `sni`.
                12 => fields.message(key)?.each(|tls_session, key| match key.tag {
                    1 => tls_session.string(key).map(|sni| self.sni = sni),
                    _ => tls_session.skip(key),
                })?,
                _ => fields.skip(key)?,
            }
            Ok(())
        })
    }
}

/// `AttributeContext.Peer`.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// `address.socket_address`; a later `pipe` or `envoy_internal_address` of the oneof,
    /// neither with an IP address, replaces it.
    socket: Option<SocketAddress>,
    labels: Vec<(Span, Span)>,
    principal: Span,
}

impl Peer {
    fn merge(&mut self, fields: Fields<'_>) -> Result<(), WireError> {
        fields.each(|fields, key| {
            match key.tag {
                // `address`: an `envoy.config.core.v3.Address`, a oneof.
                1 => fields.message(key)?.each(|address, key| match key.tag {
                    1 => self.socket.get_or_insert_default().merge(address.message(key)?),
                    2 | 3 => check_message(address.message(key)?).map(|()| self.socket = None),
                    _ => address.skip(key),
                })?,
                3 => self.labels.push(map_entry(fields.message(key)?)?),
                4 => self.principal = fields.string(key)?,
                _ => fields.skip(key)?,
            }
            Ok(())
        })
    }
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Debug, Clone, Copy, Default)]
struct SocketAddress {
    address: Span,
    /// A later `named_port` of the oneof replaces it.
    port_value: Option<u32>,
}

impl SocketAddress {
    fn merge(&mut self, fields: Fields<'_>) -> Result<(), WireError> {
        fields.each(|fields, key| {
            match key.tag {
                2 => self.address = fields.string(key)?,
                3 => self.port_value = Some(fields.uint32(key)?),
                4 => {
                    fields.string(key)?;
                    self.port_value = None;
                }
                _ => fields.skip(key)?,
            }
            Ok(())
        })
    }
}

/// Room for the dozen or so headers Envoy sends, made once rather than grown three times.
const HEADERS_EXPECTED: usize = 16;

/// `AttributeContext.HttpRequest`.
#[derive(Debug, Clone, Default)]
struct HttpRequest {
    method: Span,
    headers: Vec<(Span, Span)>,
    path: Span,
    host: Span,
    scheme: Span,
    /// `header_map.headers`.
    header_map: Vec<HeaderValue>,
}

impl HttpRequest {
    fn merge(&mut self, fields: Fields<'_>) -> Result<(), WireError> {
        fields.each(|fields, key| {
            match key.tag {
                2 => self.method = fields.string(key)?,
                3 => {
                    if self.headers.is_empty() {
                        self.headers.reserve(HEADERS_EXPECTED);
                    }
                    self.headers.push(map_entry(fields.message(key)?)?);
                }
                4 => self.path = fields.string(key)?,
                5 => self.host = fields.string(key)?,
                6 => self.scheme = fields.string(key)?,
                // `header_map`: of `envoy.config.core.v3.HeaderMap`, `headers`.
                13 => fields.message(key)?.each(|header_map, key| match key.tag {
                    1 => HeaderValue::read(header_map.message(key)?).map(|header| self.header_map.push(header)),
                    _ => header_map.skip(key),
                })?,
                _ => fields.skip(key)?,
            }
            Ok(())
        })
    }
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Debug, Clone, Copy, Default)]
struct HeaderValue {
    key: Span,
    value: Span,
    raw_value: Span,
}

impl HeaderValue {
    fn read(fields: Fields<'_>) -> Result<Self, WireError> {
        let mut header = Self::default();
        fields.each(|fields, key| {
            match key.tag {
                1 => header.key = fields.string(key)?,
                2 => header.value = fields.string(key)?,
                3 => header.raw_value = fields.string(key)?,
                _ => fields.skip(key)?,
            }
            Ok(())
        })?;
        Ok(header)
    }
}

/// One entry of a `map<string, string>`: on the wire, a message with the key as field 1 and
/// the value as field 2.
fn map_entry(fields: Fields<'_>) -> Result<(Span, Span), WireError> {
    if let Some(entry) = fields.short_map_entry() {
        return Ok(entry);
    }
    let mut entry = (Span::default(), Span::default());
    fields.each(|fields, key| {
        match key.tag {
            1 => entry.0 = fields.string(key)?,
            2 => entry.1 = fields.string(key)?,
            _ => fields.skip(key)?,
        }
        Ok(())
    })?;
    Ok(entry)
}

/// A message none of whose fields the core reads (`Pipe`, `EnvoyInternalAddress`): it is
/// still refused when malformed, as prost refuses it.
fn check_message(fields: Fields<'_>) -> Result<(), WireError> {
    fields.each(|fields, key| fields.skip(key))
}

/// prost's recursion limit: how deep groups and messages may nest below a top-level message.
/// The messages the view reads nest 5 deep at most, so only groups in skipped fields reach it.
const RECURSION_LIMIT: u32 = 100;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const DELIMITED: u32 = 2;
const START_GROUP: u32 = 3;
const END_GROUP: u32 = 4;
const FIXED32: u32 = 5;

/// A field's number and wire type.
#[derive(Clone, Copy)]
struct Key {
    tag: u32,
    wire_type: u32,
}

/// The fields of one message, read off the wire in order: each [`Key`], then its value read
/// as the field's type declares it, or skipped. The reading is inlined into each message's loop,
/// all but the rare paths (long varints, groups and fixed-width values).
struct Fields<'a> {
    rest: &'a [u8],
    /// Where the message ends in the received buffer: `rest` starts `rest.len()` before.
    end: usize,
    /// prost's recursion budget for these fields: how many levels may still nest below them.
    recursion_left: u32,
}

impl<'a> Fields<'a> {
    /// The fields of a top-level message.
    fn of(bytes: &'a [u8]) -> Self {
        Self { rest: bytes, end: bytes.len(), recursion_left: RECURSION_LIMIT }
    }

    /// A map entry as Envoy writes most of them: field 1 then field 2, each under 128 bytes and
    /// nothing else. Read without the general loop; `None` for any other shape.
    #[inline(always)]
    fn short_map_entry(&self) -> Option<(Span, Span)> {
        let [0x0a, key_len @ 0..0x80, rest @ ..] = self.rest else { return None };
        let (_, [0x12, value_len @ 0..0x80, value @ ..]) = rest.split_at_checked(usize::from(*key_len))? else {
            return None;
        };
        if value.len() != usize::from(*value_len) {
            return None;
        }
        let key_start = self.end - self.rest.len() + 2;
        let value_start = self.end - value.len();
        Some((
            Span { start: key_start, end: key_start + usize::from(*key_len) },
            Span { start: value_start, end: self.end },
        ))
    }

    /// Hands each field of the message, in order, to `read`, which reads or skips it.
    #[inline(always)]
    fn each(mut self, mut read: impl FnMut(&mut Self, Key) -> Result<(), WireError>) -> Result<(), WireError> {
        while let Some(key) = self.next_key()? {
            read(&mut self, key)?;
        }
        Ok(())
    }

    /// The next field's key, refused as prost refuses it; `None` at the end of the message.
    #[inline(always)]
    fn next_key(&mut self) -> Result<Option<Key>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| WireError::InvalidKey)?;
        let wire_type = key & 0b111;
        if wire_type > FIXED32 {
            return Err(WireError::InvalidWireType(wire_type));
        }
        let tag = key >> 3;
        if tag == 0 {
            return Err(WireError::InvalidTag);
        }
        Ok(Some(Key { tag, wire_type }))
    }

    /// A `string` or `bytes` field's value: where it lies in the received buffer.
    #[inline(always)]
    fn string(&mut self, key: Key) -> Result<Span, WireError> {
        let (start, bytes) = self.delimited(key)?;
        Ok(Span { start, end: start + bytes.len() })
    }

    /// A message field's fields, one level deeper toward the recursion limit.
    #[inline(always)]
    fn message(&mut self, key: Key) -> Result<Fields<'a>, WireError> {
        let (start, bytes) = self.delimited(key)?;
        Ok(Fields { rest: bytes, end: start + bytes.len(), recursion_left: self.recursion_left.saturating_sub(1) })
    }

    /// A `uint32` field's value: the low 32 bits of the varint, as prost reads it.
    #[inline(always)]
    #[expect(clippy::cast_possible_truncation, reason = "protobuf reads a `uint32` as the varint's low 32 bits")]
    fn uint32(&mut self, key: Key) -> Result<u32, WireError> {
        if key.wire_type != VARINT {
            return Err(WireError::WrongWireType(key.tag));
        }
        Ok(self.varint()? as u32)
    }

    /// Skips a field the view does not read, whatever its wire type.
    #[inline(always)]
    fn skip(&mut self, key: Key) -> Result<(), WireError> {
        match key.wire_type {
            VARINT => self.varint().map(drop),
            DELIMITED => self.delimited(key).map(drop),
            // Out of line, on a copy of the position, so that the hot paths keep theirs in
            // registers.
            _ => {
                self.rest = after_skipped(self.rest, key, self.recursion_left)?;
                Ok(())
            }
        }
    }

    /// A length-delimited value, and where it starts in the received buffer.
    #[inline(always)]
    fn delimited(&mut self, key: Key) -> Result<(usize, &'a [u8]), WireError> {
        if key.wire_type != DELIMITED {
            return Err(WireError::WrongWireType(key.tag));
        }
        let len = self.varint()?;
        let start = self.end - self.rest.len();
        Ok((start, self.take(len)?))
    }

    /// A base-128 varint of at most ten bytes, the tenth holding only bit 63.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Keys and most lengths take one byte.
        if let [byte @ 0..0x80, rest @ ..] = self.rest {
            self.rest = rest;
            return Ok(u64::from(*byte));
        }
        let (value, rest) = long_varint(self.rest)?;
        self.rest = rest;
        Ok(value)
    }

    #[inline(always)]
    fn take(&mut self, len: u64) -> Result<&'a [u8], WireError> {
        let split = usize::try_from(len).ok().and_then(|len| self.rest.split_at_checked(len));
        let (taken, rest) = split.ok_or(WireError::PastEnd)?;
        self.rest = rest;
        Ok(taken)
    }
}

/// A varint of two bytes or more, and the bytes after it.
#[inline(never)]
fn long_varint(bytes: &[u8]) -> Result<(u64, &[u8]), WireError> {
    let mut value = 0;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte < 0x80 {
            if index == 9 && byte > 1 {
                return Err(WireError::InvalidVarint);
            }
            return Ok((value, bytes.get(index + 1..).ok_or(WireError::InvalidVarint)?));
        }
    }
    Err(WireError::InvalidVarint)
}

/// `rest` after the value of `key`, skipped as prost's `skip_field` skips it: a group to its
/// end, each field inside it one level deeper toward the recursion limit, which `recursion_left`
/// is the budget for.
#[cold]
#[inline(never)]
fn after_skipped(rest: &[u8], key: Key, recursion_left: u32) -> Result<&[u8], WireError> {
    if recursion_left == 0 {
        return Err(WireError::RecursionLimit);
    }
    // Where the skipped bytes lie is not needed: `end` is this slice's.
    let mut fields = Fields { rest, end: rest.len(), recursion_left };
    match key.wire_type {
        VARINT => drop(fields.varint()?),
        FIXED64 => drop(fields.take(8)?),
        DELIMITED => drop(fields.delimited(key)?),
        START_GROUP => loop {
            // A group cut off ends where prost looks for one more key.
            let Some(inner) = fields.next_key()? else { return Err(WireError::InvalidVarint) };
            if inner.wire_type == END_GROUP {
                if inner.tag != key.tag {
                    return Err(WireError::UnexpectedEndGroup);
                }
                break;
            }
            fields.rest = after_skipped(fields.rest, inner, recursion_left - 1)?;
        },
        FIXED32 => drop(fields.take(4)?),
        _ => return Err(WireError::UnexpectedEndGroup),
    }
    Ok(fields.rest)
}
