//! The tonic service for `envoy.service.auth.v3.Authorization`, written by hand after the generated `authorization_server` but with a codec that decodes the zero-copy view instead of Envoy's prost types; no decision logic.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::Buf;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};

use super::{CheckAnswer, CheckService, CheckView};

/// The gRPC service name, as the health service reports it.
const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Serves `Check`; any other method answers `Unimplemented`, as the generated server does.
#[derive(Clone)]
pub struct AuthorizationServer {
    service: Arc<CheckService>,
}

impl AuthorizationServer {
    /// The tonic service of `service`.
    pub fn new(service: CheckService) -> Self {
        Self { service: Arc::new(service) }
    }
}

impl NamedService for AuthorizationServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for AuthorizationServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let method = CheckMethod(self.service.clone());
        Box::pin(async move {
            // `Grpc::new` has the generated server's defaults: no compression accepted or sent,
            // tonic's 4 MiB limit on a decoded message and none on an encoded one.
            let mut grpc = Grpc::new(CheckCodec);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The generated server's answer to a method it does not know.
fn unimplemented() -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::default());
    let headers = response.headers_mut();
    headers.insert(tonic::Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
    headers.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
    response
}

struct CheckMethod(Arc<CheckService>);

impl UnaryService<CheckView> for CheckMethod {
    type Response = CheckAnswer;
    type Future = BoxFuture<tonic::Response<CheckAnswer>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CheckView>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { Ok(tonic::Response::new(service.check(request.into_inner()).await)) })
    }
}

/// Decodes a `CheckRequest` as a [`CheckView`] and encodes a [`CheckAnswer`] as the `CheckResponse`.
#[derive(Debug, Clone, Copy, Default)]
struct CheckCodec;

impl Codec for CheckCodec {
    type Encode = CheckAnswer;
    type Decode = CheckView;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for CheckCodec {
    type Item = CheckAnswer;
    type Error = tonic::Status;

    fn encode(&mut self, answer: CheckAnswer, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        answer.encode(buf);
        Ok(())
    }
}

impl Decoder for CheckCodec {
    type Item = CheckView;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // Zero-copy: `DecodeBuf::copy_to_bytes` is `BytesMut::split_to(..).freeze()` on tonic's
        // receive buffer, and the view's strings are slices of what it returns.
        let message = buf.copy_to_bytes(buf.remaining());
        // As tonic-prost answers a message prost cannot decode.
        CheckView::from_wire(message).map(Some).map_err(|error| tonic::Status::internal(error.to_string()))
    }
}
