//! A do-nothing ext_authz server, built from the same crates as portcullis, that decodes each Check and answers OK at once: the benchmarks' transport ceiling, on either tokio runtime.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::server::TcpIncoming;

#[derive(Debug, Parser)]
#[command(about = "A Check server that allows everything at once (the transport ceiling of `make bench`)")]
struct Args {
    /// The gRPC address; port 0 picks one, logged as `Listening door=grpc address=...`.
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc_listen: SocketAddr,
    /// The tokio runtime: one thread polling everything (the ceiling of `make bench`), or a
    /// worker per CPU the process may run on, as portcullis serves by default.
    #[arg(long, value_enum, default_value_t = Runtime::CurrentThread)]
    runtime: Runtime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Runtime {
    CurrentThread,
    MultiThread,
}

impl Runtime {
    fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Self::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            // A worker per CPU the process may run on: one under `taskset -c 0`.
            Self::MultiThread => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        }
    }
}

/// Allows every Check. tonic's prost codec has decoded the whole `CheckRequest` (headers,
/// peers, context extensions) before `check` runs, as any server on this transport pays.
struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let ok = rpc::Status { code: 0, message: String::new(), details: Vec::new() };
        Ok(tonic::Response::new(CheckResponse { status: Some(ok), ..CheckResponse::default() }))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = args.runtime.build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.grpc_listen).await?;
        eprintln!("Listening door=grpc address={}", listener.local_addr()?);
        let mut terminate = signal(SignalKind::terminate())?;
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(AllowAll))
            // TCP_NODELAY: a ceiling, not a copy of any server's socket settings.
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
                terminate.recv().await;
            })
            .await?;
        Ok(())
    })
}
