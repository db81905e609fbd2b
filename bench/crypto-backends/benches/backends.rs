//! RS256 and ES256 signature verification with jsonwebtoken's `aws_lc_rs` and `rust_crypto` backends.

#![expect(clippy::expect_used, reason = "bench set-up: a token that cannot be built ends the run")]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use portcullis_crypto_backends::{BACKENDS, SignedToken};

fn backends(c: &mut Criterion) {
    for algorithm in [Algorithm::RS256, Algorithm::ES256] {
        let token = SignedToken::new(algorithm).expect("a signed token");
        let mut group = c.benchmark_group(format!("backend_verify/{}", format!("{algorithm:?}").to_lowercase()));
        for (name, provider) in BACKENDS {
            assert!(token.verify_with(provider), "{name} must accept the {algorithm:?} token");
            group.bench_function(name, |b| b.iter(|| token.verify_with(black_box(provider))));
        }
        group.finish();
    }
}

criterion_group!(benches, backends);
criterion_main!(benches);
