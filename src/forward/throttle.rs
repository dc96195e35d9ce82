//! `max_bytes_per_sec`: a destination's sending pace, shared by its associations. Each
//! chunk books its share of the link's time before it goes; a chunk waits until the
//! bookings ahead of it have passed, so the average rate holds over any stretch longer
//! than a chunk, whatever the number of associations.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

/// A destination's pace; `None` rate: no limit.
#[derive(Debug, Clone, Default)]
pub struct Throttle(Option<Arc<Pace>>);

#[derive(Debug)]
pub struct Pace {
    bytes_per_sec: f64,
    /// When the link is free again, after the chunks booked so far.
    free_at: Mutex<Instant>,
}

impl Throttle {
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Throttle(bytes_per_sec.filter(|r| *r > 0).map(|r| {
            Arc::new(Pace {
                bytes_per_sec: r as f64,
                free_at: Mutex::new(Instant::now()),
            })
        }))
    }

    /// How long a chunk of `n` bytes must wait before it goes (and book its share).
    fn book(&self, n: usize) -> Duration {
        let Some(pace) = &self.0 else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let mut free_at = pace.free_at.lock().expect("throttle lock");
        let start = (*free_at).max(now);
        *free_at = start + Duration::from_secs_f64(n as f64 / pace.bytes_per_sec);
        start - now
    }

    /// `stream` at this pace.
    pub fn stream<E: Send + 'static>(
        &self,
        stream: BoxStream<'static, Result<Bytes, E>>,
    ) -> BoxStream<'static, Result<Bytes, E>> {
        if self.0.is_none() {
            return stream;
        }
        let me = self.clone();
        stream
            .then(move |chunk| {
                let wait = chunk.as_ref().map_or(Duration::ZERO, |c| me.book(c.len()));
                async move {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    chunk
                }
            })
            .boxed()
    }

    /// `bytes` as a stream of chunks at this pace (small chunks, so the pace is even).
    pub fn bytes<E: Send + 'static>(&self, bytes: Bytes) -> BoxStream<'static, Result<Bytes, E>> {
        const CHUNK: usize = 64 * 1024;
        let chunks: Vec<Result<Bytes, E>> = (0..bytes.len())
            .step_by(CHUNK)
            .map(|at| Ok(bytes.slice(at..(at + CHUNK).min(bytes.len()))))
            .collect();
        self.stream(futures::stream::iter(chunks).boxed())
    }

    pub fn is_limited(&self) -> bool {
        self.0.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookings_queue_behind_each_other() {
        let t = Throttle::new(Some(1000));
        assert_eq!(t.book(500), Duration::ZERO);
        let second = t.book(500);
        assert!(second > Duration::from_millis(450) && second <= Duration::from_millis(500));
        let third = t.book(10);
        assert!(third > Duration::from_millis(950) && third <= Duration::from_millis(1000));
        assert_eq!(Throttle::new(None).book(1 << 30), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_paced_stream_takes_its_time() {
        let t = Throttle::new(Some(200_000));
        let started = Instant::now();
        let body = t.bytes::<String>(Bytes::from(vec![0u8; 100_000]));
        let total: usize = body
            .map(|c| c.unwrap().len())
            .collect::<Vec<_>>()
            .await
            .iter()
            .sum();
        assert_eq!(total, 100_000);
        // Two chunks: the second waits for the first's 64 KiB at 200 kB/s.
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
