//! Writes what the end-to-end benchmark runs need: the policy directories the server loads, and files of signed Keycloak-shaped tokens.

#[path = "../benches/fixtures/mod.rs"]
mod fixtures;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use serde_json::json;

use fixtures::requests::JOB_BOARD_ROLES;
use fixtures::tokens::{Alg, TokenSigner, keycloak_claims, request_authentication_yaml, unix_now};
use fixtures::{Error, JOB_BOARD_FILES, mesh, repo_path};

/// Policies per file: the server refuses files over 8 MiB.
const POLICIES_PER_FILE: usize = 1_000;

#[derive(Debug, Parser)]
#[command(about = "Writes the policy directories and token files of `make bench`")]
struct Args {
    /// The directory to write into; `job-board/`, `mesh-N/` and `tokens-ALG.txt` are replaced.
    #[arg(long)]
    out: PathBuf,
    /// Synthetic AuthorizationPolicies in `mesh-N/`, beside the job-board ones.
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    /// Distinct RS256 tokens to sign.
    #[arg(long, default_value_t = 100_000)]
    rs256_tokens: usize,
    /// Distinct ES256 tokens to sign.
    #[arg(long, default_value_t = 100_000)]
    es256_tokens: usize,
    /// Threads signing tokens.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// A fresh directory with the job-board policies and the bench RequestAuthentication.
fn job_board_dir(dir: &Path) -> Result<(), Error> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    for file in JOB_BOARD_FILES {
        let source = repo_path(file);
        std::fs::copy(&source, dir.join(source.file_name().ok_or("a file name")?))?;
    }
    std::fs::write(dir.join("bench-keycloak.yaml"), request_authentication_yaml()?)?;
    Ok(())
}

/// Signs `count` distinct tokens (user serials 1..=count) on `threads` threads, one a line.
fn write_tokens(path: &Path, alg: Alg, count: usize, threads: usize) -> Result<f64, Error> {
    let signer = TokenSigner::new(alg)?;
    let now = unix_now();
    let started = Instant::now();
    let chunk = count.div_ceil(threads.max(1)).max(1);
    let chunks: Vec<Result<String, Error>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|first| {
                let signer = &signer;
                scope.spawn(move || {
                    let mut lines = String::new();
                    for serial in first..(first + chunk).min(count) {
                        lines.push_str(&signer.sign(&keycloak_claims(serial as u64 + 1, JOB_BOARD_ROLES, now))?);
                        lines.push('\n');
                    }
                    Ok(lines)
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap_or_else(|_| Err("a signer panicked".into()))).collect()
    });
    let text: String = chunks.into_iter().collect::<Result<_, _>>()?;
    std::fs::write(path, text)?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let job_board = args.out.join("job-board");
    job_board_dir(&job_board)?;

    let mesh_dir = args.out.join(format!("mesh-{}", args.policies));
    job_board_dir(&mesh_dir)?;
    for (number, first) in (0..args.policies).step_by(POLICIES_PER_FILE).enumerate() {
        let text = mesh::policy_set_yaml(first..(first + POLICIES_PER_FILE).min(args.policies));
        std::fs::write(mesh_dir.join(format!("mesh-{number:03}.yaml")), text)?;
    }

    let mut signing_rates = serde_json::Map::new();
    for (alg, count) in [(Alg::Rs256, args.rs256_tokens), (Alg::Es256, args.es256_tokens)] {
        let path = args.out.join(format!("tokens-{}.txt", alg.name()));
        let rate = write_tokens(&path, alg, count, args.threads)?;
        let bytes = std::fs::metadata(&path)?.len() - count as u64;
        signing_rates
            .insert(alg.name().into(), json!({"file": path, "tokens": count, "bytes": bytes, "signed_per_sec": rate}));
    }
    let summary =
        json!({"job_board": job_board, "mesh": mesh_dir, "mesh_policies": args.policies, "tokens": signing_rates});
    println!("{summary}");
    Ok(())
}
