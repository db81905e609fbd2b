//! A do-nothing ext_authz server, built from the same crates and runtime as portcullis, that answers every Check with OK at once: the benchmarks' transport ceiling.

use std::net::SocketAddr;

use clap::Parser;
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
}

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
    // As portcullis: a worker per CPU the process may run on (one under `taskset -c 0`).
    let runtime = tokio::runtime::Runtime::new()?;
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
