//! Metrics every check writes, striped per thread: a counter, a gauge and a latency histogram whose stripes each sit on cache lines of their own and are summed at scrape, exposed exactly as prometheus-client's own counter, gauge and histogram are; never takes a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::stripes::{self, CachePadded, STRIPES};

/// The calling thread's stripe of `all`.
#[expect(clippy::indexing_slicing, reason = "`stripes::current()` is below `STRIPES`, the array's length")]
fn mine<T>(all: &[CachePadded<T>; STRIPES]) -> &T {
    &all[stripes::current()]
}

/// A counter: one count per stripe, summed when read. Clones count into the same stripes.
#[derive(Debug, Clone, Default)]
pub struct StripedCounter(Arc<[CachePadded<AtomicU64>; STRIPES]>);

impl StripedCounter {
    /// Counts one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Counts `count`.
    pub fn inc_by(&self, count: u64) {
        mine(&self.0).fetch_add(count, Ordering::Relaxed);
    }

    /// The count: every stripe's, summed.
    pub fn get(&self) -> u64 {
        self.0.iter().fold(0, |total, stripe| total.wrapping_add(stripe.load(Ordering::Relaxed)))
    }

    /// The count, each stripe set back to 0 as it is read: what is counted meanwhile is in the
    /// next count taken.
    pub fn take(&self) -> u64 {
        self.0.iter().fold(0, |total, stripe| total.wrapping_add(stripe.swap(0, Ordering::Relaxed)))
    }
}

impl TypedMetric for StripedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for StripedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge that goes up and down by one: a signed count per stripe, summed when read, so that
/// a +1 on one thread and its −1 on another cancel out. Clones count into the same stripes.
#[derive(Debug, Clone, Default)]
pub struct StripedGauge(Arc<[CachePadded<AtomicI64>; STRIPES]>);

impl StripedGauge {
    /// Adds one.
    pub fn inc(&self) {
        mine(&self.0).fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    pub fn dec(&self) {
        mine(&self.0).fetch_sub(1, Ordering::Relaxed);
    }

    /// The value: every stripe's, summed.
    pub fn get(&self) -> i64 {
        self.0.iter().fold(0, |total, stripe| total.wrapping_add(stripe.load(Ordering::Relaxed)))
    }
}

impl TypedMetric for StripedGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for StripedGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What one stripe of a [`StripedHistogram`] has observed.
#[derive(Debug)]
struct HistogramStripe<const BOUNDS: usize> {
    /// Observations at most each bound and above the bound before it (not cumulative).
    buckets: [AtomicU64; BOUNDS],
    /// Observations above the last bound (`le="+Inf"` counts them beside every bucket's).
    above_bounds: AtomicU64,
    /// The sum of the observations, in seconds: an `f64`'s bits, added to as prometheus-client's
    /// histogram adds, so that the sum it exposes is the same to the last bit.
    sum_seconds: AtomicU64,
}

impl<const BOUNDS: usize> Default for HistogramStripe<BOUNDS> {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            above_bounds: AtomicU64::new(0),
            sum_seconds: AtomicU64::new(0.0_f64.to_bits()),
        }
    }
}

/// A histogram of durations, in seconds, under `BOUNDS` bucket bounds: each stripe counts its
/// own buckets and sum, all summed at scrape. Its count is the sum of its buckets', so `_count`
/// and `le="+Inf"` always agree. Clones observe into the same stripes.
#[derive(Debug, Clone)]
pub struct StripedHistogram<const BOUNDS: usize> {
    bounds: [f64; BOUNDS],
    stripes: Arc<[CachePadded<HistogramStripe<BOUNDS>>; STRIPES]>,
}

impl<const BOUNDS: usize> StripedHistogram<BOUNDS> {
    /// An empty histogram whose buckets end at `bounds`, in seconds, ascending (`le` includes
    /// its bound).
    pub fn new(bounds: [f64; BOUNDS]) -> Self {
        Self { bounds, stripes: Arc::new(std::array::from_fn(|_| CachePadded::default())) }
    }

    /// Observes one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let stripe = mine(&self.stripes);
        // The first bucket whose bound is at least the value, as prometheus-client finds it.
        let bucket = self.bounds.iter().position(|&bound| bound >= seconds).and_then(|index| stripe.buckets.get(index));
        bucket.unwrap_or(&stripe.above_bounds).fetch_add(1, Ordering::Relaxed);
        // Only the threads that share this stripe ever race here; the update always succeeds.
        let _ = stripe
            .sum_seconds
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| Some((f64::from_bits(sum) + seconds).to_bits()));
    }

    /// The sum, the count and each bucket's count (not cumulative, `+Inf` last as `f64::MAX`),
    /// as prometheus-client's encoder takes them.
    fn totals(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self.bounds.iter().chain([&f64::MAX]).map(|&bound| (bound, 0)).collect();
        let mut sum = 0.0;
        for stripe in self.stripes.iter() {
            for ((_, total), count) in buckets.iter_mut().zip(stripe.buckets.iter().chain([&stripe.above_bounds])) {
                *total = total.wrapping_add(count.load(Ordering::Relaxed));
            }
            sum += f64::from_bits(stripe.sum_seconds.load(Ordering::Relaxed));
        }
        let count = buckets.iter().fold(0_u64, |total, (_, count)| total.wrapping_add(*count));
        (sum, count, buckets)
    }
}

impl<const BOUNDS: usize> TypedMetric for StripedHistogram<BOUNDS> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl<const BOUNDS: usize> EncodeMetric for StripedHistogram<BOUNDS> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::{Metric, Registry};

    use super::*;

    const THREADS: usize = 2 * STRIPES + 3;
    const PER_THREAD: u64 = 10_000;

    /// Runs `work` on `THREADS` threads started together.
    fn on_many_threads(work: impl Fn() + Sync) {
        let start = std::sync::Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    start.wait();
                    work();
                });
            }
        });
    }

    /// The text exposition of a registry holding only `metric`, as `name`.
    fn exposition(name: &str, metric: impl Metric) -> String {
        let mut registry = Registry::with_prefix("portcullis");
        registry.register(name, "Help", metric);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        text
    }

    #[test]
    fn a_counter_incremented_on_many_threads_at_once_sums_every_increment() {
        let counter = StripedCounter::default();
        on_many_threads(|| {
            for _ in 0..PER_THREAD {
                counter.inc();
            }
            counter.inc_by(2);
        });
        let expected = (PER_THREAD + 2) * THREADS as u64;
        assert_eq!(counter.get(), expected);
        assert!(exposition("checks", counter.clone()).contains(&format!("portcullis_checks_total {expected}\n")));
    }

    #[test]
    fn a_counter_taken_reads_what_was_counted_and_starts_again_from_zero() {
        let counter = StripedCounter::default();
        on_many_threads(|| counter.inc());
        assert_eq!(counter.take(), THREADS as u64);
        assert_eq!(counter.get(), 0);
        counter.inc();
        assert_eq!(counter.take(), 1);
    }

    #[test]
    fn a_gauge_raised_on_one_thread_and_lowered_on_another_reads_zero() {
        let gauge = StripedGauge::default();
        let threads_apart = |work: &(dyn Fn() + Sync)| std::thread::scope(|scope| drop(scope.spawn(work).join()));
        threads_apart(&|| gauge.inc());
        assert_eq!(gauge.get(), 1);
        threads_apart(&|| gauge.dec());
        assert_eq!(gauge.get(), 0);
        assert!(exposition("in_flight", gauge.clone()).contains("portcullis_in_flight 0\n"));
        on_many_threads(|| {
            for _ in 0..PER_THREAD {
                gauge.inc();
            }
            gauge.dec();
        });
        assert_eq!(gauge.get(), i64::try_from((PER_THREAD - 1) * THREADS as u64).unwrap_or(i64::MAX));
    }

    const BOUNDS: [f64; 4] = [0.000025, 0.0001, 0.001, 0.1];
    /// The bounds, in nanoseconds.
    const BOUND_NANOS: [u64; 4] = [25_000, 100_000, 1_000_000, 100_000_000];

    /// Durations on each bound, just either side of it, far below and far above them all.
    fn durations() -> Vec<Duration> {
        let on_bounds = BOUND_NANOS.into_iter().map(Duration::from_nanos);
        let around = on_bounds.flat_map(|on| [on - Duration::from_nanos(1), on, on + Duration::from_nanos(1)]);
        around
            .chain([Duration::ZERO, Duration::from_nanos(7), Duration::from_millis(333), Duration::from_secs(90)])
            .collect()
    }

    #[test]
    fn a_histogram_exposes_the_same_text_as_prometheus_clients_own_for_the_same_observations() {
        let striped = StripedHistogram::new(BOUNDS);
        let reference = Histogram::new(BOUNDS);
        for (round, elapsed) in durations().into_iter().cycle().take(1_000).enumerate() {
            for _ in 0..=round % 3 {
                striped.observe(elapsed);
                reference.observe(elapsed.as_secs_f64());
            }
        }
        let (striped, reference) =
            (exposition("check_duration_seconds", striped), exposition("check_duration_seconds", reference));
        assert!(reference.contains("portcullis_check_duration_seconds_bucket{le=\"0.000025\"}"), "{reference}");
        assert_eq!(striped, reference);
    }

    #[test]
    fn a_histogram_observed_on_many_threads_at_once_counts_every_observation_in_its_bucket() {
        let histogram = StripedHistogram::new(BOUNDS);
        let durations = durations();
        on_many_threads(|| {
            for elapsed in &durations {
                histogram.observe(*elapsed);
            }
        });
        let (sum, count, buckets) = histogram.totals();
        let threads = THREADS as u64;
        assert_eq!(count, durations.len() as u64 * threads);
        // Per bound: one just below and one on it, one just above in the next bucket; 0 and 7 ns
        // in the first, 333 ms and 90 s above every bound.
        let expected_buckets: Vec<u64> = [4, 3, 3, 3, 3].iter().map(|&each: &u64| each * threads).collect();
        assert_eq!(buckets.iter().map(|(_, count)| *count).collect::<Vec<_>>(), expected_buckets, "{buckets:?}");
        let expected_sum = durations.iter().map(Duration::as_secs_f64).sum::<f64>() * THREADS as f64;
        assert!((sum - expected_sum).abs() < 1e-9 * expected_sum, "{sum} against {expected_sum}");
    }
}
